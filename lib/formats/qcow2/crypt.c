/*
 * Encrypted qcow2 images, as QEMU writes them:
 *   crypt_method 1  legacy AES-128-CBC; a sector's IV is its guest sector number.
 *   crypt_method 2  LUKS: a LUKS1 header (and its key material) in clusters that
 *                   the full-disk-encryption header extension names (offset and
 *                   length); a sector's IV is its host offset / 512 (QEMU's
 *                   crypt_physical_offset).
 * The engine does the data path through the encrypt/decrypt ops this file
 * adds to the image's copy of qcow2_cow_ops. Without a passphrase an image
 * opens for its header and properties only; its data path fails with VD_EKEY.
 */
#include "formats/qcow2/qcow2.h"
#include "formats/luks/luks.h"

#include <stdlib.h>
#include <string.h>

#define QCOW2_CRYPT_AES  1u
#define QCOW2_CRYPT_LUKS 2u

/* ------------------------------------------------------------- data path */

int qcow2_crypt_need_key(vd_image *img)
{
    struct qcow2 *q = qcow2_of(img);
    if (!q->crypt_method || q->crypto)
        return 0;
    return vd_err(VD_EKEY, "%s: the image is encrypted and was opened without a passphrase "
                  "(encrypt.key-secret)", img->filename);
}

static uint64_t iv_sector(const struct qcow2 *q, uint64_t host, uint64_t guest)
{
    return (q->crypt_method == QCOW2_CRYPT_LUKS ? host : guest) / VD_CRYPTO_SECTOR;
}

static int q_encrypt(vd_image *img, uint64_t host, uint64_t guest, void *buf, size_t len)
{
    struct qcow2 *q = qcow2_of(img);
    int rc = qcow2_crypt_need_key(img);
    return rc < 0 ? rc : vd_crypto_encrypt(q->crypto, iv_sector(q, host, guest), buf, len);
}

static int q_decrypt(vd_image *img, uint64_t host, uint64_t guest, void *buf, size_t len)
{
    struct qcow2 *q = qcow2_of(img);
    int rc = qcow2_crypt_need_key(img);
    return rc < 0 ? rc : vd_crypto_decrypt(q->crypto, iv_sector(q, host, guest), buf, len);
}

/* --------------------------------------------------------------- opening */

/* The LUKS header lives at crypt_offset in the image file, crypt_length bytes long. */
struct header_place {
    vd_file *file;
    uint64_t offset, length;
    bool building; /* create: the header is built in mem, length bytes (grown as written) */
    uint8_t *mem;
    vd_image *img; /* an open image: writes (amend) go through the metadata writer */
};

static int place_read(void *ctx, uint64_t off, void *buf, size_t len)
{
    struct header_place *p = ctx;
    if (off > p->length || len > p->length - off)
        return vd_err(VD_ECORRUPT, "%s: LUKS key material lies past the encryption header's "
                      "%llu bytes", p->file ? p->file->path : "qcow2", (unsigned long long)p->length);
    if (p->building) {
        memcpy(buf, p->mem + off, len);
        return 0;
    }
    return vd_file_pread(p->file, buf, len, p->offset + off);
}

static int place_write(void *ctx, uint64_t off, const void *buf, size_t len)
{
    struct header_place *p = ctx;
    if (!p->building) {
        if (off > p->length || len > p->length - off)
            return vd_err(VD_ECORRUPT, "%s: a LUKS header write past the encryption header's "
                          "%llu bytes", p->file->path, (unsigned long long)p->length);
        return qcow2_write_meta(p->img, QCOW2_META_CRYPTO_HEADER, p->offset + off, buf, len);
    }
    if (off + len > p->length) {
        uint8_t *grown = realloc(p->mem, off + len);
        if (!grown)
            return vd_err(VD_ENOMEM, "qcow2: out of memory");
        memset(grown + p->length, 0, off + len - p->length);
        p->mem = grown;
        p->length = off + len;
    }
    memcpy(p->mem + off, buf, len);
    return 0;
}

static int corrupt(vd_image *img, const char *what)
{
    return vd_err(VD_ECORRUPT, "%s: corrupt qcow2 image: %s", img->filename, what);
}

