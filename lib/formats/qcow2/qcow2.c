/* The qcow2 backend: open, flush, close, info, and its vd_backend table. */
#include "formats/qcow2/qcow2.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Default metadata cache: enough L2 tables for 8 GiB of guest data, within 1..32 MiB. */
#define DEFAULT_COVERAGE   (8ull << 30)
#define MIN_CACHE_BYTES    (1ull << 20)
#define MAX_CACHE_BYTES    (32ull << 20)
/* Apply deferred frees once this many are queued, so big discards stay bounded. */
#define MAX_PENDING_FREES  65536

static size_t l2_cache_tables(const struct qcow2 *q, uint64_t virtual_size, uint64_t requested)
{
    uint64_t bytes = requested;
    if (!bytes) {
        uint64_t coverage = virtual_size < DEFAULT_COVERAGE ? virtual_size : DEFAULT_COVERAGE;
        uint64_t per_table = q->l2_entries * q->cluster_size;
        bytes = (coverage / per_table + 1) * q->cluster_size;
        bytes = bytes < MIN_CACHE_BYTES ? MIN_CACHE_BYTES : bytes > MAX_CACHE_BYTES ? MAX_CACHE_BYTES : bytes;
    }
    return (size_t)(bytes / q->cluster_size);
}

int qcow2_pread_table(vd_image *img, void *buf, uint64_t len, uint64_t off, const char *name)
{
    uint64_t file_size;
    int rc = vd_file_get_size(img->file, &file_size);
    if (rc < 0)
        return rc;
    uint64_t present = off >= file_size ? 0 : file_size - off < len ? file_size - off : len;
    struct qcow2 *q = qcow2_of(img);
    if (present < len && name && !q->table_past_eof)
        q->table_past_eof = name;
    memset((uint8_t *)buf + present, 0, (size_t)(len - present));
    return present ? vd_file_pread(img->file, buf, (size_t)present, off) : 0;
}

static int load_l1(vd_image *img, struct qcow2 *q)
{
    q->l1 = calloc(q->l1_size ? q->l1_size : 1, sizeof *q->l1);
    if (!q->l1)
        return vd_err(VD_ENOMEM, "%s: out of memory for the L1 table", img->filename);
    int rc = qcow2_pread_table(img, q->l1, (uint64_t)q->l1_size * 8, q->l1_offset, "L1 table");
    for (uint32_t i = 0; rc == 0 && i < q->l1_size; i++)
        q->l1[i] = vd_be64(&q->l1[i]);
    return rc;
}

int qcow2_update_props(vd_image *img, const struct qcow2 *q)
{
    static const char *const compression[] = { "zlib", "zstd" };
    bool v3 = q->version >= 3;
    int rc = vd_image_set_prop(img, "compat", VD_PROP_STRING, "%s", v3 ? "1.1" : "0.10");
    if (rc == 0)
        rc = vd_image_set_prop(img, "compression-type", VD_PROP_STRING, "%s",
                               compression[q->compression_type]);
    if (rc == 0 && v3)
        rc = vd_image_set_prop(img, "lazy-refcounts", VD_PROP_BOOL, "%s",
                               (q->compat & QCOW2_COMPAT_LAZY_REFCOUNTS) ? "true" : "false");
    if (rc == 0)
        rc = vd_image_set_prop(img, "refcount-bits", VD_PROP_INT, "%u", 1u << q->refcount_order);
    if (rc == 0)
        rc = qcow2_crypt_describe(img, q);
    if (rc == 0 && q->data_file_name)
        rc = vd_image_set_prop(img, "data-file", VD_PROP_STRING, "%s", q->data_file_name);
    if (rc == 0 && q->data_file_name)
        rc = vd_image_set_prop(img, "data-file-raw", VD_PROP_BOOL, "%s",
                               (q->autoclear & QCOW2_AUTOCLEAR_DATA_RAW) ? "true" : "false");
    if (rc == 0 && v3)
        rc = vd_image_set_prop(img, "corrupt", VD_PROP_BOOL, "%s",
                               (q->incompat & QCOW2_INCOMPAT_CORRUPT) ? "true" : "false");
    if (rc == 0 && v3)
        rc = vd_image_set_prop(img, "extended-l2", VD_PROP_BOOL, "%s",
                               (q->incompat & QCOW2_INCOMPAT_EXTL2) ? "true" : "false");
    return rc;
}

static void q_close(vd_image *img);

/*
 * Open the external data file the header names, next to the image. Core
 * then checks that it is a file of its own and locks it (vd_open_image).
 */
