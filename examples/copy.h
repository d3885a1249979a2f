/*
 * The image copy behind 'vdisk convert': data only where the source has
 * data, all-zero blocks left out so that the destination stays sparse. An
 * overlay destination gets only what differs from its backing image.
 */
#ifndef VDISK_COPY_H
#define VDISK_COPY_H

#include "progress.h"

#include <libvdisk/libvdisk.h>
#include <stddef.h>
#include <stdint.h>

struct copy_params {
    vd_image *src;
    vd_image *dst;         /* freshly created: reads as zeroes, or as base, everywhere */
    uint64_t size;         /* bytes to copy from offset 0 */
    size_t sparse_block;   /* skip all-zero blocks of this size; 0 writes everything */
    /*
     * The destination's backing image, or NULL. Then each compare_block of
     * the source that reads the same in base is left unallocated; the others
     * are written, all-zero ones as zeroes. sparse_block does not apply.
     */
    vd_image *base;
    size_t compare_block;
    struct progress *progress;
};

/* Where and why a copy failed; message is the library's, from the failing thread. */
struct copy_error {
    const char *action;    /* "reading", "writing", ... */
    uint64_t offset;
    char message[512];
};

/* Returns 0, or a negative VD_E* code with *err describing the failure. */
int copy_image(const struct copy_params *params, struct copy_error *err);

#endif /* VDISK_COPY_H */
