/*
 * qcow (version 1): the header, probing, opening, creating, flushing and
 * the backend table. The header's limits and messages are QEMU's
 * (block/qcow.c); beyond QEMU, the L1 table, the backing file name and
 * every table and cluster must lie inside the file, apart from the header.
 *
 * Header (48 bytes, big-endian): magic, version, backing_file_offset (8),
 * backing_file_size (4), mtime (4), size (8), cluster_bits (1), l2_bits (1),
 * padding (2), crypt_method (4), l1_table_offset (8).
 */
#include "formats/qcow/qcow.h"
#include "core/endian.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>


static const struct vd_option_desc qcow_create_options[] = {
    { "backing_file", "File name of a base image", NULL },
    { "backing_fmt", "Format of the backing image (not recorded: qcow has no field for it)",
      NULL },
    { "encryption", "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)", "off" },
    { "encrypt.format", "Encrypt the image, format choices: 'aes'", NULL },
    { "encrypt.key-secret", "ID of the secret that provides the AES encryption key", NULL },
    { NULL, NULL, NULL },
};

static int q_probe(const uint8_t *head, size_t len, uint64_t file_size)
{
    (void)file_size;
    /* QEMU looks at a whole header; a later version is qcow2's */
    return len >= QCOW_HEADER_BYTES && vd_be32(head) == QCOW_MAGIC &&
           vd_be32(head + 4) == QCOW_VERSION ? 100 : 0;
}

struct header {
    uint64_t backing_offset;
    uint32_t backing_size;
    uint64_t size;
    uint8_t cluster_bits, l2_bits;
    uint32_t crypt_method;
    uint64_t l1_offset;
};

/* Check the header's fields as QEMU does, and derive the L1 size. */
static int check_header(const char *name, const uint8_t *h, struct header *hd, uint32_t *l1_size)
{
    if (vd_be32(h) != QCOW_MAGIC)
        return vd_err(VD_EFORMAT, "%s: Image not in qcow format", name);
    uint32_t version = vd_be32(h + 4);
    if (version != QCOW_VERSION)
        return vd_err(VD_EUNSUPPORTED, "%s: qcow (v1) does not support qcow version %u%s", name,
                      version, version == 2 || version == 3 ? " (try the qcow2 format)" : "");
    *hd = (struct header){
        .backing_offset = vd_be64(h + 8), .backing_size = vd_be32(h + 16),
        .size = vd_be64(h + 24), .cluster_bits = h[32], .l2_bits = h[33],
        .crypt_method = vd_be32(h + 36), .l1_offset = vd_be64(h + 40),
    };
    if (hd->size <= 1)
        return vd_err(VD_ECORRUPT, "%s: Image size is too small (must be at least 2 bytes)", name);
    if (hd->cluster_bits < 9 || hd->cluster_bits > 16)
        return vd_err(VD_ECORRUPT, "%s: Cluster size must be between 512 and 64k", name);
    /* l2_bits counts 8-byte entries */
    if (hd->l2_bits < 9 - 3 || hd->l2_bits > 16 - 3)
        return vd_err(VD_ECORRUPT, "%s: L2 table size must be between 512 and 64k", name);
    if (hd->crypt_method > QCOW_CRYPT_AES)
        return vd_err(VD_ECORRUPT, "%s: invalid encryption method in qcow header", name);
    uint32_t shift = hd->cluster_bits + hd->l2_bits;
    if (hd->size > UINT64_MAX - (UINT64_C(1) << shift))
        return vd_err(VD_ETOOBIG, "%s: Image too large", name);
    uint64_t n = (hd->size + (UINT64_C(1) << shift) - 1) >> shift;
    if (n > INT_MAX / sizeof(uint64_t))
        return vd_err(VD_ETOOBIG, "%s: Image too large", name);
    *l1_size = (uint32_t)n;
    return 0;
}

