/*
 * lib/codec from the inside: qcow2's raw deflate (4 KiB window) stores
 * random clusters as they are (VD_CODEC_NO_GAIN: the incompressibility
 * test says so without compressing them), and compresses, and round-trips,
 * clusters whose bytes are evenly spread but repeat (which a byte count
 * alone would take for random) and text. Links the internal archive.
 */
#include "common.h"
#include "core/internal.h"
#include "codec/codec.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { CLUSTER = 65536 };

static uint8_t src[CLUSTER], comp[2 * CLUSTER], back[CLUSTER];

/* A fixed xorshift stream: random bytes, the same each run. */
static void fill_random(uint8_t *p, size_t len)
{
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)(x >> 32);
    }
}

/* src compresses with raw deflate, to less than half, and inflates back to itself. */
static void assert_round_trip(void)
{
    size_t len = 0;
    ck_assert_int_eq(vd_codec_compress(VD_CODEC_DEFLATE, src, CLUSTER, comp, CLUSTER, &len), 0);
    ck_assert_uint_lt(len, CLUSTER / 2);
    ck_assert_int_eq(vd_codec_decompress(VD_CODEC_DEFLATE, comp, len, back, CLUSTER), 0);
    ck_assert_mem_eq(back, src, CLUSTER);
}

START_TEST(random_cluster_is_stored)
{
    fill_random(src, CLUSTER);
    size_t len = 0;
    ck_assert_int_eq(vd_codec_compress(VD_CODEC_DEFLATE, src, CLUSTER, comp, CLUSTER, &len),
                     VD_CODEC_NO_GAIN);
}
END_TEST

START_TEST(even_bytes_that_repeat_compress)
{
    for (size_t i = 0; i < CLUSTER; i++) /* 0, 1, ..., 255, 0, 1, ...: every byte value as often */
        src[i] = (uint8_t)i;
    assert_round_trip();
    /* random bytes with one 32-byte random string every 128 bytes */
    fill_random(src, CLUSTER);
    for (size_t i = 128; i + 32 <= CLUSTER; i += 128)
        memcpy(src + i, src, 32);
    size_t len = 0;
    ck_assert_int_eq(vd_codec_compress(VD_CODEC_DEFLATE, src, CLUSTER, comp, CLUSTER, &len), 0);
    ck_assert_uint_lt(len, CLUSTER);
    ck_assert_int_eq(vd_codec_decompress(VD_CODEC_DEFLATE, comp, len, back, CLUSTER), 0);
    ck_assert_mem_eq(back, src, CLUSTER);
}
END_TEST

START_TEST(text_compresses)
{
    size_t n = 0;
    for (unsigned i = 0; n < CLUSTER; i++) {
        char line[80];
        int k = snprintf(line, sizeof line, "%06u the quick brown fox jumps over the lazy dog %u\n",
                         i, i * 7919 % 1000);
        size_t take = CLUSTER - n < (size_t)k ? CLUSTER - n : (size_t)k;
        memcpy(src + n, line, take);
        n += take;
    }
    assert_round_trip();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("codec");
    TCase *tc = tcase_create("deflate");
    tcase_add_test(tc, random_cluster_is_stored);
    tcase_add_test(tc, even_bytes_that_repeat_compress);
    tcase_add_test(tc, text_compresses);
    suite_add_tcase(s, tc);
    return vt_run_suite(s);
}
