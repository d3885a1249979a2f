/*
 * qcow2 refcounts: the refcount table (kept in memory), refcount blocks (in
 * the metadata cache), cluster allocation and deferred freeing.
 *
 * Ordering: increases are written before anything that points at the
 * cluster (the L2 cache's before-write hook is qcow2_refcounts_durable);
 * decreases wait in pending_frees until the L2 entries that referenced the
 * cluster are on disk (qcow2_apply_pending_frees runs at the end of a flush).
 * A crash can leak clusters but never hands out a cluster still in use.
 */
#include "formats/qcow2/qcow2.h"

#include <stdlib.h>
#include <string.h>

/* Entry idx of a refcount block; sub-byte widths count from the low bit. */
uint64_t qcow2_refblock_get(const uint8_t *block, uint64_t idx, uint32_t order)
{
    switch (order) {
    case 0: case 1: case 2: {
        unsigned bits = 1u << order, per_byte = 8 >> order;
        unsigned shift = (unsigned)(idx % per_byte) * bits;
        return (block[idx / per_byte] >> shift) & ((1u << bits) - 1);
    }
    case 3: return block[idx];
    case 4: return vd_be16(block + idx * 2);
    case 5: return vd_be32(block + idx * 4);
    default: return vd_be64(block + idx * 8);
    }
}

void qcow2_refblock_set(uint8_t *block, uint64_t idx, uint32_t order, uint64_t value)
{
    switch (order) {
    case 0: case 1: case 2: {
        unsigned bits = 1u << order, per_byte = 8 >> order;
        unsigned shift = (unsigned)(idx % per_byte) * bits;
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);
        block[idx / per_byte] = (uint8_t)((block[idx / per_byte] & ~mask) | (value << shift));
        break;
    }
    case 3: block[idx] = (uint8_t)value; break;
    case 4: vd_put_be16(block + idx * 2, (uint16_t)value); break;
    case 5: vd_put_be32(block + idx * 4, (uint32_t)value); break;
    default: vd_put_be64(block + idx * 8, value); break;
    }
}

int qcow2_load_refcount_table(vd_image *img, struct qcow2 *q)
{
    uint64_t bytes = (uint64_t)q->rt_clusters * q->cluster_size;
    q->rt_entries = bytes / 8;
    q->rt = malloc((size_t)bytes);
    if (!q->rt)
        return vd_err(VD_ENOMEM, "%s: out of memory for the refcount table", img->filename);
    int rc = qcow2_pread_table(img, q->rt, bytes, q->rt_offset, "refcount table");
    if (rc < 0)
        return rc;
    /* the reserved bits are not part of the offset, as for QEMU (check reports them);
       an offset inside a cluster is refused when the block is needed (block_offset) */
    for (uint64_t i = 0; i < q->rt_entries; i++)
        q->rt[i] = vd_be64(&q->rt[i]) & ~QCOW2_RT_RESERVED;
    return 0;
}

bool qcow2_refblock_misaligned(const struct qcow2 *q, uint64_t ti)
{
    return (q->rt[ti] & (q->cluster_size - 1)) != 0;
}

/* The offset of refcount block ti: 0 if there is none; corruption if misaligned. */
static int block_offset(vd_image *img, struct qcow2 *q, uint64_t ti, uint64_t *off)
{
    *off = ti < q->rt_entries ? q->rt[ti] : 0;
    if (*off && qcow2_refblock_misaligned(q, ti))
        return qcow2_signal_corruption(img, "refcount block %llu at offset 0x%llx is not cluster "
                                       "aligned", (unsigned long long)ti, (unsigned long long)*off);
    return 0;
}

int qcow2_get_refcount(vd_image *img, struct qcow2 *q, uint64_t cluster, uint64_t *refcount)
{
    uint64_t off;
    int rc = block_offset(img, q, cluster / q->rb_entries, &off);
    *refcount = 0;
    if (rc < 0 || !off)
        return rc;
    void *block;
    rc = vd_cache_get(q->rb_cache, off, false, &block);
    if (rc < 0)
        return rc;
    *refcount = qcow2_refblock_get(block, cluster % q->rb_entries, q->refcount_order);
    vd_cache_put(q->rb_cache, block);
    return 0;
}

/*
 * Offsets of refcount blocks already found all zero. A hostile refcount table
 * may name one block in every entry: remembering the blocks read makes each
 * distinct block cost one scan, so that the search below is bounded by the
 * file, not by the table. Open addressing; offset 0 marks a free slot (the
 * header is never a refcount block worth scanning: entries of 0 are skipped).
 */
