/*
 * LUKS1's anti-forensic splitter: a key spread over many stripes, so that
 * erasing any part of the stripes destroys the key.
 */
#ifndef VD_CRYPTO_AF_H
#define VD_CRYPTO_AF_H

#include <stddef.h>
#include <stdint.h>

/* Spread key (key_len bytes) over stripes * key_len bytes of split; hash is a GCRY_MD_*. */
int vd_af_split(int hash, const uint8_t *key, size_t key_len, uint32_t stripes, uint8_t *split);
/* Recover key (key_len bytes) from split. */
int vd_af_merge(int hash, const uint8_t *split, size_t key_len, uint32_t stripes, uint8_t *key);

#endif
