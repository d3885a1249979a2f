/* zlib (raw deflate, 4 KiB window as QEMU writes it) and zstd decompression. */
#include "core/internal.h"
#include "codec/codec.h"

#include <zlib.h>
#ifdef VD_HAVE_ZSTD
#include <zstd.h>
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
