/*
 * Sparse extents: the hosted sparse header ("KDMV", versions 1 to 3, with
 * streamOptimized's footer when the grain directory is at the end) and the
 * vmfsSparse header ("COWD"), their grain directory and grain tables, and
 * the copy-on-write engine's hooks on them; seSparse extents (sesparse.c,
 * read-only) share the lookup through decode() and table_at().
 *
 * Concurrency (lib/cow/engine.h): lookup runs beside other lookups and only
 * reads the grain directory and the table cache; allocate, link,
 * zero_clusters and store_compressed run alone and make every change.
 *
 * Ordering: grain data reaches the disk before the grain table entry naming
 * it (the table cache syncs the files before writing a table), and a new
 * grain table before the directory entries naming it (flush writes the
 * directories last). Both directories and both copies of a table change.
 */
#include "formats/vmdk/vmdk.h"
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

/* The fields of a KDMV header (the sector after the magic). */
static void decode_vmdk4(const uint8_t *h, struct vmdk_sparse *s)
{
    s->version = vd_le32(h + 4);
    s->flags = vd_le32(h + 8);
    s->capacity = vd_le64(h + 12);
    s->grain = vd_le64(h + 20); /* sectors, until checked */
    s->desc_offset = vd_le64(h + 28);
    s->desc_size = vd_le64(h + 36);
    s->gtes = vd_le32(h + 44);
    s->rgd_offset = vd_le64(h + 48);
    s->gd_offset = vd_le64(h + 56);
    s->compressed = vd_le16(h + 77) == VMDK4_COMPRESS_DEFLATE;
}

/* streamOptimized with the grain directory at the end: the footer's copy of the header counts. */
static int read_footer(vd_file *f, const char *name, uint8_t *h)
{
    uint64_t size;
    int rc = vd_file_get_size(f, &size);
    if (rc < 0)
        return rc;
    if (size < 1536 + 512)
        return vd_err(VD_ECORRUPT, "%s: invalid VMDK footer (the file is too short)", name);
    uint8_t tail[1536];
    if ((rc = vd_file_pread(f, tail, sizeof tail, size - 1536)) < 0)
        return rc;
    const uint8_t *marker = tail, *footer = tail + 512, *eos = tail + 1024;
    if (memcmp(footer, "KDMV", 4) != 0 || vd_le32(marker + 8) != 0 ||
        vd_le32(marker + 12) != VMDK_MARKER_FOOTER || vd_le64(eos) != 0 || vd_le32(eos + 8) != 0 ||
        vd_le32(eos + 12) != VMDK_MARKER_EOS)
        return vd_err(VD_ECORRUPT, "%s: invalid VMDK footer", name);
    memcpy(h, footer, 512);
    return 0;
}

/* Bound and convert the geometry of a grain map (grain in sectors on entry). */
static int check_geometry(struct vmdk_sparse *s, const char *name, uint64_t file_size)
{
    uint64_t grain_sectors = s->grain;
    if (!grain_sectors || grain_sectors > VMDK_MAX_GRAIN_SECTORS ||
        (grain_sectors & (grain_sectors - 1)))
        return vd_err(VD_ECORRUPT, "%s: invalid VMDK grain size of %llu sectors (a power of two "
                      "up to %u)", name, (unsigned long long)grain_sectors, VMDK_MAX_GRAIN_SECTORS);
    if (!s->gtes || s->gtes > (s->cowd ? VMDK3_GTES : VMDK4_GTES))
        return vd_err(VD_ECORRUPT, "%s: invalid VMDK grain table size of %u entries", name,
                      s->gtes);
    if (s->capacity > (UINT64_MAX >> 10))
        return vd_err(VD_ECORRUPT, "%s: invalid VMDK capacity", name);
    s->grain = grain_sectors * VMDK_SECTOR;
    uint64_t per_gt = s->grain * s->gtes, bytes = s->capacity * VMDK_SECTOR;
    uint64_t need = bytes / per_gt + (bytes % per_gt != 0);
    if (!s->cowd)
        s->gd_entries = need > VMDK_MAX_GD_ENTRIES ? VMDK_MAX_GD_ENTRIES + 1 : (uint32_t)need;
    else if (s->gd_entries < need)
        return vd_err(VD_ECORRUPT, "%s: the VMDK grain directory (%u entries) does not cover the "
                      "capacity", name, s->gd_entries);
    if (s->gd_entries > VMDK_MAX_GD_ENTRIES)
        return vd_err(VD_ETOOBIG, "%s: VMDK grain directory too big (L1 size too big)", name);
    uint64_t gd_bytes = (uint64_t)s->gd_entries * 4;
    if (s->gd_offset > file_size || gd_bytes > file_size - s->gd_offset ||
        (s->rgd_offset && (s->rgd_offset > file_size || gd_bytes > file_size - s->rgd_offset)))
        return vd_err(VD_ECORRUPT, "%s: the VMDK grain directory lies past the end of the file",
                      name);
    return 0;
}

