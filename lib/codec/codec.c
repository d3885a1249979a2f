/* zlib (raw deflate, 4 KiB window as QEMU writes it) and zstd: decompression and compression. */
#include "core/internal.h"
#include "codec/codec.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#ifdef VD_HAVE_ZSTD
#include <zstd.h>
#include <zstd_errors.h>
#endif

static int inflate_raw(const void *src, size_t src_len, void *dst, size_t dst_len)
{
    z_stream z = { 0 };
    if (inflateInit2(&z, -12) != Z_OK)
        return vd_err(VD_ENOMEM, "zlib initialisation failed");
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    int zr = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    /* the output buffer filling up is success even without the stream end */
    if ((zr != Z_STREAM_END && zr != Z_BUF_ERROR && zr != Z_OK) || z.avail_out != 0)
        return vd_err(VD_ECORRUPT, "invalid deflate data");
    return 0;
}

/* A zlib stream; output short of dst_len is padded with zeroes. */
static int inflate_zlib(const void *src, size_t src_len, void *dst, size_t dst_len)
{
    z_stream z = { 0 };
    if (inflateInit(&z) != Z_OK)
        return vd_err(VD_ENOMEM, "zlib initialisation failed");
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    int zr = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    if (zr != Z_STREAM_END && !(zr == Z_BUF_ERROR && z.avail_out == 0))
        return vd_err(VD_ECORRUPT, "invalid zlib data");
    memset((uint8_t *)dst + (dst_len - z.avail_out), 0, z.avail_out);
    return 0;
}

#ifdef VD_HAVE_ZSTD
static int unzstd(const void *src, size_t src_len, void *dst, size_t dst_len)
{
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    if (!dctx)
        return vd_err(VD_ENOMEM, "zstd initialisation failed");
    ZSTD_inBuffer in = { src, src_len, 0 };
    ZSTD_outBuffer out = { dst, dst_len, 0 };
    int rc = 0;
    while (out.pos < out.size) {
        size_t before_in = in.pos, before_out = out.pos;
        size_t r = ZSTD_decompressStream(dctx, &out, &in);
        if (ZSTD_isError(r)) {
            rc = vd_err(VD_ECORRUPT, "invalid zstd data: %s", ZSTD_getErrorName(r));
            break;
        }
        if (in.pos == before_in && out.pos == before_out) {
            rc = vd_err(VD_ECORRUPT, "truncated zstd data");
            break;
        }
    }
    ZSTD_freeDCtx(dctx);
    return rc;
}
#endif

int vd_codec_decompress(enum vd_codec codec, const void *src, size_t src_len, void *dst,
                        size_t dst_len)
{
    switch (codec) {
    case VD_CODEC_DEFLATE:
        return inflate_raw(src, src_len, dst, dst_len);
    case VD_CODEC_ZLIB:
        return inflate_zlib(src, src_len, dst, dst_len);
    case VD_CODEC_ZSTD:
#ifdef VD_HAVE_ZSTD
        return unzstd(src, src_len, dst, dst_len);
#else
        return vd_err(VD_EUNSUPPORTED, "zstd support is not built in");
#endif
    }
    return vd_err(VD_EINVAL, "unknown codec %d", (int)codec);
}

/* ------------------------------------------------------------- compression */

/*
 * The calling thread's compression states, freed when it exits. A deflate
 * state is about 270 KiB to set up; a cluster is often 64 KiB: reusing it
 * is what makes per-cluster compression cheap.
 */
struct codec_states {
    z_stream deflate;
    bool deflate_ready;
    z_stream sample;      /* level 1, for looks_incompressible() */
    bool sample_ready;
    z_stream zlib;        /* VD_CODEC_ZLIB */
    bool zlib_ready;
#ifdef VD_HAVE_ZSTD
    ZSTD_CCtx *zstd;
#endif
};

static pthread_key_t states_key;
static pthread_once_t states_once = PTHREAD_ONCE_INIT;