/* Read the L1 table, which must lie inside the file after the header. */
static int read_l1(vd_image *img, struct qcow *s, uint64_t file_size)
{
    uint64_t bytes = (uint64_t)s->l1_size * 8;
    if (s->l1_offset < QCOW_HEADER_BYTES)
        return vd_err(VD_ECORRUPT, "%s: qcow image is corrupt: the L1 table (offset %llu) "
                      "overlaps the header", img->filename, (unsigned long long)s->l1_offset);
    if (s->l1_offset > file_size || bytes > file_size - s->l1_offset)
        return vd_err(VD_ECORRUPT, "%s: qcow image is corrupt: the L1 table (%llu bytes at "
                      "offset %llu) lies past the end of the file", img->filename,
                      (unsigned long long)bytes, (unsigned long long)s->l1_offset);
    s->l1 = malloc(bytes ? (size_t)bytes : 1);
    s->l1_fresh = calloc(s->l1_size ? s->l1_size : 1, 1);
    if (!s->l1 || !s->l1_fresh)
        return vd_err(VD_ENOMEM, "%s: out of memory for the L1 table", img->filename);
    int rc = bytes ? vd_file_pread(img->file, s->l1, (size_t)bytes, s->l1_offset) : 0;
    for (uint32_t i = 0; rc == 0 && i < s->l1_size; i++)
        s->l1[i] = vd_be64(&s->l1[i]);
    return rc;
}

static int read_backing_name(vd_image *img, struct qcow *s, const struct header *hd,
                             uint64_t file_size)
{
    if (!hd->backing_offset)
        return 0;
    uint32_t len = hd->backing_size;
    if (len > QCOW_MAX_BACKING_NAME)
        return vd_err(VD_ECORRUPT, "%s: Backing file name too long", img->filename);
    if (hd->backing_offset > file_size || len > file_size - hd->backing_offset)
        return vd_err(VD_ECORRUPT, "%s: qcow image is corrupt: the backing file name (%u bytes "
                      "at offset %llu) lies past the end of the file", img->filename, len,
                      (unsigned long long)hd->backing_offset);
    char name[QCOW_MAX_BACKING_NAME + 1];
    int rc = len ? vd_file_pread(img->file, name, len, hd->backing_offset) : 0;
    if (rc < 0)
        return rc;
    name[len] = '\0';
    if (!name[0]) /* QEMU reads an empty name as none */
        return 0;
    if (!(s->backing_file = strdup(name)))
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    return 0;
}

/*
 * The L2 cache: vd_open_opts.cache_bytes of tables if asked (two at least),
 * else up to 4 MiB of them, 16 at least (QEMU keeps 16).
 */
static size_t cache_tables(const struct qcow *s, uint64_t requested)
{
    uint64_t n = (requested ? requested : (uint64_t)4 << 20) / qcow_l2_bytes(s);
    uint64_t least = requested ? 2 : 16;
    return (size_t)(n < least ? least : n);
}

/* Before L2 tables are written: the clusters they name are durable. */
static int before_l2_write(void *ctx)
{
    return vd_image_sync(ctx);
}

/* ---------------------------------------------------- legacy AES-CBC */

int qcow_need_key(vd_image *img)
{
    struct qcow *s = qcow_of(img);
    if (s->crypt_method != QCOW_CRYPT_AES || s->crypto)
        return 0;
    return vd_err(VD_EKEY, "%s: the image is encrypted and was opened without a passphrase "
                  "(encrypt.key-secret)", img->filename);
}

/* A sector's IV is its guest sector number, as in QEMU's qcow. */
static int encrypt_sectors(vd_image *img, uint64_t host, uint64_t guest, void *buf, size_t len)
{
    (void)host;
    int rc = qcow_need_key(img);
    return rc < 0 ? rc : vd_crypto_encrypt(qcow_of(img)->crypto, guest / VD_CRYPTO_SECTOR, buf, len);
}

static int decrypt_sectors(vd_image *img, uint64_t host, uint64_t guest, void *buf, size_t len)
{
    (void)host;
    int rc = qcow_need_key(img);
    return rc < 0 ? rc : vd_crypto_decrypt(qcow_of(img)->crypto, guest / VD_CRYPTO_SECTOR, buf, len);
}

/* Without the key, the data path fails as a whole, zero and unallocated clusters included. */
static int q_read(vd_image *img, uint64_t off, const struct vd_iov *v)
{
    int rc = qcow_need_key(img);
    return rc < 0 ? rc : vd_cow_read(img, off, v);
}

static int q_write(vd_image *img, uint64_t off, const struct vd_iov *v, uint32_t flags)
{
    int rc = qcow_need_key(img);
    return rc < 0 ? rc : vd_cow_write(img, off, v, flags);
}

static int q_write_zeroes(vd_image *img, uint64_t off, uint64_t len, uint32_t flags)
{
    int rc = qcow_need_key(img);
    return rc < 0 ? rc : vd_cow_write_zeroes(img, off, len, flags);
}