static int open_data_file(vd_image *img, const struct qcow2 *q)
{
    struct vd_chain_where where = { img->filename, -1, q->data_file_name };
    struct vd_named_file found = { NULL, NULL, -1 };
    int rc = vd_image_anchor(img, &where.anchor); /* confined as the image is */
    if (rc == 0)
        rc = vd_chain_open_file(&found, &where, vd_file_flags_for(img->open_flags & ~VD_OPEN_RDWR) |
                                                    (img->read_only ? 0 : VD_FILE_RDWR));
    img->data_file = found.file;
    found.file = NULL;
    vd_named_file_release(&found);
    if (rc < 0) {
        char msg[768];
        snprintf(msg, sizeof msg, "%s", vd_errmsg());
        rc = vd_err(rc, "%s: could not open the external data file: %s", img->filename, msg);
    }
    return rc;
}

int qcow2_signal_corruption(vd_image *img, const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    struct qcow2 *q = qcow2_of(img);
    bool mark = !img->read_only && !vd_image_poisoned(img) && !(q->incompat & QCOW2_INCOMPAT_CORRUPT) &&
                q->version >= 3;
    vd_image_poison(img, VD_ECORRUPT);
    if (mark) {
        if (qcow2_write_corrupt_bit(img, q) == 0)
            vd_image_sync_now(img);
        qcow2_update_props(img, q);
    }
    return vd_err(VD_ECORRUPT, "%s: qcow2 image is corrupt%s: %s", img->filename,
                  mark ? " (marked corrupt; repair it with 'vdisk check -r all')" : "", what);
}

/*
 * A writable open repairs the refcounts of a dirty image (a lazy-refcount
 * image that was not closed cleanly), clears autoclear bits we do not
 * maintain, and marks lazy-refcount images dirty while they are open.
 */
static int prepare_for_writing(vd_image *img, struct qcow2 *q)
{
    uint64_t before_incompat = q->incompat, before_autoclear = q->autoclear;
    if (q->incompat & QCOW2_INCOMPAT_DIRTY) {
        vd_check_result res = VD_CHECK_RESULT_INIT;
        int rc = qcow2_check(img, VD_CHECK_REPAIR_ALL, &res, NULL, NULL);
        if (rc == 0 && res.corruptions)
            rc = vd_err(VD_ECORRUPT, "%s: repairing the refcounts of a dirty qcow2 image left %llu "
                        "errors", img->filename, (unsigned long long)res.corruptions);
        if (rc < 0)
            return rc;
        q->incompat &= ~QCOW2_INCOMPAT_DIRTY;
    }
    if (q->compat & QCOW2_COMPAT_LAZY_REFCOUNTS) {
        q->incompat |= QCOW2_INCOMPAT_DIRTY;
        q->dirty_by_us = true;
    }
    /* the autoclear features we keep up to date; the others' data goes stale */
    q->autoclear &= QCOW2_AUTOCLEAR_DATA_RAW | QCOW2_AUTOCLEAR_BITMAPS;
    if (q->incompat == before_incompat && q->autoclear == before_autoclear)
        return 0;
    int rc = qcow2_write_features(img, q);
    return rc == 0 ? vd_image_sync(img) : rc;
}

/*
 * Before L2 tables are written back: the layout is sane, and the data they
 * name is durable, and so are the refcounts unless they are lazy.
 */
static int before_l2_write(void *ctx)
{
    vd_image *img = ctx;
    int rc = qcow2_check_layout(img);
    if (rc == 0)
        rc = (qcow2_of(img)->compat & QCOW2_COMPAT_LAZY_REFCOUNTS) ? vd_image_sync(img)
                                                                   : qcow2_refcounts_durable(img);
    return rc;
}

