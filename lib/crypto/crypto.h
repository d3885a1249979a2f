/*
 * Disk encryption behind one small interface (libgcrypt underneath):
 *
 *  - a sector cipher (struct vd_crypto): a cipher, a mode, an IV generator
 *    and a key, that encrypts or decrypts a run of 512-byte sectors in place
 *    given the number of the first sector, which seeds the IVs. Callers
 *    choose that number as QEMU does: the guest sector for the standalone
 *    luks format and for legacy qcow/qcow2 AES, the host offset / 512 for
 *    qcow2 with LUKS. One cipher may be used from several threads at once.
 *  - LUKS1 headers (lib/crypto/luks.c): parse, unlock a key slot with a
 *    passphrase, create a new header, add and remove key slots. The header
 *    and its key material are read and written through a caller's I/O
 *    callbacks, at offsets relative to the header's start, so that a format
 *    can keep them anywhere (the start of a luks file, qcow2's
 *    full-disk-encryption header clusters).
 *  - legacy qcow AES-CBC (vd_crypto_new_qcow_aes()).
 *
 * Keys live in libgcrypt's secure memory and are wiped when freed.
 */
#ifndef VD_CRYPTO_CRYPTO_H
#define VD_CRYPTO_CRYPTO_H

#ifndef VD_BUILDING_LIBRARY
#error "lib/crypto/crypto.h is internal to libvdisk"
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/options.h"

#define VD_CRYPTO_SECTOR 512u

/* ------------------------------------------------------------ sector ciphers */

struct vd_crypto;

/*
 * Encrypt or decrypt len bytes of buf in place (whole sectors; only LUKS key
 * material ends in part of one); the first
 * sector's IV comes from sector, the next from sector + 1, and so on.
 */
int vd_crypto_encrypt(struct vd_crypto *c, uint64_t sector, void *buf, size_t len);
int vd_crypto_decrypt(struct vd_crypto *c, uint64_t sector, void *buf, size_t len);
/* Wipe the key and free the cipher; NULL is allowed. */
void vd_crypto_free(struct vd_crypto *c);

/*
 * The legacy qcow/qcow2 AES cipher: AES-128-CBC, the key the passphrase's
 * first 16 bytes padded with zeroes, plain64 IVs. Weak (no key derivation,
 * a predictable IV): for reading and writing old images only.
 */
int vd_crypto_new_qcow_aes(struct vd_crypto **out, const char *passphrase);

/* ------------------------------------------------------------------- LUKS1 */

#define VD_LUKS_SLOTS 8
#define VD_LUKS_HEADER_BYTES 592u /* the on-disk phdr, key slots included */

struct vd_luks_slot {
    bool active;
    uint32_t iterations;
    uint8_t salt[32];
    uint32_t key_offset; /* sectors from the header's start */
    uint32_t stripes;
};

/* A parsed header: every field checked (vd_luks_parse()). */
struct vd_luks_header {
    char cipher_name[33]; /* "aes" */
    char cipher_mode[33]; /* "xts-plain64", "cbc-essiv:sha256", ... */
    char hash_spec[33];   /* "sha256" */
    uint32_t payload_offset; /* sectors from the header's start */
    uint32_t key_bytes;
    uint8_t mk_digest[20];
    uint8_t mk_digest_salt[32];
    uint32_t mk_digest_iterations;
    char uuid[41];
    struct vd_luks_slot slots[VD_LUKS_SLOTS];
};

/* Where a header lives: offsets are bytes from the header's start. */
struct vd_luks_io {
    int (*read)(void *ctx, uint64_t off, void *buf, size_t len);
    int (*write)(void *ctx, uint64_t off, const void *buf, size_t len);
    void *ctx;
    const char *name; /* for messages: the image's path */
};

/*
 * The most PBKDF2 iterations a header may ask for (a slot's or the master
 * key digest's), 2^26: so that a hostile header cannot stall an open for
 * long, while QEMU's images (2 s of PBKDF2 by default) stay far below.
 * Fuzz targets lower it.
 */
extern uint32_t vd_luks_max_iterations;

/* Whether buf starts with a LUKS version 1 header's magic and version. */
bool vd_luks_probe(const uint8_t *buf, size_t len);

/*
 * Parse and check the first VD_LUKS_HEADER_BYTES of buf: known cipher,
 * mode, IV generator and hash names, a key size the cipher takes, key
 * slots that lie between the header and the payload without overlapping,
 * stripes and iteration counts within QEMU's limits. A bad header fails
 * with VD_ECORRUPT, one we cannot handle with VD_EUNSUPPORTED.
 */
int vd_luks_parse(struct vd_luks_header *h, const uint8_t *buf, size_t len, const char *name);

/*
 * Try every active key slot with passphrase; on success *out is the
 * payload cipher (and *slot, if not NULL, the slot that opened). A
 * passphrase that opens no slot fails with VD_EKEY.
 */
int vd_luks_unlock(const struct vd_luks_header *h, const struct vd_luks_io *io,
                   const char *passphrase, struct vd_crypto **out, int *slot);

/* What a new header looks like: QEMU's luks create options. */
struct vd_luks_params {
    const char *cipher_alg;     /* "aes-256" */
    const char *cipher_mode;    /* "xts" */
    const char *ivgen_alg;      /* "plain64" */
    const char *ivgen_hash_alg; /* for essiv: "sha256" */
    const char *hash_alg;       /* "sha256" */
    uint64_t iter_time_ms;      /* PBKDF2 time per key, as QEMU measures it: 2000 */
};

/*
 * The parameters named in opts, with QEMU's defaults for the rest, keys as
 * qemu-img spells them after prefix ("" for luks, "encrypt." for qcow2).
 * Points into opts. A bad iter-time fails with VD_EINVAL here, unknown
 * algorithm names in vd_luks_create().
 */
int vd_luks_params_from_kv(struct vd_luks_params *p, const struct vd_kv *opts,
                           const char *prefix);

/*
 * Write a new header with one active key slot (slot 0) for passphrase and
 * a random master key; *out (if not NULL) is its payload cipher and *h the
 * header written. The payload starts at h->payload_offset sectors.
 */
int vd_luks_create(const struct vd_luks_params *p, const char *passphrase,
                   const struct vd_luks_io *io, struct vd_luks_header *h,
                   struct vd_crypto **out);

/* The bytes a header made with p takes, key material included (its payload offset). */
int vd_luks_payload_bytes(const struct vd_luks_params *p, uint64_t *bytes);

/*
 * Key slots: put new_passphrase in a free slot (slot -1: the first free
 * one) for the master key of unlocked (the payload cipher vd_luks_unlock()
 * gave); or deactivate a slot (its key material then overwritten with
 * random bytes). The last active slot is never removed (VD_EPERM). Both
 * rewrite the header through io and update *h.
 */
int vd_luks_add_slot(struct vd_luks_header *h, const struct vd_luks_io *io,
                     const struct vd_crypto *unlocked, const char *new_passphrase,
                     uint64_t iter_time_ms, int slot);
int vd_luks_remove_slot(struct vd_luks_header *h, const struct vd_luks_io *io, int slot);
/* The active slots passphrase opens, as a bit mask (bit i: slot i), into *slots. */
int vd_luks_find_slots(const struct vd_luks_header *h, const struct vd_luks_io *io,
                       const char *passphrase, unsigned *slots);

#endif
