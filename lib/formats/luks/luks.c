/*
 * The luks format (qemu-img's "luks"): a LUKS1 header, its key material,
 * then the guest disk encrypted sector by sector, the IV of each sector
 * seeded by its guest sector number. The header work is lib/crypto's; this
 * file maps guest ranges onto the payload and runs them through the cipher.
 *
 * An image opened without a passphrase shows its header (vd_get_info(),
 * properties) but refuses reads and writes with VD_EKEY. Areas never
 * written read as whatever the cipher makes of the file's zeroes, as in
 * QEMU: a new or grown image does not read as zeroes.
 */
#include "core/internal.h"
#include "formats/luks/luks.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The largest run encrypted in one go (a bounce buffer of this size). */
#define BOUNCE_BYTES (1u << 20)

static const struct vd_option_desc luks_create_options[] = {
    { "key-secret", "ID of the secret that holds the passphrase (vd_secret_add())", NULL },
    { "cipher-alg", "Name of the encryption cipher algorithm", "aes-256" },
    { "cipher-mode", "Name of the encryption cipher mode (xts, cbc, ecb)", "xts" },
    { "ivgen-alg", "Name of the IV generator algorithm (plain, plain64, essiv)", "plain64" },
    { "ivgen-hash-alg", "Name of the IV generator hash algorithm (essiv)", "sha256" },
    { "hash-alg", "Name of the hash algorithm for PBKDF2 and the AF splitter", "sha256" },
    { "iter-time", "Time to spend in PBKDF2 in milliseconds", "2000" },
    { NULL, NULL, NULL },
};

struct luks {
    struct vd_luks_header header;
    uint64_t payload;         /* bytes from the file's start */
    struct vd_crypto *crypto; /* NULL: opened without a passphrase */
};

static int luks_probe(const uint8_t *head, size_t len, uint64_t file_size)
{
    return vd_luks_probe(head, len) ? 100 : 0;
}

/* The header lives at the start of the file. */
static int file_read(void *ctx, uint64_t off, void *buf, size_t len)
{
    return vd_file_pread(ctx, buf, len, off);
}

static int file_write(void *ctx, uint64_t off, const void *buf, size_t len)
{
    return vd_file_pwrite(ctx, buf, len, off);
}

static struct vd_luks_io file_io(vd_file *file, const char *name)
{
    return (struct vd_luks_io){ file_read, file_write, file, name };
}

static int luks_create(vd_file *file, uint64_t size, const struct vd_kv *opts)
{
    const char *id = vd_kv_get(opts, "key-secret");
    if (!id)
        return vd_err(VD_EINVAL, "Parameter 'key-secret' is required for cipher");
    struct vd_luks_params params;
    char *passphrase = NULL;
    int rc = vd_luks_params_from_kv(&params, opts, "");
    if (rc == 0)
        rc = vd_secret_lookup(id, &passphrase);
    struct vd_luks_header h;
    struct vd_luks_io io = file_io(file, "luks");
    if (rc == 0)
        rc = vd_luks_create(&params, passphrase, &io, &h, NULL);
    vd_secret_free(passphrase);
    uint64_t end;
    if (rc == 0 && vd_add_overflows((uint64_t)h.payload_offset * VD_CRYPTO_SECTOR, size, &end))
        rc = vd_err(VD_ETOOBIG, "The image size is too large");
    return rc == 0 ? vd_file_truncate(file, end) : rc;
}

/* A property key: prefix, then what fmt makes of the arguments. */
static const char *prop_key(char name[64], const char *prefix, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static const char *prop_key(char name[64], const char *prefix, const char *fmt, ...)
{
    size_t n = (size_t)snprintf(name, 64, "%s", prefix);
    if (n >= 64)
        return name;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name + n, 64 - n, fmt, ap);
    va_end(ap);
    return name;
}

/*
 * Show the header as qemu-img info does under "Format specific information",
 * each key after prefix; format, if not NULL, is shown as "format" where
 * qemu-img shows it (qcow2's encrypt block names its format).
 */