static int q_block_status(vd_image *img, uint64_t off, uint64_t len, vd_extent *ext)
{
    int rc = qcow_need_key(img);
    return rc < 0 ? rc : vd_cow_block_status(img, off, len, ext);
}

static void q_close(vd_image *img);

static int q_open(vd_image *img, const vd_open_opts *opts)
{
    struct qcow *s = calloc(1, sizeof *s);
    if (!s)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    img->priv = s;
    uint8_t h[QCOW_HEADER_BYTES];
    uint64_t file_size;
    struct header hd = { 0 };
    int rc = vd_file_get_size(img->file, &file_size);
    if (rc == 0 && file_size < QCOW_HEADER_BYTES)
        rc = vd_err(VD_EFORMAT, "%s: Image not in qcow format (shorter than the header)",
                    img->filename);
    if (rc == 0)
        rc = vd_file_pread(img->file, h, sizeof h, 0);
    if (rc == 0)
        rc = check_header(img->filename, h, &hd, &s->l1_size);
    if (rc == 0) {
        s->cluster_bits = hd.cluster_bits;
        s->l2_bits = hd.l2_bits;
        s->crypt_method = hd.crypt_method;
        s->l1_offset = hd.l1_offset;
        s->alloc_end = s->open_end = file_size;
        rc = read_l1(img, s, file_size);
    }
    if (rc == 0)
        rc = read_backing_name(img, s, &hd, file_size);
    if (rc == 0 && s->crypt_method == QCOW_CRYPT_AES) {
        char *secret;
        rc = vd_open_passphrase(img, opts, &secret);
        if (rc == 0 && secret)
            rc = vd_crypto_new_qcow_aes(&s->crypto, secret);
        vd_secret_free(secret);
    }
    if (rc == 0)
        rc = vd_cache_new(&s->l2s, img->file, (size_t)qcow_l2_bytes(s), cache_tables(s, opts->cache_bytes));
    if (rc == 0) {
        vd_cache_set_before_write(s->l2s, before_l2_write, img);
        img->size = hd.size & ~UINT64_C(511); /* QEMU counts whole sectors */
        img->cluster_size = UINT32_C(1) << s->cluster_bits;
        s->cow_ops = qcow_cow_ops;
        if (s->crypt_method == QCOW_CRYPT_AES) {
            s->cow_ops.encrypt = encrypt_sectors;
            s->cow_ops.decrypt = decrypt_sectors;
        }
        img->cow = &s->cow_ops;
    } else {
        q_close(img);
    }
    return rc;
}

/* Write the L1 table back (after its new L2 tables reached the disk). */
static int write_l1(vd_image *img, struct qcow *s)
{
    size_t bytes = (size_t)s->l1_size * 8;
    uint64_t *disk = malloc(bytes ? bytes : 1);
    if (!disk)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    for (uint32_t i = 0; i < s->l1_size; i++)
        vd_put_be64(&disk[i], s->l1[i]);
    int rc = vd_file_pwrite(img->file, disk, bytes, s->l1_offset);
    free(disk);
    vd_image_mark_unsynced(img);
    return rc;
}

static int q_flush(vd_image *img)
{
    struct qcow *s = qcow_of(img);
    int rc = 0;
    if (vd_cache_has_dirty(s->l2s)) {
        rc = vd_cache_writeback(s->l2s);
        vd_image_mark_unsynced(img);
    }
    if (rc == 0 && s->l1_dirty) {
        rc = vd_image_sync(img); /* new L2 tables before the L1 entries naming them */
        if (rc == 0)
            rc = write_l1(img, s);
        if (rc == 0)
            s->l1_dirty = false;
    }
    if (rc == 0)
        rc = vd_image_sync(img);
    return rc < 0 ? vd_image_poison(img, rc) : 0;
}

static void q_close(vd_image *img)
{
    struct qcow *s = qcow_of(img);
    if (!s)
        return;
    if (!img->read_only && !img->poisoned && img->cow)
        q_flush(img);
    vd_cache_free(s->l2s);
    free(s->l1);
    free(s->l1_fresh);
    free(s->backing_file);
    vd_crypto_free(s->crypto);
    free(s);
    img->priv = NULL;
}

/*
 * A new image as QEMU makes one: the header, the backing file name, the
 * zeroed L1 table from the next 8-byte boundary on (whole sectors of it).
 * Small clusters under a backing file, so that a write copies little.
 */
