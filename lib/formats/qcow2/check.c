/*
 * qcow2 check and repair: count the references to every host cluster from
 * all metadata (header, L1/L2 tables of the active state and of snapshots,
 * refcount structures, snapshot table, bitmaps, encryption header), compare
 * with the stored refcounts, and verify the COPIED flags. Messages follow
 * qemu-img check's wording so that the two can be compared.
 */
#include "formats/qcow2/qcow2.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* bits 1..8 and 56..63 of a bitmap table entry are reserved; bit 0 (all ones) only without an offset */
#define BITMAP_ENTRY_RESERVED  0xff000000000001feull
#define BITMAP_ENTRY_ALL_ONES  1ull

struct checker {
    vd_image *img;
    struct qcow2 *q;
    vd_check_result *res;
    vd_check_report_fn report;
    void *ctx;
    uint32_t *refs;          /* computed references per host cluster */
    uint64_t nclusters;      /* clusters in the file */
    uint64_t nrefs;          /* entries of refs: the file's, and some past it (see add_ref) */
    uint64_t next_contiguous;
    uint64_t end_cluster;    /* past the last cluster referenced or with a stored refcount */
    uint64_t past_eof_first, past_eof_end; /* clusters referenced beyond the end of the file */
    uint64_t compare_end;    /* refcounts compared below this cluster (add_refs) */
    bool rebuild;            /* the refcount structures cannot be repaired in place */
    uint64_t too_low;        /* clusters whose refcount stays below their references */
    uint64_t file_size;
    /* the last refcount block read that the end of the file cuts short (zero-filled) */
    uint8_t *cut_block;
    uint64_t cut_block_off;
    uint64_t *raw_rt;        /* the refcount table with its reserved bits (read_raw_refcount_table) */
    /* a bit per cluster of the file that a region reaching a cluster or more past
       its end holds (add_refs): uncounted, as by qemu-img, but never freed */
    uint8_t *kept;
    bool keep_past_eof;      /* add_refs keeps such clusters (not for a table -r all rewrites) */
    bool rewrites_snapshot_table; /* -r all rewrites the snapshot table (check_snapshot_entries) */
};

/* One report line: vd_check_say() to the check's report. */
#define say(c, ...) vd_check_say((c)->report, (c)->ctx, __VA_ARGS__)

/*
 * References up to this many clusters past the end of the file are counted
 * too (besides being reported, as qemu-img does): a refcount rebuild that
 * places its structures beyond them then gives them their refcounts, so that
 * once the file covers them they are not mistaken for free clusters.
 */
#define PAST_EOF_COUNTED (1u << 20)

/* The largest count of references refs[] holds exactly. */
static uint64_t most_refs(const struct checker *c)
{
    return c->q->refcount_max < UINT32_MAX - 1 ? c->q->refcount_max : UINT32_MAX - 1;
}

/* The references to cluster i, as qemu-img check counts them: at most the largest refcount. */
static uint64_t counted(const struct checker *c, uint64_t i)
{
    return c->refs[i] < most_refs(c) ? c->refs[i] : most_refs(c);
}

/*
 * weight more references to cluster i. As qemu-img check counts them, a
 * count stops at the largest refcount the image can store, and each
 * reference beyond it is a corruption of its own (an overflow). The count
 * then stays one past that largest refcount, so that a rebuild that drops
 * one reference (an old refcount block's) still gives the cluster the
 * largest refcount and not one less.
 */
static void add_weight(struct checker *c, uint64_t i, uint64_t weight)
{
    uint64_t most = most_refs(c), room = most - counted(c, i);
    if (weight > room) {
        say(c, "ERROR: overflow cluster offset=0x%llx",
            (unsigned long long)(i * c->q->cluster_size));
        c->res->corruptions += weight - room;
        c->refs[i] = (uint32_t)(most + 1);
        return;
    }
    c->refs[i] += (uint32_t)weight;
}

static bool kept(const struct checker *c, uint64_t i)
{
    return c->kept && i < c->nclusters && (c->kept[i / 8] >> (i % 8) & 1);
}

static void keep(struct checker *c, uint64_t first, uint64_t end)
{
    if (!c->kept && !(c->kept = calloc((size_t)(c->nclusters + 7) / 8, 1))) {
        c->res->check_errors++;
        return;
    }
    for (uint64_t i = first; i < end; i++)
        c->kept[i / 8] |= (uint8_t)(1u << (i % 8));
}

static void count_past_eof(struct checker *c, uint64_t first, uint64_t last, uint64_t weight)
{
    if (last >= c->nclusters + PAST_EOF_COUNTED)
        return;
    if (last >= c->nrefs) {
        uint32_t *refs = realloc(c->refs, (size_t)(last + 1) * sizeof *refs);
        if (!refs) {
            c->res->check_errors++;
            return;
        }
        memset(refs + c->nrefs, 0, (size_t)(last + 1 - c->nrefs) * sizeof *refs);
        c->refs = refs;
        c->nrefs = last + 1;
    }
    for (uint64_t i = first; i <= last; i++)
        add_weight(c, i, weight);
}

/*
 * Count weight references to every cluster of [off, off+len): as many as
 * identical structures name it (reported once, counted weight times).
 * qemu-img check measures the file in 512-byte sectors and calls a region
 * corrupt only when it ends a cluster or more past that length; a region
 * that ends less far past it is counted, and compared, like any other.
 * Of a corrupt region qemu-img counts no cluster, so that the part still
 * in the file leaks: the count agrees, but the part is kept (a table cut
 * short by a truncation is still read from there; freeing it would let an
 * allocation overwrite it).
 */
static void add_refs(struct checker *c, uint64_t off, uint64_t len, uint64_t weight)
{
    if (!len)
        return;
    uint64_t cs = c->q->cluster_size, first = off / cs, last = (off + len - 1) / cs;
    uint64_t file_len = (c->file_size + 511) & ~511ull;
    bool wraps = off + len < off, far_past_eof = wraps || off + len - file_len >= cs;
    if (off + len > file_len && far_past_eof) {
        say(c, "ERROR: counting reference for region exceeding the end of the file by one cluster "
               "or more: offset 0x%llx size 0x%llx", (unsigned long long)off, (unsigned long long)len);
        c->res->corruptions += weight;
        if (wraps)
            return;
    }
    if (last < c->nclusters) {
        for (uint64_t i = first; i <= last; i++)
            add_weight(c, i, weight);
        return;
    }
    uint64_t from = first > c->nclusters ? first : c->nclusters;
    if (!c->past_eof_end || from < c->past_eof_first)
        c->past_eof_first = from;
    if (last + 1 > c->past_eof_end)
        c->past_eof_end = last + 1;
    if (off + len > file_len && far_past_eof && first < from) {
        if (c->keep_past_eof)
            keep(c, first, from);
        first = from;
    }
    count_past_eof(c, first, last, weight);
    if (!(off + len > file_len && far_past_eof) && last < c->nrefs && last + 1 > c->compare_end)
        c->compare_end = last + 1;
}

