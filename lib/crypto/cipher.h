/*
 * Inside lib/crypto: cipher, mode, IV generator and hash names as LUKS and
 * QEMU spell them, libgcrypt's setup, and building a sector cipher.
 */
#ifndef VD_CRYPTO_CIPHER_H
#define VD_CRYPTO_CIPHER_H

#include "crypto/crypto.h"

enum vd_ivgen { VD_IVGEN_NONE, VD_IVGEN_PLAIN, VD_IVGEN_PLAIN64, VD_IVGEN_ESSIV };

/* A sector cipher's recipe. */
struct vd_cipher_spec {
    int algo;       /* GCRY_CIPHER_* */
    int mode;       /* GCRY_CIPHER_MODE_* */
    size_t key_len; /* bytes of key the cipher takes (both halves for xts) */
    enum vd_ivgen ivgen;
    int ivgen_hash; /* GCRY_MD_* for essiv */
};

/* Initialise libgcrypt once (secure memory included) unless the program has. */
void vd_gcrypt_init(void);

/* GCRY_MD_* of a LUKS hash name ("sha256"), or 0 if unknown. */
int vd_hash_by_name(const char *name);

/*
 * The spec of a LUKS cipher name ("aes"), mode string ("xts-plain64",
 * "cbc-essiv:sha256", "ecb") and key size. VD_EUNSUPPORTED (message naming
 * what) when something is unknown or the key size does not fit.
 */
int vd_cipher_spec_parse(struct vd_cipher_spec *s, const char *cipher_name,
                         const char *mode_spec, size_t key_len, const char *name);

/* A sector cipher for spec with key (copied into secure memory). */
int vd_crypto_new(struct vd_crypto **out, const struct vd_cipher_spec *spec,
                  const uint8_t *key, const char *name);

/* The key of c (its length is the spec's key_len): LUKS's master key. */
const uint8_t *vd_crypto_key(const struct vd_crypto *c);

/* Secure memory for keys, wiped when freed; NULL when out of memory. */
uint8_t *vd_secure_alloc(size_t len);
void vd_secure_free(void *p, size_t len);

#endif
