/*
 * qcow2 bitmaps: the bitmap directory, read and validated at open as QEMU
 * validates it (an image QEMU refuses to open is refused here too, with its
 * reason), listed for core (lib/core/bitmap.c keeps the bits and tracks
 * writes), loaded, marked in use while the image is open for writing and
 * stored back. Check counts the clusters of the tables kept here. Every
 * table a directory entry may name is bounded by the virtual size and the
 * granularity, so that no entry can claim more work than its bitmap needs.
 */
#include "formats/qcow2/qcow2.h"
#include "core/bitmap.h"

#include <stdlib.h>
#include <string.h>

/* A directory entry: the fixed part, then extra data, then the name, padded to 8 bytes. */
#define BITMAP_ENTRY_BYTES       24
#define BITMAP_MAX_TABLE_ENTRIES 0x8000000u
#define BITMAP_MAX_DATA_BYTES    0x20000000u /* QEMU's limit on a bitmap's size in memory */
#define BITMAP_MIN_GRANULARITY   9
#define BITMAP_MAX_GRANULARITY   31
#define BITMAP_MAX_NAME          1023
#define BITMAP_FLAG_IN_USE       (1u << 0)
#define BITMAP_FLAG_AUTO         (1u << 1)
#define BITMAP_TABLE_ALL_ONES    1ull
#define BITMAP_TABLE_RESERVED    0xff000000000001feull
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
        int rc = vd_bitmap_append(img, e.name, e.name_size, e.granularity_bits,
                                  (e.flags & BITMAP_FLAG_AUTO) != 0,
                                  (e.flags & BITMAP_FLAG_IN_USE) != 0, e.table_offset);
        if (rc < 0)
            return rc;
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
    if (rc < 0) {
        free(dir);
        return rc;
    }
    q->bitmap_dir = dir;
    q->bitmap_dir_bytes = size;
    q->bitmap_dir_offset = offset;
    return 0;
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

/* Table entries (clusters of bits) a bitmap of nbits needs. */
static uint64_t table_entries(const struct qcow2 *q, uint64_t nbits)
{
    uint64_t bytes = nbits / 8 + (nbits % 8 != 0);
    return bytes / q->cluster_size + (bytes % q->cluster_size != 0);
}

static uint64_t clusters_for(const struct qcow2 *q, uint64_t bytes)
{
    return bytes / q->cluster_size + (bytes % q->cluster_size != 0);
}

/* Read a bitmap table of n entries at off, host-endian. */
static int read_table(vd_image *img, uint64_t off, uint64_t n, uint64_t **out)
{
    uint64_t *t = malloc(n ? n * 8 : 1);
    if (!t)
        return vd_err(VD_ENOMEM, "%s: out of memory for a bitmap table", img->filename);
    int rc = vd_file_pread(img->file, t, (size_t)(n * 8), off);
    for (uint64_t i = 0; rc == 0 && i < n; i++)
        t[i] = vd_be64(&t[i]);
    if (rc < 0)
        free(t);
    else
        *out = t;
    return rc;
}

int qcow2_bitmap_load(vd_image *img, struct vd_bitmap *b)
{
    struct qcow2 *q = qcow2_of(img);
    const uint64_t cs = q->cluster_size, n = table_entries(q, b->nbits);
    uint64_t *table;
    int rc = read_table(img, b->stored_at, n, &table);
    if (rc < 0)
        return rc;
    uint8_t *buf = malloc((size_t)cs);
    if (!buf)
        rc = vd_err(VD_ENOMEM, "%s: out of memory for bitmap '%s'", img->filename, b->name);
    for (uint64_t i = 0; rc == 0 && i < n; i++) {
        uint64_t data = table[i] & QCOW2_OFFSET_MASK;
        if ((table[i] & BITMAP_TABLE_RESERVED) || (data & (cs - 1)) ||
            (data && (table[i] & BITMAP_TABLE_ALL_ONES)))
            rc = vd_err(VD_ECORRUPT, "%s: bitmap '%s': invalid bitmap table entry 0x%llx",
                        img->filename, b->name, (unsigned long long)table[i]);
        else if (data || (table[i] & BITMAP_TABLE_ALL_ONES)) {
            if (data)
                rc = vd_file_pread(img->file, buf, (size_t)cs, data);
            else
                memset(buf, 0xff, (size_t)cs);
            if (rc == 0)
                vd_bitmap_set_bytes(b, i * cs, buf, (size_t)cs);
        }
    }
    free(buf);
    free(table);
    return rc;
}

