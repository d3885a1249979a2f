/* Snapshot tables printed as qemu's bdrv_snapshot_dump() and qmp_query_snapshots() do. */
#include "snapshots.h"
#include "size.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NSEC_PER_SEC UINT64_C(1000000000)

/*
 * The guest instruction count of a snapshot. vd_snapshot_info does not
 * carry it; qemu-img records 0 for the disk-only snapshots it takes, so
 * that is what is shown.
 */
#define SNAPSHOT_ICOUNT 0

int snapshot_list_load(vd_image *img, struct snapshot_list *list)
{
    *list = (struct snapshot_list){ 0 };
    size_t count;
    int rc = vd_snapshot_count(img, &count);
    if (rc < 0 || count == 0)
        return rc;
    list->items = calloc(count, sizeof *list->items);
    if (!list->items)
        return VD_ENOMEM;
    for (; list->count < count; list->count++) {
        vd_snapshot_info *sn = &list->items[list->count];
        *sn = (vd_snapshot_info)VD_SNAPSHOT_INFO_INIT;
        if ((rc = vd_snapshot_get(img, list->count, sn)) < 0)
            return rc;
    }
    return 0;
}

void snapshot_list_free(struct snapshot_list *list)
{
    free(list->items);
    *list = (struct snapshot_list){ 0 };
}

static void print_row(const vd_snapshot_info *sn)
{
    char size_text[SIZE_TEXT_MAX], date_text[32] = "", clock_text[64], icount_text[32];
    size_to_text(sn->vm_state_size, size_text);
    time_t date = (time_t)sn->date_sec;
    struct tm tm;
    if (localtime_r(&date, &tm))
        strftime(date_text, sizeof date_text, "%Y-%m-%d %H:%M:%S", &tm);
    uint64_t secs = sn->vm_clock_ns / NSEC_PER_SEC;
    snprintf(clock_text, sizeof clock_text, "%02d:%02d:%02d.%03d", (int)(secs / 3600),
             (int)(secs / 60 % 60), (int)(secs % 60), (int)(sn->vm_clock_ns / 1000000 % 1000));
    snprintf(icount_text, sizeof icount_text, "%d", SNAPSHOT_ICOUNT);
    printf("%-9s %-16s %8s%20s%13s%11s\n", sn->id, sn->name, size_text, date_text, clock_text,
           icount_text);
}

void snapshot_list_print(const struct snapshot_list *list)
{
    printf("Snapshot list:\n%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE",
           "VM CLOCK", "ICOUNT");
    for (size_t i = 0; i < list->count; i++)
        print_row(&list->items[i]);
}

/* The members in the order qemu-img 7.2 prints them (its dictionary's hash order). */
void snapshot_list_json(struct json_writer *w, const struct snapshot_list *list)
{
    json_begin_array(w, "snapshots");
    for (size_t i = 0; i < list->count; i++) {
        const vd_snapshot_info *sn = &list->items[i];
        json_begin_object(w, NULL);
        json_int(w, "icount", SNAPSHOT_ICOUNT);
        json_uint(w, "vm-clock-nsec", sn->vm_clock_ns % NSEC_PER_SEC);
        json_string(w, "name", sn->name);
        json_uint(w, "date-sec", sn->date_sec);
        json_uint(w, "date-nsec", sn->date_nsec);
        json_uint(w, "vm-clock-sec", sn->vm_clock_ns / NSEC_PER_SEC);
        json_string(w, "id", sn->id);
        json_uint(w, "vm-state-size", sn->vm_state_size);
        json_end_object(w);
    }
    json_end_array(w);
}

const vd_snapshot_info *snapshot_list_find(const struct snapshot_list *list, const char *id,
                                           const char *name)
{
    for (size_t i = 0; i < list->count; i++) {
        const vd_snapshot_info *sn = &list->items[i];
        if ((!id || strcmp(sn->id, id) == 0) && (!name || strcmp(sn->name, name) == 0))
            return sn;
    }
    return NULL;
}

const vd_snapshot_info *snapshot_list_find_id_or_name(const struct snapshot_list *list,
                                                      const char *id_or_name)
{
    const vd_snapshot_info *sn = snapshot_list_find(list, id_or_name, NULL);
    return sn ? sn : snapshot_list_find(list, NULL, id_or_name);
}
