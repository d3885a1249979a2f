/*
 * LUKS1's anti-forensic split (the LUKS on-disk format specification, as
 * cryptsetup and QEMU implement it): stripes 0 .. n-2 are random; a block
 * starts at zero and for each of them takes block = diffuse(block ^ stripe);
 * the last stripe is block ^ key. Merging runs the same chain and xors the
 * last stripe back out. diffuse() hashes the block in digest-sized pieces,
 * each prefixed with its big-endian index.
 */
#include "core/internal.h"
#include "core/endian.h"
#include "crypto/af.h"
#include "crypto/cipher.h"

#include <gcrypt.h>
#include <string.h>

static int diffuse(int hash, uint8_t *block, size_t len)
{
    const size_t dlen = gcry_md_get_algo_dlen(hash);
    gcry_md_hd_t md;
    if (gcry_md_open(&md, hash, GCRY_MD_FLAG_SECURE))
        return vd_err(VD_EIO, "cannot set up the LUKS hash");
    for (size_t off = 0, i = 0; off < len; off += dlen, i++) {
        size_t n = len - off < dlen ? len - off : dlen;
        uint8_t index[4];
        vd_put_be32(index, (uint32_t)i);
        gcry_md_reset(md);
        gcry_md_write(md, index, sizeof index);
        gcry_md_write(md, block + off, n);
        memcpy(block + off, gcry_md_read(md, hash), n);
    }
    gcry_md_close(md);
    return 0;
}

static void xor_into(uint8_t *dst, const uint8_t *src, size_t len)
{
    for (size_t i = 0; i < len; i++)
        dst[i] ^= src[i];
}

/* The chained block over stripes 0 .. stripes-2 into block (key_len bytes, secure). */
static int chain(int hash, const uint8_t *split, size_t key_len, uint32_t stripes, uint8_t *block)
{
    memset(block, 0, key_len);
    int rc = 0;
    for (uint32_t i = 0; rc == 0 && i + 1 < stripes; i++) {
        xor_into(block, split + (size_t)i * key_len, key_len);
        rc = diffuse(hash, block, key_len);
    }
    return rc;
}

int vd_af_split(int hash, const uint8_t *key, size_t key_len, uint32_t stripes, uint8_t *split)
{
    uint8_t *block = vd_secure_alloc(key_len);
    if (!block)
        return vd_err(VD_ENOMEM, "out of memory");
    gcry_randomize(split, (stripes - 1) * key_len, GCRY_STRONG_RANDOM);
    int rc = chain(hash, split, key_len, stripes, block);
    if (rc == 0) {
        uint8_t *last = split + (size_t)(stripes - 1) * key_len;
        memcpy(last, block, key_len);
        xor_into(last, key, key_len);
    }
    vd_secure_free(block, key_len);
    return rc;
}

int vd_af_merge(int hash, const uint8_t *split, size_t key_len, uint32_t stripes, uint8_t *key)
{
    int rc = chain(hash, split, key_len, stripes, key);
    if (rc == 0)
        xor_into(key, split + (size_t)(stripes - 1) * key_len, key_len);
    return rc;
}