/* Count one reference to every cluster of [off, off+len). */
static void add_ref(struct checker *c, uint64_t off, uint64_t len)
{
    add_refs(c, off, len, 1);
}

/* Whether an L2 entry (not compressed) names data, or only an allocation that reads as zeroes. */
static bool holds_data(const struct qcow2 *q, const uint8_t *entry)
{
    if (q->l2_entry_bytes == 16)
        return (uint32_t)vd_be64(entry + 8) != 0;
    return !(vd_be64(entry) & QCOW2_OFLAG_ZERO);
}

/*
 * Count the references of one L2 table that weight L1 entries name: its
 * findings count weight times, as qemu-img check counts them walking the
 * table once per entry.
 */
static void walk_l2(struct checker *c, const uint8_t *table, bool active, uint64_t weight)
{
    struct qcow2 *q = c->q;
    const uint64_t cs = q->cluster_size;
    for (uint64_t i = 0; i < q->l2_entries; i++) {
        uint64_t word = vd_be64(table + i * q->l2_entry_bytes);
        if (word & QCOW2_OFLAG_COMPRESSED) {
            unsigned x = 62 - (q->cluster_bits - 8);
            uint64_t host = word & ((1ull << x) - 1);
            uint64_t sectors = ((word >> x) & ((1ull << (q->cluster_bits - 8)) - 1)) + 1;
            if (word & QCOW2_OFLAG_COPIED) {
                say(c, "ERROR: coffset=0x%llx: copied flag must never be set for compressed clusters",
                    (unsigned long long)host);
                c->res->corruptions += weight;
            }
            add_refs(c, host, sectors * 512 - (host & 511), weight); /* to the end of its last sector */
            if (active) { /* as qemu-img counts them: every compressed cluster is a fragment */
                c->res->allocated_clusters += weight;
                c->res->compressed_clusters += weight;
                c->res->fragmented_clusters += weight;
            }
            continue;
        }
        if (q->l2_entry_bytes == 16) {
            uint64_t bitmap = vd_be64(table + i * 16 + 8);
            uint32_t alloc_bits = (uint32_t)bitmap, zero_bits = (uint32_t)(bitmap >> 32);
            if ((alloc_bits & zero_bits) || (alloc_bits && !(word & QCOW2_OFFSET_MASK) &&
                                             !qcow2_has_data_file(q))) {
                say(c, "ERROR: invalid subcluster allocation bitmap 0x%llx in L2 entry 0x%llx",
                    (unsigned long long)bitmap, (unsigned long long)word);
                c->res->corruptions += weight;
            }
        }
        /* bit 0 of a version 2 entry is no reserved bit for qemu-img check (reads refuse it) */
        if (word & QCOW2_L2_RESERVED) {
            say(c, "ERROR found l2 entry with reserved bits set: %llx", (unsigned long long)word);
            c->res->corruptions += weight;
        }
        uint64_t host = word & QCOW2_OFFSET_MASK;
        bool data_file_zero = qcow2_has_data_file(q) && (word & QCOW2_OFLAG_COPIED);
        if (!host && !data_file_zero) /* host 0 is guest cluster 0 only in a data file */
            continue;
        /* misaligned: still counted, as qemu-img does, over the clusters it straddles
           (-r all first made an entry without data a zero cluster: zero_misaligned_entries) */
        if (host & (cs - 1)) {
            say(c, "ERROR offset=%llx: %s cluster is not properly aligned; L2 entry corrupted.",
                (unsigned long long)host, holds_data(q, table + i * q->l2_entry_bytes) ? "Data" : "Preallocated");
            c->res->corruptions += weight;
        }
        if (!qcow2_has_data_file(q))
            add_refs(c, host, cs, weight);
        if (active) {
            c->res->allocated_clusters += weight;
            if (c->next_contiguous && host != c->next_contiguous)
                c->res->fragmented_clusters += weight;
            c->next_contiguous = host + cs;
        }
    }
}

/* Whether the cluster at off lies wholly inside the file. */
static bool cluster_inside_file(const struct checker *c, uint64_t off)
{
    return off <= c->file_size && c->q->cluster_size <= c->file_size - off;
}

/* Whether get_table() takes the table at off from the cache: aligned and wholly in the file. */
static bool table_cached(const struct checker *c, uint64_t off)
{
    return !(off & (c->q->cluster_size - 1)) && cluster_inside_file(c, off);
}

/*
 * The L2 table at off: from the cache, or, when the end of the file cuts it
 * short or the offset is misaligned, read as qemu-img check reads it (zeroes
 * past the end of the file) into a buffer that nothing writes back. Release
 * it with put_table(off).
 */
static int get_table(struct checker *c, uint64_t off, uint8_t **table)
{
    struct qcow2 *q = c->q;
    if (table_cached(c, off))
        return vd_cache_get(q->l2_cache, off, false, (void **)table);
    if (!(*table = malloc((size_t)q->cluster_size)))
        return vd_err(VD_ENOMEM, "%s: out of memory", c->img->filename);
    int rc = qcow2_pread_table(c->img, *table, q->cluster_size, off, NULL);
    if (rc < 0)
        free(*table);
    return rc;
}

static void put_table(struct checker *c, uint64_t off, uint8_t *table)
{
    if (table_cached(c, off))
        vd_cache_put(c->q->l2_cache, table);
    else
        free(table);
}

static int by_value(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* How many entries from i on repeat sorted[i]. */
static size_t repeats(const uint64_t *sorted, size_t n, size_t i)
{
    size_t run = 1;
    while (i + run < n && sorted[i + run] == sorted[i])
        run++;
    return run;
}

/*
 * Count an L1 table that weight structures name (the active state, or
 * snapshots sharing it), its L2 tables and their clusters. l1 is
 * host-endian. Each distinct L2 table is read and walked once, its findings
 * weighted by the entries naming it, so that the cost is bounded by the
 * tables present, however often an L1 table names one.
 */
static int walk_l1(struct checker *c, const uint64_t *l1, uint32_t l1_size, uint64_t l1_offset,
                   bool active, uint64_t weight)
{
    struct qcow2 *q = c->q;
    uint64_t *tables = malloc(((size_t)l1_size + 1) * sizeof *tables);
    if (!tables)
        return vd_err(VD_ENOMEM, "%s: out of memory", c->img->filename);
    size_t ntables = 0;
    add_refs(c, l1_offset, (uint64_t)l1_size * 8, weight);
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK;
        if (l1[i] & QCOW2_L1_RESERVED) {
            say(c, "ERROR found L1 entry with reserved bits set: %llx", (unsigned long long)l1[i]);
            c->res->corruptions += weight;
        }
        /* an entry of flags only names an L2 table at offset 0 (the header) for
           qemu-img check; reads treat it as unallocated, as QEMU's do */
        if (!l1[i])
            continue;
        add_refs(c, l2, q->cluster_size, weight); /* reports a table past the end of the file */
        /* a misaligned table is still walked where it points, as qemu-img walks it */
        if (l2 & (q->cluster_size - 1)) {
            say(c, "ERROR l2_offset=%llx: Table is not cluster aligned; L1 entry corrupted",
                (unsigned long long)l2);
            c->res->corruptions += weight;
        }
        if (l2 / q->cluster_size < c->nclusters)
            tables[ntables++] = l2;
    }
    qsort(tables, ntables, sizeof *tables, by_value);
    for (size_t i = 0, run; i < ntables; i += run) {
        run = repeats(tables, ntables, i);
        uint8_t *table;
        if (get_table(c, tables[i], &table) < 0) {
            c->res->check_errors += run;
            continue;
        }
        c->next_contiguous = 0; /* qemu-img counts fragments within each L2 table */
        walk_l2(c, table, active, weight * run);
        put_table(c, tables[i], table);
    }
    free(tables);
    return 0;
}

