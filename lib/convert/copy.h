/*
 * The copy behind vd_convert(): data only where the source has data,
 * all-zero blocks left out so that the destination stays sparse; an
 * overlay destination gets only what differs from its backing image.
 */
#ifndef VD_CONVERT_COPY_H
#define VD_CONVERT_COPY_H

#ifndef VD_BUILDING_LIBRARY
#error "lib/convert/copy.h is internal to libvdisk"
#endif

#include <libvdisk/libvdisk.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vd_copy_params {
    vd_image *src;
    vd_image *dst;
    uint64_t size;         /* bytes to copy from offset 0 */
    size_t sparse_block;   /* skip all-zero blocks of this size; 0 writes everything */
    /*
     * The destination reads as zeroes where nothing is written (a new image,
     * or a target known to be zero); otherwise zero runs are written as
     * zeroes. Without base only.
     */
    bool dst_reads_zero;
    /*
     * The destination's backing image, or NULL. Then each compare_block of
     * the source that reads the same in base is left unallocated; the others
     * are written, all-zero ones as zeroes. sparse_block does not apply.
     */
    vd_image *base;
    size_t compare_block;
    /*
     * Store every data cluster compressed (the destination can: see
     * vd_cow_can_compress()); data blocks are then whole destination
     * clusters, compressed by every thread, stored in image order.
     */
    bool compress;
    unsigned parallel;     /* chunks in flight, at least 1 */
    bool out_of_order;     /* write chunks as they are read, not in image order */
    vd_convert_progress_fn progress;
    void *progress_ctx;
    /* Copy only what this bitmap of src marks dirty (the rest is left alone), or NULL. */
    const char *bitmap;
};

/*
 * Copy params->size bytes. Returns 0, or a negative VD_E* code with the
 * message set ("error while reading at byte N: ..."), VD_ECANCELED when the
 * progress callback asked to stop.
 */
int vd_copy_image(const struct vd_copy_params *params);

#endif /* VD_CONVERT_COPY_H */
