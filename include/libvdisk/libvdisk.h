/*
 * libvdisk — virtual disk image library, public C API.
 *
 * Conventions
 *   - Every fallible call returns 0 on success or a negative VD_E* code.
 *     vd_errmsg() then gives a thread-local message naming the file and the
 *     problem; it is set even when vd_open() fails.
 *   - Out-parameters come first; every data-path call takes a flags argument
 *     (pass 0 when no flag applies; unknown bits are rejected with VD_EINVAL).
 *   - I/O is all-or-error: there are no short reads or writes.
 *   - Offsets and lengths are 64-bit byte counts.
 *
 * Thread safety
 *   One vd_image may be used from several threads at once. Reads, writes,
 *   write-zeroes, discards and allocation-status queries run in parallel; a
 *   request waits only for overlapping ones (at cluster granularity, or
 *   sectors for raw), so each read sees all of an overlapping write or none
 *   of it, and overlapping writes apply one after the other. A write with
 *   VD_WRITE_FUA is durable when it returns, other writes going on beside
 *   it. Flushes, resizes, snapshots, checks, rebase, commit and amend take
 *   the handle alone. vd_close() must not race with any other call on the
 *   same handle. Distinct handles are fully independent.
 *
 * Errors that leave metadata in doubt (a failed metadata write, detected
 * corruption) poison the handle: every later call except vd_close() fails
 * with VD_EPOISONED. Data acknowledged by a completed vd_flush() is never lost.
 *
 * Locks: an open image (and its external data file) holds the same
 * byte-range locks as QEMU (readers coexist; a writer excludes other readers
 * and writers, in any process, QEMU included). A conflict fails with
 * VD_ELOCKED. Where the file system cannot lock (ENOLCK, EOPNOTSUPP), the
 * open fails with VD_EUNSUPPORTED, as in QEMU, rather than go on unprotected;
 * VD_OPEN_NO_LOCK skips locking altogether. vd_create() takes the writer's
 * lock before it empties a file.
 *
 * ABI: libvdisk.so.1. Structures that may grow carry a size or version field
 * as their first member and only ever grow at the end.
 */
#ifndef LIBVDISK_LIBVDISK_H
#define LIBVDISK_LIBVDISK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <libvdisk/version.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && __GNUC__ >= 4
#define VD_API __attribute__((visibility("default")))
#else
#define VD_API
#endif

/* ------------------------------------------------------------------ errors */

/*
 * The error table: X(NAME, value, description). Values are part of the ABI
 * and never change; new codes are appended with new values.
 */
#define VD_ERROR_TABLE(X)                                                     \
    X(OK,          0, "success")                                              \
    X(EINVAL,     -1, "invalid argument")                                     \
    X(ENOMEM,     -2, "out of memory")                                        \
    X(EIO,        -3, "input/output error")                                   \
    X(ENOENT,     -4, "no such file or object")                               \
    X(EFORMAT,    -5, "unknown or invalid image format")                      \
    X(ECORRUPT,   -6, "image is corrupt")                                     \
    X(EUNSUPPORTED, -7, "operation or feature not supported")                 \
    X(EREADONLY,  -8, "image is opened read-only")                            \
    X(ERANGE,     -9, "offset or length out of range")                        \
    X(EPOISONED, -10, "handle disabled after an earlier fatal error")         \
    X(ENOSPC,    -11, "no space left on device")                              \
    X(ELOCKED,   -12, "image is locked by another process")                   \
    X(EPERM,     -13, "operation not permitted")                              \
    X(EEXIST,    -14, "file or object already exists")                        \
    X(EBACKING,  -15, "backing chain error")                                  \
    X(EBUSY,     -16, "resource busy")                                        \
    X(ETOOBIG,   -17, "size exceeds a format or safety limit")                \
    X(EKEY,      -18, "missing or wrong encryption key")                      \
    X(ECANCELED, -19, "operation cancelled") /* added with vd_convert() */

#define VD_ERROR_ENUM_ENTRY_(name, value, text) VD_##name = value,
typedef enum vd_error { VD_ERROR_TABLE(VD_ERROR_ENUM_ENTRY_) VD_ERROR_END_ = -1000 } vd_error;
#undef VD_ERROR_ENUM_ENTRY_

/* A static description of an error code ("invalid argument"). */
VD_API const char *vd_strerror(int err);
/* The symbolic name of an error code ("VD_EINVAL"), or "VD_E?" if unknown. */
VD_API const char *vd_errname(int err);
/* The calling thread's last detailed error message ("" if none). */
VD_API const char *vd_errmsg(void);

/* ----------------------------------------------------------------- version */

/* The runtime version string, "MAJOR.MINOR.PATCH". */
VD_API const char *vd_version(void);
/* The runtime version as VD_VERSION_NUMBER computes it. */
VD_API unsigned vd_version_number(void);

/* ------------------------------------------------------------ open / close */

/* An open image and its backing chain: an opaque handle, owned by the caller until vd_close(). */
typedef struct vd_image vd_image;

/* vd_open() flags */
/*
 * Read-write; default is read-only. A qcow2, qcow or sparse VMDK image
 * opened so grows its file ahead of its writes (up to an eighth of it,
 * 128 MiB at most, read as zeroes): its size and map never show that
 * reserve, and vd_close() trims it; a process that dies without closing
 * leaves it in place, as free space.
 */
#define VD_OPEN_RDWR        (1u << 0)
#define VD_OPEN_NO_BACKING  (1u << 1) /* open only this image, not its backing chain */
/*
 * Take no file locks (qemu-img -U): to inspect an image another process
 * uses (what is read may be inconsistent), or on a file system that cannot
 * lock, when the caller knows that nothing else uses the image.
 */
