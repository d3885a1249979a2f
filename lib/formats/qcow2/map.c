/*
 * The qcow2 cluster map: guest offset -> L1 entry -> L2 table -> cluster
 * descriptor. These are the hooks the copy-on-write engine calls.
 */
#include "formats/qcow2/qcow2.h"
#include "codec/codec.h"

#include <stdlib.h>
#include <string.h>

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* One L2 entry, either width. */
struct l2e {
    uint64_t word;
    uint64_t bitmap; /* extended L2 only: bits 0-31 allocated, 32-63 reads as zero */
};

static struct l2e l2_load(const struct qcow2 *q, const uint8_t *table, uint64_t i)
{
    const uint8_t *p = table + i * q->l2_entry_bytes;
    return (struct l2e){ vd_be64(p), q->l2_entry_bytes == 16 ? vd_be64(p + 8) : 0 };
}

static void l2_store(const struct qcow2 *q, uint8_t *table, uint64_t i, struct l2e e)
{
    uint8_t *p = table + i * q->l2_entry_bytes;
    vd_put_be64(p, e.word);
    if (q->l2_entry_bytes == 16)
        vd_put_be64(p + 8, e.bitmap);
}

/* The state of one granule (a cluster, or a subcluster with extended L2). */
struct granule {
    enum vd_cow_kind kind;
    uint64_t host_cluster;
    bool writable;
};

/* A data granule, or a zero or unallocated one that keeps its host cluster (in the image file). */
static bool has_host(const struct qcow2 *q, const struct granule *g)
{
    return g->kind == VD_COW_DATA || (g->kind != VD_COW_COMPRESSED && g->host_cluster &&
                                      !qcow2_has_data_file(q));
}

static int decode(vd_image *img, const struct qcow2 *q, struct l2e e, unsigned subcluster,
                  struct granule *g)
{
    g->host_cluster = e.word & QCOW2_OFFSET_MASK;
    g->writable = (e.word & QCOW2_OFLAG_COPIED) != 0;
    if (e.word & QCOW2_OFLAG_COMPRESSED) {
        g->kind = VD_COW_COMPRESSED;
        return 0;
    }
    if (q->l2_entry_bytes == 16) {
        uint32_t alloc_bits = (uint32_t)e.bitmap, zero_bits = (uint32_t)(e.bitmap >> 32);
        if ((alloc_bits & zero_bits) || (alloc_bits && !g->host_cluster && !qcow2_has_data_file(q)))
            return qcow2_signal_corruption(img, "invalid subcluster bitmap 0x%llx (entry 0x%llx)",
                                           (unsigned long long)e.bitmap, (unsigned long long)e.word);
        bool zero = (zero_bits >> subcluster) & 1, alloc = (alloc_bits >> subcluster) & 1;
        g->kind = zero ? VD_COW_ZERO : alloc ? VD_COW_DATA : VD_COW_UNALLOCATED;
    } else {
        /* version 2 has no zero clusters: QEMU's reads of such an entry fail, and so do ours */
        if ((e.word & QCOW2_OFLAG_ZERO) && q->version < 3)
            return qcow2_signal_corruption(img, "zero cluster entry in a version 2 image (0x%llx)",
                                           (unsigned long long)e.word);
        /* with a data file, host offset 0 is guest cluster 0, marked by COPIED */
        bool mapped = g->host_cluster || (qcow2_has_data_file(q) && g->writable);
        g->kind = (e.word & QCOW2_OFLAG_ZERO) ? VD_COW_ZERO
                : mapped ? VD_COW_DATA : VD_COW_UNALLOCATED;
    }
    bool offset_ok = g->host_cluster ? !(g->host_cluster & (q->cluster_size - 1)) : qcow2_has_data_file(q);
    if (g->kind == VD_COW_DATA && !offset_ok)
        return qcow2_signal_corruption(img, "L2 entry has an invalid cluster offset (0x%llx)", (unsigned long long)e.word);
    return 0;
}

static void compressed_extent(const struct qcow2 *q, uint64_t word, uint64_t *host, uint64_t *bytes)
{
    unsigned x = 62 - (q->cluster_bits - 8);
    *host = word & ((1ull << x) - 1);
    uint64_t extra_sectors = (word >> x) & ((1ull << (q->cluster_bits - 8)) - 1);
    *bytes = (extra_sectors + 1) * 512 - (*host & 511);
}

/* The L2 table offset for l1 index i, validated; 0 if none. */
static int l2_offset(vd_image *img, const struct qcow2 *q, uint64_t i, uint64_t *off)
{
    *off = i < q->l1_size ? q->l1[i] & QCOW2_OFFSET_MASK : 0;
    if (*off & (q->cluster_size - 1))
        return qcow2_signal_corruption(img, "L1 entry is not cluster aligned (0x%llx)", (unsigned long long)q->l1[i]);
    return 0;
}

