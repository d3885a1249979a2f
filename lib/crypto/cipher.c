/*
 * Sector ciphers: a libgcrypt cipher in ECB, CBC or XTS mode with a per-sector
 * IV (plain, plain64 or essiv), as dm-crypt and QEMU compute them.
 *
 * A libgcrypt handle is not safe to share between threads, and building one
 * costs a key schedule, so a cipher keeps a small pool of ready handles:
 * a caller takes one (or builds one when all are busy) and puts it back.
 */
#include "core/internal.h"
#include "crypto/cipher.h"

#include <gcrypt.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Handles kept for reuse; more may exist while many threads run at once. */
#define POOL_MAX 8

struct handles {
    gcry_cipher_hd_t data;
    gcry_cipher_hd_t essiv; /* ECB with the essiv salt as key, or NULL */
};

struct vd_crypto {
    struct vd_cipher_spec spec;
    size_t block_len;     /* IV length */
    uint8_t *key;         /* secure memory, spec.key_len bytes */
    uint8_t *essiv_key;   /* secure memory: the hash of key, essiv_key_len bytes */
    size_t essiv_key_len;
    int essiv_algo;
    pthread_mutex_t lock;
    struct handles pool[POOL_MAX];
    size_t pooled;
};

static void gcrypt_init_once(void)
{
    if (gcry_control(GCRYCTL_INITIALIZATION_FINISHED_P))
        return; /* the program set libgcrypt up itself */
    gcry_check_version(NULL);
    /* without the right to lock memory libgcrypt still works; it need not say so */
    gcry_control(GCRYCTL_DISABLE_SECMEM_WARN);
    /* split key material alone takes 256 KB: let the pool grow */
    gcry_control(GCRYCTL_AUTO_EXPAND_SECMEM, 1u << 20, 0);
    gcry_control(GCRYCTL_INIT_SECMEM, 1u << 20, 0);
    gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0);
}

void vd_gcrypt_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, gcrypt_init_once);
}

uint8_t *vd_secure_alloc(size_t len)
{
    vd_gcrypt_init();
    return gcry_calloc_secure(1, len ? len : 1);
}

void vd_secure_free(void *p, size_t len)
{
    if (!p)
        return;
    /* gcry_free wipes secure memory too, but a fallback pool may not be secure */
    explicit_bzero(p, len);
    gcry_free(p);
}

int vd_hash_by_name(const char *name)
{
    static const struct { const char *name; int algo; } hashes[] = {
        { "md5", GCRY_MD_MD5 },       { "sha1", GCRY_MD_SHA1 },
        { "sha224", GCRY_MD_SHA224 }, { "sha256", GCRY_MD_SHA256 },
        { "sha384", GCRY_MD_SHA384 }, { "sha512", GCRY_MD_SHA512 },
        { "ripemd160", GCRY_MD_RMD160 },
    };
    for (size_t i = 0; i < sizeof hashes / sizeof hashes[0]; i++)
        if (strcmp(hashes[i].name, name) == 0)
            return hashes[i].algo;
    return 0;
}

/* The ciphers QEMU's LUKS driver knows, by name and key size. */
static const struct { const char *name; size_t key_len; int algo; } ciphers[] = {
    { "aes", 16, GCRY_CIPHER_AES128 },        { "aes", 24, GCRY_CIPHER_AES192 },
    { "aes", 32, GCRY_CIPHER_AES256 },        { "serpent", 16, GCRY_CIPHER_SERPENT128 },
    { "serpent", 24, GCRY_CIPHER_SERPENT192 }, { "serpent", 32, GCRY_CIPHER_SERPENT256 },
    { "twofish", 16, GCRY_CIPHER_TWOFISH128 }, { "twofish", 32, GCRY_CIPHER_TWOFISH },
    { "cast5", 16, GCRY_CIPHER_CAST5 },
};

static int cipher_by_name(const char *name, size_t key_len)
{
    for (size_t i = 0; i < sizeof ciphers / sizeof ciphers[0]; i++)
        if (strcmp(ciphers[i].name, name) == 0 && ciphers[i].key_len == key_len)
            return ciphers[i].algo;
    return 0;
}

