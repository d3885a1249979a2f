/* Opener selection and the generic helpers layered over struct vd_file_ops. */
#include "core/internal.h"
#include "io/ahead.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static _Atomic(vd_file_opener) current_opener;

void vd_file_set_opener(vd_file_opener opener)
{
    atomic_store(&current_opener, opener);
}

static int open_name(vd_file **out, const struct vd_file_name *name, uint32_t flags)
{
    vd_file_opener opener = atomic_load(&current_opener);
    return (opener ? opener : vd_file_posix_open)(out, name, flags);
}

int vd_file_open(vd_file **out, const char *path, uint32_t flags)
{
    return open_name(out, &(struct vd_file_name){ path, -1, NULL }, flags);
}

int vd_file_open_at(vd_file **out, int dir_fd, const char *leaf, const char *path, uint32_t flags)
{
    return open_name(out, &(struct vd_file_name){ path, dir_fd, leaf }, flags);
}

void vd_file_close(vd_file *f)
{
    if (!f)
        return;
    if (f->ahead)
        vd_file_ahead_end(f);
    f->ops->close(f);
}

int vd_file_get_size(vd_file *f, uint64_t *size)
{
    if (f->ahead) {
        *size = vd_file_ahead_size(f);
        return 0;
    }
    return f->ops->get_size(f, size);
}

int vd_file_truncate(vd_file *f, uint64_t size)
{
    return f->ahead ? vd_file_ahead_truncate(f, size) : f->ops->truncate(f, size);
}

void *vd_io_buf_alloc(size_t len)
{
    void *p;
    return posix_memalign(&p, VD_IO_BUF_ALIGN, len ? len : 1) == 0 ? p : NULL;
}

/* Without vectored operations: one transfer per element. */
static int per_element(vd_file *f, const struct vd_iov *v, uint64_t off, bool write)
{
    struct iovec seg[16];
    for (struct vd_iov rest = *v; rest.len;) {
        size_t bytes;
        int n = vd_iov_export(&rest, seg, 16, &bytes);
        for (int i = 0; i < n; i++) {
            int rc = write ? f->ops->pwrite(f, seg[i].iov_base, seg[i].iov_len, off)
                           : f->ops->pread(f, seg[i].iov_base, seg[i].iov_len, off);
            if (rc < 0)
                return rc;
            off += seg[i].iov_len;
        }
        rest = vd_iov_sub(&rest, bytes, rest.len - bytes);
    }
    return 0;
}

int vd_file_preadv(vd_file *f, const struct vd_iov *v, uint64_t off)
{
    return f->ops->preadv ? f->ops->preadv(f, v, off) : per_element(f, v, off, false);
}

int vd_file_pwritev(vd_file *f, const struct vd_iov *v, uint64_t off)
{
    if (f->ahead)
        vd_file_ahead_note(f, off + v->len);
    return f->ops->pwritev ? f->ops->pwritev(f, v, off) : per_element(f, v, off, true);
}

int vd_file_errno(const vd_file *f, int errnum, const char *what, uint64_t off)
{
    int code;
    switch (errnum) {
    case ENOSPC: case EDQUOT: code = VD_ENOSPC; break;
    case ENOENT: code = VD_ENOENT; break;
    case EACCES: case EPERM: case EROFS: code = VD_EPERM; break;
    case ENOMEM: code = VD_ENOMEM; break;
    case EFBIG: code = VD_ETOOBIG; break;
    case EOPNOTSUPP: code = VD_EUNSUPPORTED; break;
    default: code = VD_EIO; break;
    }
    if (off == UINT64_MAX)
        return vd_err(code, "%s: %s failed: %s", f->path, what, strerror(errnum));
    return vd_err(code, "%s: %s at offset %llu failed: %s", f->path, what,
                  (unsigned long long)off, strerror(errnum));
}

