/*
 * Metadata overlap protection: before data is written to a host cluster,
 * make sure no metadata lives there (a hostile or corrupted image can point
 * an L2 entry at the L1 table, or have refcounts that call a refcount block
 * free). A sorted list of the cluster ranges holding metadata is rebuilt from
 * the in-memory tables whenever metadata was allocated or any cluster was
 * freed, so the check itself is one binary search. Tables and blocks that
 * share a cluster with another structure are found by the same rebuild,
 * before any table is written back (a refcount block that is also the
 * refcount table would otherwise overwrite it). The list is as long as
 * the tables are, wherever a hostile image puts them; a bitmap over the host
 * clusters would be as large as the offsets it names.
 *
 * Covered, as QEMU's default "cached" mode: the header, the active L1 table
 * and its L2 tables, the refcount table and blocks, the snapshot table and
 * the snapshots' L1 tables (not the snapshots' own L2 tables).
 */
#include "formats/qcow2/qcow2.h"

#include <stdlib.h>

struct ranges {
    struct qcow2_meta_range *items;
    size_t count;
};

static void add(const struct qcow2 *q, struct ranges *r, uint64_t off, uint64_t len)
{
    if (!len || off + len < off)
        return;
    r->items[r->count++] = (struct qcow2_meta_range){
        .first = off / q->cluster_size, .end = (off + len - 1) / q->cluster_size + 1 };
}

static int by_first(const void *a, const void *b)
{
    uint64_t x = ((const struct qcow2_meta_range *)a)->first, y = ((const struct qcow2_meta_range *)b)->first;
    return (x > y) - (x < y);
}

/*
 * Sort, and merge touching ranges, so that they are disjoint and ascending.
 * Two structures that share a cluster are corruption: false, naming one such cluster.
 */
static bool normalize(struct ranges *r, uint64_t *shared)
{
    qsort(r->items, r->count, sizeof *r->items, by_first);
    size_t out = 0;
    for (size_t i = 0; i < r->count; i++) {
        if (out && r->items[i].first < r->items[out - 1].end) {
            *shared = r->items[i].first;
            return false;
        }
        if (out && r->items[i].first == r->items[out - 1].end)
            r->items[out - 1].end = r->items[i].end;
        else
            r->items[out++] = r->items[i];
    }
    r->count = out;
    return true;
}

static int rebuild(vd_image *img, struct qcow2 *q)
{
    size_t most = 4 + (size_t)q->l1_size + (size_t)q->rt_entries + q->nb_snapshots;
    struct ranges r = { .items = malloc(most * sizeof *r.items) };
    if (!r.items)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    add(q, &r, 0, q->cluster_size);
    add(q, &r, q->l1_offset, (uint64_t)q->l1_size * 8);
    for (uint32_t i = 0; i < q->l1_size; i++)
        add(q, &r, q->l1[i] & QCOW2_OFFSET_MASK, (q->l1[i] & QCOW2_OFFSET_MASK) ? q->cluster_size : 0);
    add(q, &r, q->rt_offset, (uint64_t)q->rt_clusters * q->cluster_size);
    for (uint64_t i = 0; i < q->rt_entries; i++)
        add(q, &r, q->rt[i], q->rt[i] ? q->cluster_size : 0);
    add(q, &r, q->snapshots_offset, q->snapshots_bytes);
    for (uint32_t i = 0; i < q->nb_snapshots; i++)
        add(q, &r, q->snapshots[i].l1_offset, (uint64_t)q->snapshots[i].l1_size * 8);
    uint64_t shared;
    if (!normalize(&r, &shared)) {
        free(r.items);
        return qcow2_signal_corruption(img, "two metadata structures share host cluster %llu",
                                       (unsigned long long)shared);
    }
    free(q->meta);
    q->meta = r.items;
    q->nmeta = r.count;
    q->meta_stale = false;
    return 0;
}

int qcow2_check_layout(void *ctx)
{
    vd_image *img = ctx;
    struct qcow2 *q = qcow2_of(img);
    return q->meta_stale ? rebuild(img, q) : 0;
}

/* 1 if [host, host+len) of the image file holds metadata, 0 if not, or an error. */
static int holds_metadata(vd_image *img, uint64_t host, uint64_t len)
{
    struct qcow2 *q = qcow2_of(img);
    int rc = qcow2_check_layout(img);
    if (rc < 0)
        return rc;
    uint64_t first = host / q->cluster_size, last = (host + len - 1) / q->cluster_size;
    /* the last range starting at or before `last` is the only one that can reach `first` */
    size_t lo = 0, hi = q->nmeta;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (q->meta[mid].first <= last)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo && q->meta[lo - 1].end > first;
}

int qcow2_check_overlap(vd_image *img, uint64_t host, uint64_t len)
{
    if (qcow2_has_data_file(qcow2_of(img))) /* data goes to another file */
        return qcow2_check_layout(img);
    int rc = holds_metadata(img, host, len);
    if (rc > 0)
        return qcow2_signal_corruption(img, "a data write at host offset %llu would overwrite "
                                       "metadata; the write was not done",
                                       (unsigned long long)host);
    return rc;
}

int qcow2_check_free(vd_image *img, uint64_t host)
{
    int rc = holds_metadata(img, host, qcow2_of(img)->cluster_size);
    if (rc > 0)
        return qcow2_signal_corruption(img, "the data cluster at host offset %llu, no longer "
                                       "used, holds metadata; it was not freed",
                                       (unsigned long long)host);
    return rc;
}