static int q_open(vd_image *img, const vd_open_opts *opts)
{
    struct qcow2 *q = calloc(1, sizeof *q);
    if (!q)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    q->metadata_prealloc = -1;
    pthread_mutex_init(&q->layout_lock, NULL);
    img->priv = q;
    int rc = qcow2_read_header(img, q);
    if (rc == 0 && !img->read_only && (q->incompat & QCOW2_INCOMPAT_CORRUPT) &&
        !(img->open_flags & VD_OPEN_REPAIR))
        rc = vd_err(VD_ECORRUPT, "%s: qcow2 image is marked corrupt; it can only be opened read-only "
                    "(repair it with 'vdisk check -r all')", img->filename);
    if (rc == 0)
        rc = qcow2_crypt_open(img, q, opts);
    if (rc == 0 && qcow2_has_data_file(q))
        rc = open_data_file(img, q);
    if (rc == 0)
        rc = qcow2_read_bitmap_directory(img, q);
    if (rc == 0)
        rc = load_l1(img, q);
    if (rc == 0)
        rc = qcow2_read_snapshots(img, q);
    if (rc == 0 && opts->snapshot && !img->read_only)
        rc = vd_err(VD_EINVAL, "%s: a snapshot can only be opened read-only", img->filename);
    if (rc == 0 && opts->snapshot)
        rc = qcow2_view_snapshot(img, q, opts->snapshot);
    if (rc == 0)
        rc = qcow2_load_refcount_table(img, q);
    if (rc == 0 && q->table_past_eof && !img->read_only && !(img->open_flags & VD_OPEN_REPAIR))
        rc = vd_err(VD_ECORRUPT, "%s: the qcow2 %s extends past the end of the file (a truncated "
                    "copy?); it can only be opened read-only (repair it with 'vdisk check -r all')",
                    img->filename, q->table_past_eof);
    uint64_t file_size = 0;
    if (rc == 0)
        rc = vd_file_get_size(img->file, &file_size);
    size_t tables = q->cluster_size ? l2_cache_tables(q, img->size, opts->cache_bytes) : 0;
    if (rc == 0)
        rc = vd_cache_new(&q->l2_cache, img->file, (size_t)q->cluster_size, tables);
    if (rc == 0)
        rc = vd_cache_new(&q->rb_cache, img->file, (size_t)q->cluster_size, tables / 4);
    if (rc == 0) {
        vd_cache_set_before_write(q->l2_cache, before_l2_write, img);
        vd_cache_set_before_write(q->rb_cache, qcow2_check_layout, img);
        rc = qcow2_alloc_end_past(img, q, file_size, &q->alloc_end);
    }
    if (rc == 0) {
        q->meta_stale = true;
        img->cow = q->crypt_method ? &q->cow_ops : &qcow2_cow_ops;
        img->cluster_size = (uint32_t)q->cluster_size;
        rc = qcow2_update_props(img, q);
    }
    if (rc == 0 && !img->read_only)
        rc = prepare_for_writing(img, q);
    if (rc == 0 && !img->read_only)
        rc = qcow2_bitmaps_open_rw(img, q);
    if (rc < 0)
        q_close(img);
    return rc;
}

/* Write all metadata in dependency order and make it durable. */
int qcow2_flush_metadata(vd_image *img, struct qcow2 *q)
{
    int rc = qcow2_refcounts_durable(img);
    if (rc == 0 && vd_cache_has_dirty(q->l2_cache)) {
        rc = vd_cache_writeback(q->l2_cache);
        vd_image_mark_unsynced(img);
    }
    if (rc == 0 && q->l1_dirty) {
        rc = vd_image_sync(img); /* new L2 tables before the L1 entries naming them */
        if (rc == 0)
            rc = qcow2_write_l1(img, q);
    }
    if (rc == 0)
        rc = vd_image_sync(img);
    if (rc == 0 && q->npending) {
        rc = qcow2_apply_pending_frees(img, q);
        if (rc == 0)
            rc = qcow2_refcounts_durable(img);
    }
    return rc < 0 ? vd_image_poison(img, rc) : 0;
}

/* A flush also makes bitmaps the API changed durable (lib/core/bitmap.c says why only those). */
static int q_flush(vd_image *img)
{
    int rc = qcow2_flush_metadata(img, qcow2_of(img));
    if (rc == 0 && img->bitmaps_changed)
        rc = qcow2_bitmaps_store(img, false);
    return rc;
}

/* An image opened with VD_OPEN_REPAIR stays read-only for data until it is repaired. */
static int refuse_if_corrupt(vd_image *img)
{
    if (qcow2_of(img)->incompat & QCOW2_INCOMPAT_CORRUPT)
        return vd_err(VD_ECORRUPT, "%s: qcow2 image is marked corrupt; repair it with "
                      "'vdisk check -r all' before writing", img->filename);
    return 0;
}

/* An encrypted image opened without its passphrase moves no data (qcow2_crypt_need_key). */
static int q_read(vd_image *img, uint64_t off, const struct vd_iov *v)
{
    int rc = qcow2_crypt_need_key(img);
    return rc < 0 ? rc : vd_cow_read(img, off, v);
}

/* Block status too: a copy without the key would otherwise make an empty image of it. */
static int q_block_status(vd_image *img, uint64_t off, uint64_t len, vd_extent *ext)
{
    int rc = qcow2_crypt_need_key(img);
    return rc < 0 ? rc : vd_cow_block_status(img, off, len, ext);
}

static int refuse_to_write(vd_image *img)
{
    int rc = refuse_if_corrupt(img);
    return rc < 0 ? rc : qcow2_crypt_need_key(img);
}

static int q_write(vd_image *img, uint64_t off, const struct vd_iov *v, uint32_t flags)
{
    int rc = refuse_to_write(img);
    return rc < 0 ? rc : vd_cow_write(img, off, v, flags);
}

/*
 * Bound the list of frees waiting for a flush. Other requests may run: the
 * metadata lock held alone keeps the map still while the flush writes it
 * (see the contract in cow/engine.h).
 */
