/*
 * The validating front door of the data path: handle, flag, range and state
 * checks, locking, and the defaults for callbacks a backend leaves out.
 */
#include "core/internal.h"
#include "core/bitmap.h"
#include "cow/engine.h"

#include <limits.h>

int vd_enter(vd_image *img, const char *call, uint32_t flags, uint32_t known_flags,
             enum vd_access access)
{
    vd_err_clear();
    if (!img || img->magic != VD_IMAGE_MAGIC)
        return vd_err(VD_EINVAL, "%s: invalid image handle", call);
    if (flags & ~known_flags)
        return vd_err(VD_EINVAL, "%s: unknown flags 0x%x", call, flags & ~known_flags);
    bool writes = access == VD_ACCESS_WRITE || access == VD_ACCESS_DATA_WRITE;
    if (writes && img->read_only)
        return vd_err(VD_EREADONLY, "%s: %s is opened read-only", call, img->filename);
    if (access == VD_ACCESS_SHARED || access == VD_ACCESS_DATA_WRITE)
        pthread_rwlock_rdlock(&img->lock);
    else
        pthread_rwlock_wrlock(&img->lock);
    int poisoned = vd_image_poisoned(img);
    if (poisoned) {
        pthread_rwlock_unlock(&img->lock);
        return vd_err(VD_EPOISONED, "%s: %s is disabled after an earlier error (%s)", call,
                      img->filename, vd_errname(poisoned));
    }
    return 0;
}

int vd_leave(vd_image *img, int rc)
{
    pthread_rwlock_unlock(&img->lock);
    return rc;
}

/*
 * Register a data-path request on [off, off+len) so that overlapping ones
 * take turns (core/inflight.h), at the granule of the format's cluster map:
 * two writes into one cluster, or a read beside the copy-on-write of its
 * cluster, never interleave. A format without a cluster map (raw) is tracked
 * by sectors: nothing there needs protecting but the promise that a read
 * sees all of an overlapping write or none of it (the file system does not
 * make that promise between pread and pwrite).
 */
static bool track_begin(vd_image *img, struct vd_inflight_req *req, uint64_t off, uint64_t len,
                        bool exclusive)
{
    if (!len)
        return false;
    vd_inflight_begin(&img->inflight, req, off, len,
                      img->cluster_size ? img->cluster_size : 512, exclusive);
    return true;
}

static void track_end(vd_image *img, struct vd_inflight_req *req, bool tracked)
{
    if (tracked)
        vd_inflight_end(&img->inflight, req);
}

/*
 * Make a FUA write durable while other requests run: the backend's flush
 * with the metadata lock held alone, so that no allocation or mapping
 * changes under it; data writes of other requests go on beside it.
 */