#define VD_OPEN_NO_LOCK     (1u << 2)
/*
 * Refuse any file an image names (backing file, external data file) outside
 * that image's directory. The name is resolved and opened in one step beneath
 * the directory (openat2 with RESOLVE_BENEATH, or component by component with
 * O_NOFOLLOW), so a link swapped meanwhile cannot redirect the open: ".." may
 * not climb out, an absolute name must lead into the directory, and symbolic
 * links are never followed, not even ones that point inside. Each image of a
 * chain confines the names it records to its own directory. Refusals fail
 * with VD_EPERM. Rebase and commit on such a handle are confined too.
 */
#define VD_OPEN_CONFINED    (1u << 3)
#define VD_OPEN_UNSAFE_RAW  (1u << 4) /* allow writes that would turn a probed raw image into another format */
#define VD_OPEN_REPAIR      (1u << 5) /* with RDWR: open an image marked corrupt, for vd_check() repairs only */
/*
 * Never sync to stable storage, like qemu's cache=unsafe: vd_flush() and
 * vd_close() still write every cache out, but a host crash may lose or tear
 * the image. For scratch output such as a convert target.
 */
#define VD_OPEN_NO_FLUSH    (1u << 6)
/*
 * The profile for images from an untrusted source (backup software, image
 * uploads): VD_OPEN_CONFINED for the whole chain; VD_OPEN_UNSAFE_RAW is
 * refused (a probed raw image never becomes another format); a backing file
 * must have its format recorded in the overlay (probing it would let its
 * content choose how it is read); vd_open_opts.cache_bytes is capped at
 * VD_SAFE_MAX_CACHE_BYTES. Combine it with vd_open_opts.formats to refuse
 * formats the caller does not expect. Policy refusals fail with VD_EPERM.
 */
#define VD_OPEN_SAFE        (1u << 7)

/*
 * Open every file of the chain (images and external data files) with
 * O_DIRECT, bypassing the host page cache as qemu's cache=none does; writes
 * still need vd_flush() (or VD_WRITE_FUA) to reach stable storage. Buffers,
 * offsets and lengths that the file system's direct I/O alignment does not
 * allow are served through an aligned bounce buffer, never refused. Where
 * the file system refuses O_DIRECT the open fails with VD_EUNSUPPORTED and
 * a message naming the file, unless VD_OPEN_DIRECT_FALLBACK is also given.
 */
#define VD_OPEN_DIRECT      (1u << 8)
/* Every write is a VD_WRITE_FUA write (qemu's cache=writethrough). */
#define VD_OPEN_WRITETHROUGH (1u << 9)
/* With VD_OPEN_DIRECT: open a file whose file system refuses O_DIRECT without it. */
#define VD_OPEN_DIRECT_FALLBACK (1u << 10)

/*
 * The VD_OPEN_* flags of one of qemu's cache modes, into *flags:
 * "writeback" (0, the default), "writethrough" (VD_OPEN_WRITETHROUGH),
 * "none" or "off" (VD_OPEN_DIRECT), "directsync" (VD_OPEN_DIRECT |
 * VD_OPEN_WRITETHROUGH), "unsafe" (VD_OPEN_NO_FLUSH). Another name fails
 * with VD_EINVAL ("Invalid cache option: name", as qemu-img says it).
 * vd_open_opts.cache takes the same names.
 */
VD_API int vd_cache_mode_flags(const char *mode, uint32_t *flags);

/* The largest metadata cache a VD_OPEN_SAFE handle allocates per image. */
#define VD_SAFE_MAX_CACHE_BYTES (UINT64_C(32) << 20)

/*
 * A function that supplies the passphrase of an encrypted image as its
 * chain opens (vd_open_opts.secret_fn), so that each image of a chain may
 * have its own: path is the image's file name as libvdisk opens it, depth 0
 * the image vd_open_ext() names, 1 its backing file, and so on. Copy the
 * passphrase (no NUL bytes, at most size - 1 bytes; size is 4096) into buf
 * and return its length; return 0 to use vd_open_opts.secret for this image
 * instead (none if that is NULL); return a negative VD_E* code to fail the
 * open with it. The library asks only for images that are encrypted, once
 * per image, and wipes buf after use. Added in 0.3 (LIBVDISK_1.2).
 */
typedef int (*vd_secret_fn)(void *ctx, const char *path, unsigned depth, char *buf, size_t size);

/*
 * Extended open options. Set .struct_size = sizeof(vd_open_opts) (the INIT
 * macro does) so that the library can tell which fields the caller knows.
 */
typedef struct vd_open_opts {
    uint32_t struct_size;
    uint32_t flags;          /* VD_OPEN_* */
    const char *format;      /* format name, or NULL to probe */
    uint64_t cache_bytes;    /* metadata cache size; 0 means the default */
    const char *snapshot;    /* open this internal snapshot (name or id) read-only; NULL for the active state */
    /*
     * The passphrase of an encrypted image (luks, qcow2 with LUKS or legacy
     * AES; in a backing chain, of every encrypted image), or NULL: the image then
     * opens for vd_get_info() and its properties, but reads and writes fail
     * with VD_EKEY. A passphrase that opens no key slot fails the open with
     * VD_EKEY. To keep it out of option strings and argv, take it from a file
     * or descriptor (vd_secret_add_fd()) or a prompt.
     */
    const char *secret;
    /*
     * The formats every image of the chain may have, whether named, recorded
     * or probed: a comma-separated list such as "qcow2,raw" (each a known
     * format); another format fails with VD_EPERM. NULL allows every format.
     */
    const char *formats;
    /*
     * NULL, or the path of an image that names path as its backing file: path
     * is then resolved as that image would resolve it (a relative name
     * relative to its directory) and, with VD_OPEN_CONFINED, must lie inside
     * that directory. To check a backing file before recording it.
     */
    const char *relative_to;
    /*
     * NULL, or one of qemu's cache modes (see vd_cache_mode_flags()), whose
     * flags are added to flags. The backing chain inherits VD_OPEN_DIRECT
     * (and its fallback), as cache.direct applies to a whole qemu chain.
     */
    const char *cache;
    /*
     * NULL, or the function asked for the passphrase of each encrypted image
     * of the chain (see vd_secret_fn), called with secret_ctx; where it
     * returns 0, secret serves. Added in 0.3 (LIBVDISK_1.2).
     */
    vd_secret_fn secret_fn;
    void *secret_ctx;
} vd_open_opts;

