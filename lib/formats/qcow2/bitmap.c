/*
 * qcow2 bitmaps: the bitmap directory, read and validated at open as QEMU
 * validates it (an image QEMU refuses to open is refused here too, with its
 * reason). libvdisk neither uses nor changes bitmaps; check counts the
 * clusters of the tables kept here. Every table a directory entry may name
 * is bounded by the virtual size and the granularity, so that no entry can
 * claim more work than its bitmap needs.
 */
#include "formats/qcow2/qcow2.h"

#include <stdlib.h>

/* A directory entry: the fixed part, then extra data, then the name, padded to 8 bytes. */
#define BITMAP_ENTRY_BYTES       24
#define BITMAP_MAX_TABLE_ENTRIES 0x8000000u
#define BITMAP_MAX_DATA_BYTES    0x20000000u /* QEMU's limit on a bitmap's size in memory */
#define BITMAP_MIN_GRANULARITY   9
#define BITMAP_MAX_GRANULARITY   31
#define BITMAP_MAX_NAME          1023
#define BITMAP_FLAG_IN_USE       (1u << 0)
#define BITMAP_RESERVED_FLAGS    0xfffffffcu
#define BITMAP_TYPE_DIRTY_TRACKING 1

/* One directory entry, host-endian. */
struct bitmap_entry {
    uint64_t table_offset;
    uint32_t table_entries;
    uint32_t flags;
    uint8_t type, granularity_bits;
    uint16_t name_size;
    uint32_t extra_size;
    const char *name;   /* not terminated */
};

static void decode_entry(const uint8_t *p, struct bitmap_entry *e)
{
    e->table_offset = vd_be64(p);
    e->table_entries = vd_be32(p + 8);
    e->flags = vd_be32(p + 12);
    e->type = p[16];
    e->granularity_bits = p[17];
    e->name_size = vd_be16(p + 18);
    e->extra_size = vd_be32(p + 20);
    e->name = (const char *)p + BITMAP_ENTRY_BYTES + e->extra_size;
}

static uint64_t entry_bytes(const struct bitmap_entry *e)
{
    return (BITMAP_ENTRY_BYTES + (uint64_t)e->extra_size + e->name_size + 7) & ~7ull;
}

/*
 * QEMU's constraints on one entry: a table that exists, is aligned and no
 * larger than a bitmap may be, a known type and flags, a granularity of
 * 2^9..2^31 bytes, and (unless the bitmap is marked in use, i.e. not saved
 * consistently) a table that covers the whole virtual disk.
 */
static bool entry_acceptable(const struct qcow2 *q, uint64_t disk_size, const struct bitmap_entry *e)
{
    if (!e->table_entries || !e->table_offset || (e->table_offset & (q->cluster_size - 1)) ||
        e->table_entries > BITMAP_MAX_TABLE_ENTRIES || e->granularity_bits < BITMAP_MIN_GRANULARITY ||
        e->granularity_bits > BITMAP_MAX_GRANULARITY || (e->flags & BITMAP_RESERVED_FLAGS) ||
        e->name_size > BITMAP_MAX_NAME || e->type != BITMAP_TYPE_DIRTY_TRACKING)
        return false;
    uint64_t data_bytes = (uint64_t)e->table_entries * q->cluster_size;
    if (data_bytes > BITMAP_MAX_DATA_BYTES)
        return false;
    /* at most 2^29 bytes of bitmap, 2^32 bits, each covering at most 2^31 bytes: no overflow */
    return (e->flags & BITMAP_FLAG_IN_USE) || disk_size <= (data_bytes * 8) << e->granularity_bits;
}

static int refuse(vd_image *img, const char *why)
{
    return vd_err(VD_ECORRUPT, "%s: %s", img->filename, why);
}

/* Check every entry of the directory dir (size bytes, nb_bitmaps expected) and keep its table. */
static int parse_directory(vd_image *img, struct qcow2 *q, const uint8_t *dir, uint64_t size,
                           uint32_t nb_bitmaps)
{
    q->bitmap_tables = calloc(nb_bitmaps, sizeof *q->bitmap_tables);
    if (!q->bitmap_tables)
        return vd_err(VD_ENOMEM, "%s: out of memory for the bitmap directory", img->filename);
    uint64_t pos = 0;
    uint32_t count = 0;
    while (pos < size) {
        if (size - pos < BITMAP_ENTRY_BYTES)
            return refuse(img, "Broken bitmap directory");
        if (count == nb_bitmaps)
            return refuse(img, "More bitmaps found than specified in header extension");
        struct bitmap_entry e;
        decode_entry(dir + pos, &e);
        if (entry_bytes(&e) > size - pos)
            return refuse(img, "Broken bitmap directory");
        if (e.extra_size)
            return refuse(img, "Bitmap extra data is not supported");
        if (!entry_acceptable(q, img->size, &e))
            return vd_err(VD_ECORRUPT, "%s: Bitmap '%.*s' doesn't satisfy the constraints",
                          img->filename, (int)e.name_size, e.name);
        q->bitmap_tables[count++] = (struct qcow2_bitmap_table){ .offset = e.table_offset,
                                                                 .entries = e.table_entries };
        pos += entry_bytes(&e);
    }
    if (count != nb_bitmaps)
        return refuse(img, "Less bitmaps found than specified in header extension");
    q->nbitmap_tables = count;
    return 0;
}

int qcow2_read_bitmap_directory(vd_image *img, struct qcow2 *q)
{
    const struct qcow2_ext *ext = qcow2_bitmaps_ext(q);
    if (!ext)
        return 0;
    /* header.c has checked the count, the alignment and the size limit */
    uint32_t nb_bitmaps = vd_be32(ext->data);
    uint64_t size = vd_be64(ext->data + 8), offset = vd_be64(ext->data + 16);
    if (!size)
        return refuse(img, "Requested bitmap directory size is zero");
    uint8_t *dir = malloc((size_t)size);
    if (!dir)
        return vd_err(VD_ENOMEM, "%s: out of memory for the bitmap directory", img->filename);
    int rc = vd_file_pread(img->file, dir, (size_t)size, offset);
    if (rc == 0)
        rc = parse_directory(img, q, dir, size, nb_bitmaps);
    free(dir);
    return rc;
}

const struct qcow2_ext *qcow2_bitmaps_ext(const struct qcow2 *q)
{
    if (!(q->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return NULL;
    for (size_t i = 0; i < q->nexts; i++)
        if (q->exts[i].type == QCOW2_EXT_BITMAPS && q->exts[i].len == 24)
            return &q->exts[i];
    return NULL;
}