/*
 * How many of the n L2 entries from index i are all zero bytes: unallocated
 * clusters without a host cluster, whatever the image's features. Counted a
 * word at a time, since sparse tables are mostly such entries and decoding
 * each one dominated map, measure and convert of large sparse images.
 */
static uint64_t zero_entries(const struct qcow2 *q, const uint8_t *table, uint64_t i, uint64_t n)
{
    const uint8_t *p = table + i * q->l2_entry_bytes;
    uint64_t bytes = n * q->l2_entry_bytes, done = 0, word;
    while (done < bytes && (memcpy(&word, p + done, sizeof word), word == 0))
        done += sizeof word;
    return done / q->l2_entry_bytes;
}

static int q_lookup(vd_image *img, uint64_t off, uint64_t len, struct vd_cow_run *run)
{
    struct qcow2 *q = qcow2_of(img);
    const uint64_t cs = q->cluster_size;
    uint64_t cluster = off / cs, l1i = cluster / q->l2_entries;
    uint64_t table_end = (l1i + 1) * q->l2_entries * cs;
    uint64_t max = min_u64(len, table_end - off);
    uint64_t l2off;
    int rc = l2_offset(img, q, l1i, &l2off);
    if (rc < 0)
        return rc;
    *run = (struct vd_cow_run){ .kind = VD_COW_UNALLOCATED, .length = max };
    if (!l2off)
        return 0;

    uint8_t *table;
    if ((rc = vd_cache_get(q->l2_cache, l2off, false, (void **)&table)) < 0)
        return rc;
    const uint64_t granule = q->l2_entry_bytes == 16 ? cs / QCOW2_SUBCLUSTERS : cs;
    struct granule first;
    struct l2e e = l2_load(q, table, cluster % q->l2_entries);
    rc = decode(img, q, e, (unsigned)((off % cs) / granule), &first);
    if (rc == 0 && first.kind == VD_COW_COMPRESSED && qcow2_has_data_file(q))
        rc = qcow2_signal_corruption(img, "compressed cluster in an image with an external data file (0x%llx)",
                                     (unsigned long long)e.word);
    if (rc == 0 && first.kind == VD_COW_COMPRESSED) {
        run->kind = VD_COW_COMPRESSED;
        run->length = min_u64(max, cs - off % cs);
        compressed_extent(q, e.word, &run->host, &run->comp_bytes);
        vd_cache_put(q->l2_cache, table);
        return 0;
    }
    /* extend over following granules in the same state (and contiguous, for data) */
    uint64_t pos = (off / granule + 1) * granule;
    if (rc == 0 && e.word == 0 && e.bitmap == 0) {
        uint64_t entries = min_u64(q->l2_entries - cluster % q->l2_entries,
                                   (off + max + cs - 1) / cs - cluster);
        pos = (cluster + zero_entries(q, table, cluster % q->l2_entries, entries)) * cs;
    }
    while (rc == 0 && pos < off + max) {
        struct granule g;
        uint64_t c = pos / cs;
        rc = decode(img, q, l2_load(q, table, c % q->l2_entries), (unsigned)((pos % cs) / granule), &g);
        if (rc < 0 || g.kind != first.kind || g.writable != first.writable ||
            has_host(q, &g) != has_host(q, &first) ||
            (has_host(q, &g) && g.host_cluster + pos % cs != first.host_cluster + (pos - (off - off % cs))))
            break;
        pos += granule;
    }
    vd_cache_put(q->l2_cache, table);
    if (rc < 0)
        return rc;
    run->kind = first.kind;
    run->length = min_u64(pos, off + max) - off;
    run->writable = first.writable;
    run->has_host = has_host(q, &first);
    if (run->has_host)
        run->host = first.host_cluster + off % cs;
    return 0;
}

static int q_allocate(vd_image *img, uint64_t guest_off, uint64_t *host)
{
    struct qcow2 *q = qcow2_of(img);
    if (qcow2_has_data_file(q)) { /* the data file mirrors the guest layout */
        *host = guest_off & ~(q->cluster_size - 1);
        return 0;
    }
    return qcow2_alloc_clusters(img, q, 1, host);
}

/*
 * Pin the L2 table for l1 index i, ready to be changed: allocate it if
 * missing, copy it if it is shared with a snapshot (L1 COPIED flag clear).
 */