/* Snapshots in the order of their L1 tables (offset, then size). */
static int by_l1_table(const void *a, const void *b)
{
    const struct qcow2_snapshot *x = *(const struct qcow2_snapshot *const *)a;
    const struct qcow2_snapshot *y = *(const struct qcow2_snapshot *const *)b;
    if (x->l1_offset != y->l1_offset)
        return (x->l1_offset > y->l1_offset) - (x->l1_offset < y->l1_offset);
    return (x->l1_size > y->l1_size) - (x->l1_size < y->l1_size);
}

/* The snapshots' L1 tables: each distinct one read and walked once, weighted by the snapshots naming it. */
static int walk_snapshots(struct checker *c)
{
    struct qcow2 *q = c->q;
    /* what the table names past the end of the file is claimed by nothing: no
       write goes through it there (a repair covers the table, or rewrites it) */
    uint64_t claim_first = c->past_eof_first, claim_end = c->past_eof_end;
    /* a table that -r all rewrites needs no keeping: its part in the file leaks
       and is freed, as by qemu-img (the rewrite frees nothing of a table past the end) */
    c->keep_past_eof = !c->rewrites_snapshot_table;
    add_ref(c, q->snapshots_offset, q->snapshots_bytes);
    c->keep_past_eof = true;
    c->past_eof_first = claim_first;
    c->past_eof_end = claim_end;
    const struct qcow2_snapshot **order = malloc(((size_t)q->nb_snapshots + 1) * sizeof *order);
    if (!order)
        return vd_err(VD_ENOMEM, "%s: out of memory", c->img->filename);
    for (uint32_t s = 0; s < q->nb_snapshots; s++)
        order[s] = &q->snapshots[s];
    qsort(order, q->nb_snapshots, sizeof *order, by_l1_table);
    int rc = 0;
    for (uint32_t s = 0, same; s < q->nb_snapshots && rc == 0; s += same) {
        const struct qcow2_snapshot *sn = order[s];
        for (same = 1; s + same < q->nb_snapshots && !by_l1_table(&order[s], &order[s + same]); same++)
            ;
        if (!qcow2_snapshot_l1_valid(q, sn)) { /* as qemu-img check: reported, not walked */
            bool misaligned = sn->l1_offset & (q->cluster_size - 1);
            say(c, "ERROR snapshot %s (%s) l1_%s=%#llx: L1 table is %s; snapshot table entry corrupted",
                sn->id, sn->name, misaligned ? "offset" : "size",
                (unsigned long long)(misaligned ? sn->l1_offset : sn->l1_size),
                misaligned ? "not cluster aligned" : "too large");
            c->res->corruptions += same;
            continue;
        }
        uint64_t *l1 = calloc(sn->l1_size ? sn->l1_size : 1, 8);
        if (!l1) {
            rc = vd_err(VD_ENOMEM, "%s: out of memory", c->img->filename);
            break;
        }
        /* past the end of the file the table reads as zeroes, as qemu-img check reads it */
        if (qcow2_pread_table(c->img, l1, (uint64_t)sn->l1_size * 8, sn->l1_offset, NULL) < 0) {
            c->res->check_errors += same;
        } else {
            for (uint32_t i = 0; i < sn->l1_size; i++)
                l1[i] = vd_be64(&l1[i]);
            rc = walk_l1(c, l1, sn->l1_size, sn->l1_offset, false, same);
        }
        free(l1);
    }
    free(order);
    return rc;
}

static bool inside_file(const struct checker *c, uint64_t off, uint64_t len)
{
    uint64_t file_bytes = c->nclusters * c->q->cluster_size;
    return off <= file_bytes && len <= file_bytes - off;
}

/*
 * Count the data clusters of a bitmap table (in the file), weight times each,
 * reading a cluster of entries at a time. An invalid entry is a corruption, as
 * for qemu-img check.
 */
static void walk_bitmap_table(struct checker *c, const struct qcow2_bitmap_table *t, uint64_t weight)
{
    const uint64_t cs = c->q->cluster_size, per_cluster = cs / 8;
    uint8_t *buf = malloc((size_t)cs);
    if (!buf) {
        c->res->check_errors++;
        return;
    }
    for (uint64_t first = 0; first < t->entries; first += per_cluster) {
        uint64_t n = t->entries - first < per_cluster ? t->entries - first : per_cluster;
        if (vd_file_pread(c->img->file, buf, (size_t)(n * 8), t->offset + first * 8) < 0) {
            c->res->check_errors++;
            break;
        }
        for (uint64_t i = 0; i < n; i++) {
            uint64_t entry = vd_be64(buf + i * 8), data = entry & QCOW2_OFFSET_MASK;
            if ((entry & BITMAP_ENTRY_RESERVED) ||
                (data && ((entry & BITMAP_ENTRY_ALL_ONES) || (data & (cs - 1)))))
                c->res->corruptions += weight;
            else if (data)
                add_refs(c, data, cs, weight);
        }
    }
    free(buf);
}

static int by_offset_then_size(const void *a, const void *b)
{
    const struct qcow2_bitmap_table *x = a, *y = b;
    if (x->offset != y->offset)
        return (x->offset > y->offset) - (x->offset < y->offset);
    return (x->entries > y->entries) - (x->entries < y->entries);
}

/*
 * The bitmap directory and tables, when the bitmaps are marked consistent
 * (open validated the directory). Entries may still name one table many
 * times: each table is read once, its references counted once per entry
 * naming it; a table that overlaps one read before (a corruption its
 * refcounts show) is not read again. So the reads are bounded by the file.
 */
