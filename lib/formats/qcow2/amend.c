/*
 * Changing the options of an existing qcow2 image (compat both ways,
 * refcount width, lazy refcounts, size, the data file's name): qemu-img
 * amend, with QEMU's qcow2_amend_options as the model. Every option is checked before
 * anything changes; then the changes run in QEMU's order: the upgrade to
 * version 3 first (what follows may need it), the downgrade to version 2
 * last (after what version 2 cannot hold is gone).
 *
 * Crash safety: new structures go to free clusters and are durable before
 * one header write publishes them, and the header itself is replaced so that
 * a torn write still leaves a valid header (publish_header). A crash leaves
 * the image as before or after each change, at worst with leaked clusters.
 */
#include "formats/qcow2/qcow2.h"

#include <stdlib.h>
#include <string.h>

#define SECTOR 512u

const struct vd_option_desc qcow2_amend_options[] = {
    { "backing_file", "File name of a base image (as recorded; change it with rebase)", NULL },
    { "backing_fmt", "Image format of the base image (as recorded; change it with rebase)", NULL },
    { "compat", "Compatibility level (v2 [0.10] or v3 [1.1])", NULL },
    { "data_file", "File name of an external data file", NULL },
    { "data_file_raw", "The external data file must stay valid as a raw image", NULL },
    { "lazy_refcounts", "Postpone refcount updates", NULL },
    { "refcount_bits", "Width of a reference count entry in bits", NULL },
    { "size", "Virtual disk size", NULL },
    { "encrypt.state", "LUKS: new state of the affected keyslots (active, inactive)", NULL },
    { "encrypt.keyslot", "LUKS: a single keyslot to modify explicitly (0 to 7)", NULL },
    { "encrypt.old-secret", "LUKS: all keyslots that match this password (ID of a secret)", NULL },
    { "encrypt.new-secret", "LUKS: new secret to set in the matching keyslots (ID of a secret)", NULL },
    { "encrypt.iter-time", "LUKS: time to spend in PBKDF2 in milliseconds", "2000" },
    { NULL, NULL, NULL },
};

/* What the options ask for; an option not given keeps the image's value. */
struct amend_target {
    uint32_t version;
    uint32_t refcount_order;
    bool lazy_refcounts;
    uint64_t size;
    bool clear_data_raw;
    const char *data_file; /* a new name for the external data file, or NULL */
};

