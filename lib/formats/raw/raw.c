/*
 * The raw format: the guest disk is the file itself, a regular file or a
 * block device. Sparse-aware: holes report as zero extents, discard punches
 * holes (a device discards), write-zeroes uses fallocate (a device zeroes).
 *
 * A raw image found by probing guards its first sector: a guest write that
 * would make the file probe as another format (a qcow2 header naming a host
 * file as its backing, say) is refused, as QEMU does.
 */
#include "core/internal.h"

#include <stdlib.h>
#include <string.h>

enum prealloc { PREALLOC_OFF, PREALLOC_FALLOC, PREALLOC_FULL };
static const char *const prealloc_names[] = { "off", "falloc", "full", NULL };

static const struct vd_option_desc raw_create_options[] = {
    { "preallocation", "Preallocation mode (off, falloc, full)", "off" },
    { NULL, NULL, NULL },
};

/* Fill [from, to) of a file with zeroes or reserved space, per mode. */
static int preallocate(vd_file *file, uint64_t from, uint64_t to, size_t mode)
{
    if (to <= from || mode == PREALLOC_OFF)
        return 0;
    if (mode == PREALLOC_FALLOC)
        return vd_file_allocate(file, from, to - from);
    return vd_file_write_zeroes(file, from, to - from, false);
}

static int raw_create(vd_file *file, uint64_t size, const struct vd_kv *opts)
{
    size_t mode;
    int rc = vd_kv_get_choice(opts, "preallocation", prealloc_names, PREALLOC_OFF, &mode);
    if (rc == 0)
        rc = vd_file_truncate(file, size);
    if (rc == 0)
        rc = preallocate(file, 0, size, mode);
    return rc;
}

/*
 * The guest sees whole sectors, as QEMU shows raw files: a file of 10000
 * bytes is a disk of 10240 whose last 240 bytes read as zeroes.
 */
struct raw {
    uint64_t file_size;     /* grows under concurrent writes: atomic */
    /* writes run in parallel; those into the probe window of a probed image take
       turns, so that two of them cannot together forge a header the guard checks */
    pthread_mutex_t probe_guard;
};

static uint64_t file_size_of(vd_image *img)
{
    return __atomic_load_n(&((struct raw *)img->priv)->file_size, __ATOMIC_ACQUIRE);
}

static uint64_t round_to_sector(uint64_t n)
{
    return (n + 511) & ~511ull;
}

static int raw_open(vd_image *img, const vd_open_opts *opts)
{
    struct raw *r = calloc(1, sizeof *r);
    if (!r)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    img->priv = r;
    pthread_mutex_init(&r->probe_guard, NULL);
    int rc = vd_file_get_size(img->file, &r->file_size);
    if (rc == 0 && r->file_size > INT64_MAX - 511)
        rc = vd_err(VD_ETOOBIG, "%s: file is too large", img->filename);
    img->size = round_to_sector(r->file_size);
    if (rc < 0) {
        pthread_mutex_destroy(&r->probe_guard);
        free(r);
        img->priv = NULL;
    }
    return rc;
}

static void raw_close(vd_image *img)
{
    struct raw *r = img->priv;
    if (r)
        pthread_mutex_destroy(&r->probe_guard);
    free(r);
}

static int raw_read(vd_image *img, uint64_t off, const struct vd_iov *v)
{
    uint64_t file_size = file_size_of(img);
    size_t len = v->len;
    size_t in_file = off >= file_size ? 0 : (size_t)(file_size - off < len ? file_size - off : len);
    struct vd_iov past = vd_iov_sub(v, in_file, len - in_file);
    vd_iov_zero(&past);
    struct vd_iov inside = vd_iov_sub(v, 0, in_file);
    return in_file ? vd_file_preadv(img->file, &inside, off) : 0;
}

