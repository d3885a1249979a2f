/*
 * vd_convert(): check the options, open the source, create (or open) the
 * destination, run the copy (copy.c), and on failure remove a destination
 * the call created.
 */
#include "core/internal.h"
#include "convert/copy.h"
#include "core/bitmap.h"
#include "cow/engine.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Chunks in flight when the caller leaves it to us: measured best on two cores. */
#define DEFAULT_PARALLEL 4
#define DEFAULT_COMPARE_BLOCK 4096
#define SECTOR_SIZE 512

#define KNOWN_FLAGS (VD_CONVERT_EXISTING | VD_CONVERT_TARGET_IS_ZERO | VD_CONVERT_OUT_OF_ORDER | \
                     VD_CONVERT_COMPRESS | VD_CONVERT_BITMAPS | VD_CONVERT_SKIP_BROKEN_BITMAPS)
/* the cache mode's flags (vd_cache_mode_flags()) are allowed on both sides */
#define CACHE_OPEN_FLAGS (VD_OPEN_DIRECT | VD_OPEN_DIRECT_FALLBACK | VD_OPEN_WRITETHROUGH)
#define SRC_OPEN_FLAGS (VD_OPEN_NO_LOCK | VD_OPEN_CONFINED | VD_OPEN_SAFE | CACHE_OPEN_FLAGS)
#define DST_OPEN_FLAGS (VD_OPEN_NO_FLUSH | VD_OPEN_CONFINED | VD_OPEN_SAFE | CACHE_OPEN_FLAGS)

/* The options of 0.2 are all known to a caller that passes this much; of 0.3, OPTS_SIZE_1_2. */
#define OPTS_SIZE_1_1 (offsetof(vd_convert_opts, progress_ctx) + sizeof(void *))
#define OPTS_SIZE_1_2 (offsetof(vd_convert_opts, bitmap) + sizeof(const char *))

/* vd_convert_opts.bitmap, for a caller built against a header that has it. */
static const char *bitmap_filter(const vd_convert_opts *o)
{
    return o->struct_size >= OPTS_SIZE_1_2 ? o->bitmap : NULL;
}

static bool has_create_option(const struct vd_backend *be, const char *name)
{
    for (const struct vd_option_desc *o = be->create_options; o && o->name; o++)
        if (strcmp(o->name, name) == 0)
            return true;
    return false;
}

static int check_options(const vd_convert_opts *o)
{
    if (!o || o->struct_size < OPTS_SIZE_1_1)
        return vd_err(VD_EINVAL, "vd_convert: opts must be set up with VD_CONVERT_OPTS_INIT");
    if (o->flags & ~KNOWN_FLAGS)
        return vd_err(VD_EINVAL, "vd_convert: unknown flags 0x%x", o->flags & ~KNOWN_FLAGS);
    if (!o->dst_path || !o->src == !o->src_path)
        return vd_err(VD_EINVAL, "vd_convert: a destination path and either a source handle "
                      "or a source path are needed");
    if (o->src && (o->src_format || o->src_open_flags || o->snapshot))
        return vd_err(VD_EINVAL, "vd_convert: src_format, src_open_flags and snapshot apply "
                      "to a source path, not a handle");
    if (o->src_open_flags & ~SRC_OPEN_FLAGS)
        return vd_err(VD_EINVAL, "vd_convert: src_open_flags 0x%x not allowed",
                      o->src_open_flags & ~SRC_OPEN_FLAGS);
    if (o->dst_open_flags & ~DST_OPEN_FLAGS)
        return vd_err(VD_EINVAL, "vd_convert: dst_open_flags 0x%x not allowed",
                      o->dst_open_flags & ~DST_OPEN_FLAGS);
    if ((o->flags & VD_CONVERT_TARGET_IS_ZERO) && !(o->flags & VD_CONVERT_EXISTING))
        return vd_err(VD_EINVAL, "--target-is-zero requires use of -n flag "
                      "(VD_CONVERT_TARGET_IS_ZERO needs VD_CONVERT_EXISTING)");
    if ((o->flags & VD_CONVERT_SKIP_BROKEN_BITMAPS) && !(o->flags & VD_CONVERT_BITMAPS))
        return vd_err(VD_EINVAL, "Use of --skip-broken-bitmaps requires --bitmaps "
                      "(VD_CONVERT_SKIP_BROKEN_BITMAPS needs VD_CONVERT_BITMAPS)");
    if ((o->flags & VD_CONVERT_EXISTING) && o->dst_options)
        return vd_err(VD_EINVAL, "-o has no effect when skipping image creation "
                      "(dst_options with VD_CONVERT_EXISTING)");
    if (o->sparse_size % SECTOR_SIZE || o->sparse_size > VD_CONVERT_MAX_SPARSE_SIZE)
        return vd_err(VD_EINVAL, "Invalid buffer size for sparse output specified "
                      "(%llu): valid sizes are multiples of %u up to %llu, or 0",
                      (unsigned long long)o->sparse_size, SECTOR_SIZE,
                      (unsigned long long)VD_CONVERT_MAX_SPARSE_SIZE);
    if (o->parallel > VD_CONVERT_MAX_PARALLEL)
        return vd_err(VD_EINVAL, "Invalid number of coroutines. Allowed number of coroutines "
                      "is between 1 and %u", VD_CONVERT_MAX_PARALLEL);
    if (o->reserved_)
        return vd_err(VD_EINVAL, "vd_convert: reserved_ must be 0");
    const char *format = o->dst_format ? o->dst_format : "raw";
    const struct vd_backend *be = vd_backend_find(format);
    if (!be)
        return vd_err(VD_EFORMAT, "Unknown file format '%s'", format);
    if (o->backing_file && !(o->flags & VD_CONVERT_EXISTING) &&
        !has_create_option(be, "backing_file"))
        return vd_err(VD_EUNSUPPORTED, "Backing file not supported for file format '%s'",
                      format);
    return 0;
}

