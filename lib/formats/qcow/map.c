/*
 * The qcow cluster map: an L1 table in memory, L2 tables through the table
 * cache, and the copy-on-write engine's hooks on them.
 *
 * Concurrency (lib/cow/engine.h): lookup only reads the L1 table and the
 * table cache; allocate, link and store_compressed run with the metadata
 * lock held alone and make every change (the L1 table and its fresh marks,
 * alloc_end, L2 entries).
 *
 * Ordering: cluster data is written before the L2 entry naming it (the
 * engine links after the data write, and the cache syncs the file before
 * it writes a table), and a new L2 table before the L1 entry naming it
 * (flush writes the L1 table after the tables and a sync).
 *
 * Layout, as QEMU's: an L2 table or a cluster starts at the end of the file
 * rounded up to the cluster size; compressed bytes start at the very end.
 */
#include "formats/qcow/qcow.h"
#include "codec/codec.h"
#include "core/endian.h"

#include <stdlib.h>
#include <string.h>

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static uint64_t round_up(uint64_t n, uint64_t to)
{
    return (n + to - 1) / to * to;
}

/* Whether [off, off+len) touches the header or the L1 table. */
static bool hits_metadata(const struct qcow *s, uint64_t off, uint64_t len)
{
    uint64_t l1_end = s->l1_offset + (uint64_t)s->l1_size * 8;
    return off < QCOW_HEADER_BYTES || (off < l1_end && off + len > s->l1_offset);
}

/* How far the L2 table of L1 entry l1i and the clusters it names may reach. */
static uint64_t limit_of(const struct qcow *s, uint64_t l1i)
{
    return s->l1_fresh[l1i] ? s->alloc_end : s->open_end;
}

/* The L2 table of L1 entry l1i, checked to lie inside the file and apart from the header and L1. */
static int table_offset(vd_image *img, uint64_t l1i, uint64_t *off)
{
    struct qcow *s = qcow_of(img);
    uint64_t at = s->l1[l1i], bytes = qcow_l2_bytes(s), limit = limit_of(s, l1i);
    *off = at;
    if (at && (at > limit || bytes > limit - at || hits_metadata(s, at, bytes)))
        return vd_image_corrupt(img, "qcow",
                                "L1 entry %llu names an L2 table at offset %llu, outside the space "
                                "for tables", (unsigned long long)l1i, (unsigned long long)at);
    return 0;
}

struct entry {
    enum vd_cow_kind kind;
    uint64_t host;       /* DATA: the cluster; COMPRESSED: the compressed bytes */
    uint64_t comp_bytes; /* COMPRESSED */
};

static struct entry decode(const struct qcow *s, uint64_t e)
{
    if (!e)
        return (struct entry){ VD_COW_UNALLOCATED, 0, 0 };
    if (e & QCOW_OFLAG_COMPRESSED) {
        uint32_t shift = 63 - s->cluster_bits;
        return (struct entry){ VD_COW_COMPRESSED, e & ((UINT64_C(1) << shift) - 1),
                               (e >> shift) & ((UINT64_C(1) << s->cluster_bits) - 1) };
    }
    return (struct entry){ VD_COW_DATA, e, 0 };
}

/* Refuse an entry that names bytes past limit or over the header or L1 table. */
static int check_entry(vd_image *img, uint64_t guest_off, const struct entry *e, uint64_t limit)
{
    struct qcow *s = qcow_of(img);
    uint64_t len = e->kind == VD_COW_COMPRESSED ? e->comp_bytes : img->cluster_size;
    if (e->kind == VD_COW_UNALLOCATED)
        return 0;
    if (e->kind == VD_COW_COMPRESSED && !len)
        return vd_image_corrupt(img, "qcow",
                                "the compressed cluster at guest offset %llu has length 0",
                                (unsigned long long)guest_off);
    if (e->host >= limit || (e->kind == VD_COW_COMPRESSED && len > limit - e->host) ||
        hits_metadata(s, e->host, len))
        return vd_image_corrupt(img, "qcow",
                                "the cluster at guest offset %llu lies at offset %llu, outside the "
                                "space for clusters", (unsigned long long)guest_off,
                                (unsigned long long)e->host);
    return 0;
}