static int writable_l2(vd_image *img, struct qcow2 *q, uint64_t i, uint8_t **table)
{
    uint64_t old;
    int rc = l2_offset(img, q, i, &old);
    if (rc < 0)
        return rc;
    if (old && (q->l1[i] & QCOW2_OFLAG_COPIED))
        return vd_cache_get(q->l2_cache, old, false, (void **)table);

    uint64_t fresh;
    if ((rc = qcow2_alloc_metadata(img, q, 1, &fresh)) < 0)
        return rc;
    if ((rc = vd_cache_get(q->l2_cache, fresh, true, (void **)table)) < 0)
        return rc;
    if (old) {
        uint8_t *shared;
        if ((rc = vd_cache_get(q->l2_cache, old, false, (void **)&shared)) < 0) {
            vd_cache_put(q->l2_cache, *table);
            return rc;
        }
        memcpy(*table, shared, (size_t)q->cluster_size);
        vd_cache_put(q->l2_cache, shared);
        rc = qcow2_free_cluster_later(img, q, old);
    }
    q->l1[i] = fresh | QCOW2_OFLAG_COPIED;
    q->l1_dirty = true;
    q->meta_stale = true; /* a layout check since the allocation saw the old entry */
    return rc;
}

/* Drop this L2 entry's reference to its host cluster(s), at the next flush. */
static int release_entry(vd_image *img, struct qcow2 *q, struct l2e e)
{
    if (qcow2_has_data_file(q)) /* data file clusters are not refcounted */
        return 0;
    if (e.word & QCOW2_OFLAG_COMPRESSED) {
        uint64_t host, bytes;
        compressed_extent(q, e.word, &host, &bytes);
        int rc = 0;
        for (uint64_t c = host / q->cluster_size; c <= (host + bytes - 1) / q->cluster_size && rc == 0; c++)
            rc = qcow2_free_cluster_later(img, q, c * q->cluster_size);
        return rc;
    }
    uint64_t host = e.word & QCOW2_OFFSET_MASK;
    return host ? qcow2_free_cluster_later(img, q, host) : 0;
}

/* Replace the L2 entry of the guest cluster at guest_off with e. */
static int set_entry(vd_image *img, uint64_t guest_off, struct l2e e, bool keep_host)
{
    struct qcow2 *q = qcow2_of(img);
    uint64_t cluster = guest_off / q->cluster_size;
    uint8_t *table;
    int rc = writable_l2(img, q, cluster / q->l2_entries, &table);
    if (rc < 0)
        return rc;
    struct l2e old = l2_load(q, table, cluster % q->l2_entries);
    l2_store(q, table, cluster % q->l2_entries, e);
    vd_cache_mark_dirty(q->l2_cache, table);
    vd_cache_put(q->l2_cache, table);
    if (!keep_host)
        rc = release_entry(img, q, old);
    return rc;
}

static int q_link(vd_image *img, uint64_t guest_off, uint64_t host)
{
    struct qcow2 *q = qcow2_of(img);
    struct l2e e = { host | QCOW2_OFLAG_COPIED, q->l2_entry_bytes == 16 ? 0xffffffffull : 0 };
    return set_entry(img, guest_off, e, false);
}

/* Does anything below this image show through unallocated clusters? */
static bool has_backing(vd_image *img, const struct qcow2 *q)
{
    return img->backing || q->backing_file;
}

static int q_zero_clusters(vd_image *img, uint64_t off, uint64_t len, enum vd_cow_zero_mode mode)
{
    struct qcow2 *q = qcow2_of(img);
    const uint64_t cs = q->cluster_size;
    /* unallocated clusters read as zeroes unless a backing image shows through */
    bool unallocated_is_zero = !has_backing(img, q) || mode == VD_COW_DEALLOCATE;
    bool need_zero_flag = mode != VD_COW_DEALLOCATE && !unallocated_is_zero;
    if (need_zero_flag && q->version < 3)
        return VD_EUNSUPPORTED; /* v2 with a backing file: the engine writes real zeroes */
    if ((q->autoclear & QCOW2_AUTOCLEAR_DATA_RAW) && mode != VD_COW_DEALLOCATE)
        return VD_EUNSUPPORTED; /* a raw data file must itself read as the guest disk */
    int rc = 0;
    for (uint64_t c = off; c < off + len && rc == 0;) {
        struct vd_cow_run run;
        if ((rc = q_lookup(img, c, off + len - c, &run)) < 0)
            break;
        uint64_t whole = run.length & ~(cs - 1);
        bool done = (run.kind == VD_COW_UNALLOCATED && unallocated_is_zero) ||
                    (run.kind == VD_COW_ZERO && mode != VD_COW_DEALLOCATE);
        if (done && whole) { /* nothing to change in this run */
            c += whole;
            continue;
        }
        /* v3 can keep the cluster allocated under the zero flag; v2 has no zero flag */
        bool keep = mode == VD_COW_ZERO_KEEP && run.kind == VD_COW_DATA && run.writable &&
                    run.length >= cs && q->l2_entry_bytes == 8 && q->version >= 3;
        struct l2e e = { 0, 0 };
        if (keep)
            e.word = QCOW2_OFLAG_ZERO | (run.host & ~(cs - 1)) | QCOW2_OFLAG_COPIED;
        else if (need_zero_flag)
            e = q->l2_entry_bytes == 16 ? (struct l2e){ 0, 0xffffffffull << 32 }
                                        : (struct l2e){ QCOW2_OFLAG_ZERO, 0 };
        rc = set_entry(img, c, e, keep);
        c += cs;
    }
    return rc;
}

