/*
 * The byte-level file layer. Every format reads and writes its host file
 * through a vd_file; tests swap the POSIX implementation for fault-injecting
 * and crash-simulating layers by installing another opener.
 */
#ifndef VD_IO_FILE_H
#define VD_IO_FILE_H

#ifndef VD_BUILDING_LIBRARY
#error "lib/io/file.h is internal to libvdisk"
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "io/iov.h"

typedef struct vd_file vd_file;

/* vd_file_open() flags */
#define VD_FILE_RDWR    (1u << 0)
/* Create if missing. Never truncates: a file may only be emptied once it is locked. */
#define VD_FILE_CREATE  (1u << 1)
#define VD_FILE_EXCL    (1u << 2) /* with CREATE: fail if present */
/* O_DIRECT; a file system that refuses it fails the open (VD_EUNSUPPORTED) ... */
#define VD_FILE_DIRECT  (1u << 3)
/* ... unless this is given too: then the file is opened without it. */
#define VD_FILE_DIRECT_FALLBACK (1u << 4)

/*
 * The operations a file layer implements. Each returns 0 or a negative VD_E*
 * code and sets the thread-local message; pread/pwrite transfer everything or
 * fail. Optional operations may be NULL (the wrappers below then fall back or
 * report VD_EUNSUPPORTED).
 */
struct vd_file_ops {
    int (*pread)(vd_file *f, void *buf, size_t len, uint64_t off);
    int (*pwrite)(vd_file *f, const void *buf, size_t len, uint64_t off);
    /* Vectored transfers of a view, all or error. Optional: pread/pwrite per element. */
    int (*preadv)(vd_file *f, const struct vd_iov *v, uint64_t off);
    int (*pwritev)(vd_file *f, const struct vd_iov *v, uint64_t off);
    int (*sync)(vd_file *f);
    int (*get_size)(vd_file *f, uint64_t *size);
    int (*truncate)(vd_file *f, uint64_t size);
    /* Deallocate a range; it reads back as zeroes. */
    int (*punch_hole)(vd_file *f, uint64_t off, uint64_t len);
    /* Make a range read as zeroes, keeping it allocated. */
    int (*zero_range)(vd_file *f, uint64_t off, uint64_t len);
    /*
     * Tell the storage a range is no longer needed: a hint, after which it
     * may read back as zeroes or as before. Optional: punch_hole serves
     * where it is missing.
     */
    int (*discard)(vd_file *f, uint64_t off, uint64_t len);
    /* Reserve space for a range (posix_fallocate semantics). */
    int (*allocate)(vd_file *f, uint64_t off, uint64_t len);
    /*
     * Sparse map: from off, report whether the bytes are data or a hole and
     * where that run ends (*end, never past the file size).
     */
    int (*extent)(vd_file *f, uint64_t off, bool *is_data, uint64_t *end);
    /* Bytes the file occupies on the host. */
    int (*allocated_bytes)(vd_file *f, uint64_t *bytes);
    /*
     * One-byte locks, the primitives of QEMU's lock protocol (lib/io/lock.c):
     * lock_byte takes a shared lock on a byte (take) or releases it (!take);
     * byte_locked_elsewhere says whether another open file holds a lock on
     * it. Unlike the other operations they return 0 or a negative errno,
     * which the protocol interprets (EAGAIN or EACCES: a conflict; ENOLCK,
     * EOPNOTSUPP or EINVAL: the file system cannot lock). Optional, both or
     * neither: a layer without them (an in-memory file) shares everything.
     */
    int (*lock_byte)(vd_file *f, uint64_t byte, bool take);
    int (*byte_locked_elsewhere)(vd_file *f, uint64_t byte, bool *locked);
    /*
     * Copy len bytes at from_off of from, a file of the same layer, to
     * to_off of f, all or error, letting the file system share the blocks
     * (a reflink) where it can; VD_EUNSUPPORTED when it cannot copy between
     * the two files at all. Bytes past the end of from are not there to
     * copy: VD_ERANGE. Optional.
     */
    int (*copy_range)(vd_file *f, uint64_t to_off, vd_file *from, uint64_t from_off,
                      uint64_t len);
    /* Device and inode (st_dev, st_ino), to recognise the same file twice. */
    int (*stat_id)(vd_file *f, struct stat *st);
    void (*close)(vd_file *f);
};

struct vd_file_ahead;

struct vd_file {
    const struct vd_file_ops *ops;
    char *path;      /* for messages */
    bool writable;
    struct vd_file_ahead *ahead; /* set by vd_file_grow_ahead(), else NULL */
};

/*
 * A file to open: path as it is, or (dir_fd >= 0) the entry leaf of the open
 * directory dir_fd, never through a symbolic link, which a confined open
 * resolves to (see vd_dir_open_beneath()); path then names the file in
 * messages and for layers that key their files by name.
 */
struct vd_file_name {
    const char *path;
    int dir_fd;       /* -1: open path */
    const char *leaf; /* with dir_fd: one path component, never "." or ".." */
};

/*
 * Opening goes through a replaceable opener so that tests can interpose a
 * layer. vd_file_posix_open is the default.
 */
typedef int (*vd_file_opener)(vd_file **out, const struct vd_file_name *name, uint32_t flags);
int vd_file_posix_open(vd_file **out, const struct vd_file_name *name, uint32_t flags);
/* Install an opener for files opened from now on; NULL restores POSIX. */
void vd_file_set_opener(vd_file_opener opener);

/* Open a file by its path. */
int vd_file_open(vd_file **out, const char *path, uint32_t flags);
/* Open the entry leaf of the directory dir_fd (path in messages), refusing a symbolic link. */
int vd_file_open_at(vd_file **out, int dir_fd, const char *leaf, const char *path, uint32_t flags);

