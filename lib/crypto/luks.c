/*
 * LUKS1 headers as QEMU writes them (the standalone luks format and qcow2's
 * encrypt.format=luks): parse, unlock, create, key slots.
 *
 * On disk (big-endian), 592 bytes: magic "LUKS\xba\xbe", version 1, cipher
 * name, cipher mode, hash (32 bytes each, NUL-terminated), payload offset
 * (sectors), key bytes, master key digest (PBKDF2 of the master key, 20
 * bytes) with its salt and iterations, uuid (40 bytes), then 8 key slots of
 * 48 bytes: state, iterations, salt, key material offset (sectors), stripes.
 * A slot's material is the master key split into `stripes` anti-forensic
 * stripes (af.c), encrypted with the payload's cipher under a key derived
 * from the passphrase (PBKDF2 with the slot's salt and iterations), its
 * sector numbers counted from the material's start.
 */
#include "core/internal.h"
#include "core/endian.h"
#include "crypto/af.h"
#include "crypto/cipher.h"

#include <gcrypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLOT_ENABLED 0x00AC71F3u
#define SLOT_DISABLED 0x0000DEADu
#define STRIPES 4000u          /* QEMU and cryptsetup: every slot has these, QEMU requires it */
#define SALT_LEN 32
#define DIGEST_LEN 20
#define MIN_ITERATIONS 1000u   /* QEMU's floor for the master key and slot PBKDF2 */
#define ALIGN_SECTORS 8u       /* QEMU aligns key material and the payload to 4 KiB */
#define MAX_KEY_BYTES 64u

uint32_t vd_luks_max_iterations = UINT32_C(1) << 26;

static const uint8_t magic[6] = { 'L', 'U', 'K', 'S', 0xba, 0xbe };

bool vd_luks_probe(const uint8_t *buf, size_t len)
{
    return len >= 8 && memcmp(buf, magic, sizeof magic) == 0 && vd_be16(buf + 6) == 1;
}

/* A NUL-terminated string field of 32 (or 40) bytes into out, or false. */
static bool take_string(char *out, const uint8_t *field, size_t field_len)
{
    const uint8_t *nul = memchr(field, 0, field_len);
    if (!nul || nul == field)
        return false;
    memcpy(out, field, (size_t)(nul - field) + 1);
    return true;
}

/* Sectors of one slot's key material. */
static uint32_t material_sectors(uint32_t key_bytes, uint32_t stripes)
{
    return (uint32_t)(((uint64_t)key_bytes * stripes + VD_CRYPTO_SECTOR - 1) / VD_CRYPTO_SECTOR);
}

static int check_slots(const struct vd_luks_header *h, const char *name)
{
    const uint32_t len = material_sectors(h->key_bytes, STRIPES);
    const uint32_t header_sectors = (VD_LUKS_HEADER_BYTES + VD_CRYPTO_SECTOR - 1) / VD_CRYPTO_SECTOR;
    for (int i = 0; i < VD_LUKS_SLOTS; i++) {
        const struct vd_luks_slot *s = &h->slots[i];
        if (s->stripes != STRIPES)
            return vd_err(VD_ECORRUPT, "%s: LUKS key slot %d has %u stripes, not %u", name, i,
                          s->stripes, STRIPES);
        if (s->active && (s->iterations == 0 || s->iterations > vd_luks_max_iterations))
            return vd_err(VD_ECORRUPT, "%s: LUKS key slot %d has %u iterations (1 to %u allowed)",
                          name, i, s->iterations, vd_luks_max_iterations);
        if (s->key_offset < header_sectors || (uint64_t)s->key_offset + len > h->payload_offset)
            return vd_err(VD_ECORRUPT, "%s: LUKS key slot %d lies outside the key area", name, i);
        for (int j = 0; j < i; j++)
            if (s->key_offset < h->slots[j].key_offset + len &&
                h->slots[j].key_offset < s->key_offset + len)
                return vd_err(VD_ECORRUPT, "%s: LUKS key slots %d and %d overlap", name, j, i);
    }
    return 0;
}