/* Split "MODE-IVGEN[:HASH]" (or a bare "ecb") into s's mode and IV generator. */
static int parse_mode(struct vd_cipher_spec *s, const char *spec, const char *name)
{
    char mode[33], ivgen[33] = "", hash[33] = "";
    if (strlen(spec) >= sizeof mode)
        return vd_err(VD_ECORRUPT, "%s: LUKS cipher mode is too long", name);
    strcpy(mode, spec);
    char *dash = strchr(mode, '-');
    if (dash) {
        *dash = '\0';
        strcpy(ivgen, dash + 1);
        char *colon = strchr(ivgen, ':');
        if (colon) {
            *colon = '\0';
            strcpy(hash, colon + 1);
        }
    }
    s->mode = strcmp(mode, "xts") == 0   ? GCRY_CIPHER_MODE_XTS
              : strcmp(mode, "cbc") == 0 ? GCRY_CIPHER_MODE_CBC
              : strcmp(mode, "ecb") == 0 ? GCRY_CIPHER_MODE_ECB
                                         : 0;
    bool known_ivgen = true;
    if (!dash)
        s->ivgen = VD_IVGEN_NONE;
    else if (strcmp(ivgen, "plain") == 0)
        s->ivgen = VD_IVGEN_PLAIN;
    else if (strcmp(ivgen, "plain64") == 0)
        s->ivgen = VD_IVGEN_PLAIN64;
    else if (strcmp(ivgen, "essiv") == 0)
        s->ivgen = VD_IVGEN_ESSIV;
    else
        known_ivgen = false;
    s->ivgen_hash = s->ivgen == VD_IVGEN_ESSIV ? vd_hash_by_name(hash) : 0;
    bool bad = !s->mode || !known_ivgen || (s->ivgen == VD_IVGEN_ESSIV && !s->ivgen_hash) ||
               (*hash && !vd_hash_by_name(hash)) || /* QEMU may name a hash it does not use */
               (!dash && s->mode != GCRY_CIPHER_MODE_ECB);
    if (s->mode == GCRY_CIPHER_MODE_ECB) /* ecb takes no IV, whatever the name says */
        s->ivgen = VD_IVGEN_NONE;
    if (bad)
        return vd_err(VD_EUNSUPPORTED, "%s: unsupported LUKS cipher mode '%s'", name, spec);
    return 0;
}

/* The essiv cipher: the data cipher's family with a key as long as the hash. */
static int essiv_algo(int algo, size_t digest_len)
{
    for (size_t i = 0; i < sizeof ciphers / sizeof ciphers[0]; i++)
        if (ciphers[i].algo == algo)
            return cipher_by_name(ciphers[i].name, digest_len);
    return 0;
}

int vd_cipher_spec_parse(struct vd_cipher_spec *s, const char *cipher_name,
                         const char *mode_spec, size_t key_len, const char *name)
{
    *s = (struct vd_cipher_spec){ .key_len = key_len };
    int rc = parse_mode(s, mode_spec, name);
    if (rc < 0)
        return rc;
    /* xts takes two keys of the cipher's size */
    size_t cipher_key = s->mode == GCRY_CIPHER_MODE_XTS ? key_len / 2 : key_len;
    if (s->mode == GCRY_CIPHER_MODE_XTS && key_len % 2)
        cipher_key = 0;
    s->algo = cipher_by_name(cipher_name, cipher_key);
    if (!s->algo)
        return vd_err(VD_EUNSUPPORTED, "%s: unsupported LUKS cipher '%s' with a %zu-byte key",
                      name, cipher_name, key_len);
    if (s->mode == GCRY_CIPHER_MODE_XTS && gcry_cipher_get_algo_blklen(s->algo) != 16)
        return vd_err(VD_EUNSUPPORTED, "%s: xts needs a cipher with 16-byte blocks", name);
    if (s->ivgen == VD_IVGEN_ESSIV && !essiv_algo(s->algo, gcry_md_get_algo_dlen(s->ivgen_hash)))
        return vd_err(VD_EUNSUPPORTED, "%s: essiv's hash in '%s' gives no key size '%s' takes",
                      name, mode_spec, cipher_name);
    return 0;
}

static void close_handles(struct handles *h)
{
    gcry_cipher_close(h->data);
    gcry_cipher_close(h->essiv);
}

static int open_handles(struct vd_crypto *c, struct handles *h)
{
    *h = (struct handles){ 0 };
    gcry_error_t e = gcry_cipher_open(&h->data, c->spec.algo, c->spec.mode, GCRY_CIPHER_SECURE);
    if (!e)
        e = gcry_cipher_setkey(h->data, c->key, c->spec.key_len);
    if (!e && c->essiv_key)
        e = gcry_cipher_open(&h->essiv, c->essiv_algo, GCRY_CIPHER_MODE_ECB, GCRY_CIPHER_SECURE);
    if (!e && c->essiv_key)
        e = gcry_cipher_setkey(h->essiv, c->essiv_key, c->essiv_key_len);
    if (e) {
        close_handles(h);
        return vd_err(VD_EUNSUPPORTED, "cannot set up the cipher: %s", gcry_strerror(e));
    }
    return 0;
}