static int flush_for_fua(vd_image *img)
{
    pthread_rwlock_wrlock(&img->meta_lock);
    int rc = img->backend->flush ? img->backend->flush(img) : vd_image_sync_now(img);
    pthread_rwlock_unlock(&img->meta_lock);
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

/* A caller's iovec array as a view, checked: every element has a buffer, the total fits. */
static int view_of(const char *call, const struct iovec *iov, int iovcnt, struct vd_iov *v)
{
    if (iovcnt < 0 || iovcnt > IOV_MAX)
        return vd_err(VD_EINVAL, "%s: iovcnt %d is outside 0..%d", call, iovcnt, IOV_MAX);
    if (!iov && iovcnt)
        return vd_err(VD_EINVAL, "%s: NULL iovec array", call);
    *v = (struct vd_iov){ iov, iovcnt, 0, 0 };
    for (int i = 0; i < iovcnt; i++) {
        if (!iov[i].iov_base && iov[i].iov_len)
            return vd_err(VD_EINVAL, "%s: NULL buffer", call);
        if (__builtin_add_overflow(v->len, iov[i].iov_len, &v->len))
            return vd_err(VD_EINVAL, "%s: the iovec lengths overflow", call);
    }
    return 0;
}

/* Writes on a handle opened with VD_OPEN_WRITETHROUGH are all FUA (qemu's cache=writethrough). */
static bool wants_fua(const vd_image *img, uint32_t flags)
{
    return (flags & VD_WRITE_FUA) || (img->open_flags & VD_OPEN_WRITETHROUGH);
}

/* vd_read() and vd_preadv(). */
static int read_iov(vd_image *img, const char *call, uint64_t offset, const struct iovec *iov,
                    int iovcnt, uint32_t flags)
{
    int rc = vd_enter(img, call, flags, 0, VD_ACCESS_SHARED);
    if (rc < 0)
        return rc;
    struct vd_iov v;
    rc = view_of(call, iov, iovcnt, &v);
    if (rc == 0)
        rc = check_range(img, call, offset, v.len);
    if (rc == 0 && v.len) {
        struct vd_inflight_req req;
        bool tracked = track_begin(img, &req, offset, v.len, false);
        rc = img->backend->read(img, offset, &v);
        track_end(img, &req, tracked);
    }
    return vd_leave(img, rc);
}

/* vd_write() and vd_pwritev(). */
static int write_iov(vd_image *img, const char *call, uint64_t offset, const struct iovec *iov,
                     int iovcnt, uint32_t flags)
{
    int rc = vd_enter(img, call, flags, VD_WRITE_FUA | VD_WRITE_COMPRESSED, VD_ACCESS_DATA_WRITE);
    if (rc < 0)
        return rc;
    struct vd_iov v;
    rc = view_of(call, iov, iovcnt, &v);
    if (rc == 0)
        rc = check_range(img, call, offset, v.len);
    if (rc == 0 && (flags & VD_WRITE_COMPRESSED) && !img->cow)
        rc = vd_err(VD_EUNSUPPORTED, "%s: %s: a %s image has no compressed clusters", call,
                    img->filename, img->backend->name);
    if (rc == 0 && v.len) {
        struct vd_inflight_req req;
        bool tracked = track_begin(img, &req, offset, v.len, true);
        rc = img->backend->write(img, offset, &v, flags);
        track_end(img, &req, tracked);
    }
    if (rc == 0)
        vd_image_mark_dirty(img, offset, v.len);
    if (rc == 0 && v.len && wants_fua(img, flags))
        rc = flush_for_fua(img);
    return vd_leave(img, rc);
}

int vd_read(vd_image *img, uint64_t offset, void *buf, size_t length, uint32_t flags)
{
    struct iovec one = { buf, length };
    return read_iov(img, "vd_read", offset, &one, 1, flags);
}

int vd_write(vd_image *img, uint64_t offset, const void *buf, size_t length, uint32_t flags)
{
    struct iovec one = { (void *)buf, length };
    return write_iov(img, "vd_write", offset, &one, 1, flags);
}

int vd_preadv(vd_image *img, uint64_t offset, const struct iovec *iov, int iovcnt,
              uint32_t flags)
{
    return read_iov(img, "vd_preadv", offset, iov, iovcnt, flags);
}

int vd_pwritev(vd_image *img, uint64_t offset, const struct iovec *iov, int iovcnt,
               uint32_t flags)
{
    return write_iov(img, "vd_pwritev", offset, iov, iovcnt, flags);
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
    return vd_backend_write(ctx, off, buf, len, 0);
}

int vd_write_zeroes(vd_image *img, uint64_t offset, uint64_t length, uint32_t flags)
{
    int rc = vd_enter(img, "vd_write_zeroes", flags, VD_ZERO_MAY_UNMAP, VD_ACCESS_DATA_WRITE);
    if (rc < 0)
        return rc;
    rc = check_range(img, "vd_write_zeroes", offset, length);
    if (rc == 0 && length) {
        struct vd_inflight_req req;
        bool tracked = track_begin(img, &req, offset, length, true);
        rc = img->backend->write_zeroes ? img->backend->write_zeroes(img, offset, length, flags)
                                        : vd_write_zero_chunks(backend_chunk_writer, img, offset, length);
        track_end(img, &req, tracked);
    }
    if (rc == 0)
        vd_image_mark_dirty(img, offset, length);
    if (rc == 0 && length && wants_fua(img, 0))
        rc = flush_for_fua(img);
    return vd_leave(img, rc);
}

int vd_discard(vd_image *img, uint64_t offset, uint64_t length, uint32_t flags)
{
    int rc = vd_enter(img, "vd_discard", flags, 0, VD_ACCESS_DATA_WRITE);
    if (rc < 0)
        return rc;
    rc = check_range(img, "vd_discard", offset, length);
    if (rc == 0 && length && img->backend->discard) {
        struct vd_inflight_req req;
        bool tracked = track_begin(img, &req, offset, length, true);
        rc = img->backend->discard(img, offset, length);
        track_end(img, &req, tracked);
    }
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