static bool lazy_refcounts_on(const struct qcow2 *q)
{
    return (q->compat & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0;
}

/* ------------------------------------------------------------ checking */

static int parse_compat(const char *value, uint32_t *version)
{
    if (strcmp(value, "0.10") == 0 || strcmp(value, "v2") == 0)
        *version = 2;
    else if (strcmp(value, "1.1") == 0 || strcmp(value, "v3") == 0)
        *version = 3;
    else
        return vd_err(VD_EINVAL, "Unknown compatibility level %s", value);
    return 0;
}

static int parse_target(vd_image *img, const struct qcow2 *q, const struct vd_kv *opts,
                        struct amend_target *t)
{
    bool data_raw = (q->autoclear & QCOW2_AUTOCLEAR_DATA_RAW) != 0;
    uint64_t refcount_bits = 1ull << q->refcount_order;
    *t = (struct amend_target){ q->version, q->refcount_order, lazy_refcounts_on(q), img->size,
                                false, vd_kv_get(opts, "data_file") };
    const char *compat = vd_kv_get(opts, "compat");
    int rc;
    if ((compat && (rc = parse_compat(compat, &t->version)) < 0) ||
        (rc = vd_kv_get_size(opts, "size", img->size, &t->size)) < 0 ||
        (rc = vd_kv_get_bool(opts, "lazy_refcounts", t->lazy_refcounts, &t->lazy_refcounts)) < 0 ||
        (rc = vd_kv_get_size(opts, "refcount_bits", refcount_bits, &refcount_bits)) < 0 ||
        (rc = vd_kv_get_bool(opts, "data_file_raw", data_raw, &data_raw)) < 0)
        return rc;
    if (t->size > INT64_MAX)
        return vd_err(VD_ETOOBIG, "%s: size %llu is too large", img->filename,
                      (unsigned long long)t->size);
    if (refcount_bits < 1 || refcount_bits > 64 || (refcount_bits & (refcount_bits - 1)))
        return vd_err(VD_EINVAL, "Refcount width must be a power of two and may not exceed 64 bits");
    t->refcount_order = (uint32_t)__builtin_ctzll(refcount_bits);
    if (t->data_file && !qcow2_has_data_file(q))
        return vd_err(VD_EINVAL, "data-file can only be set for images that use an external data file");
    if (t->data_file && strlen(t->data_file) > QCOW2_MAX_BACKING_NAME)
        return vd_err(VD_EINVAL, "data file name is longer than %d bytes", QCOW2_MAX_BACKING_NAME);
    if (data_raw && !(q->autoclear & QCOW2_AUTOCLEAR_DATA_RAW))
        return vd_err(VD_EINVAL, "data-file-raw cannot be set on existing images");
    t->clear_data_raw = !data_raw && (q->autoclear & QCOW2_AUTOCLEAR_DATA_RAW);
    return 0;
}

static bool same_name(const char *a, const char *b)
{
    return a && b ? strcmp(a, b) == 0 : a == b;
}

/* QEMU 7.2 takes backing_file/backing_fmt only as the image records them both. */
static int check_backing(const struct qcow2 *q, const struct vd_kv *opts)
{
    const char *file = vd_kv_get(opts, "backing_file"), *format = vd_kv_get(opts, "backing_fmt");
    if ((file || format) && (!same_name(file, q->backing_file) || !same_name(format, q->backing_format)))
        return vd_err(VD_EINVAL, "Cannot amend the backing file\n"
                      "You can use 'vdisk rebase' instead.");
    return 0;
}

/*
 * Called for each L2 table an L1 table names (active: the active one's);
 * shared tables are visited once per naming L1 entry.
 */
typedef int (*l2_visitor)(vd_image *img, struct qcow2 *q, uint64_t l2_offset, bool active, void *ctx);

static int visit_l1(vd_image *img, struct qcow2 *q, const uint64_t *l1, uint32_t entries,
                    bool active, l2_visitor visit, void *ctx)
{
    for (uint32_t i = 0; i < entries; i++) {
        uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK;
        if (l2 & (q->cluster_size - 1))
            return qcow2_signal_corruption(img, "L1 entry is not cluster aligned (0x%llx)",
                                           (unsigned long long)l1[i]);
        int rc = l2 ? visit(img, q, l2, active, ctx) : 0;
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Visit the L2 tables of the active L1 table and of every snapshot's. */
static int visit_l2_tables(vd_image *img, struct qcow2 *q, l2_visitor visit, void *ctx)
{
    int rc = visit_l1(img, q, q->l1, q->l1_size, true, visit, ctx);
    for (uint32_t s = 0; s < q->nb_snapshots && rc == 0; s++) {
        const struct qcow2_snapshot *sn = &q->snapshots[s];
        uint64_t *l1 = calloc(sn->l1_size ? sn->l1_size : 1, sizeof *l1);
        if (!l1)
            return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
        rc = qcow2_pread_table(img, l1, (uint64_t)sn->l1_size * 8, sn->l1_offset, NULL);
        for (uint32_t i = 0; rc == 0 && i < sn->l1_size; i++)
            l1[i] = vd_be64(&l1[i]);
        if (rc == 0)
            rc = visit_l1(img, q, l1, sn->l1_size, false, visit, ctx);
        free(l1);
    }
    return rc;
}

static int find_compressed(vd_image *img, struct qcow2 *q, uint64_t l2_offset, bool active,
                           void *ctx)
{
    (void)img, (void)active;
    uint8_t *table;
    int rc = vd_cache_get(q->l2_cache, l2_offset, false, (void **)&table);
    for (uint64_t i = 0; rc == 0 && i < q->l2_entries; i++)
        if (vd_be64(table + i * q->l2_entry_bytes) & QCOW2_OFLAG_COMPRESSED)
            *(bool *)ctx = true;
    if (rc == 0)
        vd_cache_put(q->l2_cache, table);
    return rc;
}

/* What qcow2_downgrade refuses, in its order and words. */
static int check_downgrade(vd_image *img, struct qcow2 *q, const struct amend_target *t)
{
    if (t->refcount_order != 4)
        return vd_err(VD_EINVAL, "compat=0.10 requires refcount_bits=16");
    if (qcow2_has_data_file(q))
        return vd_err(VD_EUNSUPPORTED, "Cannot downgrade an image with a data file");
    /* qemu-img downgrades and leaves the bitmaps behind, leaked and never trusted again */
    if (img->nbitmaps)
        return vd_err(VD_EUNSUPPORTED, "Cannot downgrade an image with persistent bitmaps (a "
                      "version 2 image cannot keep them): remove them first with 'vdisk bitmap "
                      "--remove'");
    /* a version 2 snapshot records neither its disk size nor a large VM state */
    for (uint32_t i = 0; i < q->nb_snapshots; i++)
        if (q->snapshots[i].vm_state_size || q->snapshots[i].disk_size != t->size)
            return vd_err(VD_EUNSUPPORTED, "Internal snapshots prevent downgrade of image");
    uint64_t features = q->incompat & ~(QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_COMPRESSION);
    if (features)
        return vd_err(VD_EUNSUPPORTED, "Cannot downgrade an image with incompatible features "
                      "0x%llx set", (unsigned long long)features);
    bool compressed = false;
    int rc = q->compression_type != QCOW2_COMPRESSION_ZLIB
                 ? visit_l2_tables(img, q, find_compressed, &compressed) : 0;
    if (rc == 0 && compressed)
        rc = vd_err(VD_EUNSUPPORTED, "Cannot downgrade an image with zstd compression type "
                    "and existing compressed clusters");
    return rc;
}

static int check_target(vd_image *img, struct qcow2 *q, const struct vd_kv *opts,
                        const struct amend_target *t)
{
    if (t->refcount_order != q->refcount_order && t->version < 3 && t->refcount_order != 4)
        return vd_err(VD_EINVAL, "Refcount widths other than 16 bits require compatibility level "
                      "1.1 or above (use compat=1.1 or greater)");
    int rc = check_backing(q, opts);
    if (rc == 0 && t->lazy_refcounts && !lazy_refcounts_on(q) && t->version < 3)
        rc = vd_err(VD_EINVAL, "Lazy refcounts only supported with compatibility level 1.1 "
                    "and above (use compat=1.1 or greater)");
    if (rc == 0 && t->version < q->version)
        rc = check_downgrade(img, q, t);
    return rc;
}

/* ------------------------------------------------------------ the header */

/* The bytes of a header cluster a reader uses: its extensions and backing file name. */
static uint64_t header_used(const uint8_t *h, uint64_t cluster_size)
{
    uint64_t used = vd_be32(h + 4) >= 3 ? vd_be32(h + 100) : QCOW2_V2_HEADER_LEN;
    while (used + 8 <= cluster_size) {
        uint32_t type = vd_be32(h + used), len = vd_be32(h + used + 4);
        used += 8;
        if (type == QCOW2_EXT_END)
            break;
        used += ((uint64_t)len + 7) & ~7ull;
    }
    uint64_t backing_end = vd_be64(h + 8) + vd_be32(h + 16);
    return backing_end > used ? backing_end : used;
}

static int write_header_part(vd_image *img, const uint8_t *h, uint64_t from, uint64_t to)
{
    int rc = from < to ? qcow2_write_meta(img, QCOW2_META_HEADER, from, h + from, (size_t)(to - from)) : 0;
    return rc == 0 ? vd_image_sync_now(img) : rc;
}

/*
 * Replace the header cluster with q's header. A crash may tear the write at
 * sectors, and the first sector says where everything else is: when the old
 * header lies within it, the rest goes first (the old header never reads
 * it); when only the new one does, the first sector goes first. A header
 * that spans sectors before and after cannot be swapped atomically (nor can
 * QEMU's): its rest goes first.
 */
static int publish_header(vd_image *img, struct qcow2 *q)
{
    uint64_t cs = q->cluster_size;
    uint8_t *old = malloc((size_t)cs), *new = malloc((size_t)cs);
    int rc = old && new ? 0 : vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    if (rc == 0)
        rc = qcow2_pread_table(img, old, cs, 0, NULL);
    if (rc == 0)
        rc = qcow2_build_header(img->filename, q, img->size, new);
    if (rc == 0 && header_used(new, cs) <= SECTOR && header_used(old, cs) > SECTOR) {
        if ((rc = write_header_part(img, new, 0, SECTOR)) == 0)
            rc = write_header_part(img, new, SECTOR, cs);
    } else if (rc == 0) {
        if ((rc = write_header_part(img, new, SECTOR, cs)) == 0)
            rc = write_header_part(img, new, 0, SECTOR);
    }
    free(old);
    free(new);
    return rc < 0 ? vd_image_poison(img, rc) : 0;
}

static int write_features_durably(vd_image *img, struct qcow2 *q)
{
    int rc = qcow2_write_features(img, q);
    if (rc == 0)
        rc = vd_image_sync_now(img);
    return rc < 0 ? vd_image_poison(img, rc) : 0;
}

/* ------------------------------------------------------------ changes */

/*
 * Lazy refcounts on: the dirty bit goes with the feature bit, as a writable
 * open sets it. Off: every refcount reaches the disk before the bits clear.
 */
static int set_lazy_refcounts(vd_image *img, struct qcow2 *q, bool on)
{
    int rc = on ? 0 : qcow2_flush_metadata(img, q);
    if (rc < 0)
        return rc;
    if (on) {
        q->compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
        q->incompat |= QCOW2_INCOMPAT_DIRTY;
    } else {
        q->compat &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
        q->incompat &= ~QCOW2_INCOMPAT_DIRTY;
    }
    q->dirty_by_us = on;
    return write_features_durably(img, q);
}

static int set_data_file(vd_image *img, struct qcow2 *q, const struct amend_target *t)
{
    if (t->data_file) {
        char *name = strdup(t->data_file);
        if (!name)
            return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
        free(q->data_file_name);
        q->data_file_name = name;
    }
    if (t->clear_data_raw)
        q->autoclear &= ~QCOW2_AUTOCLEAR_DATA_RAW;
    return publish_header(img, q);
}

/* ------------------------------------------------------ refcount width */

/*
 * The refcount structures of a new width, as QEMU's
 * qcow2_change_refcount_order builds them: blocks then table, past
 * everything the image uses, describing the image and themselves.
 */
struct refcount_layout {
    uint32_t order;
    uint64_t rb_entries;            /* entries per refcount block at that width */
    uint64_t first;                 /* cluster index of the first new block */
    uint64_t nblocks, rt_clusters;  /* the table follows the blocks */
    uint64_t covered;               /* clusters the new blocks describe */
};

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

static int plan_refcounts(vd_image *img, struct qcow2 *q, uint32_t order, struct refcount_layout *l)
{
    uint64_t file_size;
    int rc = vd_file_get_size(img->file, &file_size);
    if (rc < 0)
        return rc;
    uint64_t end = div_up(file_size, q->cluster_size);
    if (end < q->alloc_end)
        end = q->alloc_end;
    *l = (struct refcount_layout){ .order = order, .rb_entries = q->cluster_size * 8 >> order };
    for (;;) { /* the blocks describe the table and themselves too */
        uint64_t first = qcow2_skip_claim(q, end, l->nblocks + l->rt_clusters);
        uint64_t covered = first + l->nblocks + l->rt_clusters;
        uint64_t nblocks = div_up(covered, l->rb_entries);
        uint64_t rt_clusters = div_up(nblocks * 8, q->cluster_size);
        if (first == l->first && nblocks == l->nblocks && rt_clusters == l->rt_clusters) {
            l->covered = covered;
            break;
        }
        l->first = first;
        l->nblocks = nblocks;
        l->rt_clusters = rt_clusters;
    }
    if (l->rt_clusters * q->cluster_size > QCOW2_MAX_RT_BYTES)
        return vd_err(VD_ETOOBIG, "%s: the refcount table would exceed %u MiB", img->filename,
                      QCOW2_MAX_RT_BYTES >> 20);
    return 0;
}

static int check_refcounts_fit(vd_image *img, struct qcow2 *q, const struct refcount_layout *l)
{
    uint64_t max = l->order == 6 ? UINT64_MAX : (1ull << (1u << l->order)) - 1;
    for (uint64_t c = 0; c < l->first; c++) {
        uint64_t refcount;
        int rc = qcow2_get_refcount(img, q, c, &refcount);
        if (rc < 0)
            return rc;
        if (refcount > max)
            return vd_err(VD_EINVAL, "Cannot decrease refcount entry width to %u bits: Cluster at "
                          "offset %#llx has a refcount of %llu", 1u << l->order,
                          (unsigned long long)(c * q->cluster_size), (unsigned long long)refcount);
    }
    return 0;
}

/* Write the new blocks (the image's refcounts, 1 for the new structures) and the table. */
static int write_refcounts(vd_image *img, struct qcow2 *q, const struct refcount_layout *l)
{
    uint64_t cs = q->cluster_size;
    uint8_t *block = malloc((size_t)cs), *table = calloc(l->rt_clusters, (size_t)cs);
    int rc = block && table ? 0 : vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    for (uint64_t b = 0; b < l->nblocks && rc == 0; b++) {
        memset(block, 0, (size_t)cs);
        for (uint64_t i = 0, c = b * l->rb_entries; i < l->rb_entries && c < l->covered && rc == 0; i++, c++) {
            uint64_t refcount = 1;
            if (c < l->first)
                rc = qcow2_get_refcount(img, q, c, &refcount);
            qcow2_refblock_set(block, i, l->order, refcount);
        }
        uint64_t host = (l->first + b) * cs;
        vd_put_be64(table + b * 8, host);
        if (rc == 0)
            rc = qcow2_write_meta(img, QCOW2_META_NONE, host, block, (size_t)cs);
    }
    if (rc == 0)
        rc = qcow2_write_meta(img, QCOW2_META_NONE, (l->first + l->nblocks) * cs, table,
                              (size_t)(l->rt_clusters * cs));
    free(block);
    free(table);
    return rc;
}

/* Switch the header to the new structures: its fields from 48 to 100 lie in one sector. */
static int publish_refcounts(vd_image *img, struct qcow2 *q, const struct refcount_layout *l)
{
    q->rt_offset = (l->first + l->nblocks) * q->cluster_size;
    q->rt_clusters = (uint32_t)l->rt_clusters;
    q->refcount_order = l->order;
    uint8_t *header = malloc((size_t)q->cluster_size);
    int rc = header ? qcow2_build_header(img->filename, q, img->size, header)
                    : vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    if (rc == 0)
        rc = qcow2_write_meta(img, QCOW2_META_HEADER, 48, header + 48, 100 - 48);
    free(header);
    return rc == 0 ? vd_image_sync_now(img) : rc;
}

/*
 * Refcounts of another width: the new structures are written to free space
 * and made durable, one header write switches to them, then the old ones
 * are freed in the new refcounts (a crash before that leaks them).
 */
static int change_refcount_order(vd_image *img, struct qcow2 *q, uint32_t order)
{
    struct refcount_layout l = { 0 };
    int rc = qcow2_flush_metadata(img, q);
    if (rc == 0)
        rc = plan_refcounts(img, q, order, &l);
    if (rc == 0)
        rc = check_refcounts_fit(img, q, &l);
    if (rc < 0)
        return rc;
    uint64_t *old_rt = q->rt, old_entries = q->rt_entries;
    uint64_t old_rt_first = q->rt_offset / q->cluster_size, old_rt_clusters = q->rt_clusters;
    if ((rc = write_refcounts(img, q, &l)) == 0 && (rc = vd_image_sync_now(img)) == 0)
        rc = publish_refcounts(img, q, &l);
    if (rc < 0)
        return vd_image_poison(img, rc);
    /* from here on the new structures hold the refcounts */
    for (uint64_t i = 0; i < old_entries; i++)
        if (old_rt[i])
            vd_cache_forget(q->rb_cache, old_rt[i]);
    qcow2_derive(q);
    q->rt = NULL;
    rc = qcow2_load_refcount_table(img, q);
    q->alloc_end = l.covered;
    q->free_hint = 0;
    q->meta_stale = true;
    for (uint64_t c = 0; c < old_rt_clusters && rc == 0; c++)
        rc = qcow2_update_refcount(img, q, old_rt_first + c, -1);
    for (uint64_t i = 0; i < old_entries && rc == 0; i++)
        if (old_rt[i])
            rc = qcow2_update_refcount(img, q, old_rt[i] / q->cluster_size, -1);
    free(old_rt);
    if (rc == 0)
        rc = qcow2_refcounts_durable(img);
    return rc < 0 ? vd_image_poison(img, rc) : 0;
}

/*
 * Version 3: the feature fields (all clear), the feature name table, and
 * snapshot entries with the extra data version 3 requires (written while
 * the header still says version 2, which reads them as well).
 */
static int upgrade(vd_image *img, struct qcow2 *q)
{
    q->version = 3;
    q->incompat = q->compat = q->autoclear = 0;
    q->compression_type = QCOW2_COMPRESSION_ZLIB;
    qcow2_drop_extension(q, QCOW2_EXT_FEATURES);
    int rc = qcow2_add_feature_table(q) < 0 ? vd_err(VD_ENOMEM, "%s: out of memory", img->filename) : 0;
    bool incomplete = false;
    for (uint32_t i = 0; i < q->nb_snapshots; i++)
        incomplete |= qcow2_snapshot_incomplete(q, &q->snapshots[i]);
    if (rc == 0 && incomplete)
        rc = qcow2_complete_snapshots(img, q);
    if (rc == 0)
        rc = publish_header(img, q);
    return rc < 0 ? vd_image_poison(img, rc) : 0;
}

/*
 * Version 2 has no zero flag: as QEMU's expand_zero_clusters, a zero
 * cluster without a host cluster becomes unallocated when nothing lies
 * below, else a new zeroed cluster; one with a host cluster keeps it,
 * zeroed. Unlike QEMU 7.2, a host cluster that another L2 entry (a
 * snapshot's) also names is not zeroed in place: the entry gets a cluster
 * of its own and drops its references to the shared one after the L2
 * update is durable. The zeroes and refcount increases are durable before
 * the L2 tables change (the L2 cache's write-back orders that), so a crash
 * leaves zero clusters or leaks. A new cluster is marked COPIED only in an
 * active table: the flag means nothing elsewhere, and applying a snapshot
 * counts on its tables not having it.
 */
static int expand_zero_entry(vd_image *img, struct qcow2 *q, uint64_t *entry, uint64_t l2_refcount,
                             bool active, const uint8_t *zeroes)
{
    uint64_t host = *entry & QCOW2_OFFSET_MASK, host_refcount = 0;
    int rc = host ? qcow2_get_refcount(img, q, host / q->cluster_size, &host_refcount) : 0;
    /* each L1 entry naming this L2 table holds one reference through this entry */
    bool shared = host_refcount > l2_refcount;
    for (uint64_t r = 0; shared && r < l2_refcount && rc == 0; r++)
        rc = qcow2_free_cluster_later(img, q, host);
    if (rc < 0)
        return rc;
    if (!q->backing_file && (!host || shared)) {
        *entry = 0;
        return 0;
    }
    uint64_t flags = *entry & QCOW2_OFLAG_COPIED;
    if (!host || shared) {
        rc = qcow2_alloc_clusters(img, q, 1, &host);
        if (rc == 0 && l2_refcount > 1)
            rc = qcow2_update_refcount(img, q, host / q->cluster_size, (int64_t)(l2_refcount - 1));
        flags = active && l2_refcount == 1 ? QCOW2_OFLAG_COPIED : 0;
    }
    if (rc == 0)
        rc = qcow2_check_overlap(img, host, q->cluster_size);
    if (rc == 0)
        rc = vd_file_pwrite(img->file, zeroes, (size_t)q->cluster_size, host);
    vd_image_mark_unsynced(img);
    if (rc == 0)
        *entry = host | flags;
    return rc;
}

static int expand_zero_clusters(vd_image *img, struct qcow2 *q, uint64_t l2_offset, bool active,
                                void *zeroes)
{
    uint64_t l2_refcount;
    uint8_t *table;
    int rc = qcow2_get_refcount(img, q, l2_offset / q->cluster_size, &l2_refcount);
    if (rc < 0 || (rc = vd_cache_get(q->l2_cache, l2_offset, false, (void **)&table)) < 0)
        return rc;
    for (uint64_t i = 0; i < q->l2_entries && rc == 0; i++) {
        uint64_t entry = vd_be64(table + i * 8);
        if ((entry & QCOW2_OFLAG_COMPRESSED) || !(entry & QCOW2_OFLAG_ZERO))
            continue;
        if ((rc = expand_zero_entry(img, q, &entry, l2_refcount, active, zeroes)) == 0) {
            vd_put_be64(table + i * 8, entry);
            vd_cache_mark_dirty(q->l2_cache, table);
        }
    }
    vd_cache_put(q->l2_cache, table);
    return rc;
}

/*
 * Version 2, as QEMU's qcow2_downgrade: refcounts made exact (lazy refcounts
 * off), zero clusters expanded in every L2 table, then the version 2 header:
 * no feature fields, no feature name table, zlib.
 */
static int downgrade(vd_image *img, struct qcow2 *q)
{
    int rc = lazy_refcounts_on(q) ? set_lazy_refcounts(img, q, false) : 0;
    uint8_t *zeroes = rc == 0 ? calloc(1, (size_t)q->cluster_size) : NULL;
    if (rc == 0 && !zeroes)
        rc = vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    if (rc == 0)
        rc = visit_l2_tables(img, q, expand_zero_clusters, zeroes);
    free(zeroes);
    if (rc == 0)
        rc = qcow2_flush_metadata(img, q);
    if (rc < 0)
        return vd_image_poison(img, rc);
    q->version = 2;
    q->incompat = q->compat = q->autoclear = 0;
    q->compression_type = QCOW2_COMPRESSION_ZLIB;
    q->dirty_by_us = false;
    qcow2_drop_extension(q, QCOW2_EXT_FEATURES);
    return publish_header(img, q);
}

int qcow2_amend(vd_image *img, const struct vd_kv *opts)
{
    struct qcow2 *q = qcow2_of(img);
    struct amend_target t;
    int rc = parse_target(img, q, opts, &t);
    if (rc == 0)
        rc = check_target(img, q, opts, &t);
    if (rc == 0)
        rc = qcow2_crypt_amend(img, q, opts);
    if (rc == 0 && t.version > q->version)
        rc = upgrade(img, q);
    if (rc == 0 && t.refcount_order != q->refcount_order)
        rc = change_refcount_order(img, q, t.refcount_order);
    if (rc == 0 && (t.data_file || t.clear_data_raw))
        rc = set_data_file(img, q, &t);
    if (rc == 0 && t.lazy_refcounts != lazy_refcounts_on(q))
        rc = set_lazy_refcounts(img, q, t.lazy_refcounts);
    if (rc == 0 && t.size != img->size)
        rc = qcow2_resize(img, t.size, VD_RESIZE_SHRINK);
    if (rc == 0 && t.version < q->version)
        rc = downgrade(img, q);
    vd_image_clear_props(img); /* new key slots add properties: keep qemu-img's order */
    int props = qcow2_update_props(img, q);
    return rc < 0 ? rc : props;
}