#define VD_OPEN_OPTS_INIT { (uint32_t)sizeof(vd_open_opts), 0, NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL }

/*
 * Open the image at path. format is a name such as "raw" or "qcow2", or NULL
 * to probe (raw is chosen only when no other format matches). Every file of
 * the chain must be a file of its own: a backing chain that loops, or an
 * external data file that is the image itself (a hard link included) or
 * another file of the chain, whose metadata guest writes would overwrite, is
 * refused with VD_EBACKING.
 */
VD_API int vd_open(vd_image **out, const char *path, const char *format, uint32_t flags);
/*
 * Open the image at path as vd_open() does, with the extended options of
 * opts (VD_OPEN_OPTS_INIT, then set what is needed): opts->format and
 * opts->flags (VD_OPEN_*) as vd_open() takes them, a metadata cache size,
 * an internal snapshot to open read-only, the formats allowed in the chain,
 * and the image a backing file is resolved against. opts may be NULL.
 */
VD_API int vd_open_ext(vd_image **out, const char *path, const vd_open_opts *opts);

/*
 * Close the image, flushing it first if it was opened read-write. Returns the
 * flush result; the handle is freed in every case. vd_close(NULL) returns 0.
 */
VD_API int vd_close(vd_image *img);

/* vd_create() flags */
#define VD_CREATE_EXCL      (1u << 0) /* fail with VD_EEXIST if path exists */
#define VD_CREATE_UNSAFE_BACKING (1u << 1) /* do not open the backing file (qemu-img create -u):
                                              size and backing_fmt must then be given */
#define VD_CREATE_CONFINED  (1u << 2) /* the backing file (and its chain) must lie inside the new
                                         image's directory, as VD_OPEN_CONFINED checks it */

/*
 * Create an image of the given format and virtual size. options is a
 * qemu-img style "key=value,key=value" list (",," is a literal comma) or
 * NULL; the accepted keys depend on the format (see vd_format_options()).
 * An existing file is truncated and overwritten unless VD_CREATE_EXCL is set,
 * but only once it is known not to be in use: the file (and a qcow2
 * data_file) is opened without truncating, refused with VD_EBUSY if an image
 * open in this process uses it (any image of any open chain, or its external
 * data file: the source of a copy, the new image's own backing file), locked
 * as a writer (VD_ELOCKED if another process holds it, VD_EUNSUPPORTED if the
 * file system cannot lock), and only then emptied, as qemu-img does. A qcow2
 * data_file that is the new image file itself is refused (VD_EINVAL).
 *
 * Overlays: "backing_file=NAME" (relative names are relative to the new
 * image's directory) and "backing_fmt=FMT". Without backing_fmt the backing
 * file is probed and the detected format recorded, but a backing file that
 * probes as raw is refused (say backing_fmt=raw). A size of 0 takes the
 * backing file's size.
 */
VD_API int vd_create(const char *path, const char *format, uint64_t size,
                     const char *options, uint32_t flags);

/* ---------------------------------------------------------------- data path */

/* vd_write() flags */
#define VD_WRITE_FUA        (1u << 0) /* the data is on stable storage on return */
/*
 * Store each cluster compressed (qcow2: with the image's compression_type,
 * zlib or zstd), as QEMU's compressed writes do; a cluster that does not
 * shrink is stored as it is. The range must cover whole clusters (the last
 * one may end at the end of the image); writing there again later turns the
 * cluster back into a normal one. Formats without compressed clusters fail
 * with VD_EUNSUPPORTED. Added in 0.3.
 */
#define VD_WRITE_COMPRESSED (1u << 1)

/* vd_write_zeroes() flags */
#define VD_ZERO_MAY_UNMAP   (1u << 0) /* the range may be deallocated */

/*
 * Read length bytes of guest data at offset into buf, all of them or fail:
 * through the backing chain where the image has no data of its own, zeroes
 * where no image of the chain has any. The range must lie inside the image
 * (VD_ERANGE). No flags are defined yet: pass 0.
 */
VD_API int vd_read(vd_image *img, uint64_t offset, void *buf, size_t length, uint32_t flags);
/*
 * Write length bytes from buf at offset, all of them or fail. Needs a
 * read-write handle (VD_EREADONLY); the range must lie inside the image
 * (VD_ERANGE): writes never grow an image, vd_resize() does. Copy-on-write
 * images allocate what the write needs; data reaches stable storage at the
 * next vd_flush(), or before the call returns with VD_WRITE_FUA.
 * VD_WRITE_COMPRESSED stores whole clusters compressed.
 */
VD_API int vd_write(vd_image *img, uint64_t offset, const void *buf, size_t length, uint32_t flags);
/*
 * vd_read() into the iovcnt buffers of iov, filled in order, as preadv(2)
 * does: all of them or fail. Entries may have any length, zero included;
 * an entry with a length needs a buffer. iovcnt must lie in 0..IOV_MAX
 * (VD_EINVAL). The data goes straight from the image file into the buffers,
 * except where a cluster must be decompressed or an O_DIRECT transfer
 * (VD_OPEN_DIRECT) needs alignment the buffers do not have. No flags are
 * defined yet: pass 0.
 */