static int flush_if_many_frees(vd_image *img)
{
    struct qcow2 *q = qcow2_of(img);
    pthread_rwlock_wrlock(&img->meta_lock);
    int rc = q->npending > MAX_PENDING_FREES ? qcow2_flush_metadata(img, q) : 0;
    pthread_rwlock_unlock(&img->meta_lock);
    return rc;
}

static int q_discard(vd_image *img, uint64_t off, uint64_t len)
{
    int rc = refuse_to_write(img);
    if (rc == 0)
        rc = vd_cow_discard(img, off, len);
    return rc == 0 ? flush_if_many_frees(img) : rc;
}

static int q_write_zeroes(vd_image *img, uint64_t off, uint64_t len, uint32_t flags)
{
    int rc = refuse_to_write(img);
    if (rc == 0)
        rc = vd_cow_write_zeroes(img, off, len, flags);
    return rc == 0 ? flush_if_many_frees(img) : rc;
}

static void q_close(vd_image *img)
{
    struct qcow2 *q = qcow2_of(img);
    if (!q)
        return;
    /* a clean close of a lazy-refcount image: everything is flushed, clear the dirty bit */
    if (!img->read_only && !vd_image_poisoned(img) && q->l2_cache && q->dirty_by_us &&
        qcow2_flush_metadata(img, q) == 0) {
        q->incompat &= ~QCOW2_INCOMPAT_DIRTY;
        if (qcow2_write_features(img, q) == 0)
            vd_image_sync(img);
    }
    vd_file_close(img->data_file);
    img->data_file = NULL;
    vd_cache_free(q->l2_cache);
    vd_cache_free(q->rb_cache);
    free(q->l1);
    free(q->rt);
    free(q->pending_frees);
    free(q->meta);
    free(q->bitmap_tables);
    free(q->bitmap_dir);
    qcow2_free_snapshots(q);
    qcow2_crypt_close(q);
    qcow2_free_header(q);
    pthread_mutex_destroy(&q->layout_lock);
    free(q);
    img->priv = NULL;
}

static int q_set_backing(vd_image *img, const char *file, const char *format)
{
    struct qcow2 *q = qcow2_of(img);
    if (file && strlen(file) > QCOW2_MAX_BACKING_NAME)
        return vd_err(VD_EINVAL, "%s: backing file name is longer than %d bytes", img->filename,
                      QCOW2_MAX_BACKING_NAME);
    char *new_file = file ? strdup(file) : NULL, *new_format = format ? strdup(format) : NULL;
    if ((file && !new_file) || (format && !new_format)) {
        free(new_file);
        free(new_format);
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    }
    free(q->backing_file);
    free(q->backing_format);
    q->backing_file = new_file;
    q->backing_format = new_format;
    int rc = qcow2_write_header(img, q);
    if (rc == 0)
        rc = vd_image_sync(img);
    return rc < 0 ? vd_image_poison(img, rc) : 0;
}

static void q_get_info(vd_image *img, vd_info *info)
{
    struct qcow2 *q = qcow2_of(img);
    info->cluster_size = (uint32_t)q->cluster_size;
    info->dirty = (q->incompat & QCOW2_INCOMPAT_DIRTY) != 0;
    info->backing_file = q->backing_file;
    info->backing_format = q->backing_format;
    info->encrypted = q->crypt_method != 0;
    info->data_file = img->data_file ? img->data_file->path : NULL;
}

static void q_for_each_extra_file(vd_image *img, void (*fn)(void *ctx, const char *path), void *ctx)
{
    if (img->data_file)
        fn(ctx, img->data_file->path);
}

const struct vd_backend vd_backend_qcow2 = {
    .name = "qcow2",
    .grows_at_end = true,
    .create_options = qcow2_create_options,
    .probe = qcow2_probe,
    .create = qcow2_create,
    .open = q_open,
    .close = q_close,
    .read = q_read,
    .write = q_write,
    .write_zeroes = q_write_zeroes,
    .discard = q_discard,
    .flush = q_flush,
    .resize = qcow2_resize,
    .block_status = q_block_status,
    .get_info = q_get_info,
    .check = qcow2_check,
    .for_each_extra_file = q_for_each_extra_file,
    .measure = qcow2_measure,
    .amend_options = qcow2_amend_options,
    .amend = qcow2_amend,
    .set_backing = q_set_backing,
    .snapshot_count = qcow2_snapshot_count,
    .snapshot_get = qcow2_snapshot_get,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_apply = qcow2_snapshot_apply,
    .snapshot_delete = qcow2_snapshot_delete,
    .bitmap_load = qcow2_bitmap_load,
    .bitmaps_store = qcow2_bitmaps_store,
    .bitmap_can_add = qcow2_bitmap_can_add,
};
