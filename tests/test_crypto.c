/*
 * lib/crypto from the inside: the legacy qcow AES cipher against a vector
 * computed with OpenSSL, LUKS1 headers created, unlocked and re-keyed in
 * memory, hostile header fields refused one by one, and the library's
 * secrets. Links the internal archive (white box); the interop suite
 * (tests/interop/test_luks.py) checks the same code against QEMU.
 */
#include "common.h"
#include "core/internal.h"
#include "core/endian.h"
#include "crypto/crypto.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --------------------------------------------------------- legacy AES */

static void unhex(const char *hex, uint8_t *out)
{
    for (size_t i = 0; hex[2 * i]; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
}

START_TEST(qcow_aes_known_vector)
{
    /* openssl enc -aes-128-cbc -nopad -K hex("secret") zero-padded -iv 05 00..00,
       over the bytes 0, 1, ..., 255, 0, 1, ... of one sector */
    uint8_t sector[512], first[32], last[16];
    for (int i = 0; i < 512; i++)
        sector[i] = (uint8_t)i;
    unhex("5b90f75250d94e497be9bfe0d07575dd56ab3c2600ac10b84fa58e2fb2c73a22", first);
    unhex("8f736f50d68c374b0d8d51f8af4514b5", last);
    struct vd_crypto *c;
    ck_assert_int_eq(vd_crypto_new_qcow_aes(&c, "secret"), 0);
    ck_assert_int_eq(vd_crypto_encrypt(c, 5, sector, sizeof sector), 0);
    ck_assert_mem_eq(sector, first, sizeof first);
    ck_assert_mem_eq(sector + 496, last, sizeof last);
    ck_assert_int_eq(vd_crypto_decrypt(c, 5, sector, sizeof sector), 0);
    for (int i = 0; i < 512; i++)
        ck_assert_uint_eq(sector[i], (uint8_t)i);
    vd_crypto_free(c);
}
END_TEST

/* ------------------------------------------------------- LUKS in memory */

/* A memory "file" that holds a header and its key material. */
struct mem {
    uint8_t *data;
    size_t size;
};

static int mem_read(void *ctx, uint64_t off, void *buf, size_t len)
{
    struct mem *m = ctx;
    if (off > m->size || len > m->size - off)
        return vd_err(VD_EIO, "read past the end");
    memcpy(buf, m->data + off, len);
    return 0;
}

static int mem_write(void *ctx, uint64_t off, const void *buf, size_t len)
{
    struct mem *m = ctx;
    if (off + len > m->size) {
        m->data = realloc(m->data, off + len);
        memset(m->data + m->size, 0, off + len - m->size);
        m->size = off + len;
    }
    memcpy(m->data + off, buf, len);
    return 0;
}

static struct mem store;
static struct vd_luks_io io = { mem_read, mem_write, &store, "mem" };

static void fresh_store(void)
{
    free(store.data);
    store = (struct mem){ 0 };
}

static struct vd_luks_params params(const char *alg, const char *mode, const char *ivgen,
                                    const char *hash)
{
    return (struct vd_luks_params){ alg, mode, ivgen, "sha256", hash, 5 };
}

/* Create a header, encrypt a sector with its cipher, and unlock it again. */
static void round_trip(struct vd_luks_params p)
{
    fresh_store();
    struct vd_luks_header h, parsed;
    struct vd_crypto *c, *again;
    ck_assert_int_eq(vd_luks_create(&p, "pass", &io, &h, &c), 0);
    ck_assert_int_eq(vd_luks_parse(&parsed, store.data, store.size, "mem"), 0);
    ck_assert_str_eq(parsed.cipher_mode, h.cipher_mode);
    uint8_t sector[1024], copy[1024];
    for (size_t i = 0; i < sizeof sector; i++)
        sector[i] = copy[i] = (uint8_t)(i * 7);
    ck_assert_int_eq(vd_crypto_encrypt(c, 99, sector, sizeof sector), 0);
    ck_assert_mem_ne(sector, copy, 512);
    ck_assert_mem_ne(sector + 512, copy + 512, 512); /* its own IV: not the first sector again */
    int slot = -1;
    ck_assert_int_eq(vd_luks_unlock(&parsed, &io, "pass", &again, &slot), 0);
    ck_assert_int_eq(slot, 0);
    ck_assert_int_eq(vd_crypto_decrypt(again, 99, sector, sizeof sector), 0);
    ck_assert_mem_eq(sector, copy, sizeof sector);
    ck_assert_int_eq(vd_luks_unlock(&parsed, &io, "wrong", &again, NULL), VD_EKEY);
    vd_crypto_free(c);
    vd_crypto_free(again);
}

START_TEST(luks_round_trips)
{
    round_trip(params("aes-256", "xts", "plain64", "sha256"));
    round_trip(params("aes-128", "cbc", "essiv", "sha1"));
    round_trip(params("aes-192", "xts", "plain", "sha512"));
    round_trip(params("aes-128", "ecb", "plain64", "sha256"));
    round_trip(params("serpent-256", "xts", "plain64", "sha256"));
}
END_TEST

START_TEST(luks_bad_params)
{
    fresh_store();
    struct vd_luks_header h;
    struct vd_luks_params p = params("aes-100", "xts", "plain64", "sha256");
    ck_assert_int_eq(vd_luks_create(&p, "pass", &io, &h, NULL), VD_EINVAL);
    p = params("aes-256", "gcm", "plain64", "sha256");
    ck_assert_int_eq(vd_luks_create(&p, "pass", &io, &h, NULL), VD_EINVAL);
    p = params("aes-256", "xts", "plain64", "whirl");
    ck_assert_int_eq(vd_luks_create(&p, "pass", &io, &h, NULL), VD_EINVAL);
    p = params("aes-256", "cbc", "essiv", "sha256");
    p.ivgen_hash_alg = "sha1"; /* 20 bytes: no AES key size */
    ck_assert_int_eq(vd_luks_create(&p, "pass", &io, &h, NULL), VD_EINVAL);
}
END_TEST

START_TEST(luks_key_slots)
{
    fresh_store();
    struct vd_luks_params p = params("aes-256", "xts", "plain64", "sha256");
    struct vd_luks_header h;
    struct vd_crypto *c;
    int slot;
    struct vd_crypto *first;
    unsigned slots;
    ck_assert_int_eq(vd_luks_create(&p, "one", &io, &h, &first), 0);
    ck_assert_int_eq(vd_luks_add_slot(&h, &io, first, "two", 5, -1), 0);
    ck_assert(h.slots[1].active);
    ck_assert_int_eq(vd_luks_add_slot(&h, &io, first, "three", 5, 1), VD_EEXIST);
    ck_assert_int_eq(vd_luks_add_slot(&h, &io, first, "one", 5, 5), 0); /* a second "one" */
    ck_assert_int_eq(vd_luks_find_slots(&h, &io, "one", &slots), 0);
    ck_assert_uint_eq(slots, (1u << 0) | (1u << 5));
    ck_assert_int_eq(vd_luks_remove_slot(&h, &io, 5), 0);
    vd_crypto_free(first);
    ck_assert_int_eq(vd_luks_unlock(&h, &io, "two", &c, &slot), 0);
    ck_assert_int_eq(slot, 1);
    vd_crypto_free(c);
    ck_assert_int_eq(vd_luks_remove_slot(&h, &io, 0), 0);
    ck_assert_int_eq(vd_luks_parse(&h, store.data, store.size, "mem"), 0);
    ck_assert(!h.slots[0].active);
    ck_assert_int_eq(vd_luks_unlock(&h, &io, "one", &c, NULL), VD_EKEY);
    ck_assert_int_eq(vd_luks_unlock(&h, &io, "two", &c, NULL), 0);
    vd_crypto_free(c);
    ck_assert_int_eq(vd_luks_remove_slot(&h, &io, 1), VD_EPERM); /* the last one */
    ck_assert_int_eq(vd_luks_remove_slot(&h, &io, 8), VD_EINVAL);
}
END_TEST

/* ------------------------------------------------------ hostile headers */

static uint8_t good[VD_LUKS_HEADER_BYTES];

static void make_good(void)
{
    fresh_store();
    struct vd_luks_params p = params("aes-256", "xts", "plain64", "sha256");
    struct vd_luks_header h;
    ck_assert_int_eq(vd_luks_create(&p, "pass", &io, &h, NULL), 0);
    memcpy(good, store.data, sizeof good);
}

static int parse_with(size_t off, const void *bytes, size_t len)
{
    uint8_t buf[VD_LUKS_HEADER_BYTES];
    memcpy(buf, good, sizeof buf);
    memcpy(buf + off, bytes, len);
    struct vd_luks_header h;
    return vd_luks_parse(&h, buf, sizeof buf, "mem");
}

static int parse_with_be32(size_t off, uint32_t v)
{
    uint8_t b[4];
    vd_put_be32(b, v);
    return parse_with(off, b, 4);
}

START_TEST(luks_hostile_fields)
{
    make_good();
    struct vd_luks_header h;
    ck_assert_int_eq(vd_luks_parse(&h, good, sizeof good, "mem"), 0);
    ck_assert_int_eq(vd_luks_parse(&h, good, 100, "mem"), VD_EFORMAT);
    ck_assert_int_eq(parse_with(6, "\0\2", 2), VD_EFORMAT);                 /* version 2 */
    ck_assert_int_eq(parse_with(8, "blowfish", 9), VD_EUNSUPPORTED);
    ck_assert_int_eq(parse_with(40, "xts-plain65", 12), VD_EUNSUPPORTED);
    ck_assert_int_eq(parse_with(40, "xts-essiv:sha9", 15), VD_EUNSUPPORTED);
    ck_assert_int_eq(parse_with(72, "sha3", 5), VD_EUNSUPPORTED);
    uint8_t unterminated[32];
    memset(unterminated, 'a', sizeof unterminated);
    ck_assert_int_eq(parse_with(72, unterminated, 32), VD_ECORRUPT);
    ck_assert_int_eq(parse_with_be32(108, 0), VD_ECORRUPT);               /* key bytes */
    ck_assert_int_eq(parse_with_be32(108, 0xffffffffu), VD_ECORRUPT);
    ck_assert_int_eq(parse_with_be32(108, 40), VD_EUNSUPPORTED);          /* no xts key of 20 */
    ck_assert_int_eq(parse_with_be32(164, 0), VD_ECORRUPT);               /* digest iterations */
    ck_assert_int_eq(parse_with_be32(164, 0xffffffffu), VD_ECORRUPT);
    ck_assert_int_eq(parse_with_be32(104, 8), VD_ECORRUPT);               /* payload over slots */
    ck_assert_int_eq(parse_with_be32(208, 0x12345678u), VD_ECORRUPT);     /* slot state */
    ck_assert_int_eq(parse_with_be32(208 + 4, 0), VD_ECORRUPT);           /* active, 0 iters */
    ck_assert_int_eq(parse_with_be32(208 + 4, 0xffffffffu), VD_ECORRUPT);
    ck_assert_int_eq(parse_with_be32(208 + 40, 0), VD_ECORRUPT);          /* material over header */
    ck_assert_int_eq(parse_with_be32(208 + 40, 0xfffffff0u), VD_ECORRUPT);/* past the payload */
    ck_assert_int_eq(parse_with_be32(208 + 48 + 40, 8), VD_ECORRUPT);     /* slot 1 on slot 0 */
    ck_assert_int_eq(parse_with_be32(208 + 44, 0xffffffffu), VD_ECORRUPT);/* stripes */
}
END_TEST

/* ---------------------------------------------------------------- secrets */

START_TEST(secrets)
{
    char *value;
    ck_assert_int_eq(vd_secret_lookup("s1", &value), VD_ENOENT);
    ck_assert_int_eq(vd_secret_add("s1", "first", 5), 0);
    ck_assert_int_eq(vd_secret_add("s1", "second", 6), 0); /* replaces */
    ck_assert_int_eq(vd_secret_lookup("s1", &value), 0);
    ck_assert_str_eq(value, "second");
    vd_secret_free(value);
    ck_assert_int_eq(vd_secret_add("s2", "a\0b", 3), VD_EINVAL);
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    ck_assert_int_eq(write(fds[1], "piped\n", 6), 6);
    close(fds[1]);
    ck_assert_int_eq(vd_secret_add_fd("s2", fds[0]), 0);
    close(fds[0]);
    ck_assert_int_eq(vd_secret_lookup("s2", &value), 0);
    ck_assert_str_eq(value, "piped\n"); /* the whole content, as qemu's file= */
    vd_secret_free(value);
    ck_assert_int_eq(vd_secret_remove("s1"), 0);
    ck_assert_int_eq(vd_secret_remove("s1"), VD_ENOENT);
    ck_assert_int_eq(vd_secret_remove("s2"), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("crypto");
    TCase *tc = tcase_create("crypto");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, qcow_aes_known_vector);
    tcase_add_test(tc, luks_round_trips);
    tcase_add_test(tc, luks_bad_params);
    tcase_add_test(tc, luks_key_slots);
    tcase_add_test(tc, luks_hostile_fields);
    tcase_add_test(tc, secrets);
    suite_add_tcase(s, tc);
    return vt_run_suite(s);
}