int vmdk_sparse_read_header(vd_file *f, const char *name, struct vmdk_sparse *s)
{
    uint8_t h[512];
    uint64_t file_size;
    int rc = vd_file_get_size(f, &file_size);
    if (rc == 0 && file_size < 512)
        rc = vd_err(VD_ECORRUPT, "%s: VMDK sparse extent shorter than its header", name);
    if (rc == 0)
        rc = vd_file_pread(f, h, sizeof h, 0);
    if (rc < 0)
        return rc;
    *s = (struct vmdk_sparse){ 0 };
    if (memcmp(h, "COWD", 4) == 0) {
        s->cowd = true;
        s->version = vd_le32(h + 4);
        s->flags = vd_le32(h + 8);
        s->capacity = vd_le32(h + 12);
        s->grain = vd_le32(h + 16);
        s->gd_offset = (uint64_t)vd_le32(h + 20) * VMDK_SECTOR;
        s->gd_entries = vd_le32(h + 24);
        s->gtes = VMDK3_GTES;
        return check_geometry(s, name, file_size);
    }
    if (memcmp(h, "KDMV", 4) != 0)
        return vd_err(VD_EFORMAT, "%s: not a VMDK sparse extent", name);
    decode_vmdk4(h, s);
    if (s->gd_offset == VMDK4_GD_AT_END) {
        if ((rc = read_footer(f, name, h)) < 0)
            return rc;
        decode_vmdk4(h, s);
    }
    if (s->version > 3)
        return vd_err(VD_EUNSUPPORTED, "%s: unsupported VMDK version %u", name, s->version);
    s->markers = (s->flags & VMDK4_FLAG_MARKER) != 0;
    s->zero_grain = (s->flags & VMDK4_FLAG_ZERO_GRAIN) != 0;
    if (s->gd_offset > (UINT64_MAX >> 10) || s->rgd_offset > (UINT64_MAX >> 10) ||
        s->desc_offset > (UINT64_MAX >> 10) || s->desc_size > (UINT64_MAX >> 10))
        return vd_err(VD_ECORRUPT, "%s: invalid VMDK header offsets", name);
    s->gd_offset *= VMDK_SECTOR;
    s->rgd_offset = (s->flags & VMDK4_FLAG_RGD) ? s->rgd_offset * VMDK_SECTOR : 0;
    s->desc_offset *= VMDK_SECTOR;
    s->desc_size *= VMDK_SECTOR;
    if (s->capacity == 0) /* a descriptor in a sparse header (checked by the caller) */
        return 0;
    return check_geometry(s, name, file_size);
}

static int load_gd(vd_file *f, uint64_t off, uint32_t n, uint32_t **out, const char *name)
{
    *out = malloc(n ? (size_t)n * 4 : 1);
    if (!*out)
        return vd_err(VD_ENOMEM, "%s: out of memory for the VMDK grain directory", name);
    int rc = n ? vd_file_pread(f, *out, (size_t)n * 4, off) : 0;
    for (uint32_t i = 0; rc == 0 && i < n; i++)
        (*out)[i] = vd_le32(&(*out)[i]);
    return rc;
}

/* The tables are small (2 KiB): keep enough for 8 GiB of 64 KiB grains. */
enum { GT_CACHE_TABLES = 256 };