int vd_write_zero_chunks(vd_chunk_writer write, void *ctx, uint64_t off, uint64_t len)
{
    enum { CHUNK = 1 << 20 };
    void *zeroes = calloc(1, CHUNK);
    if (!zeroes)
        return vd_err(VD_ENOMEM, "out of memory allocating a zero buffer");
    int rc = 0;
    while (len && rc == 0) {
        size_t n = len < CHUNK ? (size_t)len : CHUNK;
        rc = write(ctx, zeroes, n, off);
        off += n;
        len -= n;
    }
    free(zeroes);
    return rc;
}

static int file_chunk_writer(void *ctx, const void *buf, size_t len, uint64_t off)
{
    return vd_file_pwrite(ctx, buf, len, off);
}

int vd_file_punch_hole(vd_file *f, uint64_t off, uint64_t len)
{
    if (!f->ops->punch_hole)
        return vd_err(VD_EUNSUPPORTED, "%s: cannot deallocate ranges", f->path);
    return f->ops->punch_hole(f, off, len);
}

int vd_file_discard(vd_file *f, uint64_t off, uint64_t len)
{
    if (f->ops->discard)
        return f->ops->discard(f, off, len);
    return vd_file_punch_hole(f, off, len);
}

int vd_file_write_zeroes(vd_file *f, uint64_t off, uint64_t len, bool may_punch)
{
    if (len == 0)
        return 0;
    if (f->ahead && (len = vd_file_ahead_zeroes(f, off, len)) == 0)
        return 0;
    if (may_punch && f->ops->punch_hole && f->ops->punch_hole(f, off, len) == 0)
        return 0;
    if (f->ops->zero_range && f->ops->zero_range(f, off, len) == 0)
        return 0;
    return vd_write_zero_chunks(file_chunk_writer, f, off, len);
}

int vd_file_allocate(vd_file *f, uint64_t off, uint64_t len)
{
    if (!f->ops->allocate)
        return vd_err(VD_EUNSUPPORTED, "%s: cannot preallocate", f->path);
    if (f->ahead)
        vd_file_ahead_note(f, off + len);
    return f->ops->allocate(f, off, len);
}

int vd_file_extent(vd_file *f, uint64_t off, bool *is_data, uint64_t *end)
{
    if (!f->ops->extent) {
        uint64_t size;
        int rc = vd_file_get_size(f, &size);
        if (rc < 0)
            return rc;
        *is_data = true;
        *end = size;
        return 0;
    }
    int rc = f->ops->extent(f, off, is_data, end);
    uint64_t data = f->ahead ? vd_file_ahead_size(f) : UINT64_MAX;
    if (rc == 0 && off < data && *end > data)
        *end = data;
    return rc;
}

int vd_file_allocated_bytes(vd_file *f, uint64_t *bytes)
{
    if (!f->ops->allocated_bytes)
        return vd_file_get_size(f, bytes);
    int rc = f->ops->allocated_bytes(f, bytes);
    if (rc == 0 && f->ahead) /* the reserve is allocated in full */
        *bytes -= *bytes > vd_file_ahead_reserved(f) ? vd_file_ahead_reserved(f) : *bytes;
    return rc;
}

int vd_file_copy_range(vd_file *f, uint64_t to_off, vd_file *from, uint64_t from_off,
                       uint64_t len)
{
    if (!f->ops->copy_range || from->ops != f->ops)
        return vd_err(VD_EUNSUPPORTED, "%s: cannot copy from %s in the file system",
                      f->path, from->path);
    if (f->ahead)
        vd_file_ahead_note(f, to_off + len);
    return f->ops->copy_range(f, to_off, from, from_off, len);
}

int vd_file_stat_id(vd_file *f, struct stat *st)
{
    if (!f->ops->stat_id)
        return VD_EUNSUPPORTED;
    return f->ops->stat_id(f, st);
}

bool vd_file_same(vd_file *a, vd_file *b)
{
    struct stat sa, sb;
    return vd_file_stat_id(a, &sa) == 0 && vd_file_stat_id(b, &sb) == 0 &&
           sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}