struct block_set {
    uint64_t *slots;
    size_t mask;
};

static bool block_set_init(struct block_set *set, uint64_t most)
{
    size_t size = 8;
    while (size < most * 2)
        size *= 2;
    set->mask = size - 1;
    set->slots = calloc(size, sizeof *set->slots);
    return set->slots != NULL;
}

/* Whether off is in the set; if not, add it (the caller sizes the set for every block). */
static bool block_set_test_and_add(struct block_set *set, uint64_t off)
{
    size_t i = (size_t)((off * 0x9E3779B97F4A7C15ull) >> 32) & set->mask;
    for (; set->slots[i]; i = (i + 1) & set->mask)
        if (set->slots[i] == off)
            return true;
    set->slots[i] = off;
    return false;
}

/* One past the last non-zero refcount of the block at off; 0 if all are zero or unreadable. */
static uint64_t refblock_used_end(struct qcow2 *q, uint64_t off)
{
    void *block;
    if (vd_cache_get(q->rb_cache, off, false, &block) < 0)
        return 0;
    uint64_t i = q->rb_entries;
    while (i > 0 && !qcow2_refblock_get(block, i - 1, q->refcount_order))
        i--;
    vd_cache_put(q->rb_cache, block);
    return i;
}

int qcow2_alloc_end_past(vd_image *img, struct qcow2 *q, uint64_t file_size, uint64_t *alloc_end)
{
    const uint64_t cs = q->cluster_size;
    uint64_t end = file_size / cs + (file_size % cs != 0), first_ti = end / q->rb_entries;
    *alloc_end = end;
    if (first_ti >= q->rt_entries)
        return 0;
    /* distinct blocks inside the file: no more than the table's entries, nor the file's clusters */
    struct block_set seen;
    uint64_t entries = q->rt_entries - first_ti;
    if (!block_set_init(&seen, entries < end ? entries : end))
        return vd_err(VD_ENOMEM, "%s: out of memory scanning the refcount blocks", img->filename);
    for (uint64_t ti = q->rt_entries; ti-- > first_ti;) {
        /* a block past the end of the file or misaligned holds nothing (the check reports
           it); a block seen before was all zero, else the scan would have stopped there */
        if (!q->rt[ti] || q->rt[ti] >= file_size || qcow2_refblock_misaligned(q, ti) ||
            block_set_test_and_add(&seen, q->rt[ti]))
            continue;
        uint64_t used = refblock_used_end(q, q->rt[ti]);
        if (used) {
            if (ti * q->rb_entries + used > end)
                *alloc_end = ti * q->rb_entries + used;
            break;
        }
    }
    free(seen.slots);
    return 0;
}

/* Write refcount table entries [first, last] to disk, after the blocks they name are durable. */
static int publish_rt_entries(vd_image *img, struct qcow2 *q, uint64_t first, uint64_t last)
{
    uint8_t *entries = malloc((size_t)(last - first + 1) * 8);
    if (!entries)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    for (uint64_t ti = first; ti <= last; ti++)
        vd_put_be64(entries + (ti - first) * 8, q->rt[ti]);
    int rc = vd_cache_writeback(q->rb_cache);
    vd_image_mark_unsynced(img);
    if (rc == 0)
        rc = vd_image_sync(img);
    if (rc == 0)
        rc = qcow2_write_meta(img, QCOW2_META_REFCOUNT_TABLE, q->rt_offset + first * 8, entries,
                              (size_t)(last - first + 1) * 8);
    free(entries);
    return rc < 0 ? vd_image_poison(img, rc) : 0;
}

/* The refcount block holding `cluster`'s refcount, from the cache, and that refcount. */
static int load_refcount(vd_image *img, struct qcow2 *q, uint64_t cluster, void **block, uint64_t *value)
{
    uint64_t off;
    int rc = block_offset(img, q, cluster / q->rb_entries, &off);
    if (rc == 0 && !off)
        rc = qcow2_signal_corruption(img, "cluster %llu has no refcount block", (unsigned long long)cluster);
    if (rc == 0)
        rc = vd_cache_get(q->rb_cache, off, false, block);
    if (rc == 0)
        *value = qcow2_refblock_get(*block, cluster % q->rb_entries, q->refcount_order);
    return rc;
}