static void walk_bitmaps(struct checker *c)
{
    struct qcow2 *q = c->q;
    const struct qcow2_ext *ext = qcow2_bitmaps_ext(q);
    if (!ext)
        return;
    add_ref(c, vd_be64(ext->data + 16), vd_be64(ext->data + 8));
    struct qcow2_bitmap_table *tables = malloc((q->nbitmap_tables + 1) * sizeof *tables);
    if (!tables) {
        c->res->check_errors++;
        return;
    }
    memcpy(tables, q->bitmap_tables, q->nbitmap_tables * sizeof *tables);
    qsort(tables, q->nbitmap_tables, sizeof *tables, by_offset_then_size);
    uint64_t read_end = 0; /* the tables read so far end here */
    for (uint32_t i = 0, same; i < q->nbitmap_tables; i += same) {
        const struct qcow2_bitmap_table *t = &tables[i];
        for (same = 1; i + same < q->nbitmap_tables && !by_offset_then_size(t, t + same); same++)
            ;
        uint64_t bytes = (uint64_t)t->entries * 8;
        for (uint32_t k = 0; k < same; k++)
            add_ref(c, t->offset, bytes); /* reports a table past the end of the file each time */
        if (!inside_file(c, t->offset, bytes) || t->offset < read_end)
            continue;
        walk_bitmap_table(c, t, same);
        read_end = t->offset + bytes;
    }
    free(tables);
}

/* What a refcount table entry names, as qemu-img check sees it. */
enum refblock_state {
    REFBLOCK_NONE,          /* no block */
    REFBLOCK_RESERVED_BITS, /* reserved bits set (the open ignores them, as QEMU does) */
    REFBLOCK_MISALIGNED,
    REFBLOCK_OUTSIDE,       /* past the end of the file */
    REFBLOCK_COUNTED,       /* a block in the file: its cluster is counted */
};

static enum refblock_state refblock_state(const struct checker *c, uint64_t i)
{
    if (c->raw_rt[i] & QCOW2_RT_RESERVED)
        return REFBLOCK_RESERVED_BITS;
    if (!c->q->rt[i])
        return REFBLOCK_NONE;
    if (qcow2_refblock_misaligned(c->q, i))
        return REFBLOCK_MISALIGNED;
    return c->q->rt[i] / c->q->cluster_size >= c->nclusters ? REFBLOCK_OUTSIDE : REFBLOCK_COUNTED;
}

/* The refcount table as the file holds it, reserved bits included, host-endian. */
static int read_raw_refcount_table(struct checker *c)
{
    struct qcow2 *q = c->q;
    if (!(c->raw_rt = malloc((size_t)q->rt_entries * 8 + 1)))
        return vd_err(VD_ENOMEM, "%s: out of memory", c->img->filename);
    int rc = qcow2_pread_table(c->img, c->raw_rt, q->rt_entries * 8, q->rt_offset, NULL);
    for (uint64_t i = 0; rc == 0 && i < q->rt_entries; i++)
        c->raw_rt[i] = vd_be64(&c->raw_rt[i]);
    return rc;
}

/*
 * The refcount blocks, last: one that shares its cluster with anything
 * counted before it cannot be repaired in place, nor can a table entry that
 * names no usable block: the structures must be rebuilt.
 */
static void count_refcount_blocks(struct checker *c)
{
    struct qcow2 *q = c->q;
    for (uint64_t i = 0; i < q->rt_entries; i++) {
        unsigned long long index = i;
        switch (refblock_state(c, i)) {
        case REFBLOCK_NONE:
            continue;
        case REFBLOCK_RESERVED_BITS:
            say(c, "ERROR refcount table entry %llu has reserved bits set", index);
            break;
        case REFBLOCK_MISALIGNED:
            say(c, "ERROR refcount block %llu is not cluster aligned; refcount table entry corrupted",
                index);
            break;
        case REFBLOCK_OUTSIDE:
            say(c, "ERROR refcount block %llu is outside image", index);
            break;
        case REFBLOCK_COUNTED: {
            uint64_t cluster = q->rt[i] / q->cluster_size;
            add_ref(c, q->rt[i], q->cluster_size);
            if (counted(c, cluster) == 1)
                continue;
            say(c, "ERROR refcount block %llu refcount=%llu", index,
                (unsigned long long)counted(c, cluster));
            break;
        }
        }
        c->res->corruptions++;
        c->rebuild = true;
    }
}

static void count_references(struct checker *c)
{
    struct qcow2 *q = c->q;
    add_ref(c, 0, q->cluster_size);
    if (walk_l1(c, q->l1, q->l1_size, q->l1_offset, true, 1) < 0 || walk_snapshots(c) < 0)
        c->res->check_errors++;
    add_ref(c, q->rt_offset, (uint64_t)q->rt_clusters * q->cluster_size);
    walk_bitmaps(c);
    for (size_t i = 0; i < q->nexts; i++) {
        const struct qcow2_ext *ext = &q->exts[i];
        if (ext->type == QCOW2_EXT_CRYPTO && ext->len >= 16)
            add_ref(c, vd_be64(ext->data), vd_be64(ext->data + 8));
    }
    count_refcount_blocks(c);
}

/*
 * The stored refcount of a cluster as qemu-img check reads it: a block that
 * lies past the end of the file, or that the end cuts short, reads as zeroes
 * there; a misaligned block cannot be read (a check error, as for qemu-img).
 */
static int stored_refcount(struct checker *c, uint64_t cluster, uint64_t *refcount)
{
    struct qcow2 *q = c->q;
    uint64_t ti = cluster / q->rb_entries, off = ti < q->rt_entries ? q->rt[ti] : 0;
    *refcount = 0;
    if (!off || off >= c->file_size)
        return 0;
    if (qcow2_refblock_misaligned(q, ti))
        return VD_ECORRUPT;
    if (cluster_inside_file(c, off))
        return qcow2_get_refcount(c->img, q, cluster, refcount);
    if (!c->cut_block || c->cut_block_off != off) {
        if (!c->cut_block && !(c->cut_block = malloc((size_t)q->cluster_size)))
            return VD_ENOMEM;
        c->cut_block_off = 0;
        int rc = qcow2_pread_table(c->img, c->cut_block, q->cluster_size, off, NULL);
        if (rc < 0)
            return rc;
        c->cut_block_off = off;
    }
    *refcount = qcow2_refblock_get(c->cut_block, cluster % q->rb_entries, q->refcount_order);
    return 0;
}

/* Set a stored refcount; false where it cannot be set in place (no usable block). */
static bool set_refcount(struct checker *c, uint64_t cluster, uint64_t wanted)
{
    struct qcow2 *q = c->q;
    uint64_t ti = cluster / q->rb_entries;
    if (ti >= q->rt_entries || !q->rt[ti] || qcow2_refblock_misaligned(q, ti) ||
        !cluster_inside_file(c, q->rt[ti]) || wanted > q->refcount_max)
        return false;
    return qcow2_set_refcount(c->img, q, cluster, wanted) == 0;
}

/*
 * Compare stored refcounts with the references; repair per flags. A
 * referenced cluster whose refcount is 0 calls for a rebuild, as for
 * qemu-img check: its refcount block may be missing or be another structure.
 */