int qcow2_bitmaps_open_rw(vd_image *img, struct qcow2 *q)
{
    if (!vd_bitmaps_any_enabled(img))
        return 0;
    int rc = vd_bitmaps_load_enabled(img);
    if (rc < 0)
        return rc;
    /* mark every enabled bitmap in use, in place, as QEMU does: from now on a crash
       leaves it inconsistent, never a stale bitmap that looks valid */
    bool changed = false;
    for (uint64_t pos = 0; pos < q->bitmap_dir_bytes;) {
        struct bitmap_entry e;
        decode_entry(q->bitmap_dir + pos, &e);
        if ((e.flags & BITMAP_FLAG_AUTO) && !(e.flags & BITMAP_FLAG_IN_USE)) {
            vd_put_be32(q->bitmap_dir + pos + 12, e.flags | BITMAP_FLAG_IN_USE);
            changed = true;
        }
        pos += entry_bytes(&e);
    }
    if (!changed)
        return 0;
    rc = qcow2_write_meta(img, QCOW2_META_BITMAP_DIRECTORY, q->bitmap_dir_offset, q->bitmap_dir,
                          (size_t)q->bitmap_dir_bytes);
    return rc == 0 ? vd_image_sync_now(img) : rc;
}

/* Write b's bits into new clusters: its data clusters (none for all-zero ones), then its table. */
static int write_bitmap(vd_image *img, struct qcow2 *q, const struct vd_bitmap *b,
                        struct qcow2_bitmap_table *out)
{
    const uint64_t cs = q->cluster_size, n = table_entries(q, b->nbits);
    uint64_t *table = calloc(clusters_for(q, n * 8), (size_t)cs);
    uint8_t *buf = malloc((size_t)cs), *zero = calloc(1, (size_t)cs);
    int rc = table && buf && zero ? 0 : vd_err(VD_ENOMEM, "%s: out of memory storing bitmaps",
                                                img->filename);
    for (uint64_t i = 0; rc == 0 && i < n; i++) {
        vd_bitmap_get_bytes(b, i * cs, buf, (size_t)cs);
        if (!memcmp(buf, zero, (size_t)cs))
            continue;
        uint64_t host;
        rc = qcow2_alloc_clusters(img, q, 1, &host);
        if (rc == 0)
            rc = qcow2_write_meta(img, QCOW2_META_NONE, host, buf, (size_t)cs);
        vd_put_be64(&table[i], host);
    }
    uint64_t table_off = 0;
    if (rc == 0)
        rc = qcow2_alloc_metadata(img, q, clusters_for(q, n * 8), &table_off);
    if (rc == 0)
        rc = qcow2_write_meta(img, QCOW2_META_NONE, table_off, table,
                              (size_t)(clusters_for(q, n * 8) * cs));
    *out = (struct qcow2_bitmap_table){ table_off, (uint32_t)n };
    free(table);
    free(buf);
    free(zero);
    return rc;
}