static int parse_slot(struct vd_luks_slot *s, const uint8_t *p, int index, const char *name)
{
    uint32_t state = vd_be32(p);
    if (state != SLOT_ENABLED && state != SLOT_DISABLED)
        return vd_err(VD_ECORRUPT, "%s: LUKS key slot %d has an unknown state 0x%08x", name,
                      index, state);
    s->active = state == SLOT_ENABLED;
    s->iterations = vd_be32(p + 4);
    memcpy(s->salt, p + 8, SALT_LEN);
    s->key_offset = vd_be32(p + 40);
    s->stripes = vd_be32(p + 44);
    return 0;
}

int vd_luks_parse(struct vd_luks_header *h, const uint8_t *buf, size_t len, const char *name)
{
    *h = (struct vd_luks_header){ 0 };
    if (len < VD_LUKS_HEADER_BYTES || !vd_luks_probe(buf, len))
        return vd_err(VD_EFORMAT, "%s: not a LUKS version 1 header", name);
    if (!take_string(h->cipher_name, buf + 8, 32) || !take_string(h->cipher_mode, buf + 40, 32) ||
        !take_string(h->hash_spec, buf + 72, 32) || !take_string(h->uuid, buf + 168, 40))
        return vd_err(VD_ECORRUPT, "%s: LUKS header has an unterminated or empty name", name);
    h->payload_offset = vd_be32(buf + 104);
    h->key_bytes = vd_be32(buf + 108);
    memcpy(h->mk_digest, buf + 112, DIGEST_LEN);
    memcpy(h->mk_digest_salt, buf + 132, SALT_LEN);
    h->mk_digest_iterations = vd_be32(buf + 164);
    if (!vd_hash_by_name(h->hash_spec))
        return vd_err(VD_EUNSUPPORTED, "%s: unsupported LUKS hash '%s'", name, h->hash_spec);
    if (h->key_bytes == 0 || h->key_bytes > MAX_KEY_BYTES)
        return vd_err(VD_ECORRUPT, "%s: LUKS key size %u is out of range", name, h->key_bytes);
    struct vd_cipher_spec spec;
    int rc = vd_cipher_spec_parse(&spec, h->cipher_name, h->cipher_mode, h->key_bytes, name);
    if (rc < 0)
        return rc;
    if (h->mk_digest_iterations == 0 || h->mk_digest_iterations > vd_luks_max_iterations)
        return vd_err(VD_ECORRUPT, "%s: LUKS master key digest has %u iterations (1 to %u allowed)",
                      name, h->mk_digest_iterations, vd_luks_max_iterations);
    for (int i = 0; i < VD_LUKS_SLOTS && rc == 0; i++)
        rc = parse_slot(&h->slots[i], buf + 208 + 48 * i, i, name);
    return rc < 0 ? rc : check_slots(h, name);
}

static void encode_header(uint8_t *buf, const struct vd_luks_header *h)
{
    memset(buf, 0, VD_LUKS_HEADER_BYTES);
    memcpy(buf, magic, sizeof magic);
    vd_put_be16(buf + 6, 1);
    strcpy((char *)buf + 8, h->cipher_name);
    strcpy((char *)buf + 40, h->cipher_mode);
    strcpy((char *)buf + 72, h->hash_spec);
    vd_put_be32(buf + 104, h->payload_offset);
    vd_put_be32(buf + 108, h->key_bytes);
    memcpy(buf + 112, h->mk_digest, DIGEST_LEN);
    memcpy(buf + 132, h->mk_digest_salt, SALT_LEN);
    vd_put_be32(buf + 164, h->mk_digest_iterations);
    strcpy((char *)buf + 168, h->uuid);
    for (int i = 0; i < VD_LUKS_SLOTS; i++) {
        uint8_t *p = buf + 208 + 48 * i;
        const struct vd_luks_slot *s = &h->slots[i];
        vd_put_be32(p, s->active ? SLOT_ENABLED : SLOT_DISABLED);
        vd_put_be32(p + 4, s->iterations);
        memcpy(p + 8, s->salt, SALT_LEN);
        vd_put_be32(p + 40, s->key_offset);
        vd_put_be32(p + 44, s->stripes);
    }
}

