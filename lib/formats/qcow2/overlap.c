/*
 * Metadata overlap protection: before data is written to a host cluster,
 * make sure no metadata lives there (a hostile or corrupted image can point
 * an L2 entry at the L1 table, or have refcounts that call a refcount block
 * free). A sorted list of the cluster ranges holding metadata, each labelled
 * with its kind, is rebuilt from the in-memory tables whenever metadata was
 * allocated or moved or any cluster was freed, so the check itself is one
 * binary search. Tables and blocks that share a cluster with another
 * structure are found by the same rebuild, before any table is written back
 * (a refcount block that is also the refcount table would otherwise overwrite
 * it). The list is as long as the tables are, wherever a hostile image puts
 * them; a bitmap over the host clusters would be as large as the offsets it
 * names.
 *
 * The same list guards metadata itself: qcow2_write_meta, the one way this
 * backend writes metadata outside the table caches (whose before-write hook
 * is the layout check), refuses a write onto any structure but the ones it
 * rewrites, as QEMU's qcow2_pre_write_overlap_check does with its ignore
 * mask; and the allocator refuses to hand out a cluster with refcount 0
 * that metadata occupies.
 *
 * Covered, as QEMU's default "cached" mode: the header, the active L1 table
 * and its L2 tables, the refcount table and blocks, the snapshot table and
 * the snapshots' L1 tables (not the snapshots' own L2 tables), and the
 * bitmap directory and bitmap tables (QEMU covers the directory), and the
 * encryption header.
 */
#include "formats/qcow2/qcow2.h"

#include <stdlib.h>

struct ranges {
    struct qcow2_meta_range *items;
    size_t count;
};

static void add(const struct qcow2 *q, struct ranges *r, enum qcow2_meta_kind kind, uint64_t off,
                uint64_t len)
{
    if (!len || off + len < off)
        return;
    r->items[r->count++] = (struct qcow2_meta_range){
        .first = off / q->cluster_size, .end = (off + len - 1) / q->cluster_size + 1, .kind = kind };
}

static int by_first(const void *a, const void *b)
{
    uint64_t x = ((const struct qcow2_meta_range *)a)->first, y = ((const struct qcow2_meta_range *)b)->first;
    return (x > y) - (x < y);
}

/*
 * Two L1 entries may name one L2 table, as a snapshot's and the active L1
 * table do, when neither has COPIED set (its refcount is then 2, and a write
 * copies it first); with COPIED set, a write through one entry would change
 * the other's guest data, so only a repair (which writes no guest data and
 * fixes the flags) may go on.
 */
static bool same_shared_table(const struct qcow2_meta_range *a, const struct qcow2_meta_range *b,
                          bool repairing)
{
    /* bitmap directory entries may name one table many times (its refcounts tell) */
    if (a->kind == QCOW2_META_BITMAP_TABLE && b->kind == a->kind && a->first == b->first &&
        a->end == b->end)
        return true;
    return a->kind == QCOW2_META_ACTIVE_L2 && b->kind == QCOW2_META_ACTIVE_L2 && a->first == b->first &&
           (repairing || (!a->in_place && !b->in_place));
}

/*
 * Sort, and merge touching ranges of one kind, so that they are disjoint and
 * ascending. Two structures that share a cluster are corruption: false,
 * naming one such cluster.
 */
static bool normalize(struct ranges *r, bool repairing, uint64_t *shared)
{
    qsort(r->items, r->count, sizeof *r->items, by_first);
    size_t out = 0;
    struct qcow2_meta_range previous = { 0 }; /* the item before, as listed (ranges merge below) */
    for (size_t i = 0; i < r->count; i++) {
        bool repeated = i && same_shared_table(&r->items[i], &previous, repairing);
        previous = r->items[i];
        if (repeated)
            continue;
        if (out && r->items[i].first < r->items[out - 1].end) {
            *shared = r->items[i].first;
            return false;
        }
        if (out && r->items[i].first == r->items[out - 1].end && r->items[i].kind == r->items[out - 1].kind)
            r->items[out - 1].end = r->items[i].end;
        else
            r->items[out++] = r->items[i];
    }
    r->count = out;
    return true;
}

/*
 * A repair that finds the snapshot table or a snapshot's L1 table sharing a
 * cluster with another structure (a damaged snapshot entry aimed the L1
 * table there, or garbled the table's length) leaves it out of the layout,
 * as it leaves out a misaligned L1 table: what it covers beyond its own
 * start is garbage, a repair writes no guest data, and the structure it
 * covers is what the repair writes. qemu-img's repair goes on where its
 * overlap check lets it (that guards the snapshot table with its garbled
 * length, so it fails on some of these). True when such a structure was
 * found at the cluster and marked.
 */