int vd_crypto_new(struct vd_crypto **out, const struct vd_cipher_spec *spec,
                  const uint8_t *key, const char *name)
{
    vd_gcrypt_init();
    struct vd_crypto *c = calloc(1, sizeof *c);
    if (!c || !(c->key = vd_secure_alloc(spec->key_len))) {
        free(c);
        return vd_err(VD_ENOMEM, "%s: out of memory", name);
    }
    c->spec = *spec;
    c->block_len = gcry_cipher_get_algo_blklen(spec->algo);
    memcpy(c->key, key, spec->key_len);
    pthread_mutex_init(&c->lock, NULL);
    int rc = 0;
    if (spec->ivgen == VD_IVGEN_ESSIV) {
        /* essiv hashes the whole key (both xts halves), as QEMU does */
        c->essiv_key_len = gcry_md_get_algo_dlen(spec->ivgen_hash);
        c->essiv_algo = essiv_algo(spec->algo, c->essiv_key_len); /* checked by the spec's parse */
        if (!(c->essiv_key = vd_secure_alloc(c->essiv_key_len)))
            rc = vd_err(VD_ENOMEM, "%s: out of memory", name);
        else
            gcry_md_hash_buffer(spec->ivgen_hash, c->essiv_key, key, spec->key_len);
    }
    /* build one handle now, so that a bad setup fails here and not on the first read */
    if (rc == 0 && (rc = open_handles(c, &c->pool[0])) == 0)
        c->pooled = 1;
    if (rc < 0) {
        vd_crypto_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

const uint8_t *vd_crypto_key(const struct vd_crypto *c)
{
    return c->key;
}

void vd_crypto_free(struct vd_crypto *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->pooled; i++)
        close_handles(&c->pool[i]);
    vd_secure_free(c->key, c->spec.key_len);
    vd_secure_free(c->essiv_key, c->essiv_key_len);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static int take_handles(struct vd_crypto *c, struct handles *h)
{
    pthread_mutex_lock(&c->lock);
    bool have = c->pooled > 0;
    if (have)
        *h = c->pool[--c->pooled];
    pthread_mutex_unlock(&c->lock);
    return have ? 0 : open_handles(c, h);
}

static void put_handles(struct vd_crypto *c, struct handles *h)
{
    pthread_mutex_lock(&c->lock);
    bool kept = c->pooled < POOL_MAX;
    if (kept)
        c->pool[c->pooled++] = *h;
    pthread_mutex_unlock(&c->lock);
    if (!kept)
        close_handles(h);
}

/* The IV of one sector into iv (c->block_len bytes). */
static gcry_error_t sector_iv(const struct vd_crypto *c, const struct handles *h,
                              uint64_t sector, uint8_t *iv)
{
    memset(iv, 0, c->block_len);
    if (c->spec.ivgen == VD_IVGEN_PLAIN)
        sector &= UINT32_MAX;
    size_t n = c->block_len < 8 ? c->block_len : 8;
    for (size_t i = 0; i < n; i++)
        iv[i] = (uint8_t)(sector >> (8 * i)); /* little-endian */
    if (c->spec.ivgen == VD_IVGEN_ESSIV)
        return gcry_cipher_encrypt(h->essiv, iv, c->block_len, NULL, 0);
    return 0;
}

static int run_sectors(struct vd_crypto *c, bool encrypt, uint64_t sector, void *buf, size_t len)
{
    /* LUKS key material may end in part of a sector (aes-192: 24 * 4000 bytes) */
    if (len % c->block_len)
        return vd_err(VD_EINVAL, "encryption works on whole cipher blocks");
    struct handles h;
    int rc = take_handles(c, &h);
    if (rc < 0)
        return rc;
    uint8_t iv[32];
    gcry_error_t e = 0;
    for (size_t done = 0; !e && done < len; done += VD_CRYPTO_SECTOR, sector++) {
        uint8_t *p = (uint8_t *)buf + done;
        size_t n = len - done < VD_CRYPTO_SECTOR ? len - done : VD_CRYPTO_SECTOR;
        if (c->spec.ivgen != VD_IVGEN_NONE && !(e = sector_iv(c, &h, sector, iv)))
            e = gcry_cipher_setiv(h.data, iv, c->block_len);
        if (!e)
            e = encrypt ? gcry_cipher_encrypt(h.data, p, n, NULL, 0)
                        : gcry_cipher_decrypt(h.data, p, n, NULL, 0);
    }
    put_handles(c, &h);
    return e ? vd_err(VD_EIO, "%s failed: %s", encrypt ? "encryption" : "decryption",
                      gcry_strerror(e))
             : 0;
}

int vd_crypto_encrypt(struct vd_crypto *c, uint64_t sector, void *buf, size_t len)
{
    return run_sectors(c, true, sector, buf, len);
}

int vd_crypto_decrypt(struct vd_crypto *c, uint64_t sector, void *buf, size_t len)
{
    return run_sectors(c, false, sector, buf, len);
}

int vd_crypto_new_qcow_aes(struct vd_crypto **out, const char *passphrase)
{
    if (!passphrase)
        return vd_err(VD_EKEY, "a passphrase is needed");
    uint8_t key[16] = { 0 };
    size_t n = strlen(passphrase);
    memcpy(key, passphrase, n < sizeof key ? n : sizeof key);
    const struct vd_cipher_spec spec = { .algo = GCRY_CIPHER_AES128,
                                         .mode = GCRY_CIPHER_MODE_CBC,
                                         .key_len = sizeof key,
                                         .ivgen = VD_IVGEN_PLAIN64 };
    int rc = vd_crypto_new(out, &spec, key, "qcow AES");
    explicit_bzero(key, sizeof key);
    return rc;
}