/* Before grain tables are written: the grains they name are durable. */
static int before_gt_write(void *ctx)
{
    return vd_image_sync(ctx);
}

int vmdk_sparse_open(vd_image *img, struct vmdk_extent *e, size_t index)
{
    const char *name = e->file->path;
    struct vmdk_sparse *s = calloc(1, sizeof *s);
    if (!s)
        return vd_err(VD_ENOMEM, "%s: out of memory", name);
    e->sparse = s;
    if (e->line.type == VMDK_SESPARSE) {
        int rc = vmdk_sesparse_open(e, s);
        e->length = s->capacity * VMDK_SECTOR;
        return rc;
    }
    int rc = vmdk_sparse_read_header(e->file, name, s);
    if (rc == 0 && s->capacity == 0)
        rc = vd_err(VD_ECORRUPT, "%s: a VMDK sparse extent of capacity 0", name);
    if (rc == 0 && s->version == 3 && !s->compressed && e->file->writable)
        rc = vd_err(VD_EPERM, "%s: VMDK version 3 (changed block tracking) can only be opened "
                    "read-only", name);
    if (rc == 0 && s->compressed && !s->markers && e->file->writable)
        rc = vd_err(VD_EUNSUPPORTED, "%s: compressed VMDK grains without markers can only be read",
                    name);
    if (rc == 0)
        rc = load_gd(e->file, s->gd_offset, s->gd_entries, &s->gd, name);
    if (rc == 0 && s->rgd_offset)
        rc = load_gd(e->file, s->rgd_offset, s->gd_entries, &s->rgd, name);
    /* grains are appended: the file grows ahead of them (io/file.h); not a stream, whose
       footer must stay last even after a crash */
    if (rc == 0 && e->file->writable && !s->compressed && !e->file->ahead)
        rc = vd_file_grow_ahead(e->file);
    uint64_t file_size = 0;
    if (rc == 0)
        rc = vd_file_get_size(e->file, &file_size);
    if (rc == 0) {
        s->alloc_end = round_up(file_size, s->compressed ? VMDK_SECTOR : s->grain);
        rc = vd_cache_new(&s->gts, e->file, (size_t)s->gtes * 4, GT_CACHE_TABLES);
    }
    if (rc == 0)
        vd_cache_set_before_write(s->gts, before_gt_write, img);
    e->length = s->capacity * VMDK_SECTOR;
    (void)index;
    return rc;
}

void vmdk_sparse_free(struct vmdk_sparse *s)
{
    if (!s)
        return;
    vd_cache_free(s->gts);
    free(s->gd);
    free(s->rgd);
    free(s->gd64);
    free(s);
}

static int write_gd(vd_file *f, uint64_t off, const uint32_t *gd, uint32_t n)
{
    uint8_t *disk = malloc(n ? (size_t)n * 4 : 1);
    if (!disk)
        return vd_err(VD_ENOMEM, "%s: out of memory", f->path);
    for (uint32_t i = 0; i < n; i++)
        vd_put_le32(disk + (size_t)i * 4, gd[i]);
    int rc = n ? vd_file_pwrite(f, disk, (size_t)n * 4, off) : 0;
    free(disk);
    return rc;
}

int vmdk_sparse_flush(vd_image *img, struct vmdk_extent *e)
{
    struct vmdk_sparse *s = e->sparse;
    int rc = 0;
    if (vd_cache_has_dirty(s->gts)) {
        rc = vd_cache_writeback(s->gts);
        vd_image_mark_unsynced(img);
    }
    if (rc == 0 && s->gd_dirty) {
        rc = vd_image_sync(img); /* new grain tables before the directory entries naming them */
        if (rc == 0)
            rc = write_gd(e->file, s->gd_offset, s->gd, s->gd_entries);
        if (rc == 0 && s->rgd)
            rc = write_gd(e->file, s->rgd_offset, s->rgd, s->gd_entries);
        vd_image_mark_unsynced(img);
        if (rc == 0)
            s->gd_dirty = false;
    }
    return rc;
}

/* ------------------------------------------------------------- cluster map */