VD_API int vd_preadv(vd_image *img, uint64_t offset, const struct iovec *iov, int iovcnt,
                     uint32_t flags);
/*
 * vd_write() from the iovcnt buffers of iov, taken in order, as pwritev(2)
 * does: all of them or fail, with vd_write()'s flags. The buffers are
 * written to the image file as they are; only a cluster written in part that
 * must be copied whole (copy-on-write) is assembled in a buffer of the
 * library's own.
 */
VD_API int vd_pwritev(vd_image *img, uint64_t offset, const struct iovec *iov, int iovcnt,
                      uint32_t flags);
/*
 * Make length bytes at offset read as zeroes, without sending zeroes:
 * zero clusters in qcow2, fallocate or the device's own zeroing in raw.
 * With VD_ZERO_MAY_UNMAP the range may also be deallocated. Needs a
 * read-write handle.
 */
VD_API int vd_write_zeroes(vd_image *img, uint64_t offset, uint64_t length, uint32_t flags);
/*
 * Tell the image that length bytes at offset are no longer needed, so that
 * their space may be released. Discard is a hint: the range may read back
 * as zeroes or as before. Needs a read-write handle. No flags are defined
 * yet: pass 0.
 */
VD_API int vd_discard(vd_image *img, uint64_t offset, uint64_t length, uint32_t flags);
/*
 * Write every cached change out and sync the image (and its external data
 * file) to stable storage, unless it was opened with VD_OPEN_NO_FLUSH. Data
 * written before a successful vd_flush() survives a crash. No flags are
 * defined yet: pass 0.
 */
VD_API int vd_flush(vd_image *img, uint32_t flags);

/* vd_resize() flags */
#define VD_RESIZE_SHRINK    (1u << 0) /* allow making the image smaller: raw cuts the data past the
                                         new end, qcow2 refuses (VD_EPERM) unless it reads as zeroes */

/*
 * Change the virtual size to new_size bytes (whole sectors). Growing reads
 * as zeroes; shrinking needs VD_RESIZE_SHRINK. Needs a read-write handle. A
 * block device is never resized (VD_EUNSUPPORTED), nor a version 2 qcow2
 * image with snapshots.
 */
VD_API int vd_resize(vd_image *img, uint64_t new_size, uint32_t flags);

/* ------------------------------------------------------------------ getters */

/* The virtual size of the image in bytes (the guest disk's size) into *size. */
VD_API int vd_get_size(vd_image *img, uint64_t *size);
/* The format name ("raw", "qcow2", ...), or NULL for a NULL handle. */
VD_API const char *vd_get_format(vd_image *img);
/* The path the image was opened with, or NULL for a NULL handle. */
VD_API const char *vd_get_filename(vd_image *img);
/*
 * The next image of the backing chain (opened read-only with this one and
 * owned by it: never close it), or NULL at the bottom of the chain. The
 * pointer stays valid until vd_rebase(), vd_commit() or vd_close() on img;
 * do not call it while those run in another thread.
 */
VD_API vd_image *vd_get_backing(vd_image *img);

/* Image information. Set .struct_size = sizeof(vd_info) before the call. */
typedef struct vd_info {
    uint32_t struct_size;
    uint32_t cluster_size;      /* 0 if the format has no clusters */
    uint64_t virtual_size;
    uint64_t actual_size;       /* bytes the file occupies on the host */
    const char *format;         /* owned by the image */
    const char *filename;       /* owned by the image */
    const char *backing_file;   /* as recorded in the image, or NULL */
    const char *backing_format; /* as recorded in the image, or NULL */
    int dirty;                  /* dirty/lazy-refcount flag is set */
    int read_only;              /* handle is read-only */
    int encrypted;
    int probed;                 /* the format was found by probing */
    /* Added in 0.2 (a caller built against an older header passes a smaller struct_size): */
    const char *data_file;      /* the external data file holding guest data, as opened
                                   (resolved against the image's directory), or NULL */
} vd_info;

#define VD_INFO_INIT { (uint32_t)sizeof(vd_info), 0, 0, 0, NULL, NULL, NULL, NULL, 0, 0, 0, 0, NULL }

/*
 * Fill *info with what qemu-img info shows (set info->struct_size first:
 * VD_INFO_INIT does). Strings are owned by the image and valid until it is
 * closed.
 */
VD_API int vd_get_info(vd_image *img, vd_info *info);

/* Types of vd_property values. */
#define VD_PROP_STRING 0
#define VD_PROP_INT    1
#define VD_PROP_BOOL   2

/*
 * Format-specific properties (qemu-img info's "format-specific" data), by
 * index from 0. Strings are owned by the image. Returns VD_ENOENT past the
 * last index. For VD_PROP_INT and VD_PROP_BOOL, *value is the decimal text
 * ("16", "true"/"false").
 */
VD_API int vd_get_property(vd_image *img, size_t index, const char **key,
                           const char **value, int *type);

/* ------------------------------------------------------- allocation status */

#define VD_EXTENT_DATA      (1u << 0) /* holds data (reads come from a host file) */
#define VD_EXTENT_ZERO      (1u << 1) /* reads as zeroes */
#define VD_EXTENT_ALLOCATED (1u << 2) /* defined by some image in the chain (not a hole falling to the end) */

/* vd_extent.host_offset of a range that has no place in a host file */
#define VD_NO_HOST_OFFSET   UINT64_MAX