/* The full disk encryption header extension, checked as QEMU checks it. */
static int find_header(vd_image *img, struct qcow2 *q)
{
    const struct qcow2_ext *ext = NULL;
    for (size_t i = 0; i < q->nexts; i++)
        if (q->exts[i].type == QCOW2_EXT_CRYPTO)
            ext = &q->exts[i];
    if (ext && q->crypt_method != QCOW2_CRYPT_LUKS)
        return corrupt(img, "CRYPTO header extension only expected with LUKS encryption method");
    if (q->crypt_method != QCOW2_CRYPT_LUKS)
        return 0;
    if (!ext)
        return corrupt(img, "LUKS encryption needs the full disk encryption header extension");
    if (ext->len != 16)
        return corrupt(img, "the CRYPTO header extension is not 16 bytes long");
    q->crypt_offset = vd_be64(ext->data);
    q->crypt_length = vd_be64(ext->data + 8);
    uint64_t end;
    if ((q->crypt_offset & (q->cluster_size - 1)) || !q->crypt_offset ||
        vd_add_overflows(q->crypt_offset, q->crypt_length, &end))
        return corrupt(img, "the encryption header is not at a cluster inside the file");
    return 0;
}

static int open_luks(vd_image *img, struct qcow2 *q, const char *secret)
{
    uint8_t buf[VD_LUKS_HEADER_BYTES];
    struct header_place place = { img->file, q->crypt_offset, q->crypt_length, false, NULL, img };
    struct vd_luks_io io = { place_read, place_write, &place, img->filename };
    int rc = place_read(&place, 0, buf, sizeof buf);
    if (rc == 0)
        rc = vd_luks_parse(&q->luks, buf, sizeof buf, img->filename);
    if (rc == 0 && secret)
        rc = vd_luks_unlock(&q->luks, &io, secret, &q->crypto, NULL);
    return rc;
}

int qcow2_crypt_open(vd_image *img, struct qcow2 *q, const vd_open_opts *opts)
{
    if (q->crypt_method > QCOW2_CRYPT_LUKS)
        return vd_err(VD_EUNSUPPORTED, "%s: unsupported qcow2 encryption method %u",
                      img->filename, q->crypt_method);
    int rc = find_header(img, q);
    if (rc < 0 || !q->crypt_method)
        return rc;
    char *secret;
    if ((rc = vd_open_passphrase(img, opts, &secret)) < 0)
        return rc;
    if (q->crypt_method == QCOW2_CRYPT_LUKS)
        rc = open_luks(img, q, secret);
    else if (secret)
        rc = vd_crypto_new_qcow_aes(&q->crypto, secret);
    vd_secret_free(secret);
    q->cow_ops = qcow2_cow_ops;
    q->cow_ops.encrypt = q_encrypt;
    q->cow_ops.decrypt = q_decrypt;
    return rc;
}

void qcow2_crypt_close(struct qcow2 *q)
{
    vd_crypto_free(q->crypto);
    q->crypto = NULL;
}

int qcow2_crypt_describe(vd_image *img, const struct qcow2 *q)
{
    if (q->crypt_method == QCOW2_CRYPT_LUKS)
        return vd_luks_describe(img, &q->luks, "encrypt.", "luks");
    if (q->crypt_method == QCOW2_CRYPT_AES)
        return vd_image_set_prop(img, "encrypt.format", VD_PROP_STRING, "aes");
    return 0;
}

/* ----------------------------------------------------------------- amend */

int qcow2_crypt_amend(vd_image *img, struct qcow2 *q, const struct vd_kv *opts)
{
    bool asked = false;
    for (size_t i = 0; i < opts->count; i++)
        asked |= strncmp(opts->pairs[i].key, "encrypt.", 8) == 0;
    if (!asked)
        return 0;
    if (!q->crypt_method)
        return vd_err(VD_EINVAL, "Can't amend encryption options - encryption not present");
    if (q->crypt_method != QCOW2_CRYPT_LUKS)
        return vd_err(VD_EINVAL, "Only LUKS encryption options can be amended");
    int rc = qcow2_crypt_need_key(img);
    struct header_place place = { img->file, q->crypt_offset, q->crypt_length, false, NULL, img };
    struct vd_luks_io io = { place_read, place_write, &place, img->filename };
    const struct vd_luks_keys keys = { &q->luks, &io, q->crypto, "encrypt." };
    if (rc == 0)
        rc = vd_luks_amend_slots(img, &keys, opts);
    return rc == 0 ? vd_image_sync_now(img) : rc;
}

