/*
 * VMDK check, as qemu-img check does it for vmdk: every allocated grain
 * (and every flat extent) must start before the end of its extent file;
 * "ERROR: cluster offset for sector N points after EOF" names each one
 * that does not, and the check then fails (qemu-img exits 1, "Check
 * failed"), with result->corruptions counting the problems.
 *
 * Beyond QEMU: a grain table that lies past the end of its file (QEMU
 * reads it as zeroes and passes the image; libvdisk refuses to read it,
 * since a grain allocated there later would alias it) and a grain table
 * named by two directory entries (writes to one guest range would show
 * in the other) are corruptions too. Each table is read once however
 * often the directory names it, so a hostile directory costs no more than
 * its own size.
 *
 * There is no repair, as in QEMU: repair flags fail with VD_EUNSUPPORTED.
 */
#include "formats/vmdk/vmdk.h"
#include "core/endian.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

struct vcheck {
    vd_image *img;
    vd_check_result *res;
    vd_check_report_fn report;
    void *ctx;
};

/* A corruption, with its report line. */
#define problem(c, ...) ((c)->res->corruptions++, vd_check_say((c)->report, (c)->ctx, __VA_ARGS__))

static void past_eof(struct vcheck *c, uint64_t guest_off)
{
    problem(c, "ERROR: cluster offset for sector %" PRIu64 " points after EOF",
            guest_off / VMDK_SECTOR);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * A bit per directory entry whose table an earlier entry names already
 * (NULL and no error when none is shared): sort (table << 32 | entry).
 */
static int find_shared(const struct vmdk_sparse *s, const char *name, uint8_t **shared)
{
    *shared = NULL;
    uint64_t *keys = malloc((size_t)s->gd_entries * sizeof *keys + 1);
    if (!keys)
        return vd_err(VD_ENOMEM, "%s: out of memory for the check", name);
    size_t n = 0;
    for (uint32_t i = 0; i < s->gd_entries; i++)
        if (s->gd[i])
            keys[n++] = (uint64_t)s->gd[i] << 32 | i;
    qsort(keys, n, sizeof *keys, cmp_u64);
    int rc = 0;
    for (size_t k = 1; k < n && rc == 0; k++) {
        if (keys[k] >> 32 != keys[k - 1] >> 32)
            continue;
        if (!*shared && !(*shared = calloc((size_t)s->gd_entries / 8 + 1, 1)))
            rc = vd_err(VD_ENOMEM, "%s: out of memory for the check", name);
        else
            (*shared)[(uint32_t)keys[k] / 8] |= (uint8_t)(1u << ((uint32_t)keys[k] % 8));
    }
    free(keys);
    if (rc < 0) {
        free(*shared);
        *shared = NULL;
    }
    return rc;
}

/* The grain table of directory entry gdi: the grains it names must start inside the file. */
static int check_table(struct vcheck *c, struct vmdk_extent *e, uint32_t gdi, uint64_t file_size)
{
    struct vmdk_sparse *s = e->sparse;
    uint64_t at = (uint64_t)s->gd[gdi] * VMDK_SECTOR, bytes = (uint64_t)s->gtes * 4;
    uint64_t first = (uint64_t)gdi * s->gtes; /* grain index in the extent */
    uint64_t grains = (e->length + s->grain - 1) / s->grain;
    if (at > file_size || bytes > file_size - at) {
        problem(c, "ERROR: the grain table for sector %" PRIu64 " (at offset %" PRIu64
                ") lies past the end of '%s'", (e->start + first * s->grain) / VMDK_SECTOR, at,
                e->file->path);
        return 0;
    }
    uint32_t *table;
    int rc = vd_cache_get(s->gts, at, false, (void **)&table);
    if (rc < 0)
        return rc;
    for (uint32_t j = 0; j < s->gtes && first + j < grains; j++) {
        uint32_t gte = vd_le32(&table[j]);
        if (gte == 0 || (gte == VMDK_GTE_ZEROED && s->zero_grain))
            continue;
        if ((uint64_t)gte * VMDK_SECTOR >= file_size)
            past_eof(c, e->start + (first + j) * s->grain);
    }
    vd_cache_put(s->gts, table);
    return 0;
}

static int check_sparse(struct vcheck *c, struct vmdk_extent *e, uint64_t file_size)
{
    struct vmdk_sparse *s = e->sparse;
    uint8_t *shared;
    int rc = find_shared(s, e->file->path, &shared);
    for (uint32_t i = 0; rc == 0 && i < s->gd_entries; i++) {
        if (!s->gd[i])
            continue;
        if (shared && (shared[i / 8] >> (i % 8) & 1))
            problem(c, "ERROR: the grain table for sector %" PRIu64 " (at offset %" PRIu64
                    ") belongs to another part of the disk too",
                    (e->start + (uint64_t)i * s->gtes * s->grain) / VMDK_SECTOR,
                    (uint64_t)s->gd[i] * VMDK_SECTOR);
        else
            rc = check_table(c, e, i, file_size);
    }
    free(shared);
    return rc;
}

/*
 * seSparse (read-only): every directory and table entry that covers the
 * capacity must decode, and every grain lie inside the file. A table named
 * by consecutive directory entries is read once.
 */
static int check_sesparse(struct vcheck *c, struct vmdk_extent *e)
{
    struct vmdk_sparse *s = e->sparse;
    uint64_t grains = (e->length + s->grain - 1) / s->grain, last = 0;
    for (uint64_t gdi = 0; gdi < s->gd_entries && gdi * s->gtes < grains; gdi++) {
        uint64_t at;
        if (vmdk_sesparse_table(c->img, s, gdi, &at) < 0) {
            problem(c, "ERROR: %s", vd_errmsg());
            continue;
        }
        if (!at || at == last)
            continue;
        last = at;
        void *table;
        int rc = vd_cache_get(s->gts, at, false, &table);
        if (rc < 0)
            return rc;
        for (uint32_t j = 0; j < s->gtes && gdi * s->gtes + j < grains; j++) {
            struct vmdk_grain g;
            if (vmdk_sesparse_grain(c->img, s, table, j, &g) < 0)
                problem(c, "ERROR: %s (sector %" PRIu64 ")", vd_errmsg(),
                        (e->start + (gdi * s->gtes + j) * s->grain) / VMDK_SECTOR);
        }
        vd_cache_put(s->gts, table);
    }
    return 0;
}

int vmdk_check(vd_image *img, uint32_t flags, vd_check_result *res, vd_check_report_fn report,
               void *ctx)
{
    if (flags & (VD_CHECK_REPAIR_LEAKS | VD_CHECK_REPAIR_ALL))
        return vd_err(VD_EUNSUPPORTED, "%s: VMDK images cannot be repaired (nor can qemu-img "
                      "repair them); check without repairing to see the problems", img->filename);
    struct vmdk *v = vmdk_of(img);
    struct vcheck c = { img, res, report, ctx };
    int rc = 0;
    for (size_t i = 0; i < v->next && rc == 0; i++) {
        struct vmdk_extent *e = &v->ext[i];
        uint64_t file_size;
        if (!e->file) /* ZERO */
            continue;
        if ((rc = vd_file_get_size(e->file, &file_size)) < 0)
            break;
        if (e->sparse && e->sparse->sesparse)
            rc = check_sesparse(&c, e);
        else if (e->sparse)
            rc = check_sparse(&c, e, file_size);
        else if (e->line.offset >= (file_size + VMDK_SECTOR - 1) / VMDK_SECTOR) /* FLAT, VMFS */
            past_eof(&c, e->start);
    }
    if (rc == 0 && res->corruptions)
        rc = vd_err(VD_ECORRUPT, "%s: %" PRIu64 " errors were found in the VMDK image",
                    img->filename, res->corruptions);
    return rc;
}
