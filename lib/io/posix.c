/*
 * The POSIX file layer: preadv/pwritev/fdatasync/fallocate/SEEK_DATA on
 * regular files, and block devices as raw images of the device's size.
 * Opened with VD_FILE_DIRECT, a file bypasses the page cache (O_DIRECT) and
 * serves transfers that are not aligned as the file system requires through
 * an aligned bounce buffer.
 */
#include "core/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

struct posix_file {
    vd_file base;
    int fd;
    uint64_t block_size; /* a block device's logical block size, the unit of a discard (else 0) */
    /* O_DIRECT: the alignment of buffers, offsets and lengths it needs; 0 without O_DIRECT. */
    size_t dio_align;
    /*
     * O_DIRECT: aligned writes hold it shared; the read-modify-write of a
     * partly written block holds it alone, so that no concurrent write to
     * that block is lost between its read and its write back.
     */
    pthread_rwlock_t rmw;
};

static int fd_of(vd_file *f)
{
    return ((struct posix_file *)f)->fd;
}

static int past_end(vd_file *f, uint64_t off)
{
    return vd_err(VD_EIO, "%s: read at offset %llu is past the end of the file", f->path,
                  (unsigned long long)off);
}

/* preadv/pwritev of the whole view, looping on short transfers and EINTR. */
static int transfer(vd_file *f, const struct vd_iov *v, uint64_t off, bool write)
{
    struct iovec seg[64];
    for (struct vd_iov rest = *v; rest.len;) {
        size_t bytes;
        int cnt = vd_iov_export(&rest, seg, 64, &bytes);
        ssize_t n = write ? pwritev(fd_of(f), seg, cnt, (off_t)off)
                          : preadv(fd_of(f), seg, cnt, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return vd_file_errno(f, errno, write ? "write" : "read", off);
        if (n == 0 && !write) /* past the end of the file: a sparse tail reads as zeroes */
            return past_end(f, off);
        rest = vd_iov_sub(&rest, (size_t)n, rest.len - (size_t)n);
        off += (uint64_t)n;
    }
    return 0;
}

/* Whether O_DIRECT can take this transfer as it is. */
static bool direct_ok(const struct posix_file *pf, const struct vd_iov *v, uint64_t off)
{
    return !((off | v->len) & (pf->dio_align - 1)) && vd_iov_aligned(v, pf->dio_align);
}

/*
 * Read [start, start + len) (aligned) into buf, of which at least need bytes
 * must exist in the file: the last block may end with the file.
 */
static int read_blocks(vd_file *f, uint8_t *buf, size_t len, uint64_t start, size_t need)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd_of(f), buf + got, len - got, (off_t)(start + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return vd_file_errno(f, errno, "read", start + got);
        if (n == 0)
            break;
        got += (size_t)n;
    }
    if (got < need)
        return past_end(f, start + got);
    memset(buf + got, 0, len - got);
    return 0;
}

/* The aligned blocks covering [off, off + len), in a buffer of the library's own. */
struct bounce {
    uint64_t start;
    size_t len;
    uint8_t *buf;
};

static int bounce_for(vd_file *f, size_t align, uint64_t off, size_t len, struct bounce *b)
{
    b->start = off & ~(uint64_t)(align - 1);
    uint64_t end = (off + len + align - 1) & ~(uint64_t)(align - 1);
    b->len = (size_t)(end - b->start);
    b->buf = vd_io_buf_alloc(b->len);
    return b->buf ? 0 : vd_err(VD_ENOMEM, "%s: out of memory for an O_DIRECT bounce buffer",
                               f->path);
}

static int bounce_read(struct posix_file *pf, const struct vd_iov *v, uint64_t off)
{
    vd_file *f = &pf->base;
    struct bounce b;
    int rc = bounce_for(f, pf->dio_align, off, v->len, &b);
    if (rc == 0)
        rc = read_blocks(f, b.buf, b.len, b.start, (size_t)(off - b.start) + v->len);
    if (rc == 0)
        vd_iov_from_buf(v, b.buf + (off - b.start));
    free(b.buf);
    return rc;
}

/*
 * A write O_DIRECT cannot take as it is. Aligned in the file (only the
 * buffers are not): copy and write. Otherwise read-modify-write the blocks
 * at either end, alone on the file, and cut the file back if the last
 * block reached past both its old end and the write's.
 */