/* A write past the end of the file grows it. */
static void note_written(vd_image *img, uint64_t end)
{
    struct raw *r = img->priv;
    uint64_t seen = __atomic_load_n(&r->file_size, __ATOMIC_ACQUIRE);
    while (end > seen && !__atomic_compare_exchange_n(&r->file_size, &seen, end, true,
                                                      __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        ;
}

/*
 * For a probed image, refuse a write that overlaps the probe window and would
 * make the file look like another format.
 */
static int guard_probe_window(vd_image *img, uint64_t off, const struct vd_iov *v)
{
    if (!img->probed || (img->open_flags & VD_OPEN_UNSAFE_RAW) || off >= VD_PROBE_BYTES)
        return 0;
    uint8_t head[VD_PROBE_BYTES] = { 0 };
    size_t have = img->size < VD_PROBE_BYTES ? (size_t)img->size : VD_PROBE_BYTES;
    int rc = have ? vd_backend_read(img, 0, head, have) : 0;
    if (rc < 0)
        return rc;
    size_t n = v->len < VD_PROBE_BYTES - off ? v->len : VD_PROBE_BYTES - (size_t)off;
    struct vd_iov window = vd_iov_sub(v, 0, n);
    vd_iov_to_buf(&window, head + off);
    const struct vd_backend *other = vd_backend_probe_head(head, sizeof head, img->size);
    const char *name = other ? other->name : vd_recognize_unsupported(head, sizeof head, img->size);
    if (name)
        return vd_err(VD_EPERM, "%s: refusing a write to sector 0 that would make this probed "
                      "raw image look like a %s image; open it with format 'raw' to allow it",
                      img->filename, name);
    return 0;
}

/* Take the probe window's turn if a write at off needs the guard; returns whether it did. */
static bool probe_window_enter(vd_image *img, uint64_t off)
{
    bool guarded = img->probed && off < VD_PROBE_BYTES;
    if (guarded)
        pthread_mutex_lock(&((struct raw *)img->priv)->probe_guard);
    return guarded;
}

static void probe_window_leave(vd_image *img, bool guarded)
{
    if (guarded)
        pthread_mutex_unlock(&((struct raw *)img->priv)->probe_guard);
}

static int raw_write(vd_image *img, uint64_t off, const struct vd_iov *v, uint32_t flags)
{
    bool guarded = probe_window_enter(img, off);
    int rc = guard_probe_window(img, off, v);
    if (rc == 0 && (rc = vd_file_pwritev(img->file, v, off)) == 0)
        note_written(img, off + v->len);
    probe_window_leave(img, guarded);
    return rc;
}

static int raw_write_zeroes(vd_image *img, uint64_t off, uint64_t len, uint32_t flags)
{
    bool guarded = probe_window_enter(img, off);
    int rc = 0;
    if (guarded) {
        /* zeroes can also forge a header (by clearing bytes): run the guard */
        uint8_t zeroes[VD_PROBE_BYTES] = { 0 };
        size_t n = len < VD_PROBE_BYTES - off ? (size_t)len : VD_PROBE_BYTES - (size_t)off;
        struct iovec one;
        struct vd_iov window = vd_iov_flat(&one, zeroes, n);
        rc = guard_probe_window(img, off, &window);
    }
    if (rc == 0)
        rc = vd_file_write_zeroes(img->file, off, len, (flags & VD_ZERO_MAY_UNMAP) != 0);
    if (rc == 0)
        note_written(img, off + len);
    probe_window_leave(img, guarded);
    return rc;
}

static int raw_discard(vd_image *img, uint64_t off, uint64_t len)
{
    int rc = vd_file_discard(img->file, off, len);
    /* discard is advisory: a file system that cannot punch holes, or a device that
       cannot discard, ignores it */
    return rc == VD_EUNSUPPORTED ? 0 : rc;
}

static int raw_resize(vd_image *img, uint64_t size, uint32_t flags)
{
    int rc = vd_file_truncate(img->file, size);
    if (rc == 0) {
        ((struct raw *)img->priv)->file_size = size;
        img->size = round_to_sector(size);
    }
    return rc;
}

static int raw_block_status(vd_image *img, uint64_t off, uint64_t len, vd_extent *ext)
{
    bool is_data;
    uint64_t end;
    int rc = vd_file_extent(img->file, off, &is_data, &end);
    if (rc < 0)
        return rc;
    if (end <= off) { /* the sector tail past the end of the file reads as zeroes */
        is_data = false;
        end = off + len;
    }
    ext->length = end - off < len ? end - off : len;
    ext->flags = VD_EXTENT_ALLOCATED | (is_data ? VD_EXTENT_DATA : VD_EXTENT_ZERO);
    ext->host_offset = off;
    return 0;
}

bool vd_raw_can_copy_range(vd_image *dst, vd_image *src)
{
    return dst->backend == &vd_backend_raw && src->backend == &vd_backend_raw;
}

/* With dst held for writing and src for reading. */
static int copy_range_locked(vd_image *dst, vd_image *src, uint64_t off, uint64_t len)
{
    uint64_t end = off + len, src_file_size = file_size_of(src);
    uint64_t in_file = off >= src_file_size ? 0 : (end < src_file_size ? end : src_file_size) - off;
    int rc = 0;
    if (off < VD_PROBE_BYTES && dst->probed)
        rc = vd_err(VD_EUNSUPPORTED, "%s: the probed image's first sector is written through "
                    "its guard", dst->filename);
    if (rc == 0 && in_file)
        rc = vd_file_copy_range(dst->file, off, src->file, off, in_file);
    if (rc == 0 && in_file < len) /* the sector tail past the end of src's file */
        rc = vd_file_write_zeroes(dst->file, off + in_file, len - in_file, false);
    if (rc == 0) {
        note_written(dst, end);
        vd_image_mark_unsynced(dst);
    }
    return rc;
}

int vd_raw_copy_range(vd_image *dst, vd_image *src, uint64_t off, uint64_t len)
{
    int rc = vd_enter(dst, "vd_raw_copy_range", 0, 0, VD_ACCESS_WRITE);
    if (rc < 0)
        return rc;
    uint64_t end;
    if (vd_add_overflows(off, len, &end) || end > dst->size || end > src->size)
        return vd_leave(dst, vd_err(VD_ERANGE, "vd_raw_copy_range: range past the end"));
    rc = vd_enter(src, "vd_raw_copy_range", 0, 0, VD_ACCESS_SHARED);
    if (rc == 0)
        rc = vd_leave(src, copy_range_locked(dst, src, off, len));
    return vd_leave(dst, rc);
}

/*
 * A raw image is as large as its virtual size whatever it holds (QEMU's
 * raw_measure(): holes count too); a new size is rounded up to whole sectors.
 */
static int raw_measure(const struct vd_kv *opts, uint64_t size, vd_image *source,
                       vd_measure_result *res)
{
    (void)opts;
    if (!source && size > UINT64_MAX - 511)
        return vd_err(VD_ETOOBIG, "The image size is too large");
    res->required = res->fully_allocated = source ? size : (size + 511) & ~UINT64_C(511);
    return 0;
}

const struct vd_backend vd_backend_raw = {
    .name = "raw",
    .create_options = raw_create_options,
    .create = raw_create,
    .open = raw_open,
    .close = raw_close,
    .read = raw_read,
    .write = raw_write,
    .write_zeroes = raw_write_zeroes,
    .discard = raw_discard,
    .resize = raw_resize,
    .block_status = raw_block_status,
    .measure = raw_measure,
};