static int q_lookup(vd_image *img, uint64_t off, uint64_t len, struct vd_cow_run *run)
{
    struct qcow *s = qcow_of(img);
    const uint64_t cs = img->cluster_size;
    const uint32_t shift = s->cluster_bits + s->l2_bits;
    uint64_t l1i = off >> shift, l2_off;
    uint64_t span = min_u64(len, ((l1i + 1) << shift) - off);
    *run = (struct vd_cow_run){ .kind = VD_COW_UNALLOCATED, .length = span };
    int rc = table_offset(img, l1i, &l2_off);
    if (rc < 0 || !l2_off)
        return rc;
    uint64_t *table;
    if ((rc = vd_cache_get(s->l2s, l2_off, false, (void **)&table)) < 0)
        return rc;
    uint64_t entries = UINT64_C(1) << s->l2_bits, i = (off >> s->cluster_bits) & (entries - 1);
    uint64_t cluster = off & ~(cs - 1), limit = limit_of(s, l1i);
    struct entry first = decode(s, vd_be64(&table[i]));
    rc = check_entry(img, cluster, &first, limit);
    uint64_t pos = cluster + cs - off; /* bytes of the run so far */
    if (first.kind != VD_COW_COMPRESSED) {
        for (uint64_t j = i + 1; rc == 0 && j < entries && pos < span; j++, pos += cs) {
            struct entry next = decode(s, vd_be64(&table[j]));
            if (next.kind != first.kind ||
                (first.kind == VD_COW_DATA && next.host != first.host + (j - i) * cs))
                break;
            rc = check_entry(img, cluster + (j - i) * cs, &next, limit);
        }
    }
    vd_cache_put(s->l2s, table);
    if (rc < 0)
        return rc;
    run->kind = first.kind;
    run->length = min_u64(pos, span);
    if (first.kind == VD_COW_DATA) {
        run->host = first.host + (off - cluster);
        run->has_host = true;
        run->writable = true; /* no snapshots, no sharing: every cluster is this image's alone */
    } else if (first.kind == VD_COW_COMPRESSED) {
        run->host = first.host;
        run->comp_bytes = first.comp_bytes;
    }
    return 0;
}

/*
 * Take len bytes at the end of the file (rounded up to align first). Entries
 * keep compressed offsets below 2^(63 - cluster_bits), which bounds the file.
 */
static int take_space(vd_image *img, uint64_t len, uint64_t align, uint64_t *at)
{
    struct qcow *s = qcow_of(img);
    uint64_t limit = UINT64_C(1) << (63 - s->cluster_bits);
    uint64_t start = round_up(s->alloc_end, align);
    if (start >= limit || len > limit - start)
        return vd_err(VD_ENOSPC, "%s: the qcow image is full (its clusters may lie below "
                      "%llu bytes)", img->filename, (unsigned long long)limit);
    *at = start;
    s->alloc_end = start + len;
    return 0;
}

/*
 * Before this session first changes a table the image came with: every entry
 * must name bytes below open_end, else it would alias a cluster allocated later.
 */
static int vet_table(vd_image *img, uint64_t l1i, uint64_t l2_off)
{
    struct qcow *s = qcow_of(img);
    uint64_t *table, entries = UINT64_C(1) << s->l2_bits;
    uint64_t first = l1i << (s->cluster_bits + s->l2_bits);
    int rc = vd_cache_get(s->l2s, l2_off, false, (void **)&table);
    if (rc < 0)
        return rc;
    for (uint64_t i = 0; rc == 0 && i < entries; i++) {
        struct entry e = decode(s, vd_be64(&table[i]));
        rc = check_entry(img, first + (i << s->cluster_bits), &e, s->open_end);
    }
    vd_cache_put(s->l2s, table);
    if (rc == 0)
        s->l1_fresh[l1i] = 1;
    return rc;
}