static int bounce_write(struct posix_file *pf, const struct vd_iov *v, uint64_t off)
{
    vd_file *f = &pf->base;
    size_t align = pf->dio_align;
    bool rmw = ((off | v->len) & (align - 1)) != 0;
    struct bounce b;
    int rc = bounce_for(f, align, off, v->len, &b);
    if (rc < 0)
        return rc;
    rmw ? pthread_rwlock_wrlock(&pf->rmw) : pthread_rwlock_rdlock(&pf->rmw);
    uint64_t old_size = 0;
    uint64_t end = off + v->len;
    if (rmw && (rc = f->ops->get_size(f, &old_size)) == 0) {
        if (off > b.start)
            rc = read_blocks(f, b.buf, align, b.start, 0);
        if (rc == 0 && (end & (align - 1)) && (b.len > align || off == b.start))
            rc = read_blocks(f, b.buf + b.len - align, align, b.start + b.len - align, 0);
    }
    struct iovec one;
    struct vd_iov blocks = vd_iov_flat(&one, b.buf, b.len);
    if (rc == 0) {
        vd_iov_to_buf(v, b.buf + (off - b.start));
        rc = transfer(f, &blocks, b.start, true);
    }
    /* a device's size is a multiple of its blocks: only a regular file can have grown */
    uint64_t keep = old_size > end ? old_size : end;
    if (rc == 0 && rmw && !pf->block_size && b.start + b.len > keep &&
        ftruncate(fd_of(f), (off_t)keep) < 0)
        rc = vd_file_errno(f, errno, "truncate", keep);
    pthread_rwlock_unlock(&pf->rmw);
    free(b.buf);
    return rc;
}

static int posix_preadv(vd_file *f, const struct vd_iov *v, uint64_t off)
{
    struct posix_file *pf = (struct posix_file *)f;
    if (pf->dio_align && !direct_ok(pf, v, off))
        return bounce_read(pf, v, off);
    return transfer(f, v, off, false);
}

static int posix_pwritev(vd_file *f, const struct vd_iov *v, uint64_t off)
{
    struct posix_file *pf = (struct posix_file *)f;
    if (!pf->dio_align)
        return transfer(f, v, off, true);
    if (!direct_ok(pf, v, off))
        return bounce_write(pf, v, off);
    pthread_rwlock_rdlock(&pf->rmw);
    int rc = transfer(f, v, off, true);
    pthread_rwlock_unlock(&pf->rmw);
    return rc;
}

static int posix_pread(vd_file *f, void *buf, size_t len, uint64_t off)
{
    struct iovec one;
    struct vd_iov v = vd_iov_flat(&one, buf, len);
    return posix_preadv(f, &v, off);
}

static int posix_pwrite(vd_file *f, const void *buf, size_t len, uint64_t off)
{
    struct iovec one;
    struct vd_iov v = vd_iov_flat(&one, buf, len);
    return posix_pwritev(f, &v, off);
}

static int posix_sync(vd_file *f)
{
    if (fdatasync(fd_of(f)) < 0)
        return vd_file_errno(f, errno, "flush", UINT64_MAX);
    return 0;
}

static int posix_get_size(vd_file *f, uint64_t *size)
{
    struct stat st;
    if (fstat(fd_of(f), &st) < 0)
        return vd_file_errno(f, errno, "stat", UINT64_MAX);
    *size = (uint64_t)st.st_size;
    return 0;
}

static int posix_truncate(vd_file *f, uint64_t size)
{
    if (size > INT64_MAX)
        return vd_err(VD_ETOOBIG, "%s: size %llu is too large", f->path, (unsigned long long)size);
    if (ftruncate(fd_of(f), (off_t)size) < 0)
        return vd_file_errno(f, errno, "truncate", size);
    return 0;
}

