/*
 * New qcow2 images. The layout is computed up front and written in one pass:
 *   [header][refcount table][refcount blocks][L1 table][LUKS header][L2 tables][data]
 * where the LUKS header exists only for encrypt.format=luks (where QEMU puts
 * it), L2 tables and data clusters only with preallocation.
 */
#include "formats/qcow2/qcow2.h"

#include <stdlib.h>
#include <string.h>

const struct vd_option_desc qcow2_create_options[] = {
    { "compat", "Compatibility level (v2 = 0.10, v3 = 1.1)", "1.1" },
    { "cluster_size", "qcow2 cluster size (512 B to 2 MiB, a power of two)", "65536" },
    { "refcount_bits", "Width of a reference count entry in bits (1 to 64, a power of two)", "16" },
    { "lazy_refcounts", "Postpone refcount updates (v3 only)", "off" },
    { "preallocation", "Preallocation mode (off, metadata, falloc, full)", "off" },
    { "extended_l2", "Extended L2 tables with subcluster allocation (v3 only)", "off" },
    { "compression_type", "Compression method for compressed clusters (zlib, zstd; v3 only)", "zlib" },
    { "data_file", "File name of an external data file", NULL },
    { "data_file_raw", "The external data file must stay valid as a raw image", "off" },
    { "backing_file", "File name of a base image", NULL },
    { "backing_fmt", "Image format of the base image", NULL },
    { "encrypt.format", "Encrypt the image, format choices: 'aes', 'luks'", NULL },
    { "encrypt.key-secret", "ID of secret providing qcow AES key or LUKS passphrase", NULL },
    { "encrypt.cipher-alg", "Name of encryption cipher algorithm (luks)", "aes-256" },
    { "encrypt.cipher-mode", "Name of encryption cipher mode (luks)", "xts" },
    { "encrypt.ivgen-alg", "Name of IV generator algorithm (luks)", "plain64" },
    { "encrypt.ivgen-hash-alg", "Name of IV generator hash algorithm (luks)", "sha256" },
    { "encrypt.hash-alg", "Name of encryption hash algorithm (luks)", "sha256" },
    { "encrypt.iter-time", "Time to spend in PBKDF in milliseconds (luks)", "2000" },
    { NULL, NULL, NULL },
};


struct layout {
    bool external_data;      /* data clusters live in the data file, at their guest offset */
    uint64_t rt_start, rt_clusters;
    uint64_t rb_start, nblocks;
    uint64_t l1_start, l1_clusters, l1_size;
    uint64_t crypt_start, crypt_clusters;
    uint64_t l2_start, nl2;
    uint64_t data_start, ndata;
    uint64_t total;
};

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

static void plan(const struct qcow2 *q, uint64_t size, bool prealloc, uint64_t crypt_bytes,
                 struct layout *l)
{
    uint64_t cs = q->cluster_size, clusters = div_up(size, cs);
    *l = (struct layout){ .rt_clusters = 1, .nblocks = 1, .external_data = qcow2_has_data_file(q),
                          .crypt_clusters = div_up(crypt_bytes, cs) };
    l->l1_size = div_up(clusters, q->l2_entries);
    l->l1_clusters = div_up(l->l1_size * 8, cs); /* none for an empty image, as QEMU */
    l->nl2 = prealloc ? l->l1_size : 0;
    l->ndata = prealloc ? clusters : 0;
    uint64_t data_here = l->external_data ? 0 : l->ndata;
    for (;;) { /* refcount blocks and table must also cover themselves */
        l->total = 1 + l->rt_clusters + l->nblocks + l->l1_clusters + l->crypt_clusters + l->nl2 +
                   data_here;
        uint64_t nblocks = div_up(l->total, q->rb_entries);
        uint64_t rt_clusters = div_up(nblocks * 8, cs);
        if (nblocks == l->nblocks && rt_clusters == l->rt_clusters)
            break;
        l->nblocks = nblocks;
        l->rt_clusters = rt_clusters;
    }
    l->rt_start = 1;
    l->rb_start = l->rt_start + l->rt_clusters;
    l->l1_start = l->rb_start + l->nblocks;
    l->crypt_start = l->l1_start + l->l1_clusters;
    l->l2_start = l->crypt_start + l->crypt_clusters;
    l->data_start = l->l2_start + l->nl2;
}