typedef struct vd_extent {
    uint64_t offset;      /* guest offset */
    uint64_t length;      /* bytes */
    uint32_t flags;       /* VD_EXTENT_* */
    int32_t depth;        /* chain depth that defines it (0 = this image); for unallocated
                             extents, the depth of the last image that covers the offset */
    uint64_t host_offset; /* offset in the host file for data, or VD_NO_HOST_OFFSET */
} vd_extent;

/*
 * Describe the extent that starts at offset: the longest run, at most length
 * bytes, whose status is uniform. Callers iterate by advancing offset by
 * extent->length.
 */
VD_API int vd_block_status(vd_image *img, uint64_t offset, uint64_t length,
                           vd_extent *extent, uint32_t flags);

/* ------------------------------------------------------- check and repair */

/* vd_check() flags */
#define VD_CHECK_REPAIR_LEAKS (1u << 0) /* free leaked clusters (needs a read-write handle) */
#define VD_CHECK_REPAIR_ALL   (1u << 1) /* also fix refcount and flag errors */

/* Results of vd_check(). Set .struct_size = sizeof(vd_check_result). */
typedef struct vd_check_result {
    uint32_t struct_size;
    uint32_t reserved_;
    uint64_t corruptions;          /* errors left in the image */
    uint64_t leaks;                /* leaked clusters left in the image */
    uint64_t corruptions_fixed;
    uint64_t leaks_fixed;
    uint64_t check_errors;         /* the check itself could not read something */
    uint64_t total_clusters;       /* guest clusters of the virtual disk */
    uint64_t allocated_clusters;   /* guest clusters with data in this image */
    uint64_t fragmented_clusters;  /* allocated clusters not following their predecessor */
    uint64_t compressed_clusters;
    uint64_t image_end_offset;     /* end of the last used host cluster */
} vd_check_result;

#define VD_CHECK_RESULT_INIT { (uint32_t)sizeof(vd_check_result), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }

/* Receives one line per problem found or repaired ("Leaked cluster 5 refcount=1 reference=0"). */
typedef void (*vd_check_report_fn)(void *ctx, const char *message);

/*
 * Check the image's metadata and, with repair flags on a read-write handle,
 * repair it. Returns 0 when the check ran (inspect the counts), or an error
 * when it could not (VD_EUNSUPPORTED for formats without checks). report may
 * be NULL. A vmdk check fails as qemu-img's does when it finds a problem
 * (VD_ECORRUPT, with the counts and the report lines filled in), and has no
 * repair (VD_EUNSUPPORTED with repair flags).
 */
VD_API int vd_check(vd_image *img, uint32_t flags, vd_check_result *result,
                    vd_check_report_fn report, void *report_ctx);

/* ------------------------------------------------------------------ chains */

/* vd_rebase() flags */
#define VD_REBASE_UNSAFE    (1u << 0) /* only change the recorded backing file (qemu-img rebase -u) */
/*
 * Open the new backing chain without locks (qemu-img rebase -U): to compare
 * it with the old one, and as img's backing chain afterwards, so another
 * process may hold it, even read-write. The old chain keeps the locks img
 * was opened with.
 */
#define VD_REBASE_NO_LOCK   (1u << 1)

/*
 * Make backing_file, of format backing_format, the backing file of img.
 * A relative backing_file is relative to img's directory; NULL or "" makes
 * img stand alone. A NULL backing_format is probed, but a file that probes
 * as raw is refused; an unsafe rebase needs it. The safe mode keeps
 * what the guest sees: clusters that read differently through the old and
 * the new backing file are first copied into img. Needs a read-write handle.
 * On a handle opened with VD_OPEN_CONFINED (or VD_OPEN_SAFE) the new backing
 * file is opened as the handle's own backing files are: confined to img's
 * directory, so a name outside it fails with VD_EPERM before anything changes.
 */
VD_API int vd_rebase(vd_image *img, const char *backing_file, const char *backing_format,
                     uint32_t flags);

/* vd_commit() flags */
#define VD_COMMIT_EMPTY     (1u << 0) /* afterwards make img empty again (qemu-img commit without -d) */

/*
 * Write everything img holds itself into its backing file (growing it when
 * img is larger). Needs a read-write handle; the backing file is opened
 * read-write for the duration, by the name img records (confined as img is).
 */
VD_API int vd_commit(vd_image *img, uint32_t flags);

/* ------------------------------------------------------ internal snapshots */

/* One internal snapshot. Set .struct_size = sizeof(vd_snapshot_info). */
typedef struct vd_snapshot_info {
    uint32_t struct_size;
    uint32_t date_nsec;       /* sub-second part of date_sec */
    const char *id;           /* owned by the image; valid until its snapshots change */
    const char *name;         /* likewise */
    uint64_t date_sec;        /* when it was taken, seconds since the Epoch */
    uint64_t vm_clock_ns;     /* guest run time when it was taken */
    uint64_t vm_state_size;   /* bytes of saved VM state (libvdisk never saves any) */
    uint64_t disk_size;       /* virtual size when it was taken */
    uint64_t icount;          /* guest instruction count, or UINT64_MAX if none was recorded */
} vd_snapshot_info;

#define VD_SNAPSHOT_INFO_INIT { (uint32_t)sizeof(vd_snapshot_info), 0, NULL, NULL, 0, 0, 0, 0, UINT64_MAX }

/* The number of internal snapshots (0 for formats without them). */
VD_API int vd_snapshot_count(vd_image *img, size_t *count);
/* The index-th snapshot, in the order of the image's table. */
VD_API int vd_snapshot_get(vd_image *img, size_t index, vd_snapshot_info *info);
/*
 * Take a snapshot of the current state under a new, unique name (the id is
 * assigned as qemu-img does). Needs a read-write handle.
 */