static int posix_fallocate_mode(vd_file *f, int mode, uint64_t off, uint64_t len,
                                const char *what)
{
    int r;
    do {
        r = fallocate(fd_of(f), mode, (off_t)off, (off_t)len);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return vd_file_errno(f, errno, what, off);
    return 0;
}

static int posix_punch_hole(vd_file *f, uint64_t off, uint64_t len)
{
    return posix_fallocate_mode(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len,
                                "deallocate");
}

static int posix_zero_range(vd_file *f, uint64_t off, uint64_t len)
{
    return posix_fallocate_mode(f, FALLOC_FL_ZERO_RANGE, off, len, "zero range");
}

static int posix_allocate(vd_file *f, uint64_t off, uint64_t len)
{
    int r = posix_fallocate(fd_of(f), (off_t)off, (off_t)len);
    if (r != 0)
        return vd_file_errno(f, r, "preallocate", off);
    return 0;
}

static int posix_extent(vd_file *f, uint64_t off, bool *is_data, uint64_t *end)
{
    uint64_t size;
    int rc = posix_get_size(f, &size);
    if (rc < 0)
        return rc;
    if (off >= size) {
        *is_data = false;
        *end = off;
        return 0;
    }
    off_t data = lseek(fd_of(f), (off_t)off, SEEK_DATA);
    if (data < 0 && errno == ENXIO) { /* only a hole up to the end */
        *is_data = false;
        *end = size;
        return 0;
    }
    if (data < 0) { /* no SEEK_DATA support: everything is data */
        *is_data = true;
        *end = size;
        return 0;
    }
    if ((uint64_t)data > off) {
        *is_data = false;
        *end = (uint64_t)data;
        return 0;
    }
    off_t hole = lseek(fd_of(f), (off_t)off, SEEK_HOLE);
    *is_data = true;
    *end = hole < 0 ? size : (uint64_t)hole;
    return 0;
}

static int posix_allocated_bytes(vd_file *f, uint64_t *bytes)
{
    struct stat st;
    if (fstat(fd_of(f), &st) < 0)
        return vd_file_errno(f, errno, "stat", UINT64_MAX);
    *bytes = (uint64_t)st.st_blocks * 512;
    return 0;
}

/* copy_file_range(2): a reflink where the file system has them, else a copy in the kernel. */
static int posix_copy_range(vd_file *f, uint64_t to_off, vd_file *from, uint64_t from_off,
                            uint64_t len)
{
    loff_t in = (loff_t)from_off, out = (loff_t)to_off;
    while (len) {
        ssize_t n = copy_file_range(fd_of(from), &in, fd_of(f), &out, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        /* EXDEV across file systems (before 5.3), ENOSYS, EOPNOTSUPP, EINVAL: no such copy */
        if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP ||
                      errno == EINVAL))
            return vd_err(VD_EUNSUPPORTED, "%s: copy_file_range from %s: %s", f->path,
                          from->path, strerror(errno));
        if (n < 0)
            return vd_file_errno(f, errno, "copy_file_range", (uint64_t)out);
        if (n == 0)
            return vd_err(VD_ERANGE, "%s: copy_file_range: %s ends at offset %llu", f->path,
                          from->path, (unsigned long long)in);
        len -= (uint64_t)n;
    }
    return 0;
}

static int posix_stat_id(vd_file *f, struct stat *st)
{
    if (fstat(fd_of(f), st) < 0)
        return vd_file_errno(f, errno, "stat", UINT64_MAX);
    return 0;
}

/* Open-file-description locks, as QEMU takes them: per open, not per process. */
static int posix_lock_byte(vd_file *f, uint64_t byte, bool take)
{
    struct flock fl = { .l_type = take ? F_RDLCK : F_UNLCK, .l_whence = SEEK_SET,
                        .l_start = (off_t)byte, .l_len = 1 };
    return fcntl(fd_of(f), F_OFD_SETLK, &fl) == 0 ? 0 : -errno;
}

static int posix_byte_locked_elsewhere(vd_file *f, uint64_t byte, bool *locked)
{
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = (off_t)byte, .l_len = 1 };
    if (fcntl(fd_of(f), F_OFD_GETLK, &fl) < 0)
        return -errno;
    *locked = fl.l_type != F_UNLCK;
    return 0;
}

static void posix_close(vd_file *f)
{
    struct posix_file *pf = (struct posix_file *)f;
    close(pf->fd);
    free(pf->base.path);
    pthread_rwlock_destroy(&pf->rmw);
    free(pf);
}

/*
 * Block devices. The size comes from the driver (st_size is 0), the device
 * keeps it (no truncation), every byte of it is data (no holes, no
 * preallocation to do), and zeroes and discards are the device's own
 * operations, which never deallocate anything a file system would have to
 * know about.
 */