/* Store a refcount into the block load_refcount() returned, and release the block. */
static void store_refcount(struct qcow2 *q, uint64_t cluster, void *block, uint64_t old, uint64_t value)
{
    qcow2_refblock_set(block, cluster % q->rb_entries, q->refcount_order, value);
    vd_cache_mark_dirty(q->rb_cache, block);
    vd_cache_put(q->rb_cache, block);
    if (old && !value) {
        q->meta_stale = true; /* a freed cluster may have held metadata */
        if (cluster < q->free_hint)
            q->free_hint = cluster;
    }
}

int qcow2_update_refcount(vd_image *img, struct qcow2 *q, uint64_t cluster, int64_t delta)
{
    void *block;
    uint64_t old;
    int rc = load_refcount(img, q, cluster, &block, &old);
    if (rc < 0)
        return rc;
    /* the magnitude in unsigned arithmetic: -INT64_MIN does not fit an int64_t */
    uint64_t magnitude = delta < 0 ? 0 - (uint64_t)delta : (uint64_t)delta;
    if ((delta < 0 && old < magnitude) || (delta > 0 && q->refcount_max - old < magnitude)) {
        vd_cache_put(q->rb_cache, block);
        if (delta > 0)
            return vd_err(VD_ETOOBIG, "%s: refcount of cluster %llu would exceed %u bits",
                          img->filename, (unsigned long long)cluster, 1u << q->refcount_order);
        return qcow2_signal_corruption(img, "refcount of cluster %llu would drop below zero",
                                       (unsigned long long)cluster);
    }
    store_refcount(q, cluster, block, old, delta < 0 ? old - magnitude : old + magnitude);
    return 0;
}

int qcow2_set_refcount(vd_image *img, struct qcow2 *q, uint64_t cluster, uint64_t value)
{
    if (value > q->refcount_max)
        return vd_err(VD_ETOOBIG, "%s: refcount %llu of cluster %llu does not fit %u bits", img->filename,
                      (unsigned long long)value, (unsigned long long)cluster, 1u << q->refcount_order);
    void *block;
    uint64_t old;
    int rc = load_refcount(img, q, cluster, &block, &old);
    if (rc == 0)
        store_refcount(q, cluster, block, old, value);
    return rc;
}

/*
 * Turn the free cluster `cluster` into the refcount block for its own range
 * (a block that describes itself), and publish it in the refcount table.
 */
static int add_self_describing_block(vd_image *img, struct qcow2 *q, uint64_t cluster)
{
    /* cluster 0 is the header: a refcount table without block 0 is corrupt (and offset 0
       would read as "no block" again, looping forever) */
    if (cluster == 0)
        return qcow2_signal_corruption(img, "the refcount table has no block for the header cluster");
    uint64_t ti = cluster / q->rb_entries;
    void *block;
    int rc = vd_cache_get(q->rb_cache, cluster * q->cluster_size, true, &block);
    if (rc < 0)
        return rc;
    qcow2_refblock_set(block, cluster % q->rb_entries, q->refcount_order, 1);
    vd_cache_put(q->rb_cache, block);
    q->rt[ti] = cluster * q->cluster_size;
    q->meta_stale = true;
    if (cluster + 1 > q->alloc_end)
        q->alloc_end = cluster + 1;
    return publish_rt_entries(img, q, ti, ti);
}

uint64_t qcow2_skip_claim(const struct qcow2 *q, uint64_t start, uint64_t count)
{
    return start < q->claimed_end && start + count > q->claimed_first ? q->claimed_end : start;
}

/*
 * Move the refcount table to the end of the file with room for at least
 * min_entries entries. The new table and any refcount blocks it needs for
 * itself are laid out together: [table clusters][new blocks].
 */
