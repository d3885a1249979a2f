/*
 * The validating front door of the data path: handle, flag, range and state
 * checks, locking, and the defaults for callbacks a backend leaves out.
 */
#include "core/internal.h"
#include "core/bitmap.h"
#include "cow/engine.h"

int vd_enter(vd_image *img, const char *call, uint32_t flags, uint32_t known_flags,
             enum vd_access access)
{
    vd_err_clear();
    if (!img || img->magic != VD_IMAGE_MAGIC)
        return vd_err(VD_EINVAL, "%s: invalid image handle", call);
    if (flags & ~known_flags)
        return vd_err(VD_EINVAL, "%s: unknown flags 0x%x", call, flags & ~known_flags);
    if (access == VD_ACCESS_WRITE && img->read_only)
        return vd_err(VD_EREADONLY, "%s: %s is opened read-only", call, img->filename);
    if (access != VD_ACCESS_SHARED)
        pthread_rwlock_wrlock(&img->lock);
    else
        pthread_rwlock_rdlock(&img->lock);
    if (img->poisoned) {
        pthread_rwlock_unlock(&img->lock);
        return vd_err(VD_EPOISONED, "%s: %s is disabled after an earlier error (%s)", call,
                      img->filename, vd_errname(img->poisoned));
    }
    return 0;
}

int vd_leave(vd_image *img, int rc)
{
    pthread_rwlock_unlock(&img->lock);
    return rc;
}

static int check_range(const vd_image *img, const char *call, uint64_t off, uint64_t len)
{
    uint64_t end;
    if (vd_add_overflows(off, len, &end) || end > img->size)
        return vd_err(VD_ERANGE, "%s: %s: range %llu+%llu is past the end of the image (%llu bytes)",
                      call, img->filename, (unsigned long long)off, (unsigned long long)len,
                      (unsigned long long)img->size);
    return 0;
}

int vd_read(vd_image *img, uint64_t offset, void *buf, size_t length, uint32_t flags)
{
    int rc = vd_enter(img, "vd_read", flags, 0, VD_ACCESS_SHARED);
    if (rc < 0)
        return rc;
    if (!buf && length)
        return vd_leave(img, vd_err(VD_EINVAL, "vd_read: NULL buffer"));
    rc = check_range(img, "vd_read", offset, length);
    if (rc == 0 && length)
        rc = img->backend->read(img, offset, buf, length);
    return vd_leave(img, rc);
}

int vd_write(vd_image *img, uint64_t offset, const void *buf, size_t length, uint32_t flags)
{
    int rc = vd_enter(img, "vd_write", flags, VD_WRITE_FUA | VD_WRITE_COMPRESSED, VD_ACCESS_WRITE);
    if (rc < 0)
        return rc;
    if (!buf && length)
        return vd_leave(img, vd_err(VD_EINVAL, "vd_write: NULL buffer"));
    rc = check_range(img, "vd_write", offset, length);
    if (rc == 0 && (flags & VD_WRITE_COMPRESSED) && !img->cow)
        rc = vd_err(VD_EUNSUPPORTED, "vd_write: %s: a %s image has no compressed clusters",
                    img->filename, img->backend->name);
    if (rc == 0 && length)
        rc = img->backend->write(img, offset, buf, length, flags);
    if (rc == 0)
        vd_image_mark_dirty(img, offset, length);
    if (rc == 0 && length && (flags & VD_WRITE_FUA))
        rc = img->backend->flush ? img->backend->flush(img) : vd_image_sync_now(img);
    return vd_leave(img, rc);
}

int vd_store_cluster(vd_image *img, uint64_t offset, const void *comp, size_t comp_len,
                     const void *plain, size_t plain_len)
{
    int rc = vd_enter(img, "vd_write", 0, 0, VD_ACCESS_WRITE);
    if (rc < 0)
        return rc;
    rc = check_range(img, "vd_write", offset, plain_len);
    if (rc == 0)
        rc = vd_cow_store_cluster(img, offset, comp, comp_len, plain, plain_len);
    if (rc == 0)
        vd_image_mark_dirty(img, offset, plain_len);
    return vd_leave(img, rc);
}