int vd_luks_describe(vd_image *img, const struct vd_luks_header *h, const char *prefix,
                     const char *format)
{
    char alg[48], mode[33];
    size_t key = h->key_bytes;
    strcpy(mode, h->cipher_mode);
    char *dash = strchr(mode, '-'), *colon = dash ? strchr(dash + 1, ':') : NULL;
    if (dash)
        *dash = '\0';
    if (colon)
        *colon = '\0';
    if (strcmp(mode, "xts") == 0)
        key /= 2;
    snprintf(alg, sizeof alg, "%s-%zu", h->cipher_name, key * 8);
    char name[64];
#define KEY(...) prop_key(name, prefix, __VA_ARGS__)
    /* in qemu-img info's order */
    int rc = 0;
    if (dash)
        rc = vd_image_set_prop(img, KEY("ivgen-alg"), VD_PROP_STRING, "%s", dash + 1);
    if (rc == 0)
        rc = vd_image_set_prop(img, KEY("hash-alg"), VD_PROP_STRING, "%s", h->hash_spec);
    if (rc == 0)
        rc = vd_image_set_prop(img, KEY("cipher-alg"), VD_PROP_STRING, "%s", alg);
    if (rc == 0)
        rc = vd_image_set_prop(img, KEY("uuid"), VD_PROP_STRING, "%s", h->uuid);
    if (rc == 0 && colon)
        rc = vd_image_set_prop(img, KEY("ivgen-hash-alg"), VD_PROP_STRING, "%s", colon + 1);
    if (rc == 0 && format)
        rc = vd_image_set_prop(img, KEY("format"), VD_PROP_STRING, "%s", format);
    if (rc == 0)
        rc = vd_image_set_prop(img, KEY("cipher-mode"), VD_PROP_STRING, "%s", mode);
    for (int i = 0; i < VD_LUKS_SLOTS && rc == 0; i++) {
        const struct vd_luks_slot *s = &h->slots[i];
        rc = vd_image_set_prop(img, KEY("slots.%d.active", i), VD_PROP_BOOL, "%s",
                               s->active ? "true" : "false");
        if (rc == 0 && s->active)
            rc = vd_image_set_prop(img, KEY("slots.%d.iters", i), VD_PROP_INT, "%u", s->iterations);
        if (rc == 0)
            rc = vd_image_set_prop(img, KEY("slots.%d.key-offset", i), VD_PROP_INT, "%llu",
                                   (unsigned long long)s->key_offset * VD_CRYPTO_SECTOR);
        if (rc == 0 && s->active)
            rc = vd_image_set_prop(img, KEY("slots.%d.stripes", i), VD_PROP_INT, "%u", s->stripes);
    }
    if (rc == 0)
        rc = vd_image_set_prop(img, KEY("payload-offset"), VD_PROP_INT, "%llu",
                               (unsigned long long)h->payload_offset * VD_CRYPTO_SECTOR);
    if (rc == 0)
        rc = vd_image_set_prop(img, KEY("master-key-iters"), VD_PROP_INT, "%u",
                               h->mk_digest_iterations);
#undef KEY
    return rc;
}

static int read_header(vd_image *img, struct luks *l)
{
    uint8_t buf[VD_LUKS_HEADER_BYTES];
    uint64_t file_size;
    int rc = vd_file_get_size(img->file, &file_size);
    if (rc == 0 && file_size < sizeof buf)
        rc = vd_err(VD_EFORMAT, "%s: too small for a LUKS header", img->filename);
    if (rc == 0)
        rc = vd_file_pread(img->file, buf, sizeof buf, 0);
    if (rc == 0)
        rc = vd_luks_parse(&l->header, buf, sizeof buf, img->filename);
    l->payload = (uint64_t)l->header.payload_offset * VD_CRYPTO_SECTOR;
    if (rc == 0 && file_size < l->payload)
        rc = vd_err(VD_ECORRUPT, "%s: the LUKS payload offset %llu lies past the end of the file",
                    img->filename, (unsigned long long)l->payload);
    if (rc == 0)
        img->size = (file_size - l->payload) & ~(uint64_t)(VD_CRYPTO_SECTOR - 1);
    return rc;
}

static void luks_close(vd_image *img)
{
    struct luks *l = img->priv;
    if (l)
        vd_crypto_free(l->crypto);
    free(l);
}

static int luks_open(vd_image *img, const vd_open_opts *opts)
{
    struct luks *l = calloc(1, sizeof *l);
    if (!l)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    img->priv = l;
    int rc = read_header(img, l);
    if (rc == 0)
        rc = vd_luks_describe(img, &l->header, "", NULL);
    char *secret = NULL;
    if (rc == 0)
        rc = vd_open_passphrase(img, opts, &secret);
    struct vd_luks_io io = file_io(img->file, img->filename);
    if (rc == 0 && secret)
        rc = vd_luks_unlock(&l->header, &io, secret, &l->crypto, NULL);
    vd_secret_free(secret);
    if (rc < 0) {
        luks_close(img);
        img->priv = NULL;
    }
    return rc;
}