struct vmdk_extent *vmdk_extent_at(struct vmdk *v, uint64_t off)
{
    size_t lo = 0, hi = v->next;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (v->ext[mid].start <= off)
            lo = mid;
        else
            hi = mid;
    }
    return &v->ext[lo];
}

static uint64_t host_of(const struct vmdk *v, const struct vmdk_extent *e, uint64_t file_off)
{
    return ((uint64_t)(e - v->ext) << VMDK_HOST_SHIFT) | file_off;
}

/* Entry i of a grain table (hosted and vmfsSparse: 32-bit sector numbers; seSparse: its own). */
static int decode(vd_image *img, const struct vmdk_sparse *s, const void *table, uint32_t i,
                  struct vmdk_grain *g)
{
    if (s->sesparse)
        return vmdk_sesparse_grain(img, s, table, i, g);
    uint32_t gte = vd_le32((const uint8_t *)table + (size_t)i * 4);
    if (gte == 0)
        *g = (struct vmdk_grain){ VD_COW_UNALLOCATED, 0 };
    else if (gte == VMDK_GTE_ZEROED && s->zero_grain)
        *g = (struct vmdk_grain){ VD_COW_ZERO, 0 };
    else
        *g = (struct vmdk_grain){ s->compressed ? VD_COW_COMPRESSED : VD_COW_DATA,
                                  (uint64_t)gte * VMDK_SECTOR };
    return 0;
}

/* The file offset of directory slot gdi's grain table, 0 for none. */
static int table_at(vd_image *img, const struct vmdk_sparse *s, uint64_t gdi, uint64_t *at)
{
    if (s->sesparse)
        return vmdk_sesparse_table(img, s, gdi, at);
    *at = (uint64_t)s->gd[gdi] * VMDK_SECTOR;
    return 0;
}

static int sparse_lookup(vd_image *img, struct vmdk_extent *e, uint64_t rel, uint64_t max,
                         struct vd_cow_run *run)
{
    struct vmdk *v = vmdk_of(img);
    struct vmdk_sparse *s = e->sparse;
    uint64_t g = rel / s->grain, gdi = g / s->gtes;
    if (gdi >= s->gd_entries)
        return vd_image_corrupt(img, "VMDK", "guest offset %llu lies past the grain directory",
                                (unsigned long long)(e->start + rel));
    uint64_t span = min_u64(max, (gdi + 1) * s->gtes * s->grain - rel);
    *run = (struct vd_cow_run){ .kind = VD_COW_UNALLOCATED, .length = span };
    uint64_t table_off;
    int rc = table_at(img, s, gdi, &table_off);
    if (rc < 0 || !table_off)
        return rc;
    void *table;
    if ((rc = vd_cache_get(s->gts, table_off, false, &table)) < 0)
        return rc;
    uint32_t i = (uint32_t)(g % s->gtes);
    struct vmdk_grain first, next;
    rc = decode(img, s, table, i, &first);
    uint64_t in = rel % s->grain;
    uint64_t pos = (g + 1) * s->grain - rel; /* bytes of the run so far */
    if (rc == 0 && first.kind != VD_COW_COMPRESSED) {
        /* a bad entry ends the run: the lookup that starts on it reports it */
        for (uint32_t j = i + 1; j < s->gtes && pos < span; j++, pos += s->grain) {
            if (decode(img, s, table, j, &next) < 0 || next.kind != first.kind ||
                (first.kind == VD_COW_DATA && next.host != first.host + (j - i) * s->grain))
                break;
        }
    }
    vd_cache_put(s->gts, table);
    if (rc < 0)
        return rc;
    run->kind = first.kind;
    run->length = min_u64(pos, span);
    if (first.kind == VD_COW_DATA) {
        run->host = host_of(v, e, first.host + in);
        run->has_host = true;
        run->writable = e->line.access == VMDK_RW;
    } else if (first.kind == VD_COW_COMPRESSED) {
        run->host = host_of(v, e, first.host);
        run->comp_bytes = 2 * s->grain;
    }
    return 0;
}

/*
 * Before a delta shows its parent through: the parent must still be the
 * disk the delta was made from (its CID is the delta's parentCID), as QEMU
 * checks. A parent of another format has no CID to check.
 */
