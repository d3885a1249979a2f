/* zlib (raw deflate, 4 KiB window as QEMU writes it) and zstd: decompression and compression. */
#include "core/internal.h"
#include "codec/codec.h"

#include <pthread.h>
#include <stdlib.h>
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

/* Raw deflate, QEMU's parameters: default level, 4 KiB window, memLevel 9. */
static int deflate_raw(struct codec_states *st, const void *src, size_t src_len, void *dst,
                       size_t dst_cap, size_t *dst_len)
{
    z_stream *z = &st->deflate;
    if (!st->deflate_ready) {
        if (deflateInit2(z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
            return vd_err(VD_ENOMEM, "zlib initialisation failed");
        st->deflate_ready = true;
    } else if (deflateReset(z) != Z_OK) {
        return vd_err(VD_EIO, "zlib reset failed");
    }
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
    case VD_CODEC_ZSTD:
#ifdef VD_HAVE_ZSTD
        return zstd_frame(st, src, src_len, dst, dst_cap, dst_len);
#else
        return vd_err(VD_EUNSUPPORTED, "zstd support is not built in");
#endif
    }
    return vd_err(VD_EINVAL, "unknown codec %d", (int)codec);
}