static bool compare_refcounts(struct checker *c, uint32_t flags)
{
    bool need_rebuild = false;
    c->too_low = 0;
    /* refcounts past the end of the file are left alone, as qemu-img does, but for the
       clusters that references just past it name (add_refs); allocation stays past them */
    for (uint64_t i = 0; i < c->compare_end; i++) {
        uint64_t stored, wanted = counted(c, i);
        if (stored_refcount(c, i, &stored) < 0) {
            say(c, "Can't get refcount for cluster %llu", (unsigned long long)i);
            c->res->check_errors++;
            continue;
        }
        if ((stored || wanted) && i + 1 > c->end_cluster)
            c->end_cluster = i + 1;
        if (stored == wanted)
            continue;
        c->rebuild |= !stored;
        bool leak = stored > wanted;
        bool fix = leak ? (flags & (VD_CHECK_REPAIR_LEAKS | VD_CHECK_REPAIR_ALL)) && !kept(c, i)
                        : (flags & VD_CHECK_REPAIR_ALL) != 0;
        say(c, "%s cluster %llu refcount=%llu reference=%llu", fix ? "Repairing" : leak ? "Leaked" : "ERROR",
            (unsigned long long)i, (unsigned long long)stored, (unsigned long long)wanted);
        if (fix && set_refcount(c, i, wanted)) {
            *(leak ? &c->res->leaks_fixed : &c->res->corruptions_fixed) += 1;
        } else {
            *(leak ? &c->res->leaks : &c->res->corruptions) += 1;
            c->too_low += !leak;
            need_rebuild |= fix;
        }
    }
    return need_rebuild;
}

/*
 * The COPIED flags of the data clusters of one L2 table that weight L1
 * entries name: a wrong flag counts weight times, as qemu-img check counts
 * it walking the table once per entry; a repair fixes it once.
 */
static void check_copied_data(struct checker *c, uint64_t l2, bool repair, uint64_t weight)
{
    struct qcow2 *q = c->q;
    uint8_t *table;
    if (get_table(c, l2, &table) < 0) {
        c->res->check_errors += weight;
        return;
    }
    /* a table that the end of the file cuts short, or a misaligned one, is
       reported, not repaired in place */
    bool repair_table = repair && cluster_inside_file(c, l2) && !(l2 & (q->cluster_size - 1));
    /* entries past the end of the file have refcount 0: their COPIED flag is wrong too */
    for (uint64_t j = 0; j < q->l2_entries; j++) {
        uint8_t *p = table + j * q->l2_entry_bytes;
        uint64_t word = vd_be64(p), host = word & QCOW2_OFFSET_MASK, refcount;
        if (qcow2_has_data_file(q) || (word & QCOW2_OFLAG_COMPRESSED) || !host ||
            stored_refcount(c, host / q->cluster_size, &refcount) < 0)
            continue;
        if (!!(word & QCOW2_OFLAG_COPIED) == (refcount == 1))
            continue;
        say(c, "%s OFLAG_COPIED data cluster: l2_entry=%llx refcount=%llu",
            repair_table ? "Repairing" : "ERROR", (unsigned long long)word,
            (unsigned long long)refcount);
        if (repair_table) {
            vd_put_be64(p, word ^ QCOW2_OFLAG_COPIED);
            vd_cache_mark_dirty(q->l2_cache, table);
            c->res->corruptions_fixed++;
        } else {
            c->res->corruptions += weight;
        }
    }
    put_table(c, l2, table);
}

/* The COPIED flag must be set exactly when the refcount is 1 (active state only). */
static void check_copied_flags(struct checker *c, uint32_t flags)
{
    struct qcow2 *q = c->q;
    /* qemu-img fixes these flags with -r leaks too, once the refcounts are right */
    bool repair = (flags & (VD_CHECK_REPAIR_LEAKS | VD_CHECK_REPAIR_ALL)) != 0;
    uint64_t *tables = malloc(((size_t)q->l1_size + 1) * sizeof *tables);
    if (!tables) {
        c->res->check_errors++;
        return;
    }
    size_t ntables = 0;
    for (uint32_t i = 0; i < q->l1_size; i++) {
        uint64_t l2 = q->l1[i] & QCOW2_OFFSET_MASK, refcount;
        if (!l2 || stored_refcount(c, l2 / q->cluster_size, &refcount) < 0)
            continue;
        if (!!(q->l1[i] & QCOW2_OFLAG_COPIED) != (refcount == 1)) {
            say(c, "%s OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%llx refcount=%llu",
                repair ? "Repairing" : "ERROR", i, (unsigned long long)q->l1[i], (unsigned long long)refcount);
            if (repair) {
                q->l1[i] ^= QCOW2_OFLAG_COPIED;
                q->l1_dirty = true;
                c->res->corruptions_fixed++;
            } else {
                c->res->corruptions++;
            }
        }
        /* as qemu-img reads them: a misaligned table from where it starts; one
           past the end of the file reads as zeroes (nothing to check) */
        if (l2 / q->cluster_size < c->nclusters)
            tables[ntables++] = l2;
    }
    qsort(tables, ntables, sizeof *tables, by_value);
    for (size_t i = 0, run; i < ntables; i += run) {
        run = repeats(tables, ntables, i);
        check_copied_data(c, tables[i], repair, run);
    }
    free(tables);
}

/* A refcount table as the in-memory state holds it. */
struct refcount_table {
    uint64_t *entries;
    uint64_t count;
    uint64_t offset;
    uint32_t clusters;
};

static void use_refcount_table(struct qcow2 *q, struct refcount_table t)
{
    q->rt = t.entries;
    q->rt_entries = t.count;
    q->rt_offset = t.offset;
    q->rt_clusters = t.clusters;
    q->meta_stale = true;
}

/*
 * Replace the refcount structures with new ones at the end of the file, built
 * from the computed references (used when blocks are missing or unusable).
 */