/* Default write_zeroes: the backend's own write of zeroed buffers. */
static int backend_chunk_writer(void *ctx, const void *buf, size_t len, uint64_t off)
{
    vd_image *img = ctx;
    return img->backend->write(img, off, buf, len, 0);
}

int vd_write_zeroes(vd_image *img, uint64_t offset, uint64_t length, uint32_t flags)
{
    int rc = vd_enter(img, "vd_write_zeroes", flags, VD_ZERO_MAY_UNMAP, VD_ACCESS_WRITE);
    if (rc < 0)
        return rc;
    rc = check_range(img, "vd_write_zeroes", offset, length);
    if (rc == 0 && length)
        rc = img->backend->write_zeroes ? img->backend->write_zeroes(img, offset, length, flags)
                                        : vd_write_zero_chunks(backend_chunk_writer, img, offset, length);
    if (rc == 0)
        vd_image_mark_dirty(img, offset, length);
    return vd_leave(img, rc);
}

int vd_discard(vd_image *img, uint64_t offset, uint64_t length, uint32_t flags)
{
    int rc = vd_enter(img, "vd_discard", flags, 0, VD_ACCESS_WRITE);
    if (rc < 0)
        return rc;
    rc = check_range(img, "vd_discard", offset, length);
    if (rc == 0 && length && img->backend->discard)
        rc = img->backend->discard(img, offset, length);
    if (rc == 0)
        vd_image_mark_dirty(img, offset, length);
    return vd_leave(img, rc);
}

int vd_flush(vd_image *img, uint32_t flags)
{
    int rc = vd_enter(img, "vd_flush", flags, 0, VD_ACCESS_EXCLUSIVE);
    if (rc < 0)
        return rc;
    if (!img->read_only)
        rc = img->backend->flush ? img->backend->flush(img) : vd_image_sync_now(img);
    return vd_leave(img, rc);
}

int vd_resize(vd_image *img, uint64_t new_size, uint32_t flags)
{
    int rc = vd_enter(img, "vd_resize", flags, VD_RESIZE_SHRINK, VD_ACCESS_WRITE);
    if (rc < 0)
        return rc;
    if (new_size < img->size && !(flags & VD_RESIZE_SHRINK))
        rc = vd_err(VD_EINVAL, "vd_resize: %s: shrinking from %llu to %llu bytes needs VD_RESIZE_SHRINK",
                    img->filename, (unsigned long long)img->size, (unsigned long long)new_size);
    else if (new_size > INT64_MAX)
        rc = vd_err(VD_ETOOBIG, "vd_resize: %s: size %llu is too large", img->filename,
                    (unsigned long long)new_size);
    else if (!img->backend->resize)
        rc = vd_err(VD_EUNSUPPORTED, "vd_resize: format '%s' cannot be resized",
                    img->backend->name);
    else if (new_size != img->size)
        rc = img->backend->resize(img, new_size, flags);
    if (rc == 0)
        rc = vd_bitmaps_fit_size(img);
    return vd_leave(img, rc);
}

int vd_block_status(vd_image *img, uint64_t offset, uint64_t length,
                    vd_extent *extent, uint32_t flags)
{
    int rc = vd_enter(img, "vd_block_status", flags, 0, VD_ACCESS_SHARED);
    if (rc < 0)
        return rc;
    if (!extent)
        return vd_leave(img, vd_err(VD_EINVAL, "vd_block_status: NULL extent"));
    rc = check_range(img, "vd_block_status", offset, length);
    if (rc == 0 && length == 0)
        rc = vd_err(VD_EINVAL, "vd_block_status: length must not be 0");
    if (rc < 0)
        return vd_leave(img, rc);
    *extent = (vd_extent){ offset, length, VD_EXTENT_DATA | VD_EXTENT_ALLOCATED, 0,
                           VD_NO_HOST_OFFSET };
    if (img->backend->block_status)
        rc = img->backend->block_status(img, offset, length, extent);
    return vd_leave(img, rc);
}