static int write_header(const struct vd_luks_header *h, const struct vd_luks_io *io)
{
    uint8_t buf[VD_LUKS_HEADER_BYTES];
    encode_header(buf, h);
    return io->write(io->ctx, 0, buf, sizeof buf);
}

static int pbkdf2(int hash, const void *pass, size_t pass_len, const uint8_t *salt,
                  uint32_t iterations, uint8_t *out, size_t out_len)
{
    gcry_error_t e = gcry_kdf_derive(pass, pass_len, GCRY_KDF_PBKDF2, hash, salt, SALT_LEN,
                                     iterations, out_len, out);
    return e ? vd_err(VD_EIO, "PBKDF2 failed: %s", gcry_strerror(e)) : 0;
}

/* Whether mk is the master key the header's digest describes. */
static bool master_key_matches(const struct vd_luks_header *h, int hash, const uint8_t *mk)
{
    uint8_t digest[DIGEST_LEN];
    return pbkdf2(hash, mk, h->key_bytes, h->mk_digest_salt, h->mk_digest_iterations, digest,
                  sizeof digest) == 0 &&
           memcmp(digest, h->mk_digest, DIGEST_LEN) == 0;
}

/*
 * The cipher that protects a slot's key material: the payload's cipher
 * keyed with the passphrase's PBKDF2 under the slot's salt.
 */
static int slot_cipher(const struct vd_luks_header *h, const struct vd_luks_slot *s,
                       const char *passphrase, const char *name, struct vd_crypto **out)
{
    struct vd_cipher_spec spec;
    int rc = vd_cipher_spec_parse(&spec, h->cipher_name, h->cipher_mode, h->key_bytes, name);
    uint8_t *key = rc == 0 ? vd_secure_alloc(h->key_bytes) : NULL;
    if (rc == 0 && !key)
        rc = vd_err(VD_ENOMEM, "%s: out of memory", name);
    if (rc == 0)
        rc = pbkdf2(vd_hash_by_name(h->hash_spec), passphrase, strlen(passphrase), s->salt,
                    s->iterations, key, h->key_bytes);
    if (rc == 0)
        rc = vd_crypto_new(out, &spec, key, name);
    vd_secure_free(key, h->key_bytes);
    return rc;
}

/*
 * Recover the master key from one slot into mk (h->key_bytes): 1 when the
 * passphrase opens it, 0 when not, or an error.
 */
static int open_slot(const struct vd_luks_header *h, const struct vd_luks_io *io, int index,
                     const char *passphrase, uint8_t *mk)
{
    const struct vd_luks_slot *s = &h->slots[index];
    const size_t split_len = (size_t)h->key_bytes * s->stripes; /* bounded by parse */
    struct vd_crypto *c = NULL;
    uint8_t *split = vd_secure_alloc(split_len);
    int rc = split ? 0 : vd_err(VD_ENOMEM, "%s: out of memory", io->name);
    if (rc == 0)
        rc = io->read(io->ctx, (uint64_t)s->key_offset * VD_CRYPTO_SECTOR, split, split_len);
    if (rc == 0)
        rc = slot_cipher(h, s, passphrase, io->name, &c);
    if (rc == 0)
        rc = vd_crypto_decrypt(c, 0, split, split_len);
    int hash = vd_hash_by_name(h->hash_spec);
    if (rc == 0)
        rc = vd_af_merge(hash, split, h->key_bytes, s->stripes, mk);
    if (rc == 0)
        rc = master_key_matches(h, hash, mk);
    vd_crypto_free(c);
    vd_secure_free(split, split_len);
    return rc;
}