static int need_key(vd_image *img)
{
    struct luks *l = img->priv;
    return l->crypto ? 0
                     : vd_err(VD_EKEY, "%s: the image is encrypted and was opened without a "
                              "passphrase", img->filename);
}

/*
 * Move [off, off + v->len) of guest data between the caller's buffers and
 * the file through the cipher, a bounce buffer of whole sectors at a time. A
 * write that covers part of a sector reads that sector first (the in-flight
 * ranges, by sectors, keep two such writes to one sector apart).
 */
static int crypt_range(vd_image *img, bool write, uint64_t off, const struct vd_iov *v)
{
    struct luks *l = img->priv;
    const uint64_t mask = VD_CRYPTO_SECTOR - 1;
    uint8_t *bounce = malloc(BOUNCE_BYTES);
    int rc = bounce ? 0 : vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    for (size_t done = 0; rc == 0 && done < v->len;) {
        uint64_t start = off & ~mask, skip = off - start;
        size_t n = v->len - done < BOUNCE_BYTES - skip ? v->len - done
                                                       : (size_t)(BOUNCE_BYTES - skip);
        size_t span = (size_t)((skip + n + mask) & ~mask);
        uint64_t host = l->payload + start, sector = start / VD_CRYPTO_SECTOR;
        bool partial = skip || (n & mask);
        struct vd_iov part = vd_iov_sub(v, done, n);
        if (!write || partial) {
            rc = vd_file_pread(vd_image_data(img), bounce, span, host);
            if (rc == 0)
                rc = vd_crypto_decrypt(l->crypto, sector, bounce, span);
        }
        if (rc == 0 && !write)
            vd_iov_from_buf(&part, bounce + skip);
        if (rc == 0 && write) {
            vd_iov_to_buf(&part, bounce + skip);
            rc = vd_crypto_encrypt(l->crypto, sector, bounce, span);
            if (rc == 0)
                rc = vd_file_pwrite(vd_image_data(img), bounce, span, host);
        }
        off += n;
        done += n;
    }
    free(bounce);
    return rc;
}

static int luks_read(vd_image *img, uint64_t off, const struct vd_iov *v)
{
    int rc = need_key(img);
    return rc < 0 ? rc : crypt_range(img, false, off, v);
}

static int luks_write(vd_image *img, uint64_t off, const struct vd_iov *v, uint32_t flags)
{
    int rc = need_key(img);
    if (rc == 0)
        rc = crypt_range(img, true, off, v);
    vd_image_mark_unsynced(img);
    return rc;
}

static int luks_resize(vd_image *img, uint64_t size, uint32_t flags)
{
    struct luks *l = img->priv;
    uint64_t end;
    if (vd_add_overflows(l->payload, size, &end))
        return vd_err(VD_ETOOBIG, "%s: the image size is too large", img->filename);
    int rc = vd_file_truncate(img->file, end);
    if (rc == 0)
        img->size = size;
    return rc;
}

/* ------------------------------------------------------------ key slots */

static const struct vd_option_desc luks_amend_options[] = {
    { "state", "Select new state of affected keyslots (active, inactive)", NULL },
    { "keyslot", "Select a single keyslot to modify explicitly (0 to 7)", NULL },
    { "old-secret", "Select all keyslots that match this password (ID of a secret)", NULL },
    { "new-secret", "New secret to set in the matching keyslots (ID of a secret)", NULL },
    { "iter-time", "Time to spend in PBKDF2 in milliseconds", "2000" },
    { NULL, NULL, NULL },
};

/* The value of option name (after k->prefix), or NULL. */
static const char *slot_opt(const struct vd_luks_keys *k, const struct vd_kv *opts,
                            const char *name)
{
    char key[64];
    snprintf(key, sizeof key, "%s%s", k->prefix, name);
    return vd_kv_get(opts, key);
}

/* keyslot=N, or -1 when not given. */
static int amend_slot(const struct vd_luks_keys *k, const struct vd_kv *opts, int *slot)
{
    const char *v = slot_opt(k, opts, "keyslot");
    *slot = -1;
    if (!v)
        return 0;
    if (v[0] < '0' || v[0] >= '0' + VD_LUKS_SLOTS || v[1])
        return vd_err(VD_EINVAL, "Invalid keyslot %s (0 to %d)", v, VD_LUKS_SLOTS - 1);
    *slot = v[0] - '0';
    return 0;
}