/* Serialise the directory of img->bitmaps naming tables into *dir (*bytes long). */
static int build_directory(vd_image *img, const struct qcow2_bitmap_table *tables, bool closing,
                           uint8_t **dir, uint64_t *bytes)
{
    uint64_t size = 0;
    for (size_t i = 0; i < img->nbitmaps; i++)
        size += (BITMAP_ENTRY_BYTES + strlen(img->bitmaps[i].name) + 7) & ~7ull;
    if (size > QCOW2_MAX_BITMAP_DIR_BYTES)
        return vd_err(VD_ETOOBIG, "%s: the bitmap directory would exceed %u bytes", img->filename,
                      QCOW2_MAX_BITMAP_DIR_BYTES);
    uint8_t *d = calloc(1, size ? size : 1);
    if (!d)
        return vd_err(VD_ENOMEM, "%s: out of memory storing bitmaps", img->filename);
    uint64_t pos = 0;
    for (size_t i = 0; i < img->nbitmaps; i++) {
        const struct vd_bitmap *b = &img->bitmaps[i];
        size_t name_len = strlen(b->name);
        uint32_t flags = (b->enabled ? BITMAP_FLAG_AUTO : 0) |
                         (b->inconsistent || (b->enabled && !closing) ? BITMAP_FLAG_IN_USE : 0);
        vd_put_be64(d + pos, tables[i].offset);
        vd_put_be32(d + pos + 8, tables[i].entries);
        vd_put_be32(d + pos + 12, flags);
        d[pos + 16] = BITMAP_TYPE_DIRTY_TRACKING;
        d[pos + 17] = (uint8_t)b->granularity_bits;
        vd_put_be16(d + pos + 18, (uint16_t)name_len);
        memcpy(d + pos + BITMAP_ENTRY_BYTES, b->name, name_len);
        pos += (BITMAP_ENTRY_BYTES + name_len + 7) & ~7ull;
    }
    *dir = d;
    *bytes = size;
    return 0;
}

/* Point the header at the new directory (or at none), durably. */
static int publish_directory(vd_image *img, struct qcow2 *q, uint64_t offset, uint64_t bytes)
{
    qcow2_drop_extension(q, QCOW2_EXT_BITMAPS);
    q->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
    if (img->nbitmaps) {
        uint8_t *ext = calloc(1, 24);
        struct qcow2_ext *grown = realloc(q->exts, (q->nexts + 1) * sizeof *grown);
        if (grown)
            q->exts = grown;
        if (!ext || !grown) {
            free(ext);
            return vd_err(VD_ENOMEM, "%s: out of memory storing bitmaps", img->filename);
        }
        vd_put_be32(ext, (uint32_t)img->nbitmaps);
        vd_put_be64(ext + 8, bytes);
        vd_put_be64(ext + 16, offset);
        q->exts[q->nexts++] = (struct qcow2_ext){ QCOW2_EXT_BITMAPS, 24, ext };
        q->autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
    }
    int rc = qcow2_write_header(img, q);
    return rc == 0 ? vd_image_sync_now(img) : rc;
}

/* Drop the references of a table no directory names any more, and of its data clusters. */
static int free_table(vd_image *img, struct qcow2 *q, const struct qcow2_bitmap_table *t)
{
    uint64_t *table;
    int rc = read_table(img, t->offset, t->entries, &table);
    if (rc < 0)
        return rc;
    for (uint64_t i = 0; rc == 0 && i < t->entries; i++)
        if (table[i] & QCOW2_OFFSET_MASK)
            rc = qcow2_update_refcount(img, q, (table[i] & QCOW2_OFFSET_MASK) / q->cluster_size, -1);
    free(table);
    for (uint64_t c = 0; rc == 0 && c < clusters_for(q, (uint64_t)t->entries * 8); c++)
        rc = qcow2_update_refcount(img, q, t->offset / q->cluster_size + c, -1);
    return rc;
}

static bool table_kept(const struct qcow2_bitmap_table *tables, size_t n, uint64_t offset)
{
    for (size_t i = 0; i < n; i++)
        if (tables[i].offset == offset)
            return true;
    return false;
}

/*
 * The store, in QEMU's order: new tables and a new directory in new
 * clusters, durable with their refcounts; then the header names them; only
 * then the old ones lose their references. A crash leaves the old
 * directory (its enabled bitmaps marked in use) or the new one, and at
 * worst leaked clusters.
 */