VD_API int vd_snapshot_create(vd_image *img, const char *name, uint32_t flags);
/*
 * Revert the image to a snapshot, referred to by id or else by name, as
 * qemu-img snapshot -a does, its size included. Needs a read-write handle.
 * Every enabled dirty bitmap is marked dirty over each cluster the snapshot
 * maps differently from the current state (qemu-img 7.2 refuses an image
 * with bitmaps instead).
 */
VD_API int vd_snapshot_apply(vd_image *img, const char *id_or_name, uint32_t flags);
/*
 * Delete a snapshot, referred to by id or else by name (qemu-img snapshot
 * -d takes names only), freeing the clusters only it used. Needs a
 * read-write handle.
 */
VD_API int vd_snapshot_delete(vd_image *img, const char *id_or_name, uint32_t flags);

/* ---------------------------------------------------- persistent bitmaps */

/*
 * Persistent dirty bitmaps (qcow2's bitmaps extension, as QEMU keeps them
 * for incremental backup). Each bitmap has a name, a granularity (the bytes
 * one bit covers) and records, while enabled ("auto"), every write, zero
 * write and discard made through libvdisk. A writable handle keeps the
 * enabled bitmaps in memory, marked in use on disk (so that a crash leaves
 * them inconsistent, never stale yet valid-looking), and stores them when
 * it is closed. Formats without bitmaps list none and refuse changes with
 * VD_EUNSUPPORTED. Added in 0.3 (symbol version LIBVDISK_1.2).
 */

/* vd_bitmap_info.flags */
/* In use on disk since the image was opened: left by a crash or by another writer, never trusted. */
#define VD_BITMAP_IN_USE    (1u << 0)
/* Enabled: records every write ("auto" in qemu-img info). */
#define VD_BITMAP_AUTO      (1u << 1)
/* Not to be trusted (in use when opened): it can only be removed. */
#define VD_BITMAP_INCONSISTENT (1u << 2)

/* One bitmap. Set .struct_size = sizeof(vd_bitmap_info) (the INIT macro does). */
typedef struct vd_bitmap_info {
    uint32_t struct_size;
    uint32_t flags;           /* VD_BITMAP_* */
    const char *name;         /* owned by the image; valid until its bitmaps change */
    uint64_t granularity;     /* bytes per bit */
} vd_bitmap_info;

#define VD_BITMAP_INFO_INIT { (uint32_t)sizeof(vd_bitmap_info), 0, NULL, 0 }

/* vd_bitmap_add() flags: the new bitmap starts disabled (qemu-img bitmap --add --disable). */
#define VD_BITMAP_ADD_DISABLED (1u << 0)

/* The number of persistent bitmaps of img (0 for formats without them). */
VD_API int vd_bitmap_count(vd_image *img, size_t *count);
/* The index-th bitmap, in the order of the image's bitmap directory. */
VD_API int vd_bitmap_get(vd_image *img, size_t index, vd_bitmap_info *info);
/*
 * Add an empty bitmap under a new name (1 to 1023 bytes) with a granularity
 * that is a power of two from 512 bytes to 2 GiB (0: the cluster size, at
 * least 4 KiB, as qemu-img picks it). Enabled unless VD_BITMAP_ADD_DISABLED.
 * Needs a read-write handle. Stored when the handle is closed.
 */
VD_API int vd_bitmap_add(vd_image *img, const char *name, uint64_t granularity, uint32_t flags);
/* Remove a bitmap (inconsistent ones too). Needs a read-write handle; flags must be 0. */
VD_API int vd_bitmap_remove(vd_image *img, const char *name, uint32_t flags);
/* Mark every bit of a bitmap clean. Needs a read-write handle; flags must be 0. */
VD_API int vd_bitmap_clear(vd_image *img, const char *name, uint32_t flags);
/* Let a bitmap record writes again. Needs a read-write handle; flags must be 0. */
VD_API int vd_bitmap_enable(vd_image *img, const char *name, uint32_t flags);
/* Stop a bitmap recording writes. Needs a read-write handle; flags must be 0. */
VD_API int vd_bitmap_disable(vd_image *img, const char *name, uint32_t flags);
/*
 * Mark dirty in bitmap name of img every byte that bitmap src_name of src
 * marks dirty (src may be img itself, or an image open read-only; the
 * granularities may differ: a dirty source bit dirties every destination
 * bit it touches). Needs a read-write img; flags must be 0.
 */
VD_API int vd_bitmap_merge(vd_image *img, const char *name, vd_image *src, const char *src_name,
                           uint32_t flags);

/* Called by vd_bitmap_extents() for each run; return nonzero to stop (the call then returns 0). */
typedef int (*vd_bitmap_extent_fn)(void *ctx, uint64_t offset, uint64_t length, int dirty);
/*
 * The dirty and clean runs of bitmap name over [offset, offset + length),
 * in order, each run as long as possible (whole granules, clipped to the
 * range): the changed-block query of incremental backup. An inconsistent
 * bitmap is refused with VD_ECORRUPT. flags must be 0.
 */
VD_API int vd_bitmap_extents(vd_image *img, const char *name, uint64_t offset, uint64_t length,
                             vd_bitmap_extent_fn fn, void *ctx, uint32_t flags);

/* ----------------------------------------------------------------- convert */

/* vd_convert_opts.flags */
/*
 * Write into the existing image at dst_path (qemu-img convert -n): nothing
 * is created, dst_options must be NULL, the target must be at least as large
 * as the source, and its own backing chain (if any) is what it reads where
 * nothing is written. Zero runs of the source are written as zeroes, since
 * the target may hold data there, unless VD_CONVERT_TARGET_IS_ZERO.
 */