/* -------------------------------------------------------------- creation */

/* The encrypt.* options legacy AES takes; LUKS takes all of them. */
static const char *const luks_only[] = {
    "encrypt.cipher-alg", "encrypt.cipher-mode", "encrypt.ivgen-alg",
    "encrypt.ivgen-hash-alg", "encrypt.hash-alg", "encrypt.iter-time", NULL,
};

int qcow2_crypt_prepare(const struct vd_kv *opts, struct qcow2 *q, struct qcow2_new_crypt *out)
{
    /* indexed by crypt_method */
    static const char *const formats[] = { "", "aes", "luks", NULL };
    size_t format = 0;
    *out = (struct qcow2_new_crypt){ 0 };
    int rc = 0;
    if (vd_kv_get(opts, "encrypt.format"))
        rc = vd_kv_get_choice(opts, "encrypt.format", formats, 0, &format);
    if (rc == 0 && format == 0) {
        for (size_t i = 0; rc == 0 && luks_only[i]; i++)
            if (vd_kv_get(opts, luks_only[i]))
                rc = vd_err(VD_EINVAL, "Parameter '%s' is unexpected", luks_only[i]);
        if (rc == 0 && vd_kv_get(opts, "encrypt.key-secret"))
            rc = vd_err(VD_EINVAL, "Parameter 'encrypt.key-secret' is unexpected");
    }
    if (rc < 0 || format == 0)
        return rc;
    const char *id = vd_kv_get(opts, "encrypt.key-secret");
    if (!id)
        return vd_err(VD_EINVAL, "Parameter 'encrypt.key-secret' is required for cipher");
    for (size_t i = 0; format == QCOW2_CRYPT_AES && luks_only[i]; i++)
        if (vd_kv_get(opts, luks_only[i]))
            return vd_err(VD_EINVAL, "Parameter '%s' is unexpected", luks_only[i]);
    char *passphrase = NULL;
    struct vd_luks_params params;
    rc = format == QCOW2_CRYPT_LUKS ? vd_luks_params_from_kv(&params, opts, "encrypt.") : 0;
    if (rc == 0)
        rc = vd_secret_lookup(id, &passphrase);
    q->crypt_method = (uint32_t)format;
    if (rc == 0 && format == QCOW2_CRYPT_LUKS) {
        struct header_place place = { NULL, 0, 0, true, NULL, NULL };
        struct vd_luks_io io = { place_read, place_write, &place, "qcow2" };
        struct vd_luks_header h;
        rc = vd_luks_create(&params, passphrase, &io, &h, NULL);
        out->header = place.mem;
        out->bytes = (size_t)place.length;
        /* the header and its key material end where LUKS's payload would start */
        out->length = (uint64_t)h.payload_offset * VD_CRYPTO_SECTOR;
        if (rc == 0 && out->length < out->bytes)
            rc = vd_err(VD_ECORRUPT, "qcow2: the LUKS header outgrew its payload offset");
    }
    vd_secret_free(passphrase);
    if (rc < 0)
        qcow2_crypt_discard(out);
    return rc;
}

int qcow2_crypt_header_bytes(const struct vd_kv *opts, uint64_t *bytes)
{
    const char *format = vd_kv_get(opts, "encrypt.format");
    struct vd_luks_params params;
    *bytes = 0;
    if (!format || strcmp(format, "luks") != 0)
        return 0;
    int rc = vd_luks_params_from_kv(&params, opts, "encrypt.");
    return rc < 0 ? rc : vd_luks_payload_bytes(&params, bytes);
}

int qcow2_crypt_add_extension(struct qcow2 *q, const struct qcow2_new_crypt *c, uint64_t offset)
{
    uint8_t ext[16];
    vd_put_be64(ext, offset);
    vd_put_be64(ext + 8, c->length);
    return qcow2_add_extension(q, QCOW2_EXT_CRYPTO, ext, sizeof ext);
}

void qcow2_crypt_discard(struct qcow2_new_crypt *c)
{
    if (c->header)
        explicit_bzero(c->header, c->bytes);
    free(c->header);
    c->header = NULL;
}
