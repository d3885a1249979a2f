/* qcow2 header and header extensions: probe, parse with bounds, write. */
#include "formats/qcow2/qcow2.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int qcow2_probe(const uint8_t *head, size_t len, uint64_t file_size)
{
    if (len < 8 || vd_be32(head) != QCOW2_MAGIC)
        return 0;
    /* any later version is still qcow2 (and refused by open), never raw: as QEMU probes */
    return vd_be32(head + 4) >= 2 ? 100 : 0;
}

void qcow2_derive(struct qcow2 *q)
{
    q->cluster_size = 1ull << q->cluster_bits;
    q->l2_entry_bytes = (q->incompat & QCOW2_INCOMPAT_EXTL2) ? 16 : 8;
    q->l2_entries = q->cluster_size / q->l2_entry_bytes;
    q->refcount_max = q->refcount_order == 6 ? UINT64_MAX : (1ull << (1u << q->refcount_order)) - 1;
    q->rb_entries = q->cluster_size * 8 >> q->refcount_order;
}

/* The name of an incompatible feature bit: the image's own table, or ours. */
static const char *feature_name(const struct qcow2 *q, unsigned bit, char *buf, size_t buflen)
{
    static const char *const known[] = { "dirty bit", "corrupt bit", "external data file",
                                         "compression type", "extended L2 entries" };
    for (size_t e = 0; e < q->nexts; e++) {
        if (q->exts[e].type != QCOW2_EXT_FEATURES)
            continue;
        for (uint32_t i = 0; i + 48 <= q->exts[e].len; i += 48) {
            const uint8_t *ent = q->exts[e].data + i;
            if (ent[0] == 0 && ent[1] == bit) {
                snprintf(buf, buflen, "%.46s", (const char *)ent + 2);
                return buf;
            }
        }
    }
    if (bit < sizeof known / sizeof known[0])
        return known[bit];
    snprintf(buf, buflen, "unknown incompatible feature %u", bit);
    return buf;
}

static int corrupt_header(vd_image *img, const char *what)
{
    return vd_err(VD_ECORRUPT, "%s: invalid qcow2 header: %s", img->filename, what);
}

int qcow2_add_extension(struct qcow2 *q, uint32_t type, const uint8_t *data, uint32_t len)
{
    struct qcow2_ext *grown = realloc(q->exts, (q->nexts + 1) * sizeof *grown);
    if (!grown)
        return VD_ENOMEM;
    q->exts = grown;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return VD_ENOMEM;
    memcpy(copy, data, len);
    q->exts[q->nexts++] = (struct qcow2_ext){ type, len, copy };
    return 0;
}

static char *dup_string(const uint8_t *p, size_t len)
{
    char *s = malloc(len + 1);
    if (s) {
        memcpy(s, p, len);
        s[len] = '\0';
    }
    return s;
}

/*
 * The bitmaps extension, kept verbatim (we neither use nor change bitmaps),
 * is still validated as QEMU validates it, so that an image QEMU refuses is
 * not quietly accepted here. Its fields only matter while the autoclear bit
 * says the bitmaps are consistent.
 */
