/*
 * Persistent dirty bitmaps in memory: what core keeps for every format that
 * has them. A format backend lists its bitmaps at open
 * (vd_bitmap_append), reads the bits of one on demand (bitmap_load) and
 * writes them all back (bitmaps_store); core tracks writes, answers the
 * public API and decides when to store.
 */
#ifndef VD_CORE_BITMAP_H
#define VD_CORE_BITMAP_H

#include "core/internal.h"

#define VD_BITMAP_MIN_GRANULARITY_BITS 9
#define VD_BITMAP_MAX_GRANULARITY_BITS 31
#define VD_BITMAP_MAX_NAME             1023
#define VD_BITMAP_MAX_COUNT            65535u

struct vd_bitmap {
    char *name;
    uint32_t granularity_bits;
    bool enabled;        /* "auto": records every write */
    bool inconsistent;   /* in use on disk when the image was opened: never trusted */
    uint64_t stored_at;  /* where the backend keeps its bits (qcow2: the table), 0: nowhere yet */
    uint64_t nbits;      /* one per granule of the virtual size */
    /* bit i in words[i / 64], bit i % 64; NULL until loaded. Set with atomics:
       writes on one handle may run in parallel. */
    uint64_t *words;
};

/* Bits a bitmap of granularity 2^gbits needs over size bytes. */
static inline uint64_t vd_bitmap_nbits(uint64_t size, uint32_t gbits)
{
    return (size >> gbits) + ((size & ((1ull << gbits) - 1)) != 0);
}

/* Append a bitmap the image stores (open). name is name_len bytes, not terminated. */
int vd_bitmap_append(vd_image *img, const char *name, size_t name_len, uint32_t gbits,
                     bool enabled, bool inconsistent, uint64_t stored_at);
/* Make b's bits present: allocated and, if the image stores them, read. */
int vd_bitmap_ensure_loaded(vd_image *img, struct vd_bitmap *b);
/* Load every enabled, consistent bitmap (a writable open, before the first write). */
int vd_bitmaps_load_enabled(vd_image *img);
/* Whether some bitmap records writes (then the image must mark them in use on disk). */
bool vd_bitmaps_any_enabled(const vd_image *img);
/*
 * Record a write, zero write or discard of [off, off + len) in every enabled
 * bitmap. Nothing to do when none is enabled; safe beside other writers.
 */
void vd_image_mark_dirty(vd_image *img, uint64_t off, uint64_t len);
/*
 * After the virtual size changed: every loaded bitmap covers the new size
 * (bits of a grown part clean, as QEMU truncates its bitmaps).
 */
int vd_bitmaps_fit_size(vd_image *img);
/*
 * 0 if img can take persistent bitmaps (convert --bitmaps asks before it
 * copies anything), else VD_EUNSUPPORTED with qemu-img's message.
 */
int vd_bitmaps_can_take(vd_image *img);
/* Store the bitmaps at close (the enabled ones then no longer in use), if anything needs it. */
int vd_image_store_bitmaps(vd_image *img);
void vd_bitmaps_free(vd_image *img);

/*
 * Byte k of a bitmap in the on-disk order of qcow2 (bit i of the bitmap is
 * bit i % 8 of byte i / 8): copy len bytes from byte start out of or into b.
 * Bits past nbits read as 0 and are never set.
 */
void vd_bitmap_get_bytes(const struct vd_bitmap *b, uint64_t start, uint8_t *buf, size_t len);
void vd_bitmap_set_bytes(struct vd_bitmap *b, uint64_t start, const uint8_t *buf, size_t len);

#endif