/* The master key into mk for passphrase, trying every active slot; *slot is the one. */
static int unlock_master_key(const struct vd_luks_header *h, const struct vd_luks_io *io,
                             const char *passphrase, uint8_t *mk, int *slot)
{
    if (!passphrase)
        return vd_err(VD_EKEY, "%s: the image is encrypted: a passphrase is needed", io->name);
    for (int i = 0; i < VD_LUKS_SLOTS; i++) {
        if (!h->slots[i].active)
            continue;
        int rc = open_slot(h, io, i, passphrase, mk);
        if (rc < 0)
            return rc;
        if (rc == 1) {
            *slot = i;
            return 0;
        }
    }
    return vd_err(VD_EKEY, "%s: Invalid password, cannot unlock any keyslot", io->name);
}

int vd_luks_unlock(const struct vd_luks_header *h, const struct vd_luks_io *io,
                   const char *passphrase, struct vd_crypto **out, int *slot)
{
    uint8_t *mk = vd_secure_alloc(h->key_bytes);
    if (!mk)
        return vd_err(VD_ENOMEM, "%s: out of memory", io->name);
    int opened = -1;
    struct vd_cipher_spec spec;
    int rc = unlock_master_key(h, io, passphrase, mk, &opened);
    if (rc == 0)
        rc = vd_cipher_spec_parse(&spec, h->cipher_name, h->cipher_mode, h->key_bytes, io->name);
    if (rc == 0)
        rc = vd_crypto_new(out, &spec, mk, io->name);
    if (rc == 0 && slot)
        *slot = opened;
    vd_secure_free(mk, h->key_bytes);
    return rc;
}

/* ------------------------------------------------------------------ create */

/* The create parameters and QEMU's defaults, in struct vd_luks_params's order. */
static const struct { const char *name, *qemu_default; } param_names[] = {
    { "cipher-alg", "aes-256" }, { "cipher-mode", "xts" },     { "ivgen-alg", "plain64" },
    { "ivgen-hash-alg", "sha256" }, { "hash-alg", "sha256" }, { "iter-time", "2000" },
};
#define PARAM_COUNT (sizeof param_names / sizeof param_names[0])

int vd_luks_params_from_kv(struct vd_luks_params *p, const struct vd_kv *opts, const char *prefix)
{
    const char *v[PARAM_COUNT];
    for (size_t i = 0; i < PARAM_COUNT; i++) {
        char key[64];
        snprintf(key, sizeof key, "%s%s", prefix, param_names[i].name);
        v[i] = vd_kv_get(opts, key);
        if (!v[i])
            v[i] = param_names[i].qemu_default;
    }
    char *end;
    unsigned long long ms = strtoull(v[5], &end, 10);
    if (*end || end == v[5] || ms == 0 || ms > 3600000)
        return vd_err(VD_EINVAL, "%siter-time must be a number of milliseconds (1 to 3600000)",
                      prefix);
    *p = (struct vd_luks_params){ v[0], v[1], v[2], v[3], v[4], ms };
    return 0;
}

/* "aes-256" into the cipher name ("aes") and the key size of one cipher key. */
static int split_cipher_alg(const char *alg, char *name, size_t name_len, size_t *key_bytes)
{
    const char *dash = strrchr(alg, '-');
    char *end;
    unsigned long bits = dash ? strtoul(dash + 1, &end, 10) : 0;
    if (!dash || *end || (size_t)(dash - alg) >= name_len || bits % 8 || bits == 0 || bits > 256)
        return vd_err(VD_EINVAL, "Unsupported cipher algorithm '%s'", alg);
    memcpy(name, alg, (size_t)(dash - alg));
    name[dash - alg] = '\0';
    *key_bytes = bits / 8;
    return 0;
}