static int check_bitmaps_ext(vd_image *img, const struct qcow2 *q, const uint8_t *data, uint32_t len)
{
    if (len != 24)
        return corrupt_header(img, "bitmaps extension has an invalid length");
    if (!(q->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return 0;
    uint32_t nb_bitmaps = vd_be32(data);
    uint64_t dir_size = vd_be64(data + 8), dir_offset = vd_be64(data + 16);
    if (vd_be32(data + 4))
        return corrupt_header(img, "bitmaps extension: reserved field is not zero");
    if (nb_bitmaps == 0 || nb_bitmaps > QCOW2_MAX_BITMAPS)
        return corrupt_header(img, "bitmaps extension: the number of bitmaps is out of range");
    if (dir_offset & ((1ull << q->cluster_bits) - 1)) /* parsed before the sizes are derived */
        return corrupt_header(img, "bitmaps extension: the bitmap directory is not cluster aligned");
    if (dir_size > QCOW2_MAX_BITMAP_DIR_BYTES)
        return corrupt_header(img, "bitmaps extension: the bitmap directory is too large");
    return 0;
}

/* Parse the extension area [start, end) of the first cluster. */
static int parse_extensions(vd_image *img, struct qcow2 *q, const uint8_t *hdr,
                            uint64_t start, uint64_t end)
{
    uint64_t pos = start;
    while (pos + 8 <= end) {
        uint32_t type = vd_be32(hdr + pos), len = vd_be32(hdr + pos + 4);
        if (type == QCOW2_EXT_END)
            return 0;
        if (len > end - pos - 8)
            return corrupt_header(img, "header extension is past the end of the header cluster");
        const uint8_t *data = hdr + pos + 8;
        int rc = type == QCOW2_EXT_BITMAPS ? check_bitmaps_ext(img, q, data, len) : 0;
        if (rc < 0)
            return rc;
        if (type == QCOW2_EXT_BACKING_FMT) {
            if (len > QCOW2_MAX_BACKING_NAME)
                return corrupt_header(img, "backing format name is too long");
            free(q->backing_format);
            if (!(q->backing_format = dup_string(data, len)))
                return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
        } else if (type == QCOW2_EXT_DATA_FILE) {
            if (len > QCOW2_MAX_BACKING_NAME)
                return corrupt_header(img, "data file name is too long");
            free(q->data_file_name);
            if (!(q->data_file_name = dup_string(data, len)))
                return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
        } else if (qcow2_add_extension(q, type, data, len) < 0) {
            return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
        }
        pos += 8 + (((uint64_t)len + 7) & ~7ull);
    }
    return 0;
}

/* Bounds on the fixed fields, in the order a reader needs them. */
static int validate(vd_image *img, struct qcow2 *q, uint64_t backing_off, uint32_t backing_len,
                    uint64_t file_size)
{
    char name[64];
    if (q->cluster_bits < QCOW2_MIN_CLUSTER_BITS || q->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return vd_err(VD_ECORRUPT, "%s: unsupported qcow2 cluster size 2^%u (must be 2^9 to 2^21)",
                      img->filename, q->cluster_bits);
    if (q->version == 3 && (q->header_length < QCOW2_V3_HEADER_LEN || q->header_length % 8 ||
                            q->header_length > (1u << q->cluster_bits)))
        return corrupt_header(img, "header length is out of range");
    uint64_t unknown = q->incompat & ~QCOW2_INCOMPAT_KNOWN;
    if (unknown) {
        unsigned bit = (unsigned)__builtin_ctzll(unknown);
        return vd_err(VD_EUNSUPPORTED, "%s: unsupported qcow2 feature: %s", img->filename,
                      feature_name(q, bit, name, sizeof name));
    }
    if ((q->incompat & QCOW2_INCOMPAT_DATA_FILE) && !q->data_file_name)
        return vd_err(VD_EUNSUPPORTED, "%s: the image uses an external data file but does not "
                      "name it", img->filename);
    if ((q->autoclear & QCOW2_AUTOCLEAR_DATA_RAW) && !(q->incompat & QCOW2_INCOMPAT_DATA_FILE))
        q->autoclear &= ~QCOW2_AUTOCLEAR_DATA_RAW; /* meaningless without a data file */
    if (q->refcount_order > 6)
        return corrupt_header(img, "refcount order is larger than 6");
    if ((q->incompat & QCOW2_INCOMPAT_EXTL2) && q->cluster_bits < 14)
        return corrupt_header(img, "extended L2 entries need clusters of at least 16 KiB");
    if (!!(q->incompat & QCOW2_INCOMPAT_COMPRESSION) != (q->compression_type != 0))
        return corrupt_header(img, "compression type field disagrees with its feature bit");
    if (q->compression_type > QCOW2_COMPRESSION_ZSTD)
        return vd_err(VD_EUNSUPPORTED, "%s: unknown qcow2 compression type %u", img->filename,
                      q->compression_type);

    qcow2_derive(q);
    uint64_t cs = q->cluster_size;
    if ((uint64_t)q->l1_size * 8 > QCOW2_MAX_L1_BYTES)
        return vd_err(VD_ETOOBIG, "%s: qcow2 L1 table of %u entries is too large", img->filename,
                      q->l1_size);
    if ((uint64_t)q->rt_clusters * cs > QCOW2_MAX_RT_BYTES)
        return vd_err(VD_ETOOBIG, "%s: qcow2 refcount table of %u clusters is too large",
                      img->filename, q->rt_clusters);
    if (q->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
        return vd_err(VD_ETOOBIG, "%s: too many qcow2 snapshots (%u)", img->filename, q->nb_snapshots);
    if ((q->l1_offset | q->rt_offset | (q->nb_snapshots ? q->snapshots_offset : 0)) & (cs - 1))
        return corrupt_header(img, "a table offset is not aligned to a cluster");
    if (q->rt_clusters == 0 || q->rt_offset == 0)
        return corrupt_header(img, "the refcount table is empty");
    /* tables may extend past the end of the file: that part reads as zeroes (qcow2_pread_table) */
    uint64_t end;
    if (vd_add_overflows(q->l1_offset, (uint64_t)q->l1_size * 8, &end))
        return corrupt_header(img, "the L1 table is past the end of the address space");
    if (vd_add_overflows(q->rt_offset, (uint64_t)q->rt_clusters * cs, &end))
        return corrupt_header(img, "the refcount table is past the end of the address space");
    /* the L1 table must cover the virtual size */
    uint64_t clusters = img->size / cs + (img->size % cs != 0);
    uint64_t l1_needed = clusters / q->l2_entries + (clusters % q->l2_entries != 0);
    if (l1_needed > q->l1_size)
        return vd_err(VD_ECORRUPT, "%s: qcow2 L1 table of %u entries is too small for %llu bytes",
                      img->filename, q->l1_size, (unsigned long long)img->size);
    if (backing_off) {
        if (backing_len > QCOW2_MAX_BACKING_NAME)
            return corrupt_header(img, "backing file name is longer than 1023 bytes");
        if (backing_off > cs || backing_len > cs - backing_off)
            return corrupt_header(img, "backing file name is outside the header cluster");
    }
    return 0;
}

int qcow2_read_header(vd_image *img, struct qcow2 *q)
{
    uint64_t file_size;
    int rc = vd_file_get_size(img->file, &file_size);
    if (rc < 0)
        return rc;
    if (file_size < QCOW2_V2_HEADER_LEN)
        return corrupt_header(img, "file is shorter than a qcow2 header");
    uint8_t fixed[QCOW2_HEADER_LEN_MAX] = { 0 };
    size_t fixed_len = file_size < sizeof fixed ? (size_t)file_size : sizeof fixed;
    if ((rc = vd_file_pread(img->file, fixed, fixed_len, 0)) < 0)
        return rc;
    if (vd_be32(fixed) != QCOW2_MAGIC)
        return vd_err(VD_EFORMAT, "%s: not a qcow2 image (bad magic)", img->filename);
    q->version = vd_be32(fixed + 4);
    if (q->version != 2 && q->version != 3)
        return vd_err(VD_EUNSUPPORTED, "%s: unsupported qcow2 version %u", img->filename, q->version);
    uint64_t backing_off = vd_be64(fixed + 8);
    uint32_t backing_len = vd_be32(fixed + 16);
    q->cluster_bits = vd_be32(fixed + 20);
    img->size = vd_be64(fixed + 24);
    q->crypt_method = vd_be32(fixed + 32);
    q->l1_size = vd_be32(fixed + 36);
    q->l1_offset = vd_be64(fixed + 40);
    q->rt_offset = vd_be64(fixed + 48);
    q->rt_clusters = vd_be32(fixed + 56);
    q->nb_snapshots = vd_be32(fixed + 60);
    q->snapshots_offset = vd_be64(fixed + 64);
    q->refcount_order = 4;
    q->header_length = QCOW2_V2_HEADER_LEN;
    if (q->version == 3) {
        q->incompat = vd_be64(fixed + 72);
        q->compat = vd_be64(fixed + 80);
        q->autoclear = vd_be64(fixed + 88);
        q->refcount_order = vd_be32(fixed + 96);
        q->header_length = vd_be32(fixed + 100);
        if (q->header_length > 104)
            q->compression_type = fixed[104];
    }
    if (img->size > INT64_MAX)
        return corrupt_header(img, "virtual size is larger than 2^63");

    /* extensions come before validation so that unknown features can be named */
    if (q->cluster_bits >= QCOW2_MIN_CLUSTER_BITS && q->cluster_bits <= QCOW2_MAX_CLUSTER_BITS &&
        q->header_length <= (1u << q->cluster_bits)) {
        uint64_t cs = 1ull << q->cluster_bits;
        uint64_t limit = cs < file_size ? cs : file_size;
        if (backing_off && backing_off < limit)
            limit = backing_off;
        uint8_t *cluster = vd_io_buf_alloc((size_t)cs);
        if (!cluster)
            return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
        rc = vd_file_pread(img->file, cluster, (size_t)limit, 0);
        if (rc == 0 && limit > q->header_length)
            rc = parse_extensions(img, q, cluster, q->header_length, limit);
        free(cluster);
        if (rc < 0)
            return rc;
    }
    if ((rc = validate(img, q, backing_off, backing_len, file_size)) < 0)
        return rc;
    if (backing_off) {
        if (!(q->backing_file = calloc(1, backing_len + 1)))
            return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
        if ((rc = vd_file_pread(img->file, q->backing_file, backing_len, backing_off)) < 0)
            return rc;
    }
    return 0;
}

static size_t put_ext(uint8_t *p, uint32_t type, const void *data, uint32_t len)
{
    vd_put_be32(p, type);
    vd_put_be32(p + 4, len);
    if (len)
        memcpy(p + 8, data, len);
    size_t padded = ((size_t)len + 7) & ~(size_t)7;
    memset(p + 8 + len, 0, padded - len);
    return 8 + padded;
}

int qcow2_build_header(const char *path, struct qcow2 *q, uint64_t size, uint8_t *buf)
{
    size_t cs = (size_t)q->cluster_size;
    memset(buf, 0, cs);
    vd_put_be32(buf, QCOW2_MAGIC);
    vd_put_be32(buf + 4, q->version);
    vd_put_be32(buf + 20, q->cluster_bits);
    vd_put_be64(buf + 24, size);
    vd_put_be32(buf + 32, q->crypt_method);
    vd_put_be32(buf + 36, q->l1_size);
    vd_put_be64(buf + 40, q->l1_offset);
    vd_put_be64(buf + 48, q->rt_offset);
    vd_put_be32(buf + 56, q->rt_clusters);
    vd_put_be32(buf + 60, q->nb_snapshots);
    vd_put_be64(buf + 64, q->snapshots_offset);
    size_t pos = QCOW2_V2_HEADER_LEN;
    if (q->version == 3) {
        vd_put_be64(buf + 72, q->incompat);
        vd_put_be64(buf + 80, q->compat);
        vd_put_be64(buf + 88, q->autoclear);
        vd_put_be32(buf + 96, q->refcount_order);
        if (q->header_length < QCOW2_HEADER_LEN_MAX)
            q->header_length = QCOW2_HEADER_LEN_MAX;
        vd_put_be32(buf + 100, q->header_length);
        buf[104] = q->compression_type;
        pos = q->header_length;
    }
    size_t backing_len = q->backing_file ? strlen(q->backing_file) : 0;
    size_t need = pos + 8 + backing_len;
    if (q->backing_format)
        need += 8 + ((strlen(q->backing_format) + 7) & ~(size_t)7);
    if (q->data_file_name)
        need += 8 + ((strlen(q->data_file_name) + 7) & ~(size_t)7);
    for (size_t i = 0; i < q->nexts; i++)
        need += 8 + ((q->exts[i].len + 7) & ~7u);
    /* the feature name table is optional: QEMU leaves it out when space is short */
    for (size_t i = 0; i < q->nexts && need > cs; i++) {
        if (q->exts[i].type != QCOW2_EXT_FEATURES)
            continue;
        need -= 8 + ((q->exts[i].len + 7) & ~7u);
        free(q->exts[i].data);
        q->exts[i--] = q->exts[--q->nexts];
    }
    if (need > cs)
        return vd_err(VD_ETOOBIG, "%s: the qcow2 header does not fit in one cluster", path);
    if (q->backing_format)
        pos += put_ext(buf + pos, QCOW2_EXT_BACKING_FMT, q->backing_format,
                       (uint32_t)strlen(q->backing_format));
    if (q->data_file_name)
        pos += put_ext(buf + pos, QCOW2_EXT_DATA_FILE, q->data_file_name,
                       (uint32_t)strlen(q->data_file_name));
    for (size_t i = 0; i < q->nexts; i++)
        pos += put_ext(buf + pos, q->exts[i].type, q->exts[i].data, q->exts[i].len);
    pos += put_ext(buf + pos, QCOW2_EXT_END, NULL, 0);
    if (backing_len) {
        memcpy(buf + pos, q->backing_file, backing_len);
        vd_put_be64(buf + 8, pos);
        vd_put_be32(buf + 16, (uint32_t)backing_len);
    }
    return 0;
}

int qcow2_write_header(vd_image *img, struct qcow2 *q)
{
    uint8_t *buf = vd_io_buf_alloc((size_t)q->cluster_size);
    if (!buf)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    int rc = qcow2_build_header(img->filename, q, img->size, buf);
    if (rc == 0)
        rc = qcow2_write_meta(img, QCOW2_META_HEADER, 0, buf, (size_t)q->cluster_size);
    free(buf);
    return rc;
}

static int write_features(vd_image *img, struct qcow2 *q, unsigned may_overlap)
{
    if (q->version < 3)
        return 0;
    uint8_t f[24];
    vd_put_be64(f, q->incompat);
    vd_put_be64(f + 8, q->compat);
    vd_put_be64(f + 16, q->autoclear);
    return qcow2_write_meta(img, may_overlap, 72, f, sizeof f);
}

int qcow2_write_features(vd_image *img, struct qcow2 *q)
{
    return write_features(img, q, QCOW2_META_HEADER);
}

/*
 * The corrupt bit goes into the header even when another structure claims
 * its cluster, as QEMU's does: such a layout is what it reports, and the bit
 * is what keeps the image from further use.
 */
int qcow2_write_corrupt_bit(vd_image *img, struct qcow2 *q)
{
    q->incompat |= QCOW2_INCOMPAT_CORRUPT;
    return write_features(img, q, QCOW2_META_ALL);
}

/* The feature name table that QEMU also writes, so older readers can name features. */
int qcow2_add_feature_table(struct qcow2 *q)
{
    static const struct { uint8_t type, bit; const char *name; } names[] = {
        { 0, 0, "dirty bit" }, { 0, 1, "corrupt bit" }, { 0, 2, "external data file" },
        { 0, 3, "compression type" }, { 0, 4, "extended L2 entries" },
        { 1, 0, "lazy refcounts" }, { 2, 0, "bitmaps" }, { 2, 1, "raw external data" },
    };
    size_t n = sizeof names / sizeof names[0];
    uint8_t *table = calloc(n, 48);
    struct qcow2_ext *exts = realloc(q->exts, (q->nexts + 1) * sizeof *q->exts);
    if (exts)
        q->exts = exts;
    if (!table || !exts) {
        free(table);
        return VD_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        table[i * 48] = names[i].type;
        table[i * 48 + 1] = names[i].bit;
        memcpy(table + i * 48 + 2, names[i].name, strlen(names[i].name));
    }
    q->exts[q->nexts++] = (struct qcow2_ext){ QCOW2_EXT_FEATURES, (uint32_t)(n * 48), table };
    return 0;
}

void qcow2_drop_extension(struct qcow2 *q, uint32_t type)
{
    for (size_t i = 0; i < q->nexts; i++) {
        if (q->exts[i].type != type)
            continue;
        free(q->exts[i].data);
        memmove(&q->exts[i], &q->exts[i + 1], (q->nexts - i - 1) * sizeof *q->exts);
        q->nexts--;
        i--;
    }
}

void qcow2_free_header(struct qcow2 *q)
{
    for (size_t i = 0; i < q->nexts; i++)
        free(q->exts[i].data);
    free(q->exts);
    free(q->backing_file);
    free(q->backing_format);
    free(q->data_file_name);
    q->exts = NULL;
    q->nexts = 0;
    q->backing_file = q->backing_format = q->data_file_name = NULL;
}
