/*
 * ESXi seSparse extents (extent type SESPARSE, createType "seSparse"),
 * read as QEMU 7.2 reads them and, like QEMU, read-only. The format is not
 * documented; these are the facts QEMU relies on, checked as strictly:
 *
 *   sector 0        the constant header: magic 0xcafebabe, version
 *                   0x0000000200000001, grains of 8 sectors, grain tables of
 *                   64 sectors (4096 entries of 8 bytes), no flags, reserved
 *                   words and padding zero; sector numbers of the volatile
 *                   header, the grain directory (and its size), the grain
 *                   tables and the grains.
 *   volatile header magic 0xcafecafe, no journal to replay, padding zero.
 *   directory entry 0: no table; 0x10000000_nnnnnnnn: table nnnnnnnn of the
 *                   grain tables area; anything else is corrupt.
 *   table entry     top nibble 0: unallocated (the rest must be 0); 1 (SCSI
 *                   unmapped) and 2: reads as zeroes; 3: grain number, its
 *                   low 12 bits in bits 48-59 and the rest in bits 0-47.
 *
 * Every header field is bounded against the file before use; entries are
 * decoded (and refused when bad) at lookup, as QEMU does, so one bad entry
 * fails the reads that meet it only.
 */
#include "formats/vmdk/vmdk.h"
#include "core/endian.h"

#include <stdlib.h>
#include <string.h>

#define SE_CONST_MAGIC    UINT64_C(0xcafebabe)
#define SE_VOLATILE_MAGIC UINT64_C(0xcafecafe)
#define SE_VERSION        UINT64_C(0x0000000200000001)
#define SE_GRAIN_SECTORS  8u
#define SE_TABLE_SECTORS  64u
#define SE_GTES           (SE_TABLE_SECTORS * VMDK_SECTOR / 8)
#define SE_GD_TABLE       UINT64_C(0x1000000000000000)
#define SE_TABLE_CACHE    32 /* tables of 32 KiB, each covering 16 MiB */

/* Byte offsets of the constant header's fields. */
enum {
    SE_MAGIC = 0, SE_VERSION_AT = 8, SE_CAPACITY = 16, SE_GRAIN = 24, SE_GT_SIZE = 32,
    SE_FLAGS = 40, SE_RESERVED = 48, SE_VOLATILE = 80, SE_GD = 128, SE_GD_SIZE = 136,
    SE_GTS = 144, SE_GRAINS = 192, SE_CONST_PAD = 208,
};
/* ... and of the volatile header's. */
enum { SE_V_MAGIC = 0, SE_V_REPLAY = 24, SE_V_PAD = 32 };

/* Sectors [at, at + n) lie inside a file of file_sectors sectors. */
static bool inside(uint64_t at, uint64_t n, uint64_t file_sectors)
{
    return at <= file_sectors && n <= file_sectors - at;
}

static int check_const_header(const uint8_t *h, const char *name)
{
    if (vd_le64(h + SE_MAGIC) != SE_CONST_MAGIC)
        return vd_err(VD_EFORMAT, "%s: bad VMDK seSparse constant header magic 0x%016llx", name,
                      (unsigned long long)vd_le64(h + SE_MAGIC));
    if (vd_le64(h + SE_VERSION_AT) != SE_VERSION)
        return vd_err(VD_EUNSUPPORTED, "%s: unsupported VMDK seSparse version 0x%016llx", name,
                      (unsigned long long)vd_le64(h + SE_VERSION_AT));
    if (vd_le64(h + SE_GRAIN) != SE_GRAIN_SECTORS)
        return vd_err(VD_EUNSUPPORTED, "%s: unsupported VMDK seSparse grain size of %llu sectors "
                      "(only %u)", name, (unsigned long long)vd_le64(h + SE_GRAIN),
                      SE_GRAIN_SECTORS);
    if (vd_le64(h + SE_GT_SIZE) != SE_TABLE_SECTORS)
        return vd_err(VD_EUNSUPPORTED, "%s: unsupported VMDK seSparse grain table size of %llu "
                      "sectors (only %u)", name, (unsigned long long)vd_le64(h + SE_GT_SIZE),
                      SE_TABLE_SECTORS);
    if (vd_le64(h + SE_FLAGS))
        return vd_err(VD_EUNSUPPORTED, "%s: unsupported VMDK seSparse flags 0x%016llx", name,
                      (unsigned long long)vd_le64(h + SE_FLAGS));
    if (!vd_is_zero(h + SE_RESERVED, 32) || !vd_is_zero(h + SE_CONST_PAD, 512 - SE_CONST_PAD))
        return vd_err(VD_EUNSUPPORTED, "%s: non-zero reserved fields in the VMDK seSparse header",
                      name);
    return 0;
}

