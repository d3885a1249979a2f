/* Compression codecs behind one small interface (zlib deflate, zstd). */
#ifndef VD_CODEC_H
#define VD_CODEC_H

#include <stddef.h>

enum vd_codec { VD_CODEC_DEFLATE, VD_CODEC_ZSTD };

/*
 * Decompress src into exactly dst_len bytes. Trailing input past the end of
 * the stream is ignored (compressed qcow2 clusters end mid-sector).
 */
int vd_codec_decompress(enum vd_codec codec, const void *src, size_t src_len, void *dst,
                        size_t dst_len);

#endif
