/*
 * qemu-img measure for qcow2: the size of an image holding a source's data,
 * computed as QEMU's qcow2_measure() does, so the figures agree byte for
 * byte: metadata for a fully allocated image (header, L1 and L2 tables,
 * refcount table and blocks), minus the data clusters the source leaves
 * unallocated or zero.
 */
#include "formats/qcow2/qcow2.h"
#include "core/bitmap.h"

#include <stdlib.h>
#include <string.h>

#define REFTABLE_ENTRY_SIZE 8
#define L1_ENTRY_SIZE 8

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

static uint64_t round_up(uint64_t a, uint64_t b)
{
    return div_up(a, b) * b;
}

/*
 * Bytes of refcount table and blocks that count clusters host clusters and
 * themselves: the fixed point QEMU's qcow2_refcount_metadata_size() finds.
 */
static uint64_t refcount_metadata_size(uint64_t clusters, uint64_t cluster_size,
                                       uint32_t refcount_order)
{
    uint64_t per_table_cluster = cluster_size / REFTABLE_ENTRY_SIZE;
    uint64_t per_block = cluster_size * 8 >> refcount_order;
    uint64_t table = 0, blocks = 0, n = 0, last;
    do {
        last = n;
        blocks = div_up(clusters + table + blocks, per_block);
        table = div_up(blocks, per_table_cluster);
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * cluster_size;
}

/* The file size of a fully allocated image (QEMU's qcow2_calc_prealloc_size()). */
static uint64_t fully_allocated_size(uint64_t virtual_size, const struct qcow2 *q)
{
    uint64_t cs = q->cluster_size, aligned = round_up(virtual_size, cs);
    uint64_t meta = cs; /* the header */
    uint64_t nl2e = round_up(aligned / cs, cs / q->l2_entry_bytes);
    meta += nl2e * q->l2_entry_bytes;
    uint64_t nl1e = round_up(nl2e * q->l2_entry_bytes / cs, cs / L1_ENTRY_SIZE);
    meta += nl1e * L1_ENTRY_SIZE;
    meta += refcount_metadata_size((meta + aligned) / cs, cs, q->refcount_order);
    return meta + aligned;
}

/*
 * Bytes of data clusters the source needs: every cluster that holds data
 * somewhere in its chain, counted as QEMU counts them (a data run is
 * extended to the end of its cluster, and the walk goes on from there).
 */
static int count_data_clusters(vd_image *source, uint64_t size, uint64_t cs, uint64_t *required)
{
    *required = 0;
    for (uint64_t offset = 0, run; offset < size; offset += run) {
        vd_extent e;
        int rc = vd_block_status(source, offset, size - offset, &e, 0);
        if (rc < 0)
            return rc;
        run = e.length;
        if (!(e.flags & VD_EXTENT_ZERO) && (e.flags & VD_EXTENT_DATA) &&
            (e.flags & VD_EXTENT_ALLOCATED)) {
            run = round_up(offset + run, cs) - offset;
            *required += offset % cs + run;
        }
    }
    return 0;
}

/*
 * The bitmaps size QEMU reports for a version 3 qcow2 source into a version 3
 * image: each bitmap of the source fully allocated, its table, and the
 * directory, in clusters of the new image.
 */
static int source_bitmaps(vd_image *source, const struct qcow2 *target, vd_measure_result *res)
{
    if (!source || source->backend != &vd_backend_qcow2 || target->version < 3)
        return 0;
    const struct qcow2 *sq = source->priv;
    if (sq->version < 3)
        return 0;
    const uint64_t cs = target->cluster_size;
    uint64_t bytes = 0, dir_bytes = 0;
    for (size_t i = 0; i < source->nbitmaps; i++) {
        const struct vd_bitmap *b = &source->bitmaps[i];
        uint64_t clusters = div_up(div_up(vd_bitmap_nbits(source->size, b->granularity_bits), 8), cs);
        bytes += clusters * cs + round_up(clusters * 8, cs);
        dir_bytes += (24 + strlen(b->name) + 7) & ~7ull;
    }
    res->has_bitmaps = 1;
    res->bitmaps = bytes + round_up(dir_bytes, cs);
    return 0;
}

int qcow2_measure(const struct vd_kv *opts, uint64_t size, vd_image *source,
                  vd_measure_result *res)
{
    struct qcow2 q = { 0 };
    size_t prealloc;
    /* the size is checked below, in qemu-img measure's words */
    int rc = qcow2_parse_create_options(opts, 0, &q, &prealloc);
    free(q.data_file_name);
    if (rc < 0)
        return rc;
    uint64_t cs = q.cluster_size;
    if (size > UINT64_MAX - cs)
        return vd_err(VD_ETOOBIG, "The image size is too large (try using a larger cluster size)");
    uint64_t virtual_size = round_up(size, cs);
    if (div_up(virtual_size / cs, q.l2_entries) * L1_ENTRY_SIZE > QCOW2_MAX_L1_BYTES)
        return vd_err(VD_ETOOBIG, "The image size is too large (try using a larger cluster size)");
    uint64_t required = 0;
    if (source && vd_kv_get(opts, "backing_file"))
        /* how much the new backing file shares with the source is unknown: assume nothing */
        required = virtual_size;
    else if (source && (rc = count_data_clusters(source, size, cs, &required)) < 0)
        return rc;
    if (prealloc == PREALLOC_FULL || prealloc == PREALLOC_FALLOC)
        required = virtual_size;
    uint64_t luks_header;
    if ((rc = qcow2_crypt_header_bytes(opts, &luks_header)) < 0)
        return rc;
    /* QEMU adds the LUKS header's clusters, without their refcounts */
    res->fully_allocated = round_up(luks_header, cs) + fully_allocated_size(virtual_size, &q);
    /* metadata is counted for a fully allocated image, as QEMU overestimates it */
    res->required = res->fully_allocated - virtual_size + required;
    return source_bitmaps(source, &q, res);
}