/* item=value appended to list (malloc'd, may start NULL), its commas doubled as ",,". */
static int append_option(char **list, const char *item, const char *value)
{
    size_t have = *list ? strlen(*list) : 0, commas = 0;
    for (const char *p = value; *p; p++)
        commas += *p == ',';
    char *grown = realloc(*list, have + 1 + strlen(item) + 1 + strlen(value) + commas + 1);
    if (!grown)
        return vd_err(VD_ENOMEM, "vd_convert: out of memory");
    char *out = grown + have;
    out += sprintf(out, "%s%s=", have ? "," : "", item);
    for (const char *p = value; *p; p++) {
        *out++ = *p;
        if (*p == ',')
            *out++ = ',';
    }
    *out = '\0';
    *list = grown;
    return 0;
}

/* The destination's create options: dst_options, then backing_file= and backing_fmt=. */
static int create_options(const vd_convert_opts *o, char **list)
{
    *list = o->dst_options ? strdup(o->dst_options) : NULL;
    int rc = o->dst_options && !*list ? vd_err(VD_ENOMEM, "vd_convert: out of memory") : 0;
    if (rc == 0 && o->backing_file)
        rc = append_option(list, "backing_file", o->backing_file);
    if (rc == 0 && o->backing_format)
        rc = append_option(list, "backing_fmt", o->backing_format);
    return rc;
}

/* Keep the cause's code; put context (what failed, in qemu-img's words) before its message. */
static int prefix_error(int rc, const char *context)
{
    char why[768];
    snprintf(why, sizeof why, "%s", *vd_errmsg() ? vd_errmsg() : vd_strerror(rc));
    return vd_err(rc, "%s: %s", context, why);
}

/*
 * Create the destination; *created says whether the path is new, and so
 * ours to remove. An existing file is overwritten as qemu-img does, unless
 * it is in use (vd_create() refuses that).
 */
static int create_destination(const vd_convert_opts *o, const char *format, uint64_t size,
                              bool *created)
{
    char *options;
    int rc = create_options(o, &options);
    if (rc < 0)
        return rc;
    uint32_t confined = (o->dst_open_flags & (VD_OPEN_SAFE | VD_OPEN_CONFINED))
                        ? VD_CREATE_CONFINED : 0;
    rc = vd_create(o->dst_path, format, size, options, VD_CREATE_EXCL | confined);
    *created = rc == 0;
    if (rc == VD_EEXIST)
        rc = vd_create(o->dst_path, format, size, options, confined);
    free(options);
    if (rc < 0) {
        char context[512];
        snprintf(context, sizeof context, "%s: error while converting %s", o->dst_path, format);
        return prefix_error(rc, context);
    }
    return 0;
}

/* Paths collected by for_each_extra_file. */
struct path_list {
    char **paths;
    size_t count;
};

static void collect_path(void *ctx, const char *path)
{
    struct path_list *l = ctx;
    char **grown = realloc(l->paths, (l->count + 1) * sizeof *grown);
    if (grown && (grown[l->count] = strdup(path)))
        l->count++;
    if (grown)
        l->paths = grown;
}

/*
 * Close a destination after rc, keeping rc's message. One this call created
 * loses the files it is made of besides its own (VMDK extents, a qcow2 data
 * file) here; clean_up() removes its own file.
 */