static int grow_refcount_table(vd_image *img, struct qcow2 *q, uint64_t min_entries)
{
    const uint64_t cs = q->cluster_size, per_table_cluster = cs / 8;
    uint64_t start = q->alloc_end;
    uint64_t entries = q->rt_entries * 2 > min_entries ? q->rt_entries * 2 : min_entries;
    uint64_t table_clusters, nblocks = 0;
    for (;;) {
        table_clusters = (entries + per_table_cluster - 1) / per_table_cluster;
        if (table_clusters * cs > QCOW2_MAX_RT_BYTES) /* also bounds the scan below */
            return vd_err(VD_ETOOBIG, "%s: the refcount table would exceed 8 MiB", img->filename);
        uint64_t moved = qcow2_skip_claim(q, start, table_clusters + nblocks);
        if (moved != start) {
            start = moved;
            continue;
        }
        uint64_t end = start + table_clusters + nblocks;
        uint64_t last_ti = (end - 1) / q->rb_entries;
        if (last_ti >= entries) {
            entries = last_ti + 1;
            continue;
        }
        uint64_t missing = 0;
        for (uint64_t ti = start / q->rb_entries; ti <= last_ti; ti++)
            missing += ti >= q->rt_entries || q->rt[ti] == 0;
        if (missing == nblocks)
            break;
        nblocks = missing;
    }
    entries = table_clusters * per_table_cluster;
    int rc = qcow2_check_unused(img, start, table_clusters + nblocks);
    if (rc < 0)
        return rc;

    uint64_t *rt = calloc((size_t)entries, sizeof *rt);
    uint8_t *disk = malloc((size_t)(table_clusters * cs));
    if (!rt || !disk) {
        free(rt);
        free(disk);
        return vd_err(VD_ENOMEM, "%s: out of memory growing the refcount table", img->filename);
    }
    memcpy(rt, q->rt, (size_t)q->rt_entries * sizeof *rt);
    uint64_t end = start + table_clusters + nblocks, next_block = start + table_clusters;
    for (uint64_t ti = start / q->rb_entries; ti <= (end - 1) / q->rb_entries; ti++)
        if (rt[ti] == 0)
            rt[ti] = (next_block++) * cs;

    /* refcounts of the new area: fresh blocks are zeroed first by the cache */
    uint64_t *old_rt = q->rt, old_entries = q->rt_entries, old_offset = q->rt_offset;
    uint32_t old_clusters = q->rt_clusters;
    for (uint64_t ti = start / q->rb_entries; ti <= (end - 1) / q->rb_entries && rc == 0; ti++) {
        bool fresh = ti >= old_entries || old_rt[ti] == 0;
        void *block;
        if (fresh && (rc = vd_cache_get(q->rb_cache, rt[ti], true, &block)) == 0)
            vd_cache_put(q->rb_cache, block);
    }
    q->rt = rt;
    q->rt_entries = entries;
    q->meta_stale = true;
    for (uint64_t c = start; c < end && rc == 0; c++)
        rc = qcow2_update_refcount(img, q, c, 1);
    q->alloc_end = end;
    for (uint64_t i = 0; i < entries; i++)
        vd_put_be64(disk + i * 8, rt[i]);
    if (rc == 0)
        rc = vd_cache_writeback(q->rb_cache);
    if (rc == 0)
        rc = qcow2_write_meta(img, QCOW2_META_NONE, start * cs, disk, (size_t)(table_clusters * cs));
    if (rc == 0)
        rc = vd_image_sync_now(img);
    free(disk);
    if (rc < 0) {
        q->rt = old_rt;
        q->rt_entries = old_entries;
        q->meta_stale = true;
        free(rt);
        return vd_image_poison(img, rc);
    }
    /* switch the header over, then release the old table */
    q->rt_offset = start * cs;
    q->rt_clusters = (uint32_t)table_clusters;
    q->meta_stale = true;
    uint8_t fields[12];
    vd_put_be64(fields, q->rt_offset);
    vd_put_be32(fields + 8, q->rt_clusters);
    rc = qcow2_write_meta(img, QCOW2_META_HEADER, 48, fields, sizeof fields);
    if (rc == 0)
        rc = vd_image_sync_now(img);
    free(old_rt);
    if (rc < 0)
        return vd_image_poison(img, rc);
    for (uint64_t c = 0; c < old_clusters && rc == 0; c++)
        rc = qcow2_update_refcount(img, q, old_offset / cs + c, -1);
    return rc;
}

/*
 * Allocate count clusters at the end of the file, preceded by the refcount
 * blocks their range lacks: [new blocks][run]. Used when a multi-cluster run
 * would otherwise be split by self-describing blocks.
 */