int qcow2_parse_create_options(const struct vd_kv *opts, uint64_t size, struct qcow2 *q,
                                size_t *prealloc)
{
    static const char *const compat_names[] = { "0.10", "v2", "1.1", "v3", NULL };
    static const char *const prealloc_names[] = { "off", "metadata", "falloc", "full", NULL };
    static const char *const compression_names[] = { "zlib", "zstd", NULL };
    size_t compat, compression;
    uint64_t cluster_size, refcount_bits;
    bool lazy, extl2;
    int rc;
    if ((rc = vd_kv_get_choice(opts, "compat", compat_names, 2, &compat)) < 0 ||
        (rc = vd_kv_get_size(opts, "cluster_size", 65536, &cluster_size)) < 0 ||
        (rc = vd_kv_get_size(opts, "refcount_bits", 16, &refcount_bits)) < 0 ||
        (rc = vd_kv_get_bool(opts, "lazy_refcounts", false, &lazy)) < 0 ||
        (rc = vd_kv_get_choice(opts, "preallocation", prealloc_names, PREALLOC_OFF, prealloc)) < 0 ||
        (rc = vd_kv_get_bool(opts, "extended_l2", false, &extl2)) < 0 ||
        (rc = vd_kv_get_choice(opts, "compression_type", compression_names, 0, &compression)) < 0)
        return rc;
    q->version = compat >= 2 ? 3 : 2;
    if (cluster_size < 512 || cluster_size > (2u << 20) || (cluster_size & (cluster_size - 1)))
        return vd_err(VD_EINVAL, "Cluster size must be a power of two between 512 and 2048k");
    if (refcount_bits < 1 || refcount_bits > 64 || (refcount_bits & (refcount_bits - 1)))
        return vd_err(VD_EINVAL, "Refcount width must be a power of two and may not exceed 64 bits");
    if (q->version == 2 && refcount_bits != 16)
        return vd_err(VD_EINVAL, "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)");
    if (q->version == 2 && lazy)
        return vd_err(VD_EINVAL, "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
    if (q->version == 2 && extl2)
        return vd_err(VD_EINVAL, "Extended L2 entries are only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
    if (extl2 && cluster_size < 16384)
        return vd_err(VD_EINVAL, "Extended L2 entries are only supported with cluster sizes of at least 16 KiB");
    if (q->version == 2 && compression)
        return vd_err(VD_EINVAL, "Compression type zstd requires compatibility level 1.1 or above (use compat=1.1 or greater)");
#ifndef VD_HAVE_ZSTD
    if (compression)
        return vd_err(VD_EUNSUPPORTED, "This build of libvdisk has no zstd support");
#endif
    q->cluster_bits = (uint32_t)__builtin_ctzll(cluster_size);
    q->refcount_order = (uint32_t)__builtin_ctzll(refcount_bits);
    q->compat = lazy ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0;
    q->incompat = (extl2 ? QCOW2_INCOMPAT_EXTL2 : 0) |
                  (compression ? QCOW2_INCOMPAT_COMPRESSION : 0);
    q->compression_type = (uint8_t)compression;
    const char *data_file = vd_kv_get(opts, "data_file");
    bool data_raw;
    if ((rc = vd_kv_get_bool(opts, "data_file_raw", false, &data_raw)) < 0)
        return rc;
    if (data_raw && !data_file)
        return vd_err(VD_EINVAL, "data_file_raw needs a data_file");
    if (data_file && q->version == 2)
        return vd_err(VD_EINVAL, "External data files only supported with compatibility level 1.1 and above");
    if (data_file && vd_kv_get(opts, "backing_file") && data_raw)
        return vd_err(VD_EINVAL, "Backing file and raw external data file cannot be used together");
    if (data_file && strlen(data_file) > QCOW2_MAX_BACKING_NAME)
        return vd_err(VD_EINVAL, "data file name is longer than %d bytes", QCOW2_MAX_BACKING_NAME);
    if (data_file && !(q->data_file_name = strdup(data_file)))
        return VD_ENOMEM;
    if (data_file)
        q->incompat |= QCOW2_INCOMPAT_DATA_FILE;
    if (data_raw) {
        q->autoclear |= QCOW2_AUTOCLEAR_DATA_RAW;
        if (*prealloc == PREALLOC_OFF)
            *prealloc = PREALLOC_METADATA; /* a raw data file maps every cluster, as in QEMU */
    }
    q->header_length = q->version == 3 ? QCOW2_HEADER_LEN_MAX : QCOW2_V2_HEADER_LEN;
    qcow2_derive(q);
    uint64_t clusters = div_up(size, q->cluster_size);
    if (div_up(clusters, q->l2_entries) * 8 > QCOW2_MAX_L1_BYTES)
        return vd_err(VD_ETOOBIG, "The image size is too large for file format 'qcow2' (try using a larger cluster size)");
    return 0;
}

/*
 * Write count tables of one cluster each, built by fill(index, table). Only
 * the first used bytes of the area can be non-zero: the rest stays a hole
 * (the file is extended over it), as QEMU leaves it.
 */
static int write_tables(vd_file *file, const struct qcow2 *q, uint64_t first_cluster, uint64_t count,
                        uint64_t used,
                        void (*fill)(const struct qcow2 *, const struct layout *, uint64_t, uint8_t *),
                        const struct layout *l)
{
    uint8_t *buf = malloc((size_t)q->cluster_size);
    if (!buf)
        return vd_err(VD_ENOMEM, "%s: out of memory", file->path);
    int rc = 0;
    for (uint64_t i = 0; i < count && rc == 0 && i * q->cluster_size < used; i++) {
        memset(buf, 0, (size_t)q->cluster_size);
        fill(q, l, i, buf);
        uint64_t left = used - i * q->cluster_size;
        size_t n = left < q->cluster_size ? (size_t)((left + 511) & ~511ull) : (size_t)q->cluster_size;
        rc = vd_file_pwrite(file, buf, n, (first_cluster + i) * q->cluster_size);
    }
    free(buf);
    return rc;
}

static void fill_refcount_block(const struct qcow2 *q, const struct layout *l, uint64_t i, uint8_t *t)
{
    for (uint64_t c = i * q->rb_entries; c < l->total && c < (i + 1) * q->rb_entries; c++)
        qcow2_refblock_set(t, c % q->rb_entries, q->refcount_order, 1);
}

static void fill_refcount_table(const struct qcow2 *q, const struct layout *l, uint64_t i, uint8_t *t)
{
    uint64_t per = q->cluster_size / 8;
    for (uint64_t b = i * per; b < l->nblocks && b < (i + 1) * per; b++)
        vd_put_be64(t + (b % per) * 8, (l->rb_start + b) * q->cluster_size);
}

static void fill_l1(const struct qcow2 *q, const struct layout *l, uint64_t i, uint8_t *t)
{
    uint64_t per = q->cluster_size / 8;
    for (uint64_t e = i * per; e < l->nl2 && e < (i + 1) * per; e++)
        vd_put_be64(t + (e % per) * 8, ((l->l2_start + e) * q->cluster_size) | QCOW2_OFLAG_COPIED);
}

static void fill_l2(const struct qcow2 *q, const struct layout *l, uint64_t i, uint8_t *t)
{
    uint64_t first_data = l->external_data ? 0 : l->data_start;
    for (uint64_t e = 0; e < q->l2_entries && i * q->l2_entries + e < l->ndata; e++) {
        uint8_t *p = t + e * q->l2_entry_bytes;
        vd_put_be64(p, ((first_data + i * q->l2_entries + e) * q->cluster_size) | QCOW2_OFLAG_COPIED);
        if (q->l2_entry_bytes == 16)
            vd_put_be64(p + 8, 0xffffffffull);
    }
}

static int write_header(vd_file *file, struct qcow2 *q, uint64_t size)
{
    uint8_t *buf = malloc((size_t)q->cluster_size);
    if (!buf)
        return vd_err(VD_ENOMEM, "%s: out of memory", file->path);
    int rc = qcow2_build_header(file->path, q, size, buf);
    if (rc == 0)
        rc = vd_file_pwrite(file, buf, (size_t)q->cluster_size, 0);
    free(buf);
    return rc;
}

/*
 * The external data file, next to the image, sized to the disk (as QEMU
 * makes it); claimed as the image was (locked before it is emptied), and
 * never the image file itself, whose metadata guest writes would overwrite.
 */
static int create_data_file(vd_file *image, const char *name, uint64_t size, vd_file **out)
{
    char *path = vd_chain_resolve(image->path, name);
    if (!path)
        return vd_err(VD_ENOMEM, "%s: out of memory", image->path);
    int rc = vd_file_open(out, path, VD_FILE_RDWR | VD_FILE_CREATE);
    if (rc < 0) {
        free(path);
        return rc;
    }
    if (vd_file_same(*out, image))
        rc = vd_err(VD_EINVAL, "%s: the external data file '%s' is the image file itself",
                    image->path, path);
    if (rc == 0)
        rc = vd_claim_for_create(*out);
    if (rc == 0)
        rc = vd_file_truncate(*out, size);
    if (rc < 0) {
        vd_file_close(*out);
        *out = NULL;
    }
    free(path);
    return rc;
}

int qcow2_create(vd_file *file, uint64_t size, const struct vd_kv *opts)
{
    struct qcow2 q = { 0 };
    size_t prealloc;
    struct qcow2_new_crypt crypt = { 0 };
    int rc = qcow2_parse_create_options(opts, size, &q, &prealloc);
    if (rc == 0)
        rc = qcow2_crypt_prepare(opts, &q, &crypt);
    struct layout l;
    plan(&q, size, prealloc != PREALLOC_OFF, crypt.length, &l);
    const uint64_t cs = q.cluster_size;
    if (rc == 0 && crypt.header && qcow2_crypt_add_extension(&q, &crypt, l.crypt_start * cs) < 0)
        rc = vd_err(VD_ENOMEM, "%s: out of memory", file->path);
    if (rc < 0) {
        qcow2_crypt_discard(&crypt);
        qcow2_free_header(&q);
        return rc;
    }
    q.rt_offset = l.rt_start * cs;
    q.rt_clusters = (uint32_t)l.rt_clusters;
    q.l1_offset = l.l1_size ? l.l1_start * cs : 0;
    q.l1_size = (uint32_t)l.l1_size;
    if (q.version == 3 && qcow2_add_feature_table(&q) < 0)
        return vd_err(VD_ENOMEM, "%s: out of memory", file->path);
    const char *backing = vd_kv_get(opts, "backing_file"), *backing_fmt = vd_kv_get(opts, "backing_fmt");
    if (backing && strlen(backing) > QCOW2_MAX_BACKING_NAME) {
        qcow2_free_header(&q);
        return vd_err(VD_EINVAL, "%s: backing file name is longer than %d bytes", file->path,
                      QCOW2_MAX_BACKING_NAME);
    }
    if ((backing && !(q.backing_file = strdup(backing))) ||
        (backing_fmt && !(q.backing_format = strdup(backing_fmt)))) {
        qcow2_free_header(&q);
        return vd_err(VD_ENOMEM, "%s: out of memory", file->path);
    }

    if ((rc = write_header(file, &q, size)) == 0 &&
        (rc = write_tables(file, &q, l.rt_start, l.rt_clusters, l.nblocks * 8, fill_refcount_table, &l)) == 0 &&
        (rc = write_tables(file, &q, l.rb_start, l.nblocks, l.nblocks * cs, fill_refcount_block, &l)) == 0 &&
        (rc = write_tables(file, &q, l.l1_start, l.l1_clusters, l.nl2 * 8, fill_l1, &l)) == 0 &&
        (rc = write_tables(file, &q, l.l2_start, l.nl2, l.nl2 * cs, fill_l2, &l)) == 0 &&
        (!crypt.header || (rc = vd_file_pwrite(file, crypt.header, crypt.bytes, l.crypt_start * cs)) == 0))
        rc = vd_file_truncate(file, l.total * cs);
    qcow2_crypt_discard(&crypt);
    vd_file *data = file;
    uint64_t data_start = l.data_start * cs;
    if (rc == 0 && l.external_data) {
        rc = create_data_file(file, q.data_file_name, size, &data);
        data_start = 0;
    }
    if (rc == 0 && l.ndata && prealloc == PREALLOC_FALLOC)
        rc = vd_file_allocate(data, data_start, l.ndata * cs);
    if (rc == 0 && l.ndata && prealloc == PREALLOC_FULL)
        rc = vd_file_write_zeroes(data, data_start, l.ndata * cs, false);
    if (data != file) {
        if (rc == 0)
            rc = vd_file_sync(data);
        vd_file_close(data);
    }
    qcow2_free_header(&q);
    return rc;
}