static int check_parent_cid(vd_image *img)
{
    struct vmdk *v = vmdk_of(img);
    if (!img->backing || img->backing->backend != &vd_backend_vmdk)
        return 0;
    uint32_t cid = vmdk_of(img->backing)->desc.cid;
    if (cid == v->desc.parent_cid)
        return 0;
    return vd_err(VD_EBACKING, "%s: the parent VMDK's CID %08x is not this delta's parentCID "
                  "%08x: the parent changed after the delta was made", img->filename, cid,
                  v->desc.parent_cid);
}

static int v_lookup(vd_image *img, uint64_t off, uint64_t len, struct vd_cow_run *run)
{
    struct vmdk *v = vmdk_of(img);
    struct vmdk_extent *e = vmdk_extent_at(v, off);
    uint64_t rel = off - e->start, max = min_u64(len, e->length - rel);
    if (e->sparse) {
        int rc = sparse_lookup(img, e, rel, max, run);
        return rc == 0 && run->kind == VD_COW_UNALLOCATED ? check_parent_cid(img) : rc;
    }
    *run = (struct vd_cow_run){ .kind = VD_COW_ZERO, .length = max };
    if (e->line.type == VMDK_FLAT || e->line.type == VMDK_VMFS) {
        if (e->line.access == VMDK_NOACCESS)
            return 0;
        run->kind = VD_COW_DATA;
        run->host = host_of(v, e, e->line.offset * VMDK_SECTOR + rel);
        run->has_host = true;
        run->writable = e->line.access == VMDK_RW;
    }
    return 0;
}

/* The sparse extent that may change at guest offset off, or an error saying why not. */
static int writable_sparse(vd_image *img, uint64_t off, struct vmdk_extent **out)
{
    struct vmdk_extent *e = vmdk_extent_at(vmdk_of(img), off);
    *out = e;
    if (e->line.access != VMDK_RW)
        return vd_err(VD_EPERM, "%s: the VMDK extent at guest offset %llu is read-only",
                      img->filename, (unsigned long long)off);
    if (!e->sparse)
        return vd_err(VD_EIO, "%s: internal error: allocation in a flat VMDK extent at %llu",
                      img->filename, (unsigned long long)off);
    return 0;
}

/* Take bytes at the end of the extent file for a grain or table. */
static int take_space(vd_image *img, struct vmdk_extent *e, uint64_t bytes, uint64_t *at)
{
    struct vmdk_sparse *s = e->sparse;
    /* grain table entries hold 32-bit sector numbers */
    if (s->alloc_end + bytes > (UINT64_C(1) << 32) * VMDK_SECTOR)
        return vd_err(VD_ENOSPC, "%s: the VMDK extent '%s' is full (2 TiB)", img->filename,
                      e->file->path);
    *at = s->alloc_end;
    s->alloc_end += bytes;
    return 0;
}

static int v_allocate(vd_image *img, uint64_t guest_off, uint64_t *host)
{
    struct vmdk_extent *e;
    int rc = writable_sparse(img, guest_off, &e);
    if (rc == 0 && e->sparse->compressed)
        rc = vd_err(VD_EUNSUPPORTED, "%s: a streamOptimized image takes whole compressed grains "
                    "only, each written once", img->filename);
    uint64_t at = 0;
    if (rc == 0)
        rc = take_space(img, e, e->sparse->grain, &at);
    if (rc == 0)
        *host = host_of(vmdk_of(img), e, at);
    return rc;
}

/* A new, zeroed grain table for directory slot gdi (and its redundant copy). */
static int new_table(vd_image *img, struct vmdk_extent *e, uint64_t gdi)
{
    struct vmdk_sparse *s = e->sparse;
    uint64_t bytes = round_up((uint64_t)s->gtes * 4, VMDK_SECTOR);
    for (int copy = 0; copy < (s->rgd ? 2 : 1); copy++) {
        uint64_t at = 0;
        void *table;
        int rc = take_space(img, e, bytes, &at);
        if (rc == 0)
            rc = vd_file_write_zeroes(e->file, at, bytes, false); /* the whole sectors exist */
        if (rc == 0)
            rc = vd_cache_get(s->gts, at, true, &table);
        if (rc < 0)
            return rc;
        vd_cache_put(s->gts, table);
        (copy ? s->rgd : s->gd)[gdi] = (uint32_t)(at / VMDK_SECTOR);
    }
    s->gd_dirty = true;
    vd_image_mark_unsynced(img);
    return 0;
}

