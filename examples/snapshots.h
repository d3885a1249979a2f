/*
 * The internal snapshots of an image as qemu-img shows them: the
 * "Snapshot list:" table of 'snapshot -l' and 'info', the "snapshots" array
 * of 'info --output=json', and qemu's rules for finding one by id or name.
 */
#ifndef VDISK_SNAPSHOTS_H
#define VDISK_SNAPSHOTS_H

#include "json.h"

#include <libvdisk/libvdisk.h>
#include <stdbool.h>
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

/*
 * -l snapshot_param as qemu-img takes it: "snapshot.id=ID,snapshot.name=NAME"
 * (either or both), or else an id or a name. Fills out->id and out->name
 * (malloc'd, NULL when not given) and out->either (the plain form, kept in
 * id: the id, else the name). A later -l replaces an earlier one. Returns
 * false (reported) for a malformed parameter.
 */
struct snapshot_param {
    char *id, *name;
    bool either;
};
bool snapshot_param_parse(const char *param, struct snapshot_param *out);
/* The plain form alone (convert's -s): the snapshot with this id, else this name. */
bool snapshot_param_parse_id_or_name(const char *id_or_name, struct snapshot_param *out);
void snapshot_param_free(struct snapshot_param *p);
/*
 * Open image's snapshot named by p (when p->id or p->name is set; else the
 * image), read-only, reporting "Failed to load snapshot" as qemu-img does.
 */
vd_image *snapshot_param_open(const char *image, const char *format, uint32_t flags,
                              const struct snapshot_param *p);

#endif /* VDISK_SNAPSHOTS_H */