static int rebuild_refcounts(struct checker *c)
{
    struct qcow2 *q = c->q;
    vd_image *img = c->img;
    const uint64_t cs = q->cluster_size;
    /* the old structures drop the references they counted; a cluster they shared
       with other metadata keeps that metadata's reference */
    for (uint64_t i = q->rt_offset / cs; i < q->rt_offset / cs + q->rt_clusters && i < c->nrefs; i++)
        if (c->refs[i]) /* add_refs counts no cluster far past the end of the file */
            c->refs[i]--;
    for (uint64_t i = 0; i < q->rt_entries; i++)
        if (refblock_state(c, i) == REFBLOCK_COUNTED)
            c->refs[q->rt[i] / cs]--;

    /* never where a table entry points past the end of the file: a write
       through that entry would land on the new structures */
    uint64_t start = c->nclusters, nblocks = 1, table_clusters = 1;
    for (;;) {
        uint64_t moved = qcow2_skip_claim(q, start, table_clusters + nblocks);
        if (moved != start) {
            start = moved;
            continue;
        }
        uint64_t end = start + table_clusters + nblocks;
        uint64_t need_blocks = (end + q->rb_entries - 1) / q->rb_entries;
        uint64_t need_table = (need_blocks * 8 + cs - 1) / cs;
        if (need_blocks == nblocks && need_table == table_clusters)
            break;
        nblocks = need_blocks;
        table_clusters = need_table;
    }
    if (table_clusters * cs > QCOW2_MAX_RT_BYTES)
        return vd_err(VD_ETOOBIG, "%s: the rebuilt refcount table would exceed 8 MiB", img->filename);
    uint64_t end = start + table_clusters + nblocks, entries = table_clusters * cs / 8;
    uint8_t *buf = calloc(1, (size_t)(table_clusters * cs > cs ? table_clusters * cs : cs));
    uint64_t *rt = calloc((size_t)entries, sizeof *rt);
    if (!buf || !rt) {
        free(buf);
        free(rt);
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    }
    for (uint64_t b = 0; b < nblocks; b++)
        rt[b] = (start + table_clusters + b) * cs;
    /* the new structures replace the old ones in memory first: the overlap checks of
       the writes below see them in place of the old ones, which may share clusters */
    struct refcount_table old = { q->rt, q->rt_entries, q->rt_offset, q->rt_clusters };
    use_refcount_table(q, (struct refcount_table){ rt, entries, start * cs, (uint32_t)table_clusters });
    int rc = 0;
    for (uint64_t b = 0; b < nblocks && rc == 0; b++) {
        memset(buf, 0, (size_t)cs);
        for (uint64_t i = b * q->rb_entries; i < (b + 1) * q->rb_entries && i < end; i++) {
            /* the new structures; counted clusters (the file's, and those named just past it); free */
            uint64_t value = i >= start ? 1 : i < c->nrefs ? counted(c, i) : 0;
            if (!value && kept(c, i))
                value = 1;
            qcow2_refblock_set(buf, i % q->rb_entries, q->refcount_order, value);
        }
        rc = qcow2_write_meta(img, QCOW2_META_REFCOUNT_BLOCK, rt[b], buf, (size_t)cs);
    }
    if (rc == 0) {
        memset(buf, 0, (size_t)(table_clusters * cs));
        for (uint64_t b = 0; b < nblocks; b++)
            vd_put_be64(buf + b * 8, rt[b]);
        rc = qcow2_write_meta(img, QCOW2_META_REFCOUNT_TABLE, start * cs, buf, (size_t)(table_clusters * cs));
    }
    if (rc == 0)
        rc = vd_image_sync_now(img);
    free(buf);
    /* switch over on disk: the header fields */
    uint8_t fields[12];
    vd_put_be64(fields, start * cs);
    vd_put_be32(fields + 8, (uint32_t)table_clusters);
    if (rc == 0 && (rc = qcow2_write_meta(img, QCOW2_META_HEADER, 48, fields, sizeof fields)) == 0)
        rc = vd_image_sync_now(img);
    if (rc < 0) {
        use_refcount_table(q, old);
        free(rt);
        return rc;
    }
    free(old.entries);
    q->alloc_end = end;
    q->free_hint = 0;
    struct vd_cache *fresh;
    rc = vd_cache_new(&fresh, img->file, (size_t)cs, 16);
    if (rc == 0) {
        vd_cache_free(q->rb_cache);
        q->rb_cache = fresh;
        vd_cache_set_before_write(fresh, qcow2_check_layout, img);
    }
    say(c, "Rebuilt the refcount structures (new refcount table at offset 0x%llx)",
        (unsigned long long)(start * cs));
    return rc;
}

/* Whether -r all rewrites the snapshot table for what a repairing open cut from it. */
static bool snapshot_table_rewritten(const struct qcow2 *q)
{
    bool cut = q->snapshots_dropped;
    for (uint32_t i = 0; i < q->nb_snapshots; i++)
        cut |= q->snapshots[i].extra_cut;
    return cut;
}

/*
 * Snapshot table entries that lack what version 3 requires, and what a
 * repairing open left out of the table (too much extra data, entries past
 * QEMU's limit of the table): -r all rewrites the table, as qemu-img's does.
 */
static int check_snapshot_entries(struct checker *c, uint32_t flags)
{
    struct qcow2 *q = c->q;
    /* rewriting the table allocates: only once no refcount is too low (other
       corruptions, such as a snapshot's misaligned L1 table, may stay) */
    bool repair = (flags & VD_CHECK_REPAIR_ALL) && !c->too_low;
    const char *verdict = repair ? "Repairing" : "ERROR";
    uint64_t found = 0;
    if (q->snapshots_dropped) {
        say(c, "%s the snapshot table: %u overhanging snapshots discarded (the table is too big)",
            verdict, q->snapshots_dropped);
        found += q->snapshots_dropped;
    }
    for (uint32_t i = 0; i < q->nb_snapshots; i++) {
        if (q->snapshots[i].extra_cut) {
            say(c, "%s snapshot table entry %u: too much extra metadata discarded", verdict, i);
            found++;
        }
        if (qcow2_snapshot_incomplete(q, &q->snapshots[i])) {
            say(c, "%s snapshot table entry %u is incomplete", verdict, i);
            found++;
        }
    }
    if (!found)
        return 0;
    if (!repair) {
        c->res->corruptions += found;
        return 0;
    }
    int rc = qcow2_complete_snapshots(c->img, q);
    if (rc == 0) {
        c->res->corruptions_fixed += found;
        q->snapshots_dropped = 0;
        for (uint32_t i = 0; i < q->nb_snapshots; i++)
            q->snapshots[i].extra_cut = false;
    }
    return rc;
}

/*
 * After a rebuild, which gave them their refcounts, the clusters tables
 * still name past the end of the file (a truncated copy) are covered: the
 * file grows over them, so they read as the zeroes they read as before and
 * are no longer references past the end, as qemu-img's repair leaves them
 * (it allocates past the refcounts' end). Only as far as the count went,
 * and only when the refcounts account for every one of them.
 */
static int cover_counted_past_eof(struct checker *c)
{
    const uint64_t cs = c->q->cluster_size;
    uint64_t end = c->past_eof_end * cs;
    if (!c->past_eof_end || end <= c->file_size || c->past_eof_end - c->nclusters > PAST_EOF_COUNTED)
        return 0;
    /* only what the refcounts still call allocated (a truncation): a garbled offset far past
       the end names a cluster nothing accounts for, which covering would make a corruption */
    for (uint64_t i = c->nclusters; i < c->past_eof_end && i < c->nrefs; i++) {
        uint64_t refcount = 0;
        if (c->refs[i] && (qcow2_get_refcount(c->img, c->q, i, &refcount) < 0 || !refcount))
            return 0;
    }
    say(c, "Repairing: the file grows to 0x%llx to cover the clusters its tables name past its end",
        (unsigned long long)end);
    return vd_file_truncate(c->img->file, end);
}

