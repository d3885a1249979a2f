/*
 * Internal definitions shared by core, the engine and the format backends.
 * Never installed; refuses to be included from outside the library.
 */
#ifndef VD_CORE_INTERNAL_H
#define VD_CORE_INTERNAL_H

#ifndef VD_BUILDING_LIBRARY
#error "lib/core/internal.h is internal to libvdisk"
#endif

#include <libvdisk/libvdisk.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "io/file.h"
#include "core/options.h"
#include "core/inflight.h"

#define VD_IMAGE_MAGIC 0x56444b31u /* "VDK1" */

/* The deepest backing chain we open (QEMU has no fixed limit; loops are caught separately). */
#define VD_MAX_CHAIN_DEPTH 64

/* How many leading bytes probing looks at. */
#define VD_PROBE_BYTES 512

/* ------------------------------------------------------------------ errors */

/* Set the calling thread's message (printf-style) and return code. */
int vd_err(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Clear the calling thread's message. */
void vd_err_clear(void);
/* Whether err is one of the VD_E* codes (a caller's callback may return anything). */
bool vd_error_known(int err);

/* --------------------------------------------------------------- backends */

struct vd_bitmap;

struct vd_prop {
    char *key;
    char *value;
    int type; /* VD_PROP_* */
};

/*
 * A format backend: one static const table per format. Optional callbacks
 * may be NULL; core supplies the default noted beside each.
 */
struct vd_backend {
    const char *name;
    /*
     * The format allocates at the end of its file and takes whatever lies
     * past its last structure for free space: opened for writing, its file
     * grows ahead of its writes (vd_file_grow_ahead()).
     */
    bool grows_at_end;
    /* Create options this format accepts (NULL-terminated by name). */
    const struct vd_option_desc *create_options;

    /* Score 0 (not this format) .. 100 (certain) from the first bytes. */
    int (*probe)(const uint8_t *head, size_t len, uint64_t file_size);
    /* Write a new image into an empty, writable file. */
    int (*create)(vd_file *file, uint64_t size, const struct vd_kv *opts);
    /* Read the metadata of img->file; set img->size and img->priv. */
    int (*open)(vd_image *img, const vd_open_opts *opts);
    void (*close)(vd_image *img);                                   /* default: nothing */

    /*
     * Data path on views of the caller's buffers (io/iov.h); ranges are
     * already checked against img->size. vd_backend_read/vd_backend_write
     * below take a flat buffer.
     */
    int (*read)(vd_image *img, uint64_t off, const struct vd_iov *v);
    int (*write)(vd_image *img, uint64_t off, const struct vd_iov *v, uint32_t flags);
    int (*write_zeroes)(vd_image *img, uint64_t off, uint64_t len, uint32_t flags); /* default: write zero buffers */
    int (*discard)(vd_image *img, uint64_t off, uint64_t len);     /* default: ignore */
    int (*flush)(vd_image *img);                                    /* default: sync the file */
    int (*resize)(vd_image *img, uint64_t size, uint32_t flags);    /* default: VD_EUNSUPPORTED */
    int (*block_status)(vd_image *img, uint64_t off, uint64_t len, vd_extent *ext); /* default: all data */
    /* Fill format-specific parts of info (cluster size, backing, dirty). */
    void (*get_info)(vd_image *img, vd_info *info);
    /* Record a new backing file and format (NULL: none) in the header. Optional. */
    int (*set_backing)(vd_image *img, const char *file, const char *format);
    /* Internal snapshots; all optional (no snapshots: count 0, the rest VD_EUNSUPPORTED). */
    size_t (*snapshot_count)(vd_image *img);
    void (*snapshot_get)(vd_image *img, size_t index, vd_snapshot_info *info);
    int (*snapshot_create)(vd_image *img, const char *name);
    int (*snapshot_apply)(vd_image *img, const char *id_or_name);
    int (*snapshot_delete)(vd_image *img, const char *id_or_name);
    /*
     * How large a new image with these create options would be: holding the
     * data of source (read through its chain; NULL for an empty image), whose
     * virtual size is size. Fill res's counts. Default: VD_EUNSUPPORTED.
     */
    int (*measure)(const struct vd_kv *opts, uint64_t size, vd_image *source,
                   vd_measure_result *res);
    /*
     * Check (and with VD_CHECK_REPAIR_* repair) metadata, telling each
     * finding to report (vd_check_say()). Default: VD_EUNSUPPORTED.
     */
    int (*check)(vd_image *img, uint32_t flags, vd_check_result *res,
                 vd_check_report_fn report, void *ctx);
    /*
     * Call fn with the path of every file the image is made of besides
     * img->file (VMDK extent files, a qcow2 external data file), so that a
     * failed convert can remove all of an image it created. Default: none.
     */
    void (*for_each_extra_file)(vd_image *img, void (*fn)(void *ctx, const char *path), void *ctx);
    /*
     * Change options of an open, writable image (vd_amend()); opts holds only
     * keys of amend_options. Optional: without it the format has none.
     */
    const struct vd_option_desc *amend_options;
    int (*amend)(vd_image *img, const struct vd_kv *opts);
    /*
     * Persistent dirty bitmaps (lib/core/bitmap.h); optional, both or
     * neither. open lists the image's bitmaps in img->bitmaps; bitmap_load
     * reads the bits of one (b->words allocated and zeroed by core);
     * bitmaps_store writes all of img->bitmaps crash-safely, the enabled
     * ones still marked in use unless closing.
     */
    int (*bitmap_load)(vd_image *img, struct vd_bitmap *b);
    int (*bitmaps_store)(vd_image *img, bool closing);
    /* Whether this image may have one more bitmap (qcow2 v2 may not); default: yes. */
    int (*bitmap_can_add)(vd_image *img);
};

/* ------------------------------------------------------------ image handle */

struct vd_image {
    uint32_t magic;
    const struct vd_backend *backend;
    void *priv;              /* backend state */
    vd_file *file;
    char *filename;
    uint64_t size;           /* virtual size in bytes */
    uint32_t open_flags;     /* VD_OPEN_* */
    bool read_only;
    bool probed;             /* format found by probing, not named */
    unsigned depth;          /* in the chain it was opened with: 0 the top image */
    int poisoned;            /* 0, or the error that disabled the handle (atomic: vd_image_poisoned()) */

    /*
     * The management lock: data-path calls share it, calls that change the
     * image as a whole (flush, resize, snapshots, check, ...) take it alone.
     * See the thread-safety note in libvdisk.h and the contract in cow/engine.h.
     */
    pthread_rwlock_t lock;
    /* Data-path requests running now: overlapping ones wait for each other. */
    struct vd_inflight inflight;
    /*
     * The metadata lock of a sparse format (cow/engine.h): lookups share it,
     * allocation and mapping changes take it alone; data I/O runs without it.
     */
    pthread_rwlock_t meta_lock;

    struct vd_prop *props;   /* format-specific properties */
    size_t nprops;

    /* Sparse formats: the engine's view (lib/cow/engine.h). */
    const struct vd_cow_ops *cow;
    uint32_t cluster_size;
    vd_image *backing;       /* the next image of the chain, or NULL */
    vd_file *data_file;      /* where guest data lives, if not in file (qcow2 data_file) */
    bool unsynced;           /* written since the last sync of the file (atomic: vd_image_mark_unsynced()) */

    /* Confinement: the directory the names it records resolve beneath (vd_image_anchor()). */
    int dir_fd;              /* -1 until known */
    char *allowed_formats;   /* vd_open_opts.formats, for the images opened below it; or NULL */
    /* The list of images open in this process (see vd_claim_for_create). */
    vd_image *open_prev, *open_next;
    bool listed_open;

    /* Persistent dirty bitmaps, in the image's order (lib/core/bitmap.h). */
    struct vd_bitmap *bitmaps;
    size_t nbitmaps;
    size_t bitmaps_room;      /* entries allocated: grown by doubling (20000 bitmaps, one open) */
    bool bitmaps_changed;         /* added, removed or changed since they were stored */
    pthread_mutex_t bitmap_load_lock; /* loading bits under a shared lock */
};

/* A backend's read or write of one flat buffer. */
static inline int vd_backend_read(vd_image *img, uint64_t off, void *buf, size_t len)
{
    struct iovec one;
    struct vd_iov v = vd_iov_flat(&one, buf, len);
    return img->backend->read(img, off, &v);
}
static inline int vd_backend_write(vd_image *img, uint64_t off, const void *buf, size_t len,
                                   uint32_t flags)
{
    struct iovec one;
    struct vd_iov v = vd_iov_flat(&one, buf, len);
    return img->backend->write(img, off, &v, flags);
}

/* The file that holds guest data. */
static inline vd_file *vd_image_data(const vd_image *img)
{
    return img->data_file ? img->data_file : img->file;
}

/*
 * Sync the image's file (and data file) if anything was written since the last sync (set
 * img->unsynced after writing). The one way an image reaches stable storage,
 * so that VD_OPEN_NO_FLUSH is honoured everywhere.
 */
int vd_image_sync(vd_image *img);
/* Note a write to the image's file or data file; call it after the write returned. */
static inline void vd_image_mark_unsynced(vd_image *img)
{
    __atomic_store_n(&img->unsynced, true, __ATOMIC_RELEASE);
}
static inline int vd_image_sync_now(vd_image *img)
{
    vd_image_mark_unsynced(img);
    return vd_image_sync(img);
}

/* Drop every format-specific property (to describe a changed header afresh). */
void vd_image_clear_props(vd_image *img);
/* Append or replace a format-specific property (printf-style value). */
int vd_image_set_prop(vd_image *img, const char *key, int type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

enum vd_access {
    VD_ACCESS_SHARED,     /* reads: run beside other data-path calls */
    VD_ACCESS_EXCLUSIVE,  /* alone on the handle, read-only handles allowed (flush, check) */
    VD_ACCESS_WRITE,      /* alone on the handle, which must be writable */
    VD_ACCESS_DATA_WRITE, /* data-path writes: beside other data-path calls, on a writable
                             handle; overlapping requests order themselves (vd_inflight) */
};

/*
 * The front door of every call on a handle: check the handle and the flags,
 * refuse writes on a read-only handle, take the lock as access says and
 * refuse a poisoned handle. On success the caller must end with vd_leave().
 */
int vd_enter(vd_image *img, const char *call, uint32_t flags, uint32_t known_flags,
             enum vd_access access);
int vd_leave(vd_image *img, int rc);

/*
 * vd_write() of one cluster whose compressed form the caller made already
 * (vd_cow_compress_cluster(), on the caller's threads): comp, or plain
 * where compression gained nothing. For convert's in-order writer.
 */
int vd_store_cluster(vd_image *img, uint64_t offset, const void *comp, size_t comp_len,
                     const void *plain, size_t plain_len);

/* Disable the handle after an error that leaves metadata in doubt (the first code stays). */
int vd_image_poison(vd_image *img, int code);
/*
 * Metadata found broken while in use: disable the handle and fail with
 * VD_ECORRUPT, "FILE: KIND image is corrupt: WHAT" (KIND as users name the
 * format: "qcow", "VMDK").
 */
int vd_image_corrupt(vd_image *img, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* 0, or the error that disabled the handle; safe beside vd_image_poison() in other threads. */
static inline int vd_image_poisoned(const vd_image *img)
{
    return __atomic_load_n(&img->poisoned, __ATOMIC_ACQUIRE);
}

/* ------------------------------------------------------------------ chains */

/*
 * Identity of a file in a chain being opened (an image file or an external
 * data file), so that no file takes a second place in it.
 */
struct vd_chain_link {
    dev_t dev;
    ino_t ino;
    const char *image;     /* the image this file is, or whose data file it is */
    bool data_file;        /* the external data file of image, not the image */
    const struct vd_chain_link *next; /* toward the top of the chain */
};

/* The open flags the images below an image inherit (they are always read-only). */
#define VD_OPEN_INHERITED (VD_OPEN_NO_LOCK | VD_OPEN_CONFINED | VD_OPEN_SAFE | VD_OPEN_DIRECT | \
                           VD_OPEN_DIRECT_FALLBACK)

/* The VD_FILE_* flags for a file of an image opened with these VD_OPEN_* flags. */
static inline uint32_t vd_file_flags_for(uint32_t open_flags)
{
    return ((open_flags & VD_OPEN_RDWR) ? VD_FILE_RDWR : 0) |
           ((open_flags & VD_OPEN_DIRECT) ? VD_FILE_DIRECT : 0) |
           ((open_flags & VD_OPEN_DIRECT_FALLBACK) ? VD_FILE_DIRECT_FALLBACK : 0);
}

/* Where a file is: a name that an image (the referrer) records, or the caller's path. */
struct vd_chain_where {
    const char *referrer; /* the recording image's path (relative names start in its
                             directory), or NULL when name is a path as it is */
    int anchor;           /* >= 0: confine name beneath this directory (vd_dir_open_beneath()) */
    const char *name;
};

/* A file vd_chain_open_file() opened. */
struct vd_named_file {
    vd_file *file;
    char *path;  /* the name resolved as QEMU resolves it */
    int dir_fd;  /* confined: the directory it was found in, where its own names resolve; or -1 */
};

/* Open the file where names; file_flags are VD_FILE_* flags. */
int vd_chain_open_file(struct vd_named_file *out, const struct vd_chain_where *where,
                       uint32_t file_flags);
void vd_named_file_release(struct vd_named_file *f);
/*
 * The directory that img's recorded names are confined to, or -1 when img is
 * not opened with VD_OPEN_CONFINED: the directory a confined open found img
 * in, or else its path's directory, opened on first use.
 */
int vd_image_anchor(vd_image *img, int *anchor);

/* Open one image and (unless VD_OPEN_NO_BACKING) the chain below it. */
int vd_open_image(vd_image **out, const struct vd_chain_where *where, const vd_open_opts *o,
                  unsigned depth, const struct vd_chain_link *above);
/* Release a handle and the chain below it, without flushing. */
void vd_image_close_chain(vd_image *img);
/* A backing name resolved as QEMU does: relative to the overlay's directory. */
char *vd_chain_resolve(const char *overlay, const char *backing_name);
/* Open img->backing as img's header names it. */
int vd_chain_open_backing(vd_image *img, const vd_open_opts *o, unsigned depth,
                          const struct vd_chain_link *self);
/*
 * Refuse a file that already has a place in the chain (links): as an image
 * file (data_file_of NULL) the backing chain would loop; as the external
 * data file of image data_file_of, guest writes would overwrite an image.
 */
int vd_chain_refuse_repeat(const struct vd_chain_link *links, const struct stat *st,
                           const char *path, const char *data_file_of);
/*
 * Check the backing_file/backing_fmt options of an image about to be
 * created. With backing, the backing image stays open (or NULL: none) for
 * the caller to close after the create, so that the new image cannot
 * overwrite a file of its own chain (see vd_claim_for_create).
 */
int vd_chain_prepare_create(const char *path, struct vd_kv *kv, uint64_t *size, uint32_t flags,
                            vd_image **backing);

/*
 * Make a file opened with VD_FILE_CREATE ready to receive a new image:
 * refuse it (VD_EBUSY) if an image open in this process uses it, take the
 * writer's lock, and only then empty it, so that an image in use is never
 * destroyed. Locks alone do not suffice: a handle opened with
 * VD_OPEN_NO_LOCK holds none.
 */
int vd_claim_for_create(vd_file *file);

/* ---------------------------------------------------------------- registry */

const struct vd_backend *vd_backend_find(const char *name);
/* The best non-raw match for a first-bytes buffer, or NULL. */
const struct vd_backend *vd_backend_probe_head(const uint8_t *head, size_t len, uint64_t file_size);

/* The name of a format we recognise but cannot open yet (lib/formats/recognized.c), or NULL. */
const char *vd_recognize_unsupported(const uint8_t *head, size_t len, uint64_t file_size);

extern const struct vd_backend vd_backend_raw;

/*
 * Raw to raw without a buffer: whether dst and src are both raw images, and
 * copying [off, off + len) of src's file into dst's (what lies past the end
 * of src's file becomes zeroes). VD_EUNSUPPORTED when the file system
 * cannot copy between the two files; then nothing needs undoing.
 */
bool vd_raw_can_copy_range(vd_image *dst, vd_image *src);
int vd_raw_copy_range(vd_image *dst, vd_image *src, uint64_t off, uint64_t len);
extern const struct vd_backend vd_backend_qcow2;
extern const struct vd_backend vd_backend_luks;
extern const struct vd_backend vd_backend_vmdk;
extern const struct vd_backend vd_backend_qcow;

/* A check's report line, printf-style, to report (if not NULL), as vd_check() passes it. */
void vd_check_say(vd_check_report_fn report, void *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ----------------------------------------------------------------- secrets */

/*
 * A copy of the secret named id (vd_secret_add()) in secure memory, for
 * vd_secret_free(); VD_ENOENT when there is none.
 */
int vd_secret_lookup(const char *id, char **value);
void vd_secret_free(char *value);
/*
 * The passphrase an encrypted image opens with, for its backend's open: from
 * o->secret_fn if it gives one, else a copy of o->secret; *passphrase is NULL
 * when there is none. Release it with vd_secret_free().
 */
int vd_open_passphrase(const vd_image *img, const vd_open_opts *o, char **passphrase);

/* ------------------------------------------------------------------- misc */

/* Whether len bytes at buf are all zero (each byte equals the next and the first is zero:
   memcmp is vectorised). */
static inline bool vd_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

static inline bool vd_add_overflows(uint64_t a, uint64_t b, uint64_t *sum)
{
    return __builtin_add_overflow(a, b, sum);
}
static inline bool vd_mul_overflows(uint64_t a, uint64_t b, uint64_t *prod)
{
    return __builtin_mul_overflow(a, b, prod);
}

#endif