static int q_create(vd_file *file, uint64_t size, const struct vd_kv *opts)
{
    bool encrypt = false;
    int rc = vd_kv_get_bool(opts, "encryption", false, &encrypt);
    if (rc < 0)
        return rc;
    const char *format = vd_kv_get(opts, "encrypt.format");
    if (format && strcmp(format, "aes") != 0)
        return vd_err(VD_EINVAL, "%s: Unsupported encryption format '%s'", file->path, format);
    encrypt = encrypt || format;
    const char *secret_id = vd_kv_get(opts, "encrypt.key-secret");
    if (encrypt && !secret_id)
        return vd_err(VD_EINVAL, "%s: Parameter 'encrypt.key-secret' is required for cipher",
                      file->path);
    if (!encrypt && secret_id)
        return vd_err(VD_EINVAL, "%s: Parameter 'encrypt.key-secret' is unexpected", file->path);
    if (secret_id) { /* the passphrase is needed only to write data, but must exist now */
        char *passphrase = NULL;
        if ((rc = vd_secret_lookup(secret_id, &passphrase)) < 0)
            return vd_err(rc, "%s: No secret with id '%s'", file->path, secret_id);
        vd_secret_free(passphrase);
    }
    if (!size)
        return vd_err(VD_EINVAL, "%s: Image size is too small, cannot be zero length", file->path);
    const char *backing = vd_kv_get(opts, "backing_file");
    size_t name_len = backing ? strlen(backing) : 0;
    if (name_len > QCOW_MAX_BACKING_NAME)
        return vd_err(VD_EINVAL, "%s: Backing file name too long", file->path);
    uint8_t cluster_bits = backing ? 9 : 12, l2_bits = backing ? 12 : 9;
    uint32_t shift = cluster_bits + l2_bits;
    uint64_t l1_size = (size + (UINT64_C(1) << shift) - 1) >> shift;
    if (l1_size > INT_MAX / sizeof(uint64_t)) /* QEMU would make it, then refuse to open it */
        return vd_err(VD_ETOOBIG, "%s: Image too large for qcow (an L1 table of more than 2 GiB)",
                      file->path);
    uint64_t header_size = (QCOW_HEADER_BYTES + name_len + 7) & ~UINT64_C(7);
    uint8_t *h = calloc(1, (size_t)header_size);
    if (!h)
        return vd_err(VD_ENOMEM, "%s: out of memory", file->path);
    vd_put_be32(h, QCOW_MAGIC);
    vd_put_be32(h + 4, QCOW_VERSION);
    if (backing) {
        vd_put_be64(h + 8, QCOW_HEADER_BYTES);
        vd_put_be32(h + 16, (uint32_t)name_len);
        memcpy(h + QCOW_HEADER_BYTES, backing, name_len);
    }
    vd_put_be64(h + 24, size);
    h[32] = cluster_bits;
    h[33] = l2_bits;
    vd_put_be32(h + 36, encrypt ? QCOW_CRYPT_AES : QCOW_CRYPT_NONE);
    vd_put_be64(h + 40, header_size);
    rc = vd_file_truncate(file, 0);
    if (rc == 0)
        rc = vd_file_pwrite(file, h, (size_t)header_size, 0);
    free(h);
    uint64_t l1_bytes = (l1_size * 8 + 511) & ~UINT64_C(511);
    if (rc == 0)
        rc = vd_file_write_zeroes(file, header_size, l1_bytes, false);
    return rc;
}

/* QEMU's qcow driver cannot resize; refuse with its words. */
static int q_resize(vd_image *img, uint64_t size, uint32_t flags)
{
    (void)size;
    (void)flags;
    return vd_err(VD_EUNSUPPORTED, "%s: Image format driver does not support resize",
                  img->filename);
}

static void q_get_info(vd_image *img, vd_info *info)
{
    struct qcow *s = qcow_of(img);
    info->cluster_size = img->cluster_size;
    info->backing_file = s->backing_file;
    info->backing_format = NULL; /* qcow has no field for it: the chain probes */
    info->encrypted = s->crypt_method != 0;
}

const struct vd_backend vd_backend_qcow = {
    .name = "qcow",
    .grows_at_end = true,
    .create_options = qcow_create_options,
    .probe = q_probe,
    .create = q_create,
    .open = q_open,
    .close = q_close,
    .read = q_read,
    .write = q_write,
    .write_zeroes = q_write_zeroes,
    .flush = q_flush,
    .resize = q_resize,
    .block_status = q_block_status,
    .get_info = q_get_info,
};