/* One pass: count, compare, check flags (repairing per flags). */
static int check_pass(vd_image *img, uint32_t flags, vd_check_result *res,
                      vd_check_report_fn report, void *ctx)
{
    struct qcow2 *q = qcow2_of(img);
    uint64_t file_size;
    int rc = vd_file_get_size(img->file, &file_size);
    if (rc < 0)
        return rc;
    struct checker c = { .img = img, .q = q, .res = res, .report = report, .ctx = ctx,
                         .nclusters = (file_size + q->cluster_size - 1) / q->cluster_size,
                         .file_size = file_size };
    c.compare_end = c.nclusters;
    c.keep_past_eof = true;
    c.rewrites_snapshot_table = (flags & VD_CHECK_REPAIR_ALL) && snapshot_table_rewritten(q);
    c.end_cluster = 1; /* as qemu-img: the image ends after the header cluster at least */
    c.nrefs = c.nclusters;
    c.refs = calloc(c.nclusters ? c.nclusters : 1, sizeof *c.refs);
    if (!c.refs)
        return vd_err(VD_ENOMEM, "%s: out of memory for the check (%llu clusters)", img->filename,
                      (unsigned long long)c.nclusters);
    if ((rc = read_raw_refcount_table(&c)) < 0) {
        free(c.refs);
        free(c.raw_rt);
        return rc;
    }
    count_references(&c);
    /* clusters that entries name past the end of the file are not free: the
       allocator (and a rebuild) place nothing there, so nothing aliases them */
    q->claimed_first = c.past_eof_first;
    q->claimed_end = c.past_eof_end;
    if (res->check_errors) /* never repair from an incomplete count */
        flags = 0;
    /* compare first without repairing, as qemu-img does: that decides how to repair */
    vd_check_result counted = *res;
    compare_refcounts(&c, 0);
    bool rebuild = false;
    if (c.rebuild && flags) {
        /* repairing refcounts in place would write them into the shared or missing blocks */
        if (flags & VD_CHECK_REPAIR_ALL) {
            say(&c, "Rebuilding refcount structure");
            rebuild = true;
        } else { /* as qemu-img check -r leaks: the check fails, nothing is written */
            say(&c, "ERROR need to rebuild refcount structures");
            res->check_errors++;
            rc = vd_err(VD_ECORRUPT, "%s: the refcount structures need a rebuild (check -r all)",
                        img->filename);
        }
    } else if (flags && (res->leaks || res->corruptions)) {
        *res = counted;
        rebuild = compare_refcounts(&c, flags);
    }
    res->total_clusters = (img->size + q->cluster_size - 1) / q->cluster_size;
    res->image_end_offset = c.end_cluster * q->cluster_size;
    if (rebuild) {
        rc = rebuild_refcounts(&c);
        if (rc == 0) /* the new structures lie past the old end of the file */
            rc = vd_file_get_size(img->file, &c.file_size);
        if (rc == 0) {
            c.too_low = 0;
            res->corruptions_fixed += res->corruptions;
            res->leaks_fixed += res->leaks;
            res->corruptions = res->leaks = 0;
        }
    }
    /* a rewritten snapshot table frees the old one, which may have covered other clusters */
    if (rc == 0)
        rc = check_snapshot_entries(&c, flags);
    /* COPIED flags follow the refcounts: fix them only once the refcounts are right */
    if (rc == 0)
        check_copied_flags(&c, (flags & VD_CHECK_REPAIR_ALL) || !res->corruptions ? flags : 0);
    if (rc == 0 && (flags & VD_CHECK_REPAIR_ALL))
        rc = cover_counted_past_eof(&c);
    free(c.refs);
    free(c.cut_block);
    free(c.raw_rt);
    free(c.kept);
    return rc;
}

/*
 * A table that the end of the file cuts short was read as zeroes, as QEMU
 * reads it (not an error for qemu-img check). A repair makes the file cover
 * it, holding those zeroes, so that the image opens read-write again.
 */
static int cover_tables_past_eof(vd_image *img, struct qcow2 *q, uint32_t flags,
                                 vd_check_report_fn report, void *ctx)
{
    struct checker c = { .img = img, .q = q, .report = report, .ctx = ctx };
    if (!q->table_past_eof)
        return 0;
    if (!(flags & VD_CHECK_REPAIR_ALL)) {
        say(&c, "Warning: the %s extends past the end of the file (read as zeroes there)",
            q->table_past_eof);
        return 0;
    }
    const uint64_t cs = q->cluster_size;
    /* a snapshot table that the repair rewrites (its garbled length read
       past the end) is left as it is: the file does not grow to cover it */
    bool table_rewritten = snapshot_table_rewritten(q);
    uint64_t ends[] = { q->l1_offset + (uint64_t)q->l1_size * 8, q->rt_offset + q->rt_clusters * cs,
                        q->nb_snapshots && !table_rewritten ? q->snapshots_offset + q->snapshots_bytes : 0 };
    uint64_t end = 0, file_size;
    for (size_t i = 0; i < sizeof ends / sizeof *ends; i++)
        end = ends[i] > end ? ends[i] : end;
    end = (end + cs - 1) / cs * cs;
    int rc = vd_file_get_size(img->file, &file_size);
    if (rc < 0 || end <= file_size) {
        q->table_past_eof = rc < 0 ? q->table_past_eof : NULL;
        return rc;
    }
    if ((rc = vd_file_truncate(img->file, end)) < 0)
        return rc;
    say(&c, "Repairing the %s: it extended past the end of the file, which now ends at 0x%llx",
        q->table_past_eof, (unsigned long long)end);
    q->table_past_eof = NULL;
    return vd_image_sync_now(img);
}

/*
 * -r all, first: an L1 entry whose L2 table lies on the L1 table itself is a
 * corruption that no refcount makes right (a write through it would change
 * the L1 table), and the layout check refuses every table write while it
 * stands. The repair removes it, so that its guest clusters read as
 * unallocated, where QEMU reads the L1 table as L2 entries. The entry is
 * cleared on disk before any refcount drops.
 */
static int drop_l1_entries_on_l1(vd_image *img, struct qcow2 *q, uint32_t flags, vd_check_result *res,
                                 vd_check_report_fn report, void *ctx)
{
    if (!(flags & VD_CHECK_REPAIR_ALL) || !q->l1_size)
        return 0;
    struct checker c = { .img = img, .q = q, .report = report, .ctx = ctx };
    const uint64_t cs = q->cluster_size;
    uint64_t first = q->l1_offset / cs, last = (q->l1_offset + (uint64_t)q->l1_size * 8 - 1) / cs;
    bool dropped = false;
    for (uint32_t i = 0; i < q->l1_size; i++) {
        uint64_t cluster = (q->l1[i] & QCOW2_OFFSET_MASK) / cs;
        if (cluster < first || cluster > last)
            continue;
        say(&c, "Repairing L1 entry %u: its L2 table at offset 0x%llx is the L1 table", i,
            (unsigned long long)(q->l1[i] & QCOW2_OFFSET_MASK));
        q->l1[i] = 0;
        res->corruptions_fixed++;
        dropped = true;
    }
    if (!dropped)
        return 0;
    q->meta_stale = true;
    int rc = qcow2_write_l1(img, q);
    return rc == 0 ? vd_image_sync_now(img) : rc;
}