static int alloc_at_end(vd_image *img, struct qcow2 *q, uint64_t count, uint64_t *host)
{
    uint64_t start, nblocks, end;
    for (;;) {
        start = q->alloc_end;
        nblocks = 0;
        for (;;) {
            uint64_t moved = qcow2_skip_claim(q, start, nblocks + count);
            if (moved != start) {
                start = moved;
                continue;
            }
            end = start + nblocks + count;
            uint64_t missing = 0;
            for (uint64_t ti = start / q->rb_entries; ti <= (end - 1) / q->rb_entries; ti++)
                missing += ti >= q->rt_entries || q->rt[ti] == 0;
            if (missing == nblocks)
                break;
            nblocks = missing;
        }
        uint64_t last_ti = (end - 1) / q->rb_entries;
        if (last_ti < q->rt_entries)
            break;
        int rc = grow_refcount_table(img, q, last_ti + 1); /* moves alloc_end: lay out again */
        if (rc < 0)
            return rc;
    }
    int rc = qcow2_check_unused(img, start, end - start);
    if (rc < 0)
        return rc;
    uint64_t first_ti = start / q->rb_entries, last_ti = (end - 1) / q->rb_entries, next = start;
    for (uint64_t ti = first_ti; ti <= last_ti; ti++) {
        if (q->rt[ti])
            continue;
        void *block;
        q->rt[ti] = (next++) * q->cluster_size;
        if ((rc = vd_cache_get(q->rb_cache, q->rt[ti], true, &block)) < 0)
            return rc;
        vd_cache_put(q->rb_cache, block);
    }
    q->alloc_end = end;
    q->meta_stale = true;
    for (uint64_t c = start; c < end && rc == 0; c++)
        rc = qcow2_update_refcount(img, q, c, 1);
    if (rc == 0)
        rc = publish_rt_entries(img, q, first_ti, last_ti);
    *host = (start + nblocks) * q->cluster_size;
    return rc;
}

/* First index >= from of a run of count free clusters. */
static int find_free_run(vd_image *img, struct qcow2 *q, uint64_t from, uint64_t count,
                         uint64_t *first)
{
    uint64_t run = 0;
    for (uint64_t c = from;; c++) {
        uint64_t refcount;
        if (c >= q->claimed_first && c < q->claimed_end) {
            c = q->claimed_end - 1;
            run = 0;
            continue;
        }
        if (c >= q->alloc_end) { /* everything from here on is free */
            *first = run ? c - run : c;
            return 0;
        }
        int rc = qcow2_get_refcount(img, q, c, &refcount);
        if (rc < 0)
            return rc;
        run = refcount ? 0 : run + 1;
        if (run == count) {
            *first = c + 1 - count;
            return 0;
        }
    }
}

int qcow2_alloc_clusters(vd_image *img, struct qcow2 *q, uint64_t count, uint64_t *host)
{
    for (;;) {
        uint64_t first;
        int rc = find_free_run(img, q, q->free_hint, count, &first);
        if (rc < 0)
            return rc;
        uint64_t last_ti = (first + count - 1) / q->rb_entries;
        if (last_ti >= q->rt_entries) {
            if ((rc = grow_refcount_table(img, q, last_ti + 1)) < 0)
                return rc;
            continue;
        }
        /* every cluster of the run needs a refcount block: make one from the run itself */
        uint64_t missing = UINT64_MAX;
        for (uint64_t c = first; c < first + count && missing == UINT64_MAX; c++)
            if (q->rt[c / q->rb_entries] == 0)
                missing = c;
        if (missing != UINT64_MAX && count > 1)
            return alloc_at_end(img, q, count, host);
        if ((rc = qcow2_check_unused(img, first, count)) < 0)
            return rc;
        if (missing != UINT64_MAX) {
            if ((rc = add_self_describing_block(img, q, missing)) < 0)
                return rc;
            continue;
        }
        for (uint64_t c = first; c < first + count; c++)
            if ((rc = qcow2_update_refcount(img, q, c, 1)) < 0)
                return rc;
        if (count == 1 || first == q->free_hint)
            q->free_hint = first + count;
        if (first + count > q->alloc_end)
            q->alloc_end = first + count;
        *host = first * q->cluster_size;
        return 0;
    }
}

int qcow2_alloc_metadata(vd_image *img, struct qcow2 *q, uint64_t count, uint64_t *host)
{
    int rc = qcow2_alloc_clusters(img, q, count, host);
    q->meta_stale = true; /* the caller is about to record a new structure there */
    return rc;
}