/* The header's names for p: cipher name, mode string, hash and key size. */
static int header_names(struct vd_luks_header *h, const struct vd_luks_params *p)
{
    size_t key_bytes = 0;
    int rc = split_cipher_alg(p->cipher_alg, h->cipher_name, sizeof h->cipher_name, &key_bytes);
    if (rc < 0)
        return rc;
    if (strcmp(p->cipher_mode, "xts") == 0)
        key_bytes *= 2;
    bool essiv = strcmp(p->ivgen_alg, "essiv") == 0;
    int n = essiv ? snprintf(h->cipher_mode, sizeof h->cipher_mode, "%s-%s:%s", p->cipher_mode,
                             p->ivgen_alg, p->ivgen_hash_alg)
                  : snprintf(h->cipher_mode, sizeof h->cipher_mode, "%s-%s", p->cipher_mode,
                             p->ivgen_alg);
    if (n < 0 || (size_t)n >= sizeof h->cipher_mode || strlen(p->hash_alg) >= sizeof h->hash_spec)
        return vd_err(VD_EINVAL, "Unsupported cipher mode or hash");
    if (!vd_hash_by_name(p->hash_alg))
        return vd_err(VD_EINVAL, "Unsupported hash algorithm '%s'", p->hash_alg);
    strcpy(h->hash_spec, p->hash_alg);
    h->key_bytes = (uint32_t)key_bytes;
    /* we read such material (cryptsetup writes it), but QEMU 7.2 aborts on it */
    if (key_bytes * STRIPES % VD_CRYPTO_SECTOR)
        return vd_err(VD_EINVAL, "%s-%s: its key material would end mid-sector, which QEMU "
                      "cannot read", p->cipher_alg, p->cipher_mode);
    struct vd_cipher_spec spec;
    rc = vd_cipher_spec_parse(&spec, h->cipher_name, h->cipher_mode, key_bytes, "create");
    /* a name we would not read back is the caller's mistake here */
    return rc < 0 ? vd_err(VD_EINVAL, "Unsupported encryption: %s-%s with hash %s",
                           p->cipher_alg, h->cipher_mode, p->hash_alg)
                  : 0;
}

/* The thread's CPU time, as QEMU measures PBKDF2: other load does not count. */
static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/*
 * PBKDF2 iterations that take about iter_time_ms on this machine for a
 * key_len-byte output, as QEMU counts them (at least MIN_ITERATIONS).
 * Measures for 100 to 250 ms (QEMU: 500 ms of CPU time): a shorter
 * measurement is dominated by start-up costs and undercounts.
 */
static int count_iterations(int hash, size_t key_len, uint64_t iter_time_ms, uint32_t *out)
{
    uint8_t salt[SALT_LEN] = { 0 }, key[MAX_KEY_BYTES];
    const double budget = iter_time_ms < 100 ? 100 : iter_time_ms > 250 ? 250 : (double)iter_time_ms;
    uint64_t iterations = 1024;
    double spent;
    for (;;) {
        double start = now_ms();
        int rc = pbkdf2(hash, "measure", 7, salt, (uint32_t)iterations, key, key_len);
        if (rc < 0)
            return rc;
        spent = now_ms() - start;
        if (spent >= budget || iterations >= vd_luks_max_iterations)
            break;
        iterations *= 2;
    }
    double want = spent > 0 ? iterations * (iter_time_ms / spent) : vd_luks_max_iterations;
    *out = want < MIN_ITERATIONS           ? MIN_ITERATIONS
           : want > vd_luks_max_iterations ? vd_luks_max_iterations
                                           : (uint32_t)want;
    return 0;
}

/* A random version 4 uuid, as text. */
static void random_uuid(char *out)
{
    uint8_t u[16];
    gcry_randomize(u, sizeof u, GCRY_STRONG_RANDOM);
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    sprintf(out, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
            u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
            u[14], u[15]);
}