/* Make each misaligned entry without data in the L2 table at l2 a zero cluster. */
static int zero_misaligned_in(struct checker *c, uint64_t l2)
{
    struct qcow2 *q = c->q;
    uint8_t *table;
    int rc = vd_cache_get(q->l2_cache, l2, false, (void **)&table);
    if (rc < 0)
        return rc;
    bool changed = false;
    for (uint64_t i = 0; i < q->l2_entries; i++) {
        uint8_t *p = table + i * q->l2_entry_bytes;
        uint64_t word = vd_be64(p), host = word & QCOW2_OFFSET_MASK;
        if ((word & QCOW2_OFLAG_COMPRESSED) || !(host & (q->cluster_size - 1)) || holds_data(q, p))
            continue;
        say(c, "Repairing offset=%llx: Preallocated cluster is not properly aligned; L2 entry corrupted.",
            (unsigned long long)host);
        if (q->l2_entry_bytes == 16) { /* allocated subclusters become zero ones */
            uint64_t bitmap = vd_be64(p + 8);
            vd_put_be64(p, 0);
            vd_put_be64(p + 8, (bitmap | bitmap << 32) & 0xffffffff00000000ull);
        } else {
            vd_put_be64(p, QCOW2_OFLAG_ZERO);
        }
        c->res->corruptions_fixed++;
        changed = true;
    }
    if (changed)
        vd_cache_mark_dirty(q->l2_cache, table);
    vd_cache_put(q->l2_cache, table);
    return 0;
}

static void collect_l2_tables(const struct qcow2 *q, const uint64_t *l1, uint32_t l1_size, uint64_t file_size,
                              uint64_t *tables, size_t *n)
{
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK;
        if (l2 && !(l2 & (q->cluster_size - 1)) && l2 + q->cluster_size <= file_size)
            tables[(*n)++] = l2;
    }
}

/*
 * -r all, first: a misaligned L2 entry that names no data (a zero cluster
 * that kept a host offset) becomes a plain zero cluster, in the active and
 * the snapshots' tables, as qemu-img's repair does (fix_l2_entry_by_zero);
 * the check then counts no reference for it. Tables the end of the file cuts
 * short, or that are misaligned, are left alone.
 */
static int zero_misaligned_entries(vd_image *img, struct qcow2 *q, uint32_t flags, vd_check_result *res,
                                   vd_check_report_fn report, void *ctx)
{
    /* only in a repair asked for: the refcount repair of a dirty image's open
       must change nothing else (and nothing at all when it fails) */
    if (!(flags & VD_CHECK_REPAIR_ALL) || !(img->open_flags & VD_OPEN_REPAIR) || qcow2_has_data_file(q))
        return 0;
    struct checker c = { .img = img, .q = q, .res = res, .report = report, .ctx = ctx };
    uint64_t file_size, count = q->l1_size;
    int rc = vd_file_get_size(img->file, &file_size);
    for (uint32_t s = 0; s < q->nb_snapshots; s++)
        count += qcow2_snapshot_l1_valid(q, &q->snapshots[s]) ? q->snapshots[s].l1_size : 0;
    uint64_t *tables = rc < 0 ? NULL : malloc((size_t)(count + 1) * sizeof *tables);
    if (rc == 0 && !tables)
        rc = vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    size_t n = 0;
    if (rc == 0)
        collect_l2_tables(q, q->l1, q->l1_size, file_size, tables, &n);
    for (uint32_t s = 0; s < q->nb_snapshots && rc == 0; s++) {
        const struct qcow2_snapshot *sn = &q->snapshots[s];
        if (!qcow2_snapshot_l1_valid(q, sn) || !sn->l1_size)
            continue;
        uint64_t *l1 = malloc((size_t)sn->l1_size * 8);
        if (!l1) {
            rc = vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
            break;
        }
        if (qcow2_pread_table(img, l1, (uint64_t)sn->l1_size * 8, sn->l1_offset, NULL) == 0) {
            for (uint32_t i = 0; i < sn->l1_size; i++)
                l1[i] = vd_be64(&l1[i]);
            collect_l2_tables(q, l1, sn->l1_size, file_size, tables, &n);
        }
        free(l1);
    }
    if (rc == 0)
        qsort(tables, n, sizeof *tables, by_value);
    uint64_t fixed = res->corruptions_fixed;
    for (size_t i = 0; i < n && rc == 0; i += repeats(tables, n, i))
        rc = zero_misaligned_in(&c, tables[i]);
    free(tables);
    if (rc == 0 && res->corruptions_fixed > fixed)
        rc = qcow2_flush_metadata(img, q);
    return rc;
}

int qcow2_check(vd_image *img, uint32_t flags, vd_check_result *res,
                vd_check_report_fn report, void *ctx)
{
    struct qcow2 *q = qcow2_of(img);
    int rc = 0;
    if (!img->read_only && (rc = img->backend->flush(img)) < 0)
        return rc;
    if ((rc = cover_tables_past_eof(img, q, flags, report, ctx)) < 0 ||
        (rc = drop_l1_entries_on_l1(img, q, flags, res, report, ctx)) < 0 ||
        (rc = zero_misaligned_entries(img, q, flags, res, report, ctx)) < 0)
        return rc;
    uint64_t size_before = 0, size_after = 0;
    rc = vd_file_get_size(img->file, &size_before);
    if (rc == 0)
        rc = check_pass(img, flags, res, report, ctx);
    if (rc == 0)
        rc = vd_file_get_size(img->file, &size_after);
    if (rc == 0 && (flags & VD_CHECK_REPAIR_ALL) && size_after > size_before) {
        /* the file grew over clusters the old refcounts call allocated (covering what
           tables name past its end): those nothing references are leaks, repaired now */
        if ((rc = img->backend->flush(img)) < 0)
            return rc;
        vd_check_result grown = VD_CHECK_RESULT_INIT;
        rc = check_pass(img, VD_CHECK_REPAIR_LEAKS, &grown, report, ctx);
        res->leaks_fixed += grown.leaks_fixed;
    }
    bool repaired = res->corruptions_fixed || res->leaks_fixed;
    if (rc == 0 && repaired) {
        if ((rc = img->backend->flush(img)) < 0)
            return rc;
        /* double-check the repaired image; the fixed counts of the first pass stand */
        vd_check_result again = VD_CHECK_RESULT_INIT;
        if ((rc = check_pass(img, 0, &again, NULL, NULL)) < 0)
            return rc;
        again.corruptions_fixed = res->corruptions_fixed;
        again.leaks_fixed = res->leaks_fixed;
        *res = again;
    }
    if (rc == 0 && repaired && (q->incompat & QCOW2_INCOMPAT_CORRUPT) && !res->corruptions) {
        q->incompat &= ~QCOW2_INCOMPAT_CORRUPT;
        rc = qcow2_write_features(img, q);
        if (rc == 0)
            rc = qcow2_update_props(img, q);
    }
    return rc;
}