/* Set the grain table entry of the grain at guest offset off in both tables. */
static int set_gte(vd_image *img, struct vmdk_extent *e, uint64_t off, uint32_t gte)
{
    struct vmdk_sparse *s = e->sparse;
    uint64_t g = (off - e->start) / s->grain, gdi = g / s->gtes;
    if (gdi >= s->gd_entries)
        return vd_image_corrupt(img, "VMDK", "guest offset %llu lies past the grain directory",
                                (unsigned long long)(off));
    int rc = s->gd[gdi] ? 0 : new_table(img, e, gdi);
    for (int copy = 0; copy < (s->rgd ? 2 : 1) && rc == 0; copy++) {
        uint32_t sector = (copy ? s->rgd : s->gd)[gdi];
        uint32_t *table;
        if (!sector)
            return vd_image_corrupt(img, "VMDK",
                                    "the redundant grain directory lacks a table for %llu",
                                    (unsigned long long)(off));
        if ((rc = vd_cache_get(s->gts, (uint64_t)sector * VMDK_SECTOR, false, (void **)&table)) < 0)
            break;
        vd_put_le32(&table[g % s->gtes], gte);
        vd_cache_mark_dirty(s->gts, table);
        vd_cache_put(s->gts, table);
    }
    return rc;
}

static int v_link(vd_image *img, uint64_t guest_off, uint64_t host)
{
    struct vmdk_extent *e;
    int rc = writable_sparse(img, guest_off, &e);
    return rc < 0 ? rc : set_gte(img, e, guest_off, (uint32_t)((host & VMDK_HOST_MASK) / VMDK_SECTOR));
}

/*
 * Whole grains become unallocated (nothing below shows through, or they
 * are being deallocated) or zeroed grains (VMDK4_FLAG_ZERO_GRAIN); grains
 * they held are leaked, as QEMU leaks them. Anything else: the engine
 * writes zeroes.
 */
static int v_zero_clusters(vd_image *img, uint64_t off, uint64_t len, enum vd_cow_zero_mode mode)
{
    struct vmdk *v = vmdk_of(img);
    bool below = img->backing || v->desc.parent_hint;
    for (uint64_t at = off; at < off + len;) {
        struct vmdk_extent *e = vmdk_extent_at(v, at);
        if (!e->sparse || e->sparse->compressed || e->line.access != VMDK_RW ||
            (below && mode != VD_COW_DEALLOCATE && !e->sparse->zero_grain))
            return VD_EUNSUPPORTED;
        at = e->start + e->length;
    }
    int rc = 0;
    for (uint64_t at = off; at < off + len && rc == 0;) {
        struct vmdk_extent *e = vmdk_extent_at(v, at);
        bool zero_entry = below && mode != VD_COW_DEALLOCATE;
        struct vd_cow_run run;
        rc = sparse_lookup(img, e, at - e->start, off + len - at, &run);
        uint64_t n = run.length;
        bool done = rc == 0 && (zero_entry ? run.kind == VD_COW_ZERO
                                           : run.kind == VD_COW_UNALLOCATED);
        for (uint64_t g = 0; rc == 0 && !done && g < n; g += e->sparse->grain)
            rc = set_gte(img, e, at + g, zero_entry ? VMDK_GTE_ZEROED : 0);
        at += n;
    }
    return rc;
}