#define VD_CONVERT_EXISTING       (1u << 0)
/* With VD_CONVERT_EXISTING: the target reads as zeroes, so zero runs are left alone. */
#define VD_CONVERT_TARGET_IS_ZERO (1u << 1)
/*
 * Write chunks in the order they are read rather than in image order
 * (qemu-img -W): faster where reads and writes can overlap, but a sparse
 * destination's layout (the order of a qcow2's clusters) then depends on
 * timing.
 */
#define VD_CONVERT_OUT_OF_ORDER   (1u << 2)
/*
 * Compressed output (qemu-img -c): every data cluster is stored compressed
 * (zlib, or the destination's compression_type), compressed on a thread per
 * core and stored in image order. Destinations without compressed clusters
 * (raw) fail with VD_EUNSUPPORTED. Refused with VD_EUNSUPPORTED before 0.3.
 */
#define VD_CONVERT_COMPRESS       (1u << 3)
/*
 * Copy the source's persistent bitmaps (of the source image itself, not its
 * backing files) into the destination, with their granularity, enabled
 * state and dirty bits, as qemu-img convert --bitmaps does. An inconsistent
 * one (VD_BITMAP_INCONSISTENT) fails the conversion with VD_ECORRUPT
 * ("Cannot copy inconsistent bitmap 'NAME'") before the destination is
 * created or written. Refused with VD_EUNSUPPORTED before 0.3.
 */
#define VD_CONVERT_BITMAPS        (1u << 4)
/*
 * With VD_CONVERT_BITMAPS: skip the source's inconsistent bitmaps instead
 * of failing (qemu-img convert --skip-broken-bitmaps); the others are
 * copied. Without VD_CONVERT_BITMAPS: VD_EINVAL. New in 0.3 (LIBVDISK_1.2).
 */
#define VD_CONVERT_SKIP_BROKEN_BITMAPS (1u << 5)

/* The most chunks vd_convert_opts.parallel may keep in flight (qemu-img -m's limit). */
#define VD_CONVERT_MAX_PARALLEL   16
/* The largest vd_convert_opts.sparse_size (qemu-img -S's limit). */
#define VD_CONVERT_MAX_SPARSE_SIZE (UINT64_C(16) << 20)

/*
 * Progress of vd_convert(): done of total bytes of work, where the work is
 * the source's allocated data (and the zeroes that must be written), not its
 * virtual size, so that holes cost nothing. Called with done == 0 before the
 * copy starts and after each piece written, the last time with done ==
 * total; called by one thread at a time, but not always the caller's.
 * Return 0 to go on; anything else cancels the conversion, which then fails
 * with VD_ECANCELED.
 */
typedef int (*vd_convert_progress_fn)(void *ctx, uint64_t done, uint64_t total);

/*
 * Options of vd_convert(). Start from VD_CONVERT_OPTS_INIT, which sets
 * .struct_size = sizeof(vd_convert_opts) and the defaults noted below.
 */
typedef struct vd_convert_opts {
    uint32_t struct_size;
    uint32_t flags;              /* VD_CONVERT_* */
    /* The source: an open handle (not closed, read through its chain), or else a path. */
    vd_image *src;
    const char *src_path;
    const char *src_format;      /* with src_path: format name, or NULL to probe */
    /*
     * With src_path: VD_OPEN_NO_LOCK, VD_OPEN_CONFINED, VD_OPEN_SAFE, and a
     * cache mode's flags (vd_cache_mode_flags(): qemu-img convert -T).
     */
    uint32_t src_open_flags;
    /*
     * VD_OPEN_* flags of the destination besides VD_OPEN_RDWR: VD_OPEN_NO_FLUSH
     * (the default: never sync, qemu-img's cache=unsafe; clear it to sync the
     * result to stable storage at the end, as every other cache mode does),
     * VD_OPEN_CONFINED and VD_OPEN_SAFE (which also create it with
     * VD_CREATE_CONFINED, so its backing file must lie in its directory), and
     * a cache mode's flags (vd_cache_mode_flags(): qemu-img convert -t;
     * VD_OPEN_DIRECT writes it with O_DIRECT).
     */
    uint32_t dst_open_flags;
    const char *snapshot;        /* with src_path: convert this internal snapshot (id or name), or NULL */
    const char *dst_path;
    const char *dst_format;      /* NULL: "raw" */
    const char *dst_options;     /* vd_create() options of the destination, or NULL */
    /*
     * Make the destination an overlay of this image (qemu-img -B; relative
     * names are relative to the destination's directory) with this format
     * (NULL: probed, as vd_create() does). Only what reads differently from
     * it is written, so a source chain is rebased onto it; without a backing
     * file the chain is flattened. The same as backing_file= and backing_fmt=
     * in dst_options.
     */
    const char *backing_file;
    const char *backing_format;
    /*
     * Leave all-zero blocks of this many bytes unwritten, so that they stay
     * holes (or become zero clusters over a backing file's data); a multiple
     * of 512 up to VD_CONVERT_MAX_SPARSE_SIZE, default 4096; 0 writes every
     * byte of the source's data and zero runs and fully allocates the output.
     */
    uint64_t sparse_size;
    /* Chunks in flight, 1 to VD_CONVERT_MAX_PARALLEL; 0 (the default) picks a number. */
    uint32_t parallel;
    uint32_t reserved_;          /* must be 0 */
    vd_convert_progress_fn progress; /* or NULL */
    void *progress_ctx;
    /*
     * Added in 0.3: copy only what this persistent bitmap of the source marks
     * dirty (its clean parts are left unallocated, reading through to
     * backing_file): an incremental backup as an overlay of the previous
     * one. NULL copies everything.
     */
    const char *bitmap;
} vd_convert_opts;

