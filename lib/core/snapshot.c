/* The front door of internal snapshots. */
#include "core/internal.h"

#include <string.h>

int vd_snapshot_count(vd_image *img, size_t *count)
{
    int rc = vd_enter(img, "vd_snapshot_count", 0, 0, VD_ACCESS_SHARED);
    if (rc < 0)
        return rc;
    if (!count)
        return vd_leave(img, vd_err(VD_EINVAL, "vd_snapshot_count: NULL count"));
    *count = img->backend->snapshot_count ? img->backend->snapshot_count(img) : 0;
    return vd_leave(img, 0);
}

int vd_snapshot_get(vd_image *img, size_t index, vd_snapshot_info *info)
{
    int rc = vd_enter(img, "vd_snapshot_get", 0, 0, VD_ACCESS_SHARED);
    if (rc < 0)
        return rc;
    if (!info || info->struct_size < offsetof(vd_snapshot_info, disk_size) + 8 ||
        info->struct_size > sizeof(vd_snapshot_info))
        return vd_leave(img, vd_err(VD_EINVAL, "vd_snapshot_get: info is NULL or has an unknown struct_size"));
    size_t count = img->backend->snapshot_count ? img->backend->snapshot_count(img) : 0;
    if (index >= count)
        return vd_leave(img, vd_err(VD_ENOENT, "%s: no snapshot at index %zu (%zu snapshots)",
                                    img->filename, index, count));
    vd_snapshot_info full = VD_SNAPSHOT_INFO_INIT;
    img->backend->snapshot_get(img, index, &full);
    uint32_t size = info->struct_size;
    memcpy(info, &full, size);
    info->struct_size = size;
    return vd_leave(img, 0);
}

/* Shared shape of create, apply and delete. */
static int change(vd_image *img, const char *call, const char *arg, uint32_t flags,
                  int (*op)(vd_image *, const char *))
{
    int rc = vd_enter(img, call, flags, 0, VD_ACCESS_WRITE);
    if (rc < 0)
        return rc;
    if (!arg || !*arg)
        rc = vd_err(VD_EINVAL, "%s: a snapshot name is needed", call);
    else if (!op)
        rc = vd_err(VD_EUNSUPPORTED, "%s: format '%s' has no internal snapshots", img->filename,
                    img->backend->name);
    else
        rc = op(img, arg);
    return vd_leave(img, rc);
}

int vd_snapshot_create(vd_image *img, const char *name, uint32_t flags)
{
    return change(img, "vd_snapshot_create", name, flags,
                  img && img->magic == VD_IMAGE_MAGIC ? img->backend->snapshot_create : NULL);
}

int vd_snapshot_apply(vd_image *img, const char *id_or_name, uint32_t flags)
{
    return change(img, "vd_snapshot_apply", id_or_name, flags,
                  img && img->magic == VD_IMAGE_MAGIC ? img->backend->snapshot_apply : NULL);
}

int vd_snapshot_delete(vd_image *img, const char *id_or_name, uint32_t flags)
{
    return change(img, "vd_snapshot_delete", id_or_name, flags,
                  img && img->magic == VD_IMAGE_MAGIC ? img->backend->snapshot_delete : NULL);
}
