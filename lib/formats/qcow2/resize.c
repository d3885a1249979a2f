/*
 * qcow2 resize. Growing may need a larger L1 table: it is written to new
 * clusters, then the header switches to it in one sector write together
 * with the new size. Shrinking is refused if any byte past the new end reads
 * as something other than zero. A version 3 image with snapshots resizes
 * like one without, as with qemu-img: each snapshot keeps its own size and
 * L1 table (the clusters it shares past the new end keep its reference),
 * and applying it brings its size back.
 */
#include "formats/qcow2/qcow2.h"

#include <stdlib.h>
#include <string.h>

int qcow2_write_size(vd_image *img, uint64_t size)
{
    uint8_t field[8];
    vd_put_be64(field, size);
    int rc = qcow2_write_meta(img, QCOW2_META_HEADER, 24, field, sizeof field);
    return rc == 0 ? vd_image_sync_now(img) : rc;
}

static uint64_t l1_entries_for(const struct qcow2 *q, uint64_t size)
{
    uint64_t clusters = (size + q->cluster_size - 1) / q->cluster_size;
    return (clusters + q->l2_entries - 1) / q->l2_entries;
}

int qcow2_grow_l1(vd_image *img, struct qcow2 *q, uint64_t entries)
{
    const uint64_t cs = q->cluster_size;
    if (entries <= q->l1_size)
        return 0;
    if (entries * 8 > QCOW2_MAX_L1_BYTES)
        return vd_err(VD_ETOOBIG, "%s: the L1 table would exceed 32 MiB", img->filename);
    uint64_t clusters = (entries * 8 + cs - 1) / cs, host;
    uint64_t *l1 = realloc(q->l1, (size_t)entries * sizeof *l1);
    if (!l1)
        return vd_err(VD_ENOMEM, "%s: out of memory growing the L1 table", img->filename);
    memset(l1 + q->l1_size, 0, (size_t)(entries - q->l1_size) * sizeof *l1);
    q->l1 = l1;
    int rc = qcow2_alloc_metadata(img, q, clusters, &host);
    if (rc < 0)
        return rc;
    uint64_t old_offset = q->l1_offset, old_clusters = ((uint64_t)q->l1_size * 8 + cs - 1) / cs;
    uint32_t old_size = q->l1_size;
    q->l1_offset = host;
    q->l1_size = (uint32_t)entries;
    q->meta_stale = true;
    /* the new table and its refcounts are durable before the header names them */
    if ((rc = qcow2_write_l1(img, q)) == 0 && (rc = qcow2_refcounts_durable(img)) == 0) {
        uint8_t fields[12];
        vd_put_be32(fields, q->l1_size);
        vd_put_be64(fields + 4, q->l1_offset);
        rc = qcow2_write_meta(img, QCOW2_META_HEADER, 36, fields, sizeof fields);
        if (rc == 0)
            rc = vd_image_sync_now(img);
    }
    if (rc < 0) {
        q->l1_offset = old_offset;
        q->l1_size = old_size;
        q->meta_stale = true;
        return vd_image_poison(img, rc);
    }
    for (uint64_t c = 0; c < old_clusters && old_offset && rc == 0; c++)
        rc = qcow2_update_refcount(img, q, old_offset / cs + c, -1);
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
            if ((rc = vd_backend_read(img, off, buf, n)) < 0)
                break;
            for (size_t i = 0; i < n && rc == 0; i++)
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
    /* a v2 snapshot records no disk size: it would take the new one and lose its own */
    if (q->nb_snapshots && q->version < 3 && size != img->size)
        return vd_err(VD_EUNSUPPORTED, "%s: cannot resize a version 2 (compat=0.10) qcow2 image "
                      "that has snapshots", img->filename);
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
    /* growing over a larger backing image must not reveal what lies below: zero it */
    uint64_t old_size = img->size;
    uint64_t below = img->backing ? img->backing->size : 0;
    bool reveal = size > old_size && below > old_size;
    if (reveal && q->version < 3)
        return vd_err(VD_EUNSUPPORTED, "%s: a v2 image cannot grow over its larger backing file "
                      "without showing its data", img->filename);
    if ((rc = img->backend->flush(img)) < 0 || (rc = qcow2_grow_l1(img, q, entries)) < 0)
        return rc;
    if (reveal) { /* the zeroes are durable before the header shows the new size */
        uint64_t end = below < size ? below : size;
        img->size = size;
        rc = vd_cow_write_zeroes(img, old_size, end - old_size, 0);
        img->size = old_size;
        if (rc < 0 || (rc = img->backend->flush(img)) < 0)
            return rc;
    }
    if ((rc = qcow2_write_size(img, size)) < 0)
        return vd_image_poison(img, rc);
    img->size = size;
    return img->backend->flush(img);
}