static void free_states(void *p)
{
    struct codec_states *st = p;
    if (st->deflate_ready)
        deflateEnd(&st->deflate);
    if (st->sample_ready)
        deflateEnd(&st->sample);
    if (st->zlib_ready)
        deflateEnd(&st->zlib);
#ifdef VD_HAVE_ZSTD
    ZSTD_freeCCtx(st->zstd);
#endif
    free(st);
}

static void make_states_key(void)
{
    (void)pthread_key_create(&states_key, free_states);
}

static struct codec_states *thread_states(void)
{
    pthread_once(&states_once, make_states_key);
    struct codec_states *st = pthread_getspecific(states_key);
    if (!st && (st = calloc(1, sizeof *st)) && pthread_setspecific(states_key, st) != 0) {
        free(st);
        st = NULL;
    }
    return st;
}

/*
 * Reset (or set up, at the level given) one of the thread's deflate streams:
 * raw deflate with a 4 KiB window (window_bits -12), or a zlib stream (15).
 */
static int deflate_ready_bits(z_stream *z, bool *ready, int level, int window_bits)
{
    if (*ready)
        return deflateReset(z) == Z_OK ? 0 : vd_err(VD_EIO, "zlib reset failed");
    if (deflateInit2(z, level, Z_DEFLATED, window_bits, window_bits < 0 ? 9 : 8,
                     Z_DEFAULT_STRATEGY) != Z_OK)
        return vd_err(VD_ENOMEM, "zlib initialisation failed");
    *ready = true;
    return 0;
}

static int deflate_ready(z_stream *z, bool *ready, int level)
{
    return deflate_ready_bits(z, ready, level, -12);
}

enum { SAMPLE_BYTES = 4096, SAMPLES = 3 };

/*
 * Whether a sample is plainly random: its byte values about evenly spread
 * (a chi-square statistic against the uniform spread below 400, where
 * random bytes give 255 +- 23 and text or machine code thousands) and
 * hardly any 4-byte string seen twice (random bytes: none). Such a sample
 * has nothing for deflate to find in its 4 KiB window; telling so costs a
 * tenth of running deflate over it, which on random bytes is the slow case
 * of its fast level. Anything else gets the deflate test.
 */
static bool looks_random(const uint8_t *p, size_t len)
{
    uint32_t count[256] = { 0 };
    for (size_t i = 0; i < len; i++)
        count[p[i]]++;
    uint64_t squares = 0;
    for (unsigned b = 0; b < 256; b++)
        squares += (uint64_t)count[b] * count[b];
    /* chi-square = 256 * sum(count^2) / len - len */
    if (256 * squares >= (uint64_t)len * (len + 400))
        return false;
    uint16_t seen[4096] = { 0 }; /* by a hash of the 4 bytes there: 1 + their position */
    unsigned repeats = 0;
    for (size_t i = 0; i + 4 <= len; i++) {
        uint32_t v;
        memcpy(&v, p + i, 4);
        uint16_t *slot = &seen[(v * 2654435761u) >> 20];
        if (*slot && memcmp(p + *slot - 1, p + i, 4) == 0 && ++repeats > 8)
            return false;
        *slot = (uint16_t)(i + 1);
    }
    return true;
}

/*
 * Whether the data is incompressible by the look of three 4 KiB samples
 * (start, middle, end), none of which a fast deflate shrinks at all (or
 * which are plainly random). Full deflate of incompressible data (already
 * compressed or encrypted files, random bytes) costs eight times as much as
 * of text, only to store the data as it is: the samples cost a twentieth of
 * that. Data that is incompressible at all three places almost never
 * compresses elsewhere.
 */