static int device_get_size(vd_file *f, uint64_t *size)
{
    if (ioctl(fd_of(f), BLKGETSIZE64, size) < 0)
        return vd_file_errno(f, errno, "reading the device size", UINT64_MAX);
    return 0;
}

/* Only the device's own size can be set: that is creating a raw image on it. */
static int device_truncate(vd_file *f, uint64_t size)
{
    uint64_t device_size;
    int rc = device_get_size(f, &device_size);
    if (rc == 0 && size != device_size)
        rc = vd_err(VD_EUNSUPPORTED, "%s: a block device cannot be resized (it has %llu bytes, "
                    "not %llu)", f->path, (unsigned long long)device_size,
                    (unsigned long long)size);
    return rc;
}

/* The device writes the zeroes itself (WRITE ZEROES, or the kernel's own fallback). */
static int device_zero_range(vd_file *f, uint64_t off, uint64_t len)
{
    uint64_t range[2] = { off, len };
    if (ioctl(fd_of(f), BLKZEROOUT, range) < 0)
        return vd_file_errno(f, errno, "zero range", off);
    return 0;
}

/* A hint: the device may read the range back as zeroes or as before. */
static int device_discard(vd_file *f, uint64_t off, uint64_t len)
{
    /* the device discards whole logical blocks: keep to those inside the range */
    uint64_t block = ((struct posix_file *)f)->block_size;
    uint64_t start = (off + block - 1) / block * block;
    uint64_t end = (off + len) / block * block;
    if (end <= start)
        return 0;
    uint64_t range[2] = { start, end - start };
    if (ioctl(fd_of(f), BLKDISCARD, range) < 0)
        return vd_file_errno(f, errno, "discard", start);
    return 0;
}

/* The whole device is there already: reserving space inside it has nothing to do. */
static int device_allocate(vd_file *f, uint64_t off, uint64_t len)
{
    uint64_t size;
    int rc = device_get_size(f, &size);
    if (rc == 0 && (off > size || len > size - off))
        rc = vd_err(VD_ENOSPC, "%s: cannot preallocate past the end of the block device "
                    "(%llu bytes)", f->path, (unsigned long long)size);
    return rc;
}

static const struct vd_file_ops posix_ops = {
    .pread = posix_pread,
    .pwrite = posix_pwrite,
    .preadv = posix_preadv,
    .pwritev = posix_pwritev,
    .sync = posix_sync,
    .get_size = posix_get_size,
    .truncate = posix_truncate,
    .punch_hole = posix_punch_hole,
    .zero_range = posix_zero_range,
    .allocate = posix_allocate,
    .extent = posix_extent,
    .allocated_bytes = posix_allocated_bytes,
    .copy_range = posix_copy_range,
    .stat_id = posix_stat_id,
    .lock_byte = posix_lock_byte,
    .byte_locked_elsewhere = posix_byte_locked_elsewhere,
    .close = posix_close,
};

/*
 * No punch_hole (nothing to deallocate: a write of zeroes that may unmap
 * zeroes through the device), and no extent or allocated_bytes: the defaults
 * in file.c make a file without them data from start to end.
 */
static const struct vd_file_ops device_ops = {
    .pread = posix_pread,
    .pwrite = posix_pwrite,
    .preadv = posix_preadv,
    .pwritev = posix_pwritev,
    .sync = posix_sync,
    .get_size = device_get_size,
    .truncate = device_truncate,
    .zero_range = device_zero_range,
    .discard = device_discard,
    .allocate = device_allocate,
    .stat_id = posix_stat_id,
    .lock_byte = posix_lock_byte,
    .byte_locked_elsewhere = posix_byte_locked_elsewhere,
    .close = posix_close,
};

/*
 * The operations for a file of this type, or NULL (and *kind says what it
 * is) for the types whose size cannot be known: a character device, a FIFO
 * or a socket would read as an empty image, or as an endless one, and a
 * backup of it would silently hold nothing.
 */
static const struct vd_file_ops *ops_for_type(mode_t mode, const char **kind)
{
    if (S_ISREG(mode))
        return &posix_ops;
    if (S_ISBLK(mode))
        return &device_ops;
    *kind = S_ISCHR(mode) ? "a character device" : S_ISFIFO(mode) ? "a FIFO"
          : S_ISSOCK(mode) ? "a socket" : S_ISDIR(mode) ? "a directory" : "a special file";
    return NULL;
}

