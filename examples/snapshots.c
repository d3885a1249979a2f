/* Snapshot tables printed as qemu's bdrv_snapshot_dump() and qmp_query_snapshots() do. */
#include "cli.h"
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

void snapshot_param_free(struct snapshot_param *p)
{
    free(p->id);
    free(p->name);
    *p = (struct snapshot_param){ 0 };
}

bool snapshot_param_parse_id_or_name(const char *id_or_name, struct snapshot_param *out)
{
    snapshot_param_free(out);
    out->either = true;
    if ((out->id = strdup(id_or_name)))
        return true;
    cli_error("out of memory");
    return false;
}

bool snapshot_param_parse(const char *param, struct snapshot_param *out)
{
    if (strncmp(param, "snapshot.", strlen("snapshot.")) != 0)
        return snapshot_param_parse_id_or_name(param, out);
    snapshot_param_free(out);
    const char *cursor = param;
    char *item;
    while ((item = cli_next_option_item(&cursor))) {
        char *eq = strchr(item, '=');
        if (eq)
            *eq = '\0';
        char **value = strcmp(item, "snapshot.id") == 0     ? &out->id
                       : strcmp(item, "snapshot.name") == 0 ? &out->name : NULL;
        if (value) {
            free(*value);
            *value = strdup(eq ? eq + 1 : "on"); /* a bare key means "on", as in qemu */
        } else {
            cli_error("Invalid parameter '%s'", item);
            cli_error("Failed in parsing snapshot param '%s'", param);
        }
        free(item);
        if (!value)
            return false;
        if (!*value) {
            cli_error("out of memory");
            return false;
        }
    }
    return true;
}

/* The id of the snapshot p names, malloc'd; NULL (reported) if there is none such. */
static char *find_snapshot_id(vd_image *img, const struct snapshot_param *p)
{
    struct snapshot_list list;
    int rc = snapshot_list_load(img, &list);
    const vd_snapshot_info *sn = rc < 0       ? NULL
                                 : p->either ? snapshot_list_find_id_or_name(&list, p->id)
                                             : snapshot_list_find(&list, p->id, p->name);
    char *id = sn ? strdup(sn->id) : NULL;
    snapshot_list_free(&list);
    if (rc < 0)
        cli_lib_error(rc, "Failed to load snapshot");
    else if (!sn)
        cli_error("Failed to load snapshot: Can't find snapshot");
    else if (!id)
        cli_error("out of memory");
    return id;
}

vd_image *snapshot_param_open(const char *image, const char *format, uint32_t flags,
                              const struct snapshot_param *p)
{
    vd_image *img = cli_open_image(image, format, flags);
    if (!img || (!p->id && !p->name))
        return img;
    char *id = find_snapshot_id(img, p);
    vd_close(img);
    img = id ? cli_open_snapshot(image, format, flags, id) : NULL;
    free(id);
    return img;
}