/*
 * Confinement: a name an image records (a backing file, a data file) is
 * resolved inside the directory dir_fd that the image's names are relative
 * to, and opened in the same resolution, so that the file checked is the file
 * read (no second lookup by name that a swapped link could redirect).
 *
 * vd_dir_open_beneath() opens the directory holding name, beneath dir_fd:
 * with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) where the kernel has
 * it, else component by component with O_NOFOLLOW. ".." may be used as long
 * as it stays inside; an absolute name only when a leading part of it is
 * dir_fd itself (the rest is then resolved beneath dir_fd); every symbolic
 * link is refused, even one that points inside. *parent_fd receives the
 * directory (an O_PATH descriptor, the caller closes it) and *leaf the last
 * component of name, for vd_file_open_at(). path names the file in messages.
 * Refusals are VD_EPERM with a message saying why.
 */
int vd_dir_open_beneath(int dir_fd, const char *name, const char *path, int *parent_fd,
                        const char **leaf);
/* Open the directory part of path ("." if it has none), the anchor of its image's names. */
int vd_dir_open_of(const char *path, int *dir_fd);
/* Trims what vd_file_grow_ahead() reserved past the end of the data, then closes. */
void vd_file_close(vd_file *f);

/*
 * Growing ahead (lib/io/ahead.c), QEMU's preallocate filter for any layer.
 * A format that allocates at the end of its file writes each new cluster
 * past the end: the write extends the file, and the cluster's unwritten
 * part must be zeroed first. On ext4 both take the inode lock exclusively
 * (and an O_DIRECT write that extends the file waits for the disk), so
 * allocating writes from several threads ran one at a time. Turned on, a
 * write past the end first reserves the file a step ahead (zero_range
 * past the end, which allocates without writing: an eighth of the end,
 * 1 MiB to 128 MiB, rounded up to 1 MiB); the writes that follow are
 * overwrites of reserved space, and zeroes over reserved space never
 * written are not written at all (it reads as zeroes). The file keeps
 * its own size for its users: get_size, extent and allocated_bytes answer as
 * if nothing were reserved, and closing trims the reserve. A crash leaves
 * it in place, read as zeroes past the data: only for formats to whom bytes
 * past their last structure are free space (struct vd_backend's
 * grows_at_end). Where the layer cannot allocate, or the disk is full, it
 * turns itself off and writes extend the file as before: it is never an
 * error of its own.
 */
int vd_file_grow_ahead(vd_file *f);
/* A write of [off, end) is about to happen: keep the size, reserve ahead if needed. */
void vd_file_ahead_note(vd_file *f, uint64_t end);

static inline int vd_file_pread(vd_file *f, void *buf, size_t len, uint64_t off)
{
    return f->ops->pread(f, buf, len, off);
}
static inline int vd_file_pwrite(vd_file *f, const void *buf, size_t len, uint64_t off)
{
    if (f->ahead)
        vd_file_ahead_note(f, off + len);
    return f->ops->pwrite(f, buf, len, off);
}
/*
 * A buffer for file I/O aligned for O_DIRECT (VD_IO_BUF_ALIGN), so that the
 * library's own transfers need no bounce buffer; release it with free().
 */
#define VD_IO_BUF_ALIGN 4096
void *vd_io_buf_alloc(size_t len);

/* Read or write the bytes of a view at off, in the caller's buffers where the layer can. */
int vd_file_preadv(vd_file *f, const struct vd_iov *v, uint64_t off);
int vd_file_pwritev(vd_file *f, const struct vd_iov *v, uint64_t off);
static inline int vd_file_sync(vd_file *f) { return f->ops->sync(f); }
int vd_file_get_size(vd_file *f, uint64_t *size);
int vd_file_truncate(vd_file *f, uint64_t size);

/* Write zeroes over a range: punch (if allowed), zero_range, or plain writes. */
int vd_file_write_zeroes(vd_file *f, uint64_t off, uint64_t len, bool may_punch);
int vd_file_punch_hole(vd_file *f, uint64_t off, uint64_t len);
/* Discard a range (a hint); VD_EUNSUPPORTED where the file cannot. */
int vd_file_discard(vd_file *f, uint64_t off, uint64_t len);
int vd_file_allocate(vd_file *f, uint64_t off, uint64_t len);
int vd_file_extent(vd_file *f, uint64_t off, bool *is_data, uint64_t *end);
int vd_file_allocated_bytes(vd_file *f, uint64_t *bytes);
/* The copy_range operation: VD_EUNSUPPORTED between layers or in one without it. */
int vd_file_copy_range(vd_file *f, uint64_t to_off, vd_file *from, uint64_t from_off,
                       uint64_t len);
/*
 * Take QEMU's locks for a reader (writer false) or a writer (lib/io/lock.c),
 * failing with VD_ELOCKED if another open file holds conflicting ones.
 */
int vd_file_lock(vd_file *f, bool writer);
/* Fails with VD_EUNSUPPORTED where the layer has no identity to give. */
int vd_file_stat_id(vd_file *f, struct stat *st);
/* Are a and b the same file (device and inode), whatever their names? */
bool vd_file_same(vd_file *a, vd_file *b);

/*
 * Write len zero bytes at off through write(ctx, ...), a bounded buffer at a
 * time: the one fallback for every layer without a cheaper way to zero.
 */
typedef int (*vd_chunk_writer)(void *ctx, const void *buf, size_t len, uint64_t off);
int vd_write_zero_chunks(vd_chunk_writer write, void *ctx, uint64_t off, uint64_t len);

/* Set the message for a failed system call on f and return the VD_E* code. */
int vd_file_errno(const vd_file *f, int errnum, const char *what, uint64_t off);

#endif