static int store(vd_image *img, struct qcow2 *q, bool closing, struct qcow2_bitmap_table *tables)
{
    int rc = 0;
    for (size_t i = 0; i < img->nbitmaps && rc == 0; i++) {
        struct vd_bitmap *b = &img->bitmaps[i];
        if (b->inconsistent) { /* kept as found: it can only be removed */
            for (uint32_t k = 0; k < q->nbitmap_tables; k++)
                if (q->bitmap_tables[k].offset == b->stored_at)
                    tables[i] = q->bitmap_tables[k];
            continue;
        }
        rc = vd_bitmap_ensure_loaded(img, b);
        if (rc == 0)
            rc = vd_bitmaps_fit_size(img); /* a size changed by a snapshot revert, say */
        if (rc == 0)
            rc = write_bitmap(img, q, b, &tables[i]);
    }
    uint8_t *dir = NULL;
    uint64_t dir_bytes = 0, dir_off = 0;
    if (rc == 0)
        rc = build_directory(img, tables, closing, &dir, &dir_bytes);
    if (rc == 0 && dir_bytes)
        rc = qcow2_alloc_metadata(img, q, clusters_for(q, dir_bytes), &dir_off);
    if (rc == 0)
        rc = qcow2_write_meta(img, QCOW2_META_NONE, dir_off, dir, (size_t)dir_bytes);
    if (rc == 0)
        rc = qcow2_flush_metadata(img, q);
    if (rc == 0)
        rc = publish_directory(img, q, dir_off, dir_bytes);
    if (rc < 0) {
        free(dir);
        return rc;
    }
    /* the header names the new directory: forget the old one, then free what it alone used */
    struct qcow2_bitmap_table *old = q->bitmap_tables;
    uint32_t nold = q->nbitmap_tables;
    uint64_t old_dir = q->bitmap_dir_offset, old_dir_bytes = q->bitmap_dir_bytes;
    free(q->bitmap_dir);
    q->bitmap_dir = dir;
    q->bitmap_dir_offset = dir_off;
    q->bitmap_dir_bytes = dir_bytes;
    q->bitmap_tables = tables;
    q->nbitmap_tables = (uint32_t)img->nbitmaps;
    q->meta_stale = true;
    for (size_t i = 0; i < img->nbitmaps; i++)
        img->bitmaps[i].stored_at = tables[i].offset;
    for (uint32_t k = 0; k < nold && rc == 0; k++)
        if (!table_kept(tables, img->nbitmaps, old[k].offset) && !table_kept(old, k, old[k].offset))
            rc = free_table(img, q, &old[k]);
    for (uint64_t c = 0; rc == 0 && c < clusters_for(q, old_dir_bytes); c++)
        rc = qcow2_update_refcount(img, q, old_dir / q->cluster_size + c, -1);
    free(old);
    if (rc == 0)
        rc = qcow2_refcounts_durable(img);
    return rc;
}

int qcow2_bitmap_can_add(vd_image *img)
{
    if (qcow2_of(img)->version < 3)
        return vd_err(VD_EUNSUPPORTED, "Cannot store dirty bitmaps in qcow2 v2 files");
    return 0;
}

int qcow2_bitmaps_store(vd_image *img, bool closing)
{
    struct qcow2 *q = qcow2_of(img);
    int rc = qcow2_bitmap_can_add(img);
    if (rc < 0)
        return rc;
    struct qcow2_bitmap_table *tables = calloc(img->nbitmaps + 1, sizeof *tables);
    if (!tables)
        return vd_err(VD_ENOMEM, "%s: out of memory storing bitmaps", img->filename);
    rc = store(img, q, closing, tables);
    if (rc < 0 && q->bitmap_tables != tables)
        free(tables);
    if (rc == 0)
        img->bitmaps_changed = false;
    return rc < 0 ? vd_image_poison(img, rc) : 0;
}