/* The L2 table of guest offset off, made (zeroed, at the end of the file) if there is none. */
static int ensure_table(vd_image *img, uint64_t off, uint64_t *l2_off)
{
    struct qcow *s = qcow_of(img);
    uint64_t l1i = off >> (s->cluster_bits + s->l2_bits);
    int rc = table_offset(img, l1i, l2_off);
    if (rc < 0 || (*l2_off && s->l1_fresh[l1i]))
        return rc;
    if (*l2_off)
        return vet_table(img, l1i, *l2_off);
    uint64_t bytes = qcow_l2_bytes(s), at;
    void *table;
    if ((rc = take_space(img, bytes, img->cluster_size, &at)) < 0)
        return rc;
    rc = vd_file_write_zeroes(img->file, at, bytes, false); /* the table's bytes exist */
    if (rc == 0)
        rc = vd_cache_get(s->l2s, at, true, &table);
    if (rc < 0)
        return rc;
    vd_cache_put(s->l2s, table);
    vd_image_mark_unsynced(img);
    s->l1[l1i] = at;
    s->l1_fresh[l1i] = 1;
    s->l1_dirty = true;
    *l2_off = at;
    return 0;
}

static int set_entry(vd_image *img, uint64_t guest_off, uint64_t value)
{
    struct qcow *s = qcow_of(img);
    uint64_t l2_off, *table;
    int rc = ensure_table(img, guest_off, &l2_off);
    if (rc == 0)
        rc = vd_cache_get(s->l2s, l2_off, false, (void **)&table);
    if (rc < 0)
        return rc;
    uint64_t i = (guest_off >> s->cluster_bits) & ((UINT64_C(1) << s->l2_bits) - 1);
    vd_put_be64(&table[i], value);
    vd_cache_mark_dirty(s->l2s, table);
    vd_cache_put(s->l2s, table);
    return 0;
}

/* The table first, then the cluster after it: the order QEMU lays them out in. */
static int q_allocate(vd_image *img, uint64_t guest_off, uint64_t *host)
{
    uint64_t l2_off;
    int rc = ensure_table(img, guest_off, &l2_off);
    return rc < 0 ? rc : take_space(img, img->cluster_size, img->cluster_size, host);
}

static int q_link(vd_image *img, uint64_t guest_off, uint64_t host)
{
    return set_entry(img, guest_off, host);
}

static int q_read_compressed(vd_image *img, const struct vd_cow_run *run, void *cluster)
{
    uint64_t file_size;
    int rc = vd_file_get_size(img->file, &file_size);
    if (rc < 0)
        return rc;
    if (run->host > file_size || run->comp_bytes > file_size - run->host)
        return vd_image_corrupt(img, "qcow",
                                "the compressed cluster at offset %llu (%llu bytes) lies past "
                                "the end "
                                "of the file", (unsigned long long)run->host,
                                (unsigned long long)run->comp_bytes);
    uint8_t *src = malloc((size_t)run->comp_bytes);
    if (!src)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    rc = vd_file_pread(img->file, src, (size_t)run->comp_bytes, run->host);
    if (rc == 0 && vd_codec_decompress(VD_CODEC_DEFLATE, src, (size_t)run->comp_bytes, cluster,
                                       img->cluster_size) < 0)
        rc = vd_image_corrupt(img, "qcow", "cannot decompress the cluster at offset %llu",
                              (unsigned long long)run->host);
    free(src);
    return rc;
}

static int q_compression(vd_image *img)
{
    /* raw deflate, 4 KiB window: what QEMU writes and reads; never beside encryption */
    return qcow_of(img)->crypt_method ? -1 : VD_CODEC_DEFLATE;
}

/* Compressed bytes go at the very end of the file, unaligned; their length sits in the entry. */
static int q_store_compressed(vd_image *img, uint64_t guest_off, const void *data, size_t len)
{
    struct qcow *s = qcow_of(img);
    if (!len || len >= img->cluster_size)
        return vd_err(VD_EIO, "%s: internal error: a compressed cluster of %zu bytes",
                      img->filename, len);
    uint64_t l2_off, at;
    int rc = ensure_table(img, guest_off, &l2_off);
    if (rc == 0)
        rc = take_space(img, len, 1, &at);
    if (rc == 0)
        rc = vd_file_pwrite(img->file, data, len, at);
    if (rc < 0)
        return rc;
    vd_image_mark_unsynced(img);
    return set_entry(img, guest_off,
                     at | QCOW_OFLAG_COMPRESSED | (uint64_t)len << (63 - s->cluster_bits));
}

const struct vd_cow_ops qcow_cow_ops = {
    .lookup = q_lookup,
    .allocate = q_allocate,
    .link = q_link,
    .read_compressed = q_read_compressed,
    .compression = q_compression,
    .store_compressed = q_store_compressed,
};