static bool drop_snapshot_structure_at(struct qcow2 *q, uint64_t cluster)
{
    const uint64_t cs = q->cluster_size;
    for (uint32_t i = 0; i < q->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &q->snapshots[i];
        uint64_t first = sn->l1_offset / cs, end = (sn->l1_offset + (uint64_t)sn->l1_size * 8 + cs - 1) / cs;
        if (!sn->l1_overlaps && sn->l1_size && qcow2_snapshot_l1_valid(q, sn) && cluster >= first &&
            cluster < end) {
            sn->l1_overlaps = true;
            return true;
        }
    }
    uint64_t first = q->snapshots_offset / cs, end = (q->snapshots_offset + q->snapshots_bytes + cs - 1) / cs;
    if (!q->snapshot_table_overlaps && q->snapshots_bytes && cluster >= first && cluster < end) {
        q->snapshot_table_overlaps = true;
        return true;
    }
    return false;
}

static int rebuild(vd_image *img, struct qcow2 *q)
{
    size_t most = 6 + (size_t)q->l1_size + (size_t)q->rt_entries + q->nb_snapshots + q->nbitmap_tables;
    struct ranges r = { .items = malloc(most * sizeof *r.items) };
    if (!r.items)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    add(q, &r, QCOW2_META_HEADER, 0, q->cluster_size);
    add(q, &r, QCOW2_META_ACTIVE_L1, q->l1_offset, (uint64_t)q->l1_size * 8);
    for (uint32_t i = 0; i < q->l1_size; i++) {
        size_t before = r.count;
        add(q, &r, QCOW2_META_ACTIVE_L2, q->l1[i] & QCOW2_OFFSET_MASK,
            (q->l1[i] & QCOW2_OFFSET_MASK) ? q->cluster_size : 0);
        if (r.count > before)
            r.items[before].in_place = (q->l1[i] & QCOW2_OFLAG_COPIED) != 0;
    }
    add(q, &r, QCOW2_META_REFCOUNT_TABLE, q->rt_offset, (uint64_t)q->rt_clusters * q->cluster_size);
    for (uint64_t i = 0; i < q->rt_entries; i++)
        add(q, &r, QCOW2_META_REFCOUNT_BLOCK, q->rt[i], q->rt[i] ? q->cluster_size : 0);
    if (!q->snapshot_table_overlaps)
        add(q, &r, QCOW2_META_SNAPSHOT_TABLE, q->snapshots_offset, q->snapshots_bytes);
    /* a snapshot L1 table that is misaligned or too large is no structure: nothing reads it */
    for (uint32_t i = 0; i < q->nb_snapshots; i++)
        if (qcow2_snapshot_l1_valid(q, &q->snapshots[i]) && !q->snapshots[i].l1_overlaps)
            add(q, &r, QCOW2_META_SNAPSHOT_L1, q->snapshots[i].l1_offset,
                (uint64_t)q->snapshots[i].l1_size * 8);
    add(q, &r, QCOW2_META_BITMAP_DIRECTORY, q->bitmap_dir_offset, q->bitmap_dir_bytes);
    for (uint32_t i = 0; i < q->nbitmap_tables; i++)
        add(q, &r, QCOW2_META_BITMAP_TABLE, q->bitmap_tables[i].offset,
            (uint64_t)q->bitmap_tables[i].entries * 8);
    add(q, &r, QCOW2_META_CRYPTO_HEADER, q->crypt_offset, q->crypt_length);
    uint64_t shared;
    bool repairing = (img->open_flags & VD_OPEN_REPAIR) != 0;
    if (!normalize(&r, repairing, &shared)) {
        free(r.items);
        if (repairing && drop_snapshot_structure_at(q, shared))
            return rebuild(img, q);
        return qcow2_signal_corruption(img, "two metadata structures share host cluster %llu",
                                       (unsigned long long)shared);
    }
    free(q->meta);
    q->meta = r.items;
    q->nmeta = r.count;
    __atomic_store_n(&q->meta_stale, false, __ATOMIC_RELEASE);
    return 0;
}

/*
 * Under the shared metadata lock nothing makes the layout stale, so once a
 * thread sees it fresh, q->meta stays as it is until that lock is released;
 * only a stale layout needs the rebuild's turn.
 */
int qcow2_check_layout(void *ctx)
{
    vd_image *img = ctx;
    struct qcow2 *q = qcow2_of(img);
    if (!__atomic_load_n(&q->meta_stale, __ATOMIC_ACQUIRE))
        return 0;
    pthread_mutex_lock(&q->layout_lock);
    int rc = q->meta_stale ? rebuild(img, q) : 0;
    pthread_mutex_unlock(&q->layout_lock);
    return rc;
}