static void close_after_error(vd_image *img, int rc, bool created)
{
    char why[1024];
    snprintf(why, sizeof why, "%s", vd_errmsg());
    struct path_list extra = { NULL, 0 };
    if (created && img->backend->for_each_extra_file)
        img->backend->for_each_extra_file(img, collect_path, &extra);
    vd_close(img);
    for (size_t i = 0; i < extra.count; i++) {
        unlink(extra.paths[i]);
        free(extra.paths[i]);
    }
    free(extra.paths);
    vd_err(rc, "%s", why);
}

/*
 * The passphrase of the secret the destination's options name (key-secret=ID,
 * which luks create takes, or qcow2's encrypt.key-secret=ID), into *secret;
 * NULL if none.
 */
static int destination_secret(const vd_convert_opts *o, char **secret)
{
    *secret = NULL;
    struct vd_kv kv = { 0 };
    int rc = vd_kv_parse(&kv, o->dst_options);
    const char *id = rc == 0 ? vd_kv_get(&kv, "key-secret") : NULL;
    if (!id) /* qcow2's name for it */
        id = vd_kv_get(&kv, "encrypt.key-secret");
    if (id)
        rc = vd_secret_lookup(id, secret);
    vd_kv_free(&kv);
    return rc;
}

static int open_destination(const vd_convert_opts *o, const char *format, uint64_t src_size,
                            bool created, vd_image **dst)
{
    vd_open_opts open_opts = VD_OPEN_OPTS_INIT;
    open_opts.flags = VD_OPEN_RDWR | o->dst_open_flags;
    open_opts.format = format;
    char *secret;
    int rc = destination_secret(o, &secret);
    open_opts.secret = secret;
    if (rc == 0)
        rc = vd_open_ext(dst, o->dst_path, &open_opts);
    vd_secret_free(secret);
    if (rc < 0)
        return rc;
    uint64_t size;
    rc = vd_get_size(*dst, &size);
    if (rc == 0 && size < src_size)
        rc = vd_err(VD_ERANGE, "%s: output file is smaller than input file (%llu < %llu bytes)",
                    o->dst_path, (unsigned long long)size, (unsigned long long)src_size);
    if (rc < 0) {
        close_after_error(*dst, rc, created);
        *dst = NULL;
    }
    return rc;
}

static int copy_into(const vd_convert_opts *o, vd_image *src, vd_image *dst, uint64_t size)
{
    /* an overlay gets only what differs from its backing image, compared cluster by cluster */
    vd_image *base = vd_get_backing(dst);
    vd_info info = VD_INFO_INIT;
    int rc = vd_get_info(dst, &info);
    if (rc < 0)
        return rc;
    if ((o->flags & VD_CONVERT_COMPRESS) && info.encrypted)
        return vd_err(VD_EUNSUPPORTED, "Compression and encryption not supported at the same time");
    if ((o->flags & VD_CONVERT_COMPRESS) && !vd_cow_takes_compressed_writes(dst))
        return vd_err(VD_EUNSUPPORTED, "Compression not supported for this file format");
    /* qemu-img's words for a format that takes compressed writes but has no clusters (flat vmdk) */
    if ((o->flags & VD_CONVERT_COMPRESS) && !info.cluster_size)
        return vd_err(VD_EUNSUPPORTED, "invalid cluster size");
    struct vd_copy_params params = {
        .src = src, .dst = dst, .size = size, .sparse_block = (size_t)o->sparse_size,
        .dst_reads_zero = !(o->flags & VD_CONVERT_EXISTING) ||
                          (o->flags & VD_CONVERT_TARGET_IS_ZERO),
        .base = base,
        .compare_block = info.cluster_size ? info.cluster_size : DEFAULT_COMPARE_BLOCK,
        .compress = ((o->flags & VD_CONVERT_COMPRESS) && vd_cow_can_compress(dst)) ||
                    vd_cow_compresses_every_cluster(dst),
        .parallel = o->parallel ? o->parallel : DEFAULT_PARALLEL,
        .out_of_order = o->flags & VD_CONVERT_OUT_OF_ORDER,
        .progress = o->progress, .progress_ctx = o->progress_ctx,
        .bitmap = bitmap_filter(o),
    };
    return vd_copy_image(&params);
}

/*
 * VD_CONVERT_BITMAPS, before anything is created: unless skipped, an
 * inconsistent bitmap of the source refuses the conversion. The one named is
 * the last in directory order, as qemu-img names it (QEMU lists the bitmaps
 * of an image last first).
 */