static int check_volatile_header(vd_file *f, uint64_t sector, uint64_t file_sectors,
                                 const char *name)
{
    uint8_t h[VMDK_SECTOR];
    if (!inside(sector, 1, file_sectors))
        return vd_err(VD_ECORRUPT, "%s: the VMDK seSparse volatile header lies past the end of the "
                      "file", name);
    int rc = vd_file_pread(f, h, sizeof h, sector * VMDK_SECTOR);
    if (rc < 0)
        return rc;
    if (vd_le64(h + SE_V_MAGIC) != SE_VOLATILE_MAGIC)
        return vd_err(VD_ECORRUPT, "%s: bad VMDK seSparse volatile header magic 0x%016llx", name,
                      (unsigned long long)vd_le64(h + SE_V_MAGIC));
    if (vd_le64(h + SE_V_REPLAY))
        return vd_err(VD_EUNSUPPORTED, "%s: the VMDK seSparse image is dirty (replaying its "
                      "journal is not supported)", name);
    if (!vd_is_zero(h + SE_V_PAD, sizeof h - SE_V_PAD))
        return vd_err(VD_EUNSUPPORTED, "%s: non-zero padding in the VMDK seSparse volatile header",
                      name);
    return 0;
}

int vmdk_sesparse_open(struct vmdk_extent *e, struct vmdk_sparse *s)
{
    const char *name = e->file->path;
    if (e->file->writable)
        return vd_err(VD_EPERM, "%s: VMDK seSparse extents can only be opened read-only (no "
                      "write support, as in QEMU)", name);
    uint8_t h[VMDK_SECTOR];
    uint64_t file_size;
    int rc = vd_file_get_size(e->file, &file_size);
    if (rc == 0 && file_size < sizeof h)
        rc = vd_err(VD_ECORRUPT, "%s: VMDK seSparse extent shorter than its header", name);
    if (rc == 0)
        rc = vd_file_pread(e->file, h, sizeof h, 0);
    if (rc == 0)
        rc = check_const_header(h, name);
    uint64_t sectors = file_size / VMDK_SECTOR;
    if (rc == 0)
        rc = check_volatile_header(e->file, vd_le64(h + SE_VOLATILE), sectors, name);
    if (rc < 0)
        return rc;
    uint64_t capacity = vd_le64(h + SE_CAPACITY), gd = vd_le64(h + SE_GD);
    uint64_t gd_sectors = vd_le64(h + SE_GD_SIZE);
    if (!capacity || capacity > (VMDK_HOST_MASK >> 9))
        return vd_err(VD_ECORRUPT, "%s: invalid VMDK seSparse capacity of %llu sectors", name,
                      (unsigned long long)capacity);
    /* QEMU's bound: 32 Mi directory entries */
    if (gd_sectors > VMDK_MAX_GD_ENTRIES / (VMDK_SECTOR / 8))
        return vd_err(VD_ETOOBIG, "%s: VMDK seSparse grain directory too big (L1 size too big)",
                      name);
    if (!inside(gd, gd_sectors, sectors))
        return vd_err(VD_ECORRUPT, "%s: the VMDK seSparse grain directory lies past the end of the "
                      "file", name);
    s->sesparse = true;
    s->capacity = capacity;
    s->grain = SE_GRAIN_SECTORS * VMDK_SECTOR;
    s->gtes = SE_GTES;
    s->gd_entries = (uint32_t)(gd_sectors * (VMDK_SECTOR / 8));
    s->gd_offset = gd * VMDK_SECTOR;
    s->se_tables = vd_le64(h + SE_GTS);
    s->se_grains = vd_le64(h + SE_GRAINS);
    s->alloc_end = file_size; /* nothing is ever allocated: where grains and tables must end */
    size_t bytes = (size_t)s->gd_entries * 8;
    if (!(s->gd64 = malloc(bytes ? bytes : 1)))
        return vd_err(VD_ENOMEM, "%s: out of memory for the VMDK seSparse grain directory", name);
    if (bytes && (rc = vd_file_pread(e->file, s->gd64, bytes, s->gd_offset)) < 0)
        return rc;
    for (uint32_t i = 0; i < s->gd_entries; i++)
        s->gd64[i] = vd_le64(&s->gd64[i]);
    return vd_cache_new(&s->gts, e->file, (size_t)SE_GTES * 8, SE_TABLE_CACHE);
}

