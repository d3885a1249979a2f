/*
 * The internal snapshots of an image as qemu-img shows them: the
 * "Snapshot list:" table of 'snapshot -l' and 'info', the "snapshots" array
 * of 'info --output=json', and qemu's rules for finding one by id or name.
 */
#ifndef VDISK_SNAPSHOTS_H
#define VDISK_SNAPSHOTS_H

#include "json.h"

#include <libvdisk/libvdisk.h>
#include <stddef.h>

struct snapshot_list {
    size_t count;
    vd_snapshot_info *items; /* their strings are owned by the image */
};

/* Read the snapshot table of img (empty for formats without snapshots). */
int snapshot_list_load(vd_image *img, struct snapshot_list *list);
void snapshot_list_free(struct snapshot_list *list);

/* "Snapshot list:", the column header and one row per snapshot. */
void snapshot_list_print(const struct snapshot_list *list);
/* The "snapshots" member of qemu-img info's JSON object. */
void snapshot_list_json(struct json_writer *w, const struct snapshot_list *list);

/*
 * The snapshot with this id and this name (either may be NULL: then it is
 * not compared); with id_or_name, the first with that id or else the first
 * with that name, as qemu-img looks up "-a NAME". NULL when none matches.
 */
const vd_snapshot_info *snapshot_list_find(const struct snapshot_list *list, const char *id,
                                           const char *name);
const vd_snapshot_info *snapshot_list_find_id_or_name(const struct snapshot_list *list,
                                                      const char *id_or_name);

#endif /* VDISK_SNAPSHOTS_H */