static int check_source_bitmaps(const vd_convert_opts *o, vd_image *src)
{
    if (!(o->flags & VD_CONVERT_BITMAPS) || (o->flags & VD_CONVERT_SKIP_BROKEN_BITMAPS))
        return 0;
    size_t count;
    int rc = vd_bitmap_count(src, &count);
    for (size_t i = count; rc == 0 && i-- > 0;) {
        vd_bitmap_info b = VD_BITMAP_INFO_INIT;
        if ((rc = vd_bitmap_get(src, i, &b)) == 0 && (b.flags & VD_BITMAP_INCONSISTENT))
            return vd_err(VD_ECORRUPT, "Cannot copy inconsistent bitmap '%s'", b.name);
    }
    return rc;
}

/*
 * VD_CONVERT_BITMAPS: each bitmap of src's own, added to dst and filled from
 * src's bits; the inconsistent ones are left out (check_source_bitmaps let
 * them through only with VD_CONVERT_SKIP_BROKEN_BITMAPS).
 */
static int copy_bitmaps(vd_image *src, vd_image *dst)
{
    size_t count;
    int rc = vd_bitmap_count(src, &count);
    for (size_t i = 0; rc == 0 && i < count; i++) {
        vd_bitmap_info b = VD_BITMAP_INFO_INIT;
        if ((rc = vd_bitmap_get(src, i, &b)) < 0)
            break;
        if (b.flags & VD_BITMAP_INCONSISTENT)
            continue;
        rc = vd_bitmap_add(dst, b.name, b.granularity,
                           (b.flags & VD_BITMAP_AUTO) ? 0 : VD_BITMAP_ADD_DISABLED);
        if (rc == 0)
            rc = vd_bitmap_merge(dst, b.name, src, b.name, 0);
    }
    return rc;
}

/*
 * Into the destination, which is closed (written out, synced unless
 * NO_FLUSH) at the end. *created: the call made the file; *written: the copy
 * began writing into it.
 */
static int convert_to(const vd_convert_opts *o, vd_image *src, uint64_t size, bool *created,
                      bool *written)
{
    const char *format = o->dst_format ? o->dst_format : "raw";
    int rc = (o->flags & VD_CONVERT_EXISTING) ? 0 : create_destination(o, format, size, created);
    vd_image *dst = NULL;
    if (rc == 0)
        rc = open_destination(o, format, size, *created, &dst);
    if (rc < 0)
        return rc;
    if (o->flags & VD_CONVERT_BITMAPS)
        rc = vd_bitmaps_can_take(dst);
    if (rc < 0) {
        close_after_error(dst, rc, *created);
        return rc;
    }
    *written = true;
    rc = copy_into(o, src, dst, size);
    if (rc == 0 && (o->flags & VD_CONVERT_BITMAPS))
        rc = copy_bitmaps(src, dst);
    if (rc < 0) {
        close_after_error(dst, rc, *created);
        return rc;
    }
    rc = vd_close(dst);
    if (rc < 0) {
        char context[512];
        snprintf(context, sizeof context, "error while writing '%s'", o->dst_path);
        return prefix_error(rc, context);
    }
    return 0;
}

/* After a failure: remove what the call created; say what is left of an existing target. */
static int clean_up(const vd_convert_opts *o, int rc, bool created, bool written)
{
    if (created) {
        unlink(o->dst_path);
    } else if (written && (o->flags & VD_CONVERT_EXISTING)) {
        char why[768];
        snprintf(why, sizeof why, "%s", vd_errmsg());
        vd_err(rc, "%s; the existing target '%s' is left as written so far", why, o->dst_path);
    }
    return rc;
}

static int open_source(const vd_convert_opts *o, vd_image **src)
{
    vd_open_opts open_opts = VD_OPEN_OPTS_INIT;
    open_opts.flags = o->src_open_flags;
    open_opts.format = o->src_format;
    open_opts.snapshot = o->snapshot;
    return vd_open_ext(src, o->src_path, &open_opts);
}

int vd_convert(const vd_convert_opts *opts)
{
    vd_err_clear();
    int rc = check_options(opts);
    if (rc < 0)
        return rc;
    vd_image *src = opts->src;
    if (!src && (rc = open_source(opts, &src)) < 0)
        return rc;
    uint64_t size;
    bool created = false, written = false;
    rc = vd_get_size(src, &size);
    if (rc == 0)
        rc = check_source_bitmaps(opts, src);
    if (rc == 0)
        rc = convert_to(opts, src, size, &created, &written);
    if (rc < 0)
        rc = clean_up(opts, rc, created, written);
    if (!opts->src)
        vd_close(src);
    return rc;
}