#define VD_CONVERT_OPTS_INIT { (uint32_t)sizeof(vd_convert_opts), 0, NULL, NULL, NULL, 0,        \
                               VD_OPEN_NO_FLUSH, NULL, NULL, NULL, NULL, NULL, NULL, 4096, 0, 0, \
                               NULL, NULL, NULL }

/*
 * Copy a disk image into a new image (or, with VD_CONVERT_EXISTING, an
 * existing one) of any format: qemu-img convert. Only what the source
 * allocates is read (block status), all-zero blocks inside its data are
 * found and left as holes or zero clusters, and when the destination reads
 * as zeroes nothing is written for zero runs. Raw to raw with sparse_size 0
 * copies data with copy_file_range(2), a reflink where the file system has
 * one (with sparse detection the data is read to find its zero blocks, and
 * written from that buffer).
 *
 * The destination is created as vd_create() creates it (an existing file is
 * overwritten, but never one in use: the source, a file of its chain, an
 * image another process holds). When the conversion fails or is cancelled,
 * a destination the call created is removed; an existing target
 * (VD_CONVERT_EXISTING) is left as written so far, and vd_errmsg() says so.
 * Messages name the file concerned; a failed copy reports "error while
 * reading at byte N: ..." or "error while writing at byte N: ...", as
 * qemu-img does. Exported with the symbol version LIBVDISK_1.1.
 */
VD_API int vd_convert(const vd_convert_opts *opts);

/* ------------------------------------------------------------------ measure */

/*
 * The result of vd_measure() (added in 0.2, symbol version LIBVDISK_1.1).
 * Set .struct_size = sizeof(vd_measure_result) (the INIT macro does).
 */
typedef struct vd_measure_result {
    uint32_t struct_size;
    uint32_t has_bitmaps;     /* nonzero: bitmaps is meaningful (source and format keep them) */
    uint64_t required;        /* file bytes a new image needs for what the source holds */
    uint64_t fully_allocated; /* file bytes of the image with every cluster allocated */
    uint64_t bitmaps;         /* file bytes the source's persistent bitmaps would take */
} vd_measure_result;

#define VD_MEASURE_RESULT_INIT { (uint32_t)sizeof(vd_measure_result), 0, 0, 0, 0 }

/*
 * How large an image of format, created with options (a vd_create() option
 * list, or NULL), would be on the host: holding the data of source (its
 * whole chain, as read) or, with source NULL, an empty image of size bytes.
 * The figures are qemu-img measure's for the same input and options. The
 * time taken is bounded by the source's allocation metadata (block status),
 * never by its virtual size. flags must be 0. A format that cannot measure
 * fails with VD_EUNSUPPORTED. A qcow2 v3 source into qcow2 v3 also counts
 * its persistent bitmaps (has_bitmaps, bitmaps), as qemu-img measure does.
 */
VD_API int vd_measure(vd_measure_result *result, const char *format, const char *options,
                      vd_image *source, uint64_t size, uint32_t flags);

/*
 * Change the options of an existing image in place: qemu-img amend. options
 * is an option list ("key=value,...", ",," for a literal comma) of the keys
 * vd_amend_option() lists for the image's format; for qcow2: compat (0.10
 * or 1.1, both ways), refcount_bits, lazy_refcounts, size, data_file (a new
 * name for an existing external data file), data_file_raw (off only), and
 * backing_file/backing_fmt (only as the image records them: vd_rebase()
 * changes them). Everything is checked before anything changes; a refused
 * option (as qemu-img refuses it, with its message) leaves the image as it
 * was. Each change is published with one header write, so a crash leaves
 * the image as before or after that change, at worst with leaked clusters.
 * img must be writable; flags must be 0 (added in 0.2, LIBVDISK_1.1).
 * A format without amendable options fails with VD_EUNSUPPORTED.
 */
VD_API int vd_amend(vd_image *img, const char *options, uint32_t flags);

/* ---------------------------------------------------------------- formats */

/* The name of the index-th registered format, or NULL past the end. */
VD_API const char *vd_format_name(size_t index);

/*
 * The create options of a format: for index from 0, the option's name, a one
 * line description and its default (NULL if none). Returns VD_ENOENT past the
 * end and VD_EFORMAT for an unknown format.
 */
VD_API int vd_format_option(const char *format, size_t index, const char **name,
                            const char **help, const char **default_value);

/*
 * The options vd_amend() accepts for a format: for index from 0, the
 * option's name and a one line description (added in 0.2, LIBVDISK_1.1).
 * Returns VD_ENOENT past the end and VD_EFORMAT for an unknown format.
 */
VD_API int vd_amend_option(const char *format, size_t index, const char **name,
                           const char **help);

/* ----------------------------------------------------------------- secrets */

/*
 * Define the secret id (a passphrase of length bytes, no NUL bytes) for
 * options that name a secret, as qemu-img's --object secret does: luks
 * create's "key-secret=ID". Replaces an earlier secret of the same id. The
 * library keeps a copy in locked (secure) memory until vd_secret_remove(),
 * and wipes it then. Added in 0.3 (LIBVDISK_1.2).
 */
VD_API int vd_secret_add(const char *id, const void *data, size_t length);
/*
 * vd_secret_add() with the secret read from fd to its end (at most 64 KiB),
 * such as a file the caller opened or a pipe: the whole content is the
 * passphrase, a final newline included, as qemu's secret file= reads it.
 */
VD_API int vd_secret_add_fd(const char *id, int fd);
/* Forget the secret id, wiping its copy; VD_ENOENT if there is none. */
VD_API int vd_secret_remove(const char *id);

/*
 * Probe the file at path: *format receives the static name of the detected
 * format ("raw" when nothing else matches).
 */
VD_API int vd_probe(const char *path, const char **format);

#ifdef __cplusplus
}
#endif

#endif /* LIBVDISK_LIBVDISK_H */
