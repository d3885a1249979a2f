/*
 * Compression codecs behind one small interface (zlib deflate, zstd), in the
 * stream forms qcow2 stores: raw deflate with a 4 KiB window, and zstd
 * frames. Compression keeps one stream state per thread and codec (reset,
 * not rebuilt, for each cluster), so that convert's worker threads compress
 * side by side without allocating per cluster.
 */
#ifndef VD_CODEC_H
#define VD_CODEC_H

#include <stddef.h>

/*
 * VD_CODEC_ZLIB is deflate in a zlib wrapper with a 32 KiB window, as
 * zlib's compress() writes it (VMDK streamOptimized grains); it may
 * decompress to fewer than dst_len bytes (the last grain of a disk), the
 * rest of dst then reads as zeroes.
 */
enum vd_codec { VD_CODEC_DEFLATE, VD_CODEC_ZSTD, VD_CODEC_ZLIB };

/*
 * Decompress src into exactly dst_len bytes. Trailing input past the end of
 * the stream is ignored (compressed qcow2 clusters end mid-sector).
 */
int vd_codec_decompress(enum vd_codec codec, const void *src, size_t src_len, void *dst,
                        size_t dst_len);

/*
 * Compress src into dst (at most dst_cap bytes). Returns 0 and sets
 * *dst_len, VD_CODEC_NO_GAIN when the result would not fit in dst_cap
 * (the caller then stores the data uncompressed), or a negative VD_E* code.
 */
#define VD_CODEC_NO_GAIN 1
int vd_codec_compress(enum vd_codec codec, const void *src, size_t src_len, void *dst,
                      size_t dst_cap, size_t *dst_len);

#endif