/* The slots the secret named by option name opens, or 0 when the option is absent. */
static int slots_of_secret(vd_image *img, const struct vd_luks_keys *k, const struct vd_kv *opts,
                           const char *name, unsigned *slots)
{
    const char *id = slot_opt(k, opts, name);
    char *passphrase = NULL;
    *slots = 0;
    int rc = id ? vd_secret_lookup(id, &passphrase) : 0;
    if (rc == 0 && id)
        rc = vd_luks_find_slots(k->header, k->io, passphrase, slots);
    if (rc == 0 && id && !*slots)
        rc = vd_err(VD_EKEY, "%s: the secret '%s' opens no keyslot", img->filename, id);
    vd_secret_free(passphrase);
    return rc;
}

static int add_slot(vd_image *img, const struct vd_luks_keys *k, const struct vd_kv *opts,
                    int slot)
{
    const char *id = slot_opt(k, opts, "new-secret");
    if (!id)
        return vd_err(VD_EINVAL, "'%snew-secret' is required to activate a keyslot", k->prefix);
    struct vd_luks_params params;
    unsigned old;
    char *passphrase = NULL;
    int rc = vd_luks_params_from_kv(&params, opts, k->prefix);
    if (rc == 0) /* an old-secret, if given, must open a slot */
        rc = slots_of_secret(img, k, opts, "old-secret", &old);
    if (rc == 0)
        rc = vd_secret_lookup(id, &passphrase);
    if (rc == 0)
        rc = vd_luks_add_slot(k->header, k->io, k->unlocked, passphrase, params.iter_time_ms,
                              slot);
    vd_secret_free(passphrase);
    return rc;
}

static int remove_slots(vd_image *img, const struct vd_luks_keys *k, const struct vd_kv *opts,
                        int slot)
{
    if (slot_opt(k, opts, "new-secret"))
        return vd_err(VD_EINVAL, "'%snew-secret' must not be given when erasing keyslots",
                      k->prefix);
    if ((slot >= 0) == (slot_opt(k, opts, "old-secret") != NULL))
        return vd_err(VD_EINVAL, "Give one of '%skeyslot' and '%sold-secret' to erase keyslots",
                      k->prefix, k->prefix);
    unsigned slots = slot >= 0 ? 1u << slot : 0;
    int rc = slot >= 0 ? 0 : slots_of_secret(img, k, opts, "old-secret", &slots);
    for (int i = 0; i < VD_LUKS_SLOTS && rc == 0; i++)
        if (slots & (1u << i))
            rc = vd_luks_remove_slot(k->header, k->io, i);
    return rc;
}

int vd_luks_amend_slots(vd_image *img, const struct vd_luks_keys *k, const struct vd_kv *opts)
{
    static const char *const states[] = { "active", "inactive", NULL };
    char state_key[64];
    snprintf(state_key, sizeof state_key, "%sstate", k->prefix);
    size_t state;
    int slot;
    int rc = 0;
    if (!vd_kv_get(opts, state_key))
        rc = vd_err(VD_EINVAL, "Parameter '%s' is required", state_key);
    if (rc == 0)
        rc = vd_kv_get_choice(opts, state_key, states, 0, &state);
    if (rc == 0)
        rc = amend_slot(k, opts, &slot);
    if (rc == 0)
        rc = state == 0 ? add_slot(img, k, opts, slot) : remove_slots(img, k, opts, slot);
    return rc;
}

/* qemu-img amend's luks options: state=active with new-secret, state=inactive. */
static int luks_amend(vd_image *img, const struct vd_kv *opts)
{
    struct luks *l = img->priv;
    struct vd_luks_io io = file_io(img->file, img->filename);
    const struct vd_luks_keys keys = { &l->header, &io, l->crypto, "" };
    int rc = need_key(img);
    if (rc == 0)
        rc = vd_luks_amend_slots(img, &keys, opts);
    /* the header changed (or may have, in part): show what the file now holds */
    vd_image_clear_props(img);
    int shown = vd_luks_describe(img, &l->header, "", NULL);
    if (rc == 0 && (rc = shown) == 0)
        rc = vd_image_sync_now(img);
    return rc;
}

static void luks_get_info(vd_image *img, vd_info *info)
{
    info->encrypted = 1;
}

const struct vd_backend vd_backend_luks = {
    .name = "luks",
    .create_options = luks_create_options,
    .probe = luks_probe,
    .create = luks_create,
    .open = luks_open,
    .close = luks_close,
    .read = luks_read,
    .write = luks_write,
    .resize = luks_resize,
    .get_info = luks_get_info,
    .amend_options = luks_amend_options,
    .amend = luks_amend,
};
