/*
 * Metadata overlap protection: before data is written to a host cluster,
 * make sure no metadata lives there (a hostile or corrupted image can point
 * an L2 entry at the L1 table, or have refcounts that call a refcount block
 * free). A bitmap of metadata clusters is rebuilt from the in-memory tables
 * whenever metadata was allocated or any cluster was freed, so the check
 * itself costs one bit test per cluster.
 *
 * Covered, as QEMU's default "cached" mode: the header, the active L1 table
 * and its L2 tables, the refcount table and blocks, the snapshot table and
 * the snapshots' L1 tables (not the snapshots' own L2 tables).
 */
#include "formats/qcow2/qcow2.h"

#include <stdlib.h>
#include <string.h>

static void mark(struct qcow2 *q, uint64_t off, uint64_t len)
{
    if (!len)
        return;
    uint64_t first = off / q->cluster_size, last = (off + len - 1) / q->cluster_size;
    for (uint64_t c = first; c <= last && c < q->meta_clusters; c++)
        q->meta_bits[c / 64] |= 1ull << (c % 64);
}

static int rebuild(vd_image *img, struct qcow2 *q)
{
    uint64_t clusters = q->alloc_end + 1;
    uint64_t words = (clusters + 63) / 64;
    uint64_t *bits = realloc(q->meta_bits, (size_t)words * sizeof *bits);
    if (!bits)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    memset(bits, 0, (size_t)words * sizeof *bits);
    q->meta_bits = bits;
    q->meta_clusters = clusters;
    mark(q, 0, q->cluster_size);
    mark(q, q->l1_offset, (uint64_t)q->l1_size * 8);
    for (uint32_t i = 0; i < q->l1_size; i++)
        mark(q, q->l1[i] & QCOW2_OFFSET_MASK, (q->l1[i] & QCOW2_OFFSET_MASK) ? q->cluster_size : 0);
    mark(q, q->rt_offset, (uint64_t)q->rt_clusters * q->cluster_size);
    for (uint64_t i = 0; i < q->rt_entries; i++)
        mark(q, q->rt[i], q->rt[i] ? q->cluster_size : 0);
    mark(q, q->snapshots_offset, q->snapshots_bytes);
    for (uint32_t i = 0; i < q->nb_snapshots; i++)
        mark(q, q->snapshots[i].l1_offset, (uint64_t)q->snapshots[i].l1_size * 8);
    q->meta_stale = false;
    return 0;
}

int qcow2_check_overlap(vd_image *img, uint64_t host, uint64_t len)
{
    struct qcow2 *q = qcow2_of(img);
    if (qcow2_has_data_file(q)) /* data goes to another file */
        return 0;
    /* every metadata allocation marks the map stale, so past a fresh map there is none */
    if (!q->meta_stale && host / q->cluster_size >= q->meta_clusters)
        return 0;
    if (q->meta_stale) {
        int rc = rebuild(img, q);
        if (rc < 0)
            return rc;
    }
    uint64_t first = host / q->cluster_size, last = (host + len - 1) / q->cluster_size;
    for (uint64_t c = first; c <= last && c < q->meta_clusters; c++)
        if (q->meta_bits[c / 64] & (1ull << (c % 64)))
            return qcow2_signal_corruption(img, "a data write at host offset %llu would overwrite "
                                           "metadata; the write was not done",
                                           (unsigned long long)host);
    return 0;
}