/* Put mk into slot index under passphrase: new salt, material written, slot active. */
static int store_slot(struct vd_luks_header *h, const struct vd_luks_io *io, int index,
                      const char *passphrase, const uint8_t *mk, uint64_t iter_time_ms)
{
    struct vd_luks_slot *s = &h->slots[index];
    const int hash = vd_hash_by_name(h->hash_spec);
    const size_t split_len = (size_t)h->key_bytes * s->stripes;
    int rc = count_iterations(hash, h->key_bytes, iter_time_ms, &s->iterations);
    gcry_randomize(s->salt, SALT_LEN, GCRY_STRONG_RANDOM);
    uint8_t *split = rc == 0 ? vd_secure_alloc(split_len) : NULL;
    struct vd_crypto *c = NULL;
    if (rc == 0 && !split)
        rc = vd_err(VD_ENOMEM, "%s: out of memory", io->name);
    if (rc == 0)
        rc = vd_af_split(hash, mk, h->key_bytes, s->stripes, split);
    if (rc == 0)
        rc = slot_cipher(h, s, passphrase, io->name, &c);
    if (rc == 0)
        rc = vd_crypto_encrypt(c, 0, split, split_len);
    if (rc == 0)
        rc = io->write(io->ctx, (uint64_t)s->key_offset * VD_CRYPTO_SECTOR, split, split_len);
    s->active = rc == 0;
    vd_crypto_free(c);
    vd_secure_free(split, split_len);
    return rc;
}

/* QEMU's layout: the header's 4 KiB, 8 slots of 4 KiB-aligned material, the payload. */
static void lay_out_slots(struct vd_luks_header *h)
{
    const uint32_t len = (material_sectors(h->key_bytes, STRIPES) + ALIGN_SECTORS - 1) /
                         ALIGN_SECTORS * ALIGN_SECTORS;
    for (int i = 0; i < VD_LUKS_SLOTS; i++)
        h->slots[i] = (struct vd_luks_slot){ .key_offset = ALIGN_SECTORS + (uint32_t)i * len,
                                             .stripes = STRIPES };
    h->payload_offset = ALIGN_SECTORS + VD_LUKS_SLOTS * len;
}

static int make_master_key(struct vd_luks_header *h, const struct vd_luks_params *p, uint8_t *mk)
{
    const int hash = vd_hash_by_name(h->hash_spec);
    gcry_randomize(mk, h->key_bytes, GCRY_STRONG_RANDOM);
    gcry_randomize(h->mk_digest_salt, SALT_LEN, GCRY_STRONG_RANDOM);
    int rc = count_iterations(hash, DIGEST_LEN, p->iter_time_ms, &h->mk_digest_iterations);
    /* an eighth, as QEMU and cryptsetup do, floored at QEMU's minimum */
    h->mk_digest_iterations /= 8;
    if (h->mk_digest_iterations < MIN_ITERATIONS)
        h->mk_digest_iterations = MIN_ITERATIONS;
    if (rc == 0)
        rc = pbkdf2(hash, mk, h->key_bytes, h->mk_digest_salt, h->mk_digest_iterations,
                    h->mk_digest, DIGEST_LEN);
    return rc;
}

int vd_luks_payload_bytes(const struct vd_luks_params *p, uint64_t *bytes)
{
    vd_gcrypt_init();
    struct vd_luks_header h = { 0 };
    int rc = header_names(&h, p);
    if (rc == 0) {
        lay_out_slots(&h);
        *bytes = (uint64_t)h.payload_offset * VD_CRYPTO_SECTOR;
    }
    return rc;
}

int vd_luks_create(const struct vd_luks_params *p, const char *passphrase,
                   const struct vd_luks_io *io, struct vd_luks_header *h, struct vd_crypto **out)
{
    vd_gcrypt_init();
    *h = (struct vd_luks_header){ 0 };
    if (!passphrase)
        return vd_err(VD_EKEY, "%s: a passphrase is needed to create an encrypted image", io->name);
    int rc = header_names(h, p);
    if (rc < 0)
        return rc;
    random_uuid(h->uuid);
    lay_out_slots(h);
    uint8_t *mk = vd_secure_alloc(h->key_bytes);
    if (!mk)
        return vd_err(VD_ENOMEM, "%s: out of memory", io->name);
    rc = make_master_key(h, p, mk);
    if (rc == 0)
        rc = store_slot(h, io, 0, passphrase, mk, p->iter_time_ms);
    if (rc == 0)
        rc = write_header(h, io);
    struct vd_cipher_spec spec;
    if (rc == 0 && out)
        rc = vd_cipher_spec_parse(&spec, h->cipher_name, h->cipher_mode, h->key_bytes, io->name);
    if (rc == 0 && out)
        rc = vd_crypto_new(out, &spec, mk, io->name);
    vd_secure_free(mk, h->key_bytes);
    return rc;
}