const char *qcow2_meta_name(enum qcow2_meta_kind kind)
{
    switch (kind) {
    case QCOW2_META_HEADER: return "qcow2 header";
    case QCOW2_META_ACTIVE_L1: return "active L1 table";
    case QCOW2_META_ACTIVE_L2: return "active L2 table";
    case QCOW2_META_REFCOUNT_TABLE: return "refcount table";
    case QCOW2_META_REFCOUNT_BLOCK: return "refcount block";
    case QCOW2_META_SNAPSHOT_TABLE: return "snapshot table";
    case QCOW2_META_SNAPSHOT_L1: return "L1 table of a snapshot";
    case QCOW2_META_BITMAP_DIRECTORY: return "bitmap directory";
    case QCOW2_META_BITMAP_TABLE: return "bitmap table";
    case QCOW2_META_CRYPTO_HEADER: return "encryption header";
    }
    return "metadata";
}

int qcow2_metadata_at(vd_image *img, uint64_t host, uint64_t len, unsigned ignore)
{
    struct qcow2 *q = qcow2_of(img);
    int rc = qcow2_check_layout(img);
    if (rc < 0 || !len)
        return rc;
    uint64_t first = host / q->cluster_size, last = (host + len - 1) / q->cluster_size;
    /* ranges are disjoint and ascending: those reaching [first, last] end the ones starting
       at or before `last`, and sit together */
    size_t lo = 0, hi = q->nmeta;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (q->meta[mid].first <= last)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; i-- > 0 && q->meta[i].end > first;)
        if (!(q->meta[i].kind & ignore))
            return (int)q->meta[i].kind;
    return 0;
}

/*
 * In a damaged image an L1 entry may name other metadata (the header, a
 * refcount block) as its L2 table, and check reads it through the L2 cache.
 * A write of that metadata makes the cached copy stale: forget it, so that
 * the next pass of check reads what the file now holds.
 */
static void forget_aliased_l2_tables(struct qcow2 *q, uint64_t off, size_t len)
{
    if (!q->l2_cache || !len)
        return;
    const uint64_t cs = q->cluster_size;
    for (uint64_t table = off & ~(cs - 1); table < off + len; table += cs)
        vd_cache_forget(q->l2_cache, table);
}

int qcow2_write_meta(vd_image *img, unsigned may_overlap, uint64_t off, const void *buf, size_t len)
{
    /* the corrupt bit skips the layout: a layout found broken is what it reports */
    int kind = may_overlap == QCOW2_META_ALL ? 0 : qcow2_metadata_at(img, off, len, may_overlap);
    if (kind < 0)
        return kind;
    if (kind > 0)
        return qcow2_signal_corruption(img, "preventing an invalid metadata write of %zu bytes at "
                                       "host offset %llu: it overlaps the %s", len,
                                       (unsigned long long)off, qcow2_meta_name(kind));
    int rc = len ? vd_file_pwrite(img->file, buf, len, off) : 0;
    vd_image_mark_unsynced(img); /* after the write: a sync running beside it may miss it */
    forget_aliased_l2_tables(qcow2_of(img), off, len);
    return rc;
}

int qcow2_check_overlap(vd_image *img, uint64_t host, uint64_t len)
{
    if (qcow2_has_data_file(qcow2_of(img))) /* data goes to another file */
        return qcow2_check_layout(img);
    int kind = qcow2_metadata_at(img, host, len, QCOW2_META_NONE);
    if (kind > 0)
        return qcow2_signal_corruption(img, "a data write at host offset %llu would overwrite "
                                       "metadata (the %s); the write was not done",
                                       (unsigned long long)host, qcow2_meta_name(kind));
    return kind;
}

int qcow2_check_free(vd_image *img, uint64_t host)
{
    int kind = qcow2_metadata_at(img, host, qcow2_of(img)->cluster_size, QCOW2_META_NONE);
    if (kind > 0)
        return qcow2_signal_corruption(img, "the data cluster at host offset %llu, no longer "
                                       "used, holds metadata (the %s); it was not freed",
                                       (unsigned long long)host, qcow2_meta_name(kind));
    return kind;
}

int qcow2_check_unused(vd_image *img, uint64_t first_cluster, uint64_t count)
{
    struct qcow2 *q = qcow2_of(img);
    int kind = qcow2_metadata_at(img, first_cluster * q->cluster_size, count * q->cluster_size,
                                 QCOW2_META_NONE);
    if (kind > 0)
        return qcow2_signal_corruption(img, "preventing an allocation at host offset %llu: its "
                                       "refcount is 0, but it overlaps the %s",
                                       (unsigned long long)(first_cluster * q->cluster_size),
                                       qcow2_meta_name(kind));
    return kind;
}