/*
 * The alignment O_DIRECT needs on fd: what statx reports where the kernel
 * tells (0: the file system cannot do direct I/O on it), else a device's
 * logical block size, else 4096, which every file system accepts.
 */
static size_t direct_alignment(int fd, int block_size)
{
#ifdef STATX_DIOALIGN
    struct statx sx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN)) {
        if (!sx.stx_dio_offset_align)
            return 0;
        return sx.stx_dio_mem_align > sx.stx_dio_offset_align ? sx.stx_dio_mem_align
                                                                : sx.stx_dio_offset_align;
    }
#endif
    return block_size > 0 ? (size_t)block_size : 4096;
}

/*
 * Turn on O_DIRECT (VD_FILE_DIRECT) and learn its alignment into *align.
 * Where the file system refuses it, fail naming the file, or with
 * VD_FILE_DIRECT_FALLBACK go on without it (*align 0).
 */
static int enable_direct(int fd, const char *path, uint32_t flags, int block_size, size_t *align)
{
    *align = direct_alignment(fd, block_size);
    if (*align && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_DIRECT) == 0)
        return 0;
    *align = 0;
    if (flags & VD_FILE_DIRECT_FALLBACK)
        return 0;
    return vd_err(VD_EUNSUPPORTED, "Could not open '%s': the file system does not support "
                  "O_DIRECT (cache mode 'none' or 'directsync'); use another cache mode, or "
                  "allow opening without O_DIRECT", path);
}

int vd_file_posix_open(vd_file **out, const struct vd_file_name *name, uint32_t flags)
{
    const char *path = name->path;
    /* non-blocking so that a FIFO named by a hostile image cannot hang the open */
    int oflags = O_CLOEXEC | O_NONBLOCK | ((flags & VD_FILE_RDWR) ? O_RDWR : O_RDONLY);
    if (flags & VD_FILE_CREATE)
        oflags |= O_CREAT | ((flags & VD_FILE_EXCL) ? O_EXCL : 0);
    int fd = name->dir_fd < 0 ? open(path, oflags, 0644)
                              : openat(name->dir_fd, name->leaf, oflags | O_NOFOLLOW, 0644);
    if (fd < 0) {
        int e = errno;
        if (name->dir_fd >= 0 && e == ELOOP)
            return vd_err(VD_EPERM, "Could not open '%s': it is a symbolic link, which a "
                          "confined open does not follow (it could lead outside the image's "
                          "directory)", path);
        int code = e == ENOENT ? VD_ENOENT : e == EEXIST ? VD_EEXIST
                 : (e == EACCES || e == EPERM || e == EROFS) ? VD_EPERM : VD_EIO;
        return vd_err(code, "Could not open '%s': %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return vd_err(VD_EIO, "Could not open '%s': %s", path, strerror(e));
    }
    const char *kind;
    const struct vd_file_ops *ops = ops_for_type(st.st_mode, &kind);
    if (!ops) {
        close(fd);
        return vd_err(VD_EINVAL, "Could not open '%s': it is %s; an image must be a regular "
                      "file or a block device, whose size can be known", path, kind);
    }
    int block_size = 0;
    if (S_ISBLK(st.st_mode) && ioctl(fd, BLKSSZGET, &block_size) < 0) {
        int e = errno;
        close(fd);
        return vd_err(VD_EIO, "Could not open '%s': reading its block size failed: %s", path,
                      strerror(e));
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    size_t dio_align = 0;
    int rc = (flags & VD_FILE_DIRECT) ? enable_direct(fd, path, flags, block_size, &dio_align) : 0;
    if (rc < 0) {
        close(fd);
        return rc;
    }
    struct posix_file *pf = calloc(1, sizeof *pf);
    char *copy = strdup(path);
    if (!pf || !copy) {
        free(pf);
        free(copy);
        close(fd);
        return vd_err(VD_ENOMEM, "%s: out of memory", path);
    }
    pf->base.ops = ops;
    pf->base.path = copy;
    pf->base.writable = (flags & VD_FILE_RDWR) != 0;
    pf->fd = fd;
    pf->block_size = (uint64_t)block_size;
    pf->dio_align = dio_align;
    pthread_rwlock_init(&pf->rmw, NULL);
    *out = &pf->base;
    return 0;
}