int qcow2_alloc_bytes(vd_image *img, struct qcow2 *q, uint64_t len, uint64_t *host)
{
    const uint64_t cs = q->cluster_size;
    uint64_t off = q->free_byte_offset, refcount = 0;
    int rc = off ? qcow2_get_refcount(img, q, off / cs, &refcount) : 0;
    if (rc < 0)
        return rc;
    if (refcount == 0 || refcount == q->refcount_max) /* freed since, or no reference left to add */
        off = 0;
    bool shares = off && len <= cs - off % cs;
    if (!shares) {
        uint64_t fresh;
        if ((rc = qcow2_alloc_clusters(img, q, 1, &fresh)) < 0)
            return rc;
        /* the next cluster after the one the last compressed cluster ended in: run on */
        shares = off && fresh == off - off % cs + cs;
        if (!shares)
            off = fresh;
    }
    if (shares && (rc = qcow2_update_refcount(img, q, off / cs, 1)) < 0)
        return rc;
    *host = off;
    q->free_byte_offset = (off + len) % cs ? off + len : 0;
    return 0;
}

int qcow2_free_cluster_later(vd_image *img, struct qcow2 *q, uint64_t host)
{
    if (q->npending == q->pending_cap) {
        size_t cap = q->pending_cap ? q->pending_cap * 2 : 64;
        uint64_t *grown = realloc(q->pending_frees, cap * sizeof *grown);
        if (!grown)
            return vd_image_poison(img, vd_err(VD_ENOMEM, "%s: out of memory", img->filename));
        q->pending_frees = grown;
        q->pending_cap = cap;
    }
    q->pending_frees[q->npending++] = host / q->cluster_size;
    return 0;
}

int qcow2_apply_pending_frees(vd_image *img, struct qcow2 *q)
{
    int rc = 0;
    for (size_t i = 0; i < q->npending && rc == 0; i++) {
        uint64_t cluster = q->pending_frees[i], refcount = 1;
        /* only a cluster whose last reference goes must hold no metadata: an L2 table that
           two L1 entries name loses one reference when a write copies it for the other */
        rc = qcow2_get_refcount(img, q, cluster, &refcount);
        if (rc == 0 && refcount <= 1)
            rc = qcow2_check_free(img, cluster * q->cluster_size);
        if (rc == 0)
            rc = qcow2_update_refcount(img, q, cluster, -1);
        /* a cluster nothing uses gives its space back to the host (discard is a hint) */
        if (rc == 0 && qcow2_get_refcount(img, q, cluster, &refcount) == 0 && refcount == 0)
            vd_file_punch_hole(img->file, cluster * q->cluster_size, q->cluster_size);
    }
    q->npending = 0;
    q->free_byte_offset = 0; /* its cluster may have been freed */
    if (rc == 0)
        vd_err_clear(); /* a file system without hole punching is not an error */
    return rc;
}

int qcow2_refcounts_durable(void *ctx)
{
    vd_image *img = ctx;
    struct qcow2 *q = qcow2_of(img);
    if (vd_cache_has_dirty(q->rb_cache)) {
        int rc = vd_cache_writeback(q->rb_cache);
        if (rc < 0)
            return rc;
        vd_image_mark_unsynced(img);
    }
    return vd_image_sync(img);
}

/*
 * Counted up to the end of the file and no further than the threshold, so
 * the cost is bounded by the file's size. Block status runs under a shared
 * lock: two threads may both count, and store the same answer.
 */
bool qcow2_metadata_preallocated(vd_image *img)
{
    struct qcow2 *q = qcow2_of(img);
    int known = __atomic_load_n(&q->metadata_prealloc, __ATOMIC_ACQUIRE);
    if (known >= 0)
        return known;
    uint64_t file_size, stored;
    if (vd_file_get_size(img->file, &file_size) < 0 || vd_file_allocated_bytes(img->file, &stored) < 0)
        return false; /* not known now; asked again next time */
    uint64_t stored_clusters = stored / q->cluster_size;
    uint64_t threshold = stored_clusters * 10 / 9 > stored_clusters + 2 ? stored_clusters * 10 / 9
                                                                        : stored_clusters + 2;
    uint64_t end = file_size / q->cluster_size + (file_size % q->cluster_size != 0), counted = 0;
    for (uint64_t c = 0; c < end && counted < threshold; c++) {
        uint64_t refcount;
        if (qcow2_get_refcount(img, q, c, &refcount) < 0)
            return false;
        counted += refcount != 0;
    }
    bool preallocated = counted >= threshold;
    __atomic_store_n(&q->metadata_prealloc, preallocated, __ATOMIC_RELEASE);
    return preallocated;
}
