/*
 * qcow2 resize. Growing may need a larger L1 table: it is written to new
 * clusters, then the header switches to it in one sector write together
 * with the new size. Shrinking is refused if any byte past the new end reads
 * as something other than zero.
 */
#include "formats/qcow2/qcow2.h"

#include <stdlib.h>
#include <string.h>

/* Bytes 24..47 of the header: size, crypt method, L1 size, L1 offset. */
static int write_size_fields(vd_image *img, struct qcow2 *q, uint64_t size)
{
    uint8_t fields[24];
    vd_put_be64(fields, size);
    vd_put_be32(fields + 8, q->crypt_method);
    vd_put_be32(fields + 12, q->l1_size);
    vd_put_be64(fields + 16, q->l1_offset);
    int rc = vd_file_pwrite(img->file, fields, sizeof fields, 24);
    img->unsynced = true;
    return rc == 0 ? vd_image_sync(img) : rc;
}

static uint64_t l1_entries_for(const struct qcow2 *q, uint64_t size)
{
    uint64_t clusters = (size + q->cluster_size - 1) / q->cluster_size;
    return (clusters + q->l2_entries - 1) / q->l2_entries;
}

/* Move the L1 table to new clusters with room for entries; the header is not yet changed. */
static int grow_l1(vd_image *img, struct qcow2 *q, uint64_t entries, uint64_t *old_offset,
                   uint64_t *old_clusters)
{
    const uint64_t cs = q->cluster_size;
    uint64_t clusters = (entries * 8 + cs - 1) / cs, host;
    uint64_t *l1 = realloc(q->l1, (size_t)entries * sizeof *l1);
    if (!l1)
        return vd_err(VD_ENOMEM, "%s: out of memory growing the L1 table", img->filename);
    memset(l1 + q->l1_size, 0, (size_t)(entries - q->l1_size) * sizeof *l1);
    q->l1 = l1;
    int rc = qcow2_alloc_clusters(img, q, clusters, &host);
    if (rc < 0)
        return rc;
    *old_offset = q->l1_offset;
    *old_clusters = ((uint64_t)q->l1_size * 8 + cs - 1) / cs;
    q->l1_offset = host;
    q->l1_size = (uint32_t)entries;
    /* the new table and the refcounts that cover it are durable before the header names them */
    if ((rc = qcow2_write_l1(img, q)) == 0)
        rc = qcow2_refcounts_durable(img);
    return rc;
}

/* Fail unless [from, to) reads as zeroes. */
static int only_zeroes_past(vd_image *img, uint64_t from, uint64_t to)
{
    uint8_t *buf = malloc(img->cluster_size);
    if (!buf)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    int rc = 0;
    for (uint64_t off = from; off < to && rc == 0;) {
        struct vd_cow_run run;
        if ((rc = img->cow->lookup(img, off, to - off, &run)) < 0)
            break;
        uint64_t end = off + run.length;
        bool maybe_data = run.kind == VD_COW_DATA || run.kind == VD_COW_COMPRESSED ||
                          (run.kind == VD_COW_UNALLOCATED && img->backing);
        while (maybe_data && off < end && rc == 0) {
            size_t n = (size_t)(end - off < img->cluster_size ? end - off : img->cluster_size);
            if ((rc = vd_cow_read(img, off, buf, n)) < 0)
                break;
            for (size_t i = 0; i < n; i++)
                if (buf[i])
                    rc = vd_err(VD_EPERM, "%s: shrinking would discard data at offset %llu",
                                img->filename, (unsigned long long)(off + i));
            off += n;
        }
        off = end;
    }
    free(buf);
    return rc;
}

int qcow2_resize(vd_image *img, uint64_t size, uint32_t flags)
{
    struct qcow2 *q = qcow2_of(img);
    if (size % 512)
        return vd_err(VD_EINVAL, "%s: the new size must be a multiple of 512", img->filename);
    if (q->nb_snapshots && size < img->size)
        return vd_err(VD_EUNSUPPORTED, "%s: cannot shrink a qcow2 image that has snapshots", img->filename);
    uint64_t entries = l1_entries_for(q, size);
    if (entries * 8 > QCOW2_MAX_L1_BYTES)
        return vd_err(VD_ETOOBIG, "%s: %llu bytes is too large for this cluster size", img->filename,
                      (unsigned long long)size);
    int rc;
    if (size < img->size) {
        if ((rc = only_zeroes_past(img, size, img->size)) < 0)
            return rc;
        /* free the clusters past the new end (a partial last cluster stays) */
        uint64_t first_free = (size + q->cluster_size - 1) & ~(q->cluster_size - 1);
        uint64_t old_end = (img->size + q->cluster_size - 1) & ~(q->cluster_size - 1);
        if (first_free < old_end &&
            (rc = img->cow->zero_clusters(img, first_free, old_end - first_free, VD_COW_DEALLOCATE)) < 0)
            return rc;
    }
    if ((rc = img->backend->flush(img)) < 0)
        return rc;
    uint64_t old_l1 = 0, old_l1_clusters = 0;
    if (entries > q->l1_size && (rc = grow_l1(img, q, entries, &old_l1, &old_l1_clusters)) < 0)
        return vd_image_poison(img, rc);
    if ((rc = write_size_fields(img, q, size)) < 0)
        return vd_image_poison(img, rc);
    img->size = size;
    for (uint64_t c = 0; c < old_l1_clusters && rc == 0; c++)
        rc = qcow2_free_cluster_later(img, q, old_l1 + c * q->cluster_size);
    return rc == 0 ? img->backend->flush(img) : rc;
}