static int v_read_compressed(vd_image *img, const struct vd_cow_run *run, void *cluster)
{
    struct vmdk *v = vmdk_of(img);
    struct vmdk_extent *e = &v->ext[run->host >> VMDK_HOST_SHIFT];
    struct vmdk_sparse *s = e->sparse;
    uint64_t at = run->host & VMDK_HOST_MASK, file_size;
    int rc = vd_file_get_size(e->file, &file_size);
    if (rc < 0)
        return rc;
    if (at >= file_size)
        return vd_image_corrupt(img, "VMDK",
                                "compressed grain past the end of the file (offset %llu)",
                                (unsigned long long)(at));
    uint64_t bytes = min_u64(2 * s->grain, file_size - at);
    if (s->markers) {
        uint8_t marker[VMDK_MARKER_BYTES];
        if (file_size - at < sizeof marker)
            return vd_image_corrupt(img, "VMDK", "truncated grain marker at offset %llu",
                                    (unsigned long long)(at));
        if ((rc = vd_file_pread(e->file, marker, sizeof marker, at)) < 0)
            return rc;
        bytes = vd_le32(marker + 8);
        at += sizeof marker;
        if (!bytes || bytes > 2 * s->grain || bytes > file_size - at)
            return vd_image_corrupt(img, "VMDK", "invalid compressed grain size %llu",
                                    (unsigned long long)(bytes));
    }
    uint8_t *src = malloc((size_t)bytes);
    if (!src)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    rc = vd_file_pread(e->file, src, (size_t)bytes, at);
    if (rc == 0 && vd_codec_decompress(VD_CODEC_ZLIB, src, (size_t)bytes, cluster,
                                       (size_t)s->grain) < 0)
        rc = vd_image_corrupt(img, "VMDK", "cannot decompress the grain at offset %llu",
                              (unsigned long long)(at));
    free(src);
    return rc;
}

/* A marker and the compressed grain, at the end of the file, then the table entry. */
static int v_store_compressed(vd_image *img, uint64_t guest_off, const void *data, size_t len)
{
    struct vmdk_extent *e;
    int rc = writable_sparse(img, guest_off, &e);
    if (rc == 0 && !e->sparse->markers)
        rc = vd_err(VD_EUNSUPPORTED, "%s: compressed grains need a streamOptimized image",
                    img->filename);
    uint64_t bytes = round_up(VMDK_MARKER_BYTES + (uint64_t)len, VMDK_SECTOR), at = 0;
    if (rc == 0)
        rc = take_space(img, e, bytes, &at);
    uint8_t *buf = rc == 0 ? calloc(1, (size_t)bytes) : NULL;
    if (rc == 0 && !buf)
        rc = vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    if (rc == 0) {
        vd_put_le64(buf, guest_off / VMDK_SECTOR);
        vd_put_le32(buf + 8, (uint32_t)len);
        memcpy(buf + VMDK_MARKER_BYTES, data, len);
        rc = vd_file_pwrite(e->file, buf, (size_t)bytes, at);
        vd_image_mark_unsynced(img);
    }
    free(buf);
    return rc < 0 ? rc : set_gte(img, e, guest_off, (uint32_t)(at / VMDK_SECTOR));
}

/* Flat extents are plain files, often sparse: their holes read as zeroes (QEMU recurses into them). */
static bool v_data_over_holes(vd_image *img)
{
    struct vmdk *v = vmdk_of(img);
    for (size_t i = 0; i < v->next; i++)
        if (!v->ext[i].sparse && v->ext[i].file)
            return true;
    return false;
}

/* streamOptimized: every grain is stored deflated (zlib streams), even one that grows. */
static bool v_compresses_every_cluster(vd_image *img)
{
    return vmdk_stream_optimized(vmdk_of(img));
}

/* Other subformats take compressed writes as plain grains (convert -c), as QEMU's vmdk driver does. */
static bool v_plain_compressed_writes(vd_image *img)
{
    return !v_compresses_every_cluster(img);
}

static int v_compression(vd_image *img)
{
    return v_compresses_every_cluster(img) ? VD_CODEC_ZLIB : -1;
}

const struct vd_cow_ops vmdk_cow_ops = {
    .lookup = v_lookup,
    .allocate = v_allocate,
    .link = v_link,
    .zero_clusters = v_zero_clusters,
    .read_compressed = v_read_compressed,
    .data_over_holes = v_data_over_holes,
    .compression = v_compression,
    .store_compressed = v_store_compressed,
    .compresses_every_cluster = v_compresses_every_cluster,
    .plain_compressed_writes = v_plain_compressed_writes,
};