static int bad_entry(vd_image *img, const char *what, uint64_t index, uint64_t entry)
{
    return vd_err(VD_ECORRUPT, "%s: invalid VMDK seSparse %s entry %llu: 0x%016llx", img->filename,
                  what, (unsigned long long)index, (unsigned long long)entry);
}

int vmdk_sesparse_table(vd_image *img, const struct vmdk_sparse *s, uint64_t gdi, uint64_t *at)
{
    uint64_t entry = s->gd64[gdi];
    *at = 0;
    if (!entry)
        return 0;
    if ((entry & UINT64_C(0xffffffff00000000)) != SE_GD_TABLE)
        return bad_entry(img, "grain directory", gdi, entry);
    uint64_t n = entry & UINT32_MAX, sector = s->se_tables + n * SE_TABLE_SECTORS;
    /* as QEMU: tables start below 2^32 sectors */
    if (s->se_tables > UINT32_MAX || sector > UINT32_MAX ||
        !inside(sector, SE_TABLE_SECTORS, s->alloc_end / VMDK_SECTOR))
        return vd_err(VD_ECORRUPT, "%s: VMDK seSparse grain table %llu lies past the end of the "
                      "file", img->filename, (unsigned long long)n);
    *at = sector * VMDK_SECTOR;
    return 0;
}

int vmdk_sesparse_grain(vd_image *img, const struct vmdk_sparse *s, const void *table, uint32_t i,
                        struct vmdk_grain *g)
{
    uint64_t entry = vd_le64((const uint8_t *)table + (size_t)i * 8);
    *g = (struct vmdk_grain){ VD_COW_UNALLOCATED, 0 };
    switch (entry >> 60) {
    case 0:
        return entry ? bad_entry(img, "grain table", i, entry) : 0;
    case 1: /* unmapped by the guest (SCSI UNMAP) */
    case 2:
        g->kind = VD_COW_ZERO;
        return 0;
    case 3:
        break;
    default:
        return bad_entry(img, "grain table", i, entry);
    }
    uint64_t n = ((entry >> 48) & 0xfff) | ((entry & UINT64_C(0xffffffffffff)) << 12);
    uint64_t file_sectors = s->alloc_end / VMDK_SECTOR;
    if (s->se_grains > file_sectors || n > (file_sectors - s->se_grains) / SE_GRAIN_SECTORS ||
        !inside(s->se_grains + n * SE_GRAIN_SECTORS, SE_GRAIN_SECTORS, file_sectors))
        return vd_err(VD_ECORRUPT, "%s: VMDK seSparse grain %llu lies past the end of the file",
                      img->filename, (unsigned long long)n);
    uint64_t sector = s->se_grains + n * SE_GRAIN_SECTORS;
    if (sector) /* as QEMU: a grain at sector 0 reads as unallocated */
        *g = (struct vmdk_grain){ VD_COW_DATA, sector * VMDK_SECTOR };
    return 0;
}