static bool looks_incompressible(struct codec_states *st, const uint8_t *src, size_t len)
{
    if (len < SAMPLES * SAMPLE_BYTES * 2)
        return false;
    uint8_t out[SAMPLE_BYTES];
    for (unsigned i = 0; i < SAMPLES; i++) {
        const uint8_t *sample = src + (len - SAMPLE_BYTES) / (SAMPLES - 1) * i;
        if (looks_random(sample, SAMPLE_BYTES))
            continue;
        if (deflate_ready(&st->sample, &st->sample_ready, 1) < 0)
            return false;
        z_stream *z = &st->sample;
        z->next_in = (Bytef *)sample;
        z->avail_in = SAMPLE_BYTES;
        z->next_out = out;
        z->avail_out = sizeof out;
        if (deflate(z, Z_FINISH) == Z_STREAM_END) /* it fit: the sample shrank */
            return false;
    }
    return true;
}

/* One whole buffer through a ready deflate stream: NO_GAIN when dst_cap bytes do not hold it. */
static int deflate_whole(z_stream *z, const void *src, size_t src_len, void *dst, size_t dst_cap,
                         size_t *dst_len)
{
    z->next_in = (Bytef *)src;
    z->avail_in = (uInt)src_len;
    z->next_out = dst;
    z->avail_out = (uInt)dst_cap;
    int zr = deflate(z, Z_FINISH);
    if (zr != Z_STREAM_END)
        return zr == Z_OK || zr == Z_BUF_ERROR ? VD_CODEC_NO_GAIN
                                              : vd_err(VD_EIO, "zlib compression failed");
    *dst_len = dst_cap - z->avail_out;
    return 0;
}

/* Raw deflate, QEMU's parameters: default level, 4 KiB window, memLevel 9. */
static int deflate_raw(struct codec_states *st, const void *src, size_t src_len, void *dst,
                       size_t dst_cap, size_t *dst_len)
{
    if (looks_incompressible(st, src, src_len))
        return VD_CODEC_NO_GAIN;
    z_stream *z = &st->deflate;
    int rc = deflate_ready(z, &st->deflate_ready, Z_DEFAULT_COMPRESSION);
    return rc < 0 ? rc : deflate_whole(z, src, src_len, dst, dst_cap, dst_len);
}

/* A zlib stream as compress() makes it (default level, 32 KiB window); no sampling. */
static int deflate_zlib(struct codec_states *st, const void *src, size_t src_len, void *dst,
                        size_t dst_cap, size_t *dst_len)
{
    z_stream *z = &st->zlib;
    int rc = deflate_ready_bits(z, &st->zlib_ready, Z_DEFAULT_COMPRESSION, 15);
    return rc < 0 ? rc : deflate_whole(z, src, src_len, dst, dst_cap, dst_len);
}

#ifdef VD_HAVE_ZSTD
static int zstd_frame(struct codec_states *st, const void *src, size_t src_len, void *dst,
                      size_t dst_cap, size_t *dst_len)
{
    if (!st->zstd && !(st->zstd = ZSTD_createCCtx()))
        return vd_err(VD_ENOMEM, "zstd initialisation failed");
    size_t r = ZSTD_compress2(st->zstd, dst, dst_cap, src, src_len);
    if (ZSTD_isError(r))
        return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall
               ? VD_CODEC_NO_GAIN
               : vd_err(VD_EIO, "zstd compression failed: %s", ZSTD_getErrorName(r));
    *dst_len = r;
    return 0;
}
#endif

int vd_codec_compress(enum vd_codec codec, const void *src, size_t src_len, void *dst,
                      size_t dst_cap, size_t *dst_len)
{
    struct codec_states *st = thread_states();
    if (!st)
        return vd_err(VD_ENOMEM, "out of memory");
    switch (codec) {
    case VD_CODEC_DEFLATE:
        return deflate_raw(st, src, src_len, dst, dst_cap, dst_len);
    case VD_CODEC_ZLIB:
        return deflate_zlib(st, src, src_len, dst, dst_cap, dst_len);
    case VD_CODEC_ZSTD:
#ifdef VD_HAVE_ZSTD
        return zstd_frame(st, src, src_len, dst, dst_cap, dst_len);
#else
        return vd_err(VD_EUNSUPPORTED, "zstd support is not built in");
#endif
    }
    return vd_err(VD_EINVAL, "unknown codec %d", (int)codec);
}