/* --------------------------------------------------------------- key slots */

int vd_luks_add_slot(struct vd_luks_header *h, const struct vd_luks_io *io,
                     const struct vd_crypto *unlocked, const char *new_passphrase,
                     uint64_t iter_time_ms, int slot)
{
    for (int i = 0; slot < 0 && i < VD_LUKS_SLOTS; i++)
        if (!h->slots[i].active)
            slot = i;
    if (slot < 0)
        return vd_err(VD_EEXIST, "%s: every LUKS key slot is in use", io->name);
    if (slot >= VD_LUKS_SLOTS)
        return vd_err(VD_EINVAL, "%s: LUKS key slot %d does not exist", io->name, slot);
    if (h->slots[slot].active)
        return vd_err(VD_EEXIST, "%s: LUKS key slot %d is in use", io->name, slot);
    if (!new_passphrase)
        return vd_err(VD_EINVAL, "%s: the new key slot needs a passphrase", io->name);
    /* material first, the header after: a crash leaves the slot unused */
    struct vd_luks_header next = *h;
    int rc = store_slot(&next, io, slot, new_passphrase, vd_crypto_key(unlocked), iter_time_ms);
    if (rc == 0 && (rc = write_header(&next, io)) == 0)
        *h = next;
    return rc;
}

int vd_luks_find_slots(const struct vd_luks_header *h, const struct vd_luks_io *io,
                       const char *passphrase, unsigned *slots)
{
    *slots = 0;
    uint8_t *mk = vd_secure_alloc(h->key_bytes);
    if (!mk)
        return vd_err(VD_ENOMEM, "%s: out of memory", io->name);
    int rc = 0;
    for (int i = 0; i < VD_LUKS_SLOTS && rc >= 0; i++) {
        if (h->slots[i].active && (rc = open_slot(h, io, i, passphrase, mk)) == 1)
            *slots |= 1u << i;
    }
    vd_secure_free(mk, h->key_bytes);
    return rc < 0 ? rc : 0;
}

int vd_luks_remove_slot(struct vd_luks_header *h, const struct vd_luks_io *io, int slot)
{
    if (slot < 0 || slot >= VD_LUKS_SLOTS)
        return vd_err(VD_EINVAL, "%s: LUKS key slot %d does not exist", io->name, slot);
    if (!h->slots[slot].active)
        return vd_err(VD_ENOENT, "%s: LUKS key slot %d is not in use", io->name, slot);
    int active = 0;
    for (int i = 0; i < VD_LUKS_SLOTS; i++)
        active += h->slots[i].active;
    if (active == 1)
        return vd_err(VD_EPERM, "%s: refusing to remove the last active LUKS key slot",
                      io->name);
    /* the header first, so that a crash leaves a slot unused rather than half erased */
    struct vd_luks_header next = *h;
    next.slots[slot].active = false;
    next.slots[slot].iterations = 0;
    memset(next.slots[slot].salt, 0, SALT_LEN);
    int rc = write_header(&next, io);
    if (rc < 0)
        return rc;
    *h = next;
    const size_t split_len = (size_t)h->key_bytes * h->slots[slot].stripes;
    uint8_t *noise = malloc(split_len);
    if (!noise)
        return vd_err(VD_ENOMEM, "%s: out of memory", io->name);
    gcry_randomize(noise, split_len, GCRY_WEAK_RANDOM);
    rc = io->write(io->ctx, (uint64_t)h->slots[slot].key_offset * VD_CRYPTO_SECTOR, noise,
                   split_len);
    free(noise);
    return rc;
}