static int q_read_compressed(vd_image *img, const struct vd_cow_run *run, void *cluster)
{
    struct qcow2 *q = qcow2_of(img);
    uint64_t file_size;
    int rc = vd_file_get_size(img->file, &file_size);
    if (rc < 0)
        return rc;
    uint64_t bytes = run->comp_bytes;
    if (run->host >= file_size)
        return qcow2_signal_corruption(img, "compressed cluster is past the end of the file (0x%llx)", (unsigned long long)run->host);
    bytes = min_u64(bytes, file_size - run->host);
    uint8_t *src = malloc((size_t)bytes);
    if (!src)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    rc = vd_file_pread(img->file, src, (size_t)bytes, run->host);
    if (rc == 0) {
        int codec = q->compression_type == QCOW2_COMPRESSION_ZSTD ? VD_CODEC_ZSTD : VD_CODEC_DEFLATE;
        rc = vd_codec_decompress(codec, src, (size_t)bytes, cluster, (size_t)q->cluster_size);
        if (rc < 0)
            rc = vd_err(rc, "%s: cannot decompress the cluster at host offset %llu: %s",
                        img->filename, (unsigned long long)run->host, vd_errmsg());
    }
    free(src);
    return rc;
}

static int q_compression(vd_image *img)
{
    struct qcow2 *q = qcow2_of(img);
    /* compressed clusters live in the image file, never a data file; and are never
       encrypted (QEMU: "Compression and encryption not supported at the same time") */
    if (qcow2_has_data_file(q) || q->crypt_method)
        return -1;
    return q->compression_type == QCOW2_COMPRESSION_ZSTD ? VD_CODEC_ZSTD : VD_CODEC_DEFLATE;
}

/* The L2 entry of a compressed cluster: host offset and sectors past the first, as the spec packs them. */
static int q_store_compressed(vd_image *img, uint64_t guest_off, const void *data, size_t len)
{
    struct qcow2 *q = qcow2_of(img);
    const unsigned x = 62 - (q->cluster_bits - 8);
    uint64_t host;
    int rc = qcow2_alloc_bytes(img, q, len, &host);
    if (rc == 0 && host + len > (1ull << x))
        rc = vd_err(VD_ETOOBIG, "%s: a compressed cluster cannot lie at host offset %llu",
                    img->filename, (unsigned long long)host);
    if (rc == 0)
        rc = qcow2_check_overlap(img, host, len);
    if (rc == 0)
        rc = vd_file_pwrite(img->file, data, len, host);
    vd_image_mark_unsynced(img);
    if (rc < 0)
        return rc;
    uint64_t extra_sectors = (host + len - 1) / 512 - host / 512;
    struct l2e e = { host | QCOW2_OFLAG_COMPRESSED | (extra_sectors << x), 0 };
    return set_entry(img, guest_off, e, false);
}

int qcow2_write_l1(vd_image *img, struct qcow2 *q)
{
    size_t bytes = (size_t)q->l1_size * 8;
    uint8_t *disk = malloc(bytes ? bytes : 1);
    if (!disk)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    for (uint32_t i = 0; i < q->l1_size; i++)
        vd_put_be64(disk + i * 8, q->l1[i]);
    int rc = qcow2_write_meta(img, QCOW2_META_ACTIVE_L1, q->l1_offset, disk, bytes);
    free(disk);
    if (rc == 0)
        q->l1_dirty = false;
    return rc;
}

const struct vd_cow_ops qcow2_cow_ops = {
    .check_write = qcow2_check_overlap,
    .lookup = q_lookup,
    .allocate = q_allocate,
    .link = q_link,
    .zero_clusters = q_zero_clusters,
    .read_compressed = q_read_compressed,
    .data_over_holes = qcow2_metadata_preallocated,
    .compression = q_compression,
    .store_compressed = q_store_compressed,
};
