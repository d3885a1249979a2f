/*
 * Shared pieces of the libFuzzer targets: opening the fuzz input as an image
 * through the in-memory file layer, bounded whole-disk reads, a bounded
 * block-status walk, and the API-contract assertions that turn a silent
 * misbehaviour into a crash libFuzzer can report.
 *
 * A target built with -DFUZZ_FORMAT='"qcow2"' opens every input as that
 * format; without it the format is probed.
 */
#ifndef VD_FUZZ_COMMON_H
#define VD_FUZZ_COMMON_H

#include <libvdisk/libvdisk.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "memfile.h"

#ifdef FUZZ_FORMAT
#define FUZZ_OPEN_FORMAT FUZZ_FORMAT
#else
#define FUZZ_OPEN_FORMAT NULL
#endif

/* Whole-disk reads up to this size; larger disks are sampled. */
#define FUZZ_FULL_READ_MAX  (64u << 20)
#define FUZZ_SAMPLE_REGIONS 256
#define FUZZ_MAX_EXTENTS    10000

/* Abort (a crash for libFuzzer) with a message when an API contract is broken. */
#define FUZZ_ASSERT(cond, ...)                                                 \
    do {                                                                       \
        if (!(cond))                                                           \
            fuzz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                 \
    } while (0)
void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));

/* Every error a call returns must be one of the table's codes. */
void fuzz_check_rc(int rc, const char *call);

/* A vd_check report callback that prints each line when FUZZ_VERBOSE=1 (for diagnosis). */
void fuzz_report(void *ctx, const char *message);
/* Print when FUZZ_VERBOSE=1. */
void fuzz_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Install the in-memory opener; call from LLVMFuzzerInitialize or the first input. */
void fuzz_init(void);

/*
 * Serve data as MEMFILE_IMAGE and open it read-only (VD_OPEN_CONFINED |
 * VD_OPEN_NO_LOCK, plus extra_flags) as format (NULL: probe), at snapshot
 * (NULL: the active state). An image whose backing file cannot be opened (it
 * never can: the layer refuses it) is opened again with VD_OPEN_NO_BACKING
 * so that the rest of it is still exercised. Returns 0 or the open error.
 */
int fuzz_open(vd_image **img, const uint8_t *data, size_t size, const char *format,
              const char *snapshot, uint32_t extra_flags);
/*
 * Open MEMFILE_IMAGE (already served writable) read-write as format (NULL: probe),
 * confined and without locks; retried without its backing chain when that
 * cannot be opened, and with VD_OPEN_REPAIR when the image is marked corrupt.
 * *flags gets the flags of the last attempt. Returns 0 or the open error.
 */
int fuzz_open_rw(vd_image **img, const char *format, uint32_t *flags);

/*
 * Opening costs time bounded by the metadata in the file (a few MiB at most
 * here), never by what a table claims: an open that takes more CPU time than
 * this is a hang in the making and breaks the contract.
 */
#define FUZZ_OPEN_CPU_SECONDS 1.0

/*
 * Encrypted images (luks) open with this passphrase, the one make_corpus.sh
 * gives its seeds, so that key slots are unlocked and the payload decrypted;
 * a header may ask for at most this many PBKDF2 iterations per key.
 */
#define FUZZ_PASSPHRASE "fuzz"
#define FUZZ_LUKS_MAX_ITERATIONS 20000u

/*
 * Check img, repairing everything when repair is set. True when the image is
 * clean afterwards (raw, which has nothing to check, is clean); a repair that
 * reports nothing left must be confirmed by a fresh check.
 */
bool fuzz_check_clean(vd_image *img, bool repair);

/*
 * Check findings that valid writes may cause on a clean image, as in QEMU:
 * - a cluster two L2 entries shared (refcount 2, which checks clean) is
 *   written through one of them, and the other is left with refcount 1 but
 *   without the COPIED flag. Only a missed optimisation (a needless copy on
 *   the next write); COPIED set on a shared cluster, the dangerous direction,
 *   stays an error.
 * - a cluster past the end of the file had a refcount but no reference (the
 *   check leaves refcounts there alone); allocations go past it, so once the
 *   file has grown over it, it is a leak.
 * fuzz_count_benign is a vd_check report callback counting them into a struct
 * fuzz_benign whose old_end is the clusters of the file before writing.
 */
struct fuzz_benign {
    uint64_t corruptions, leaks;
    uint64_t old_end;
};
void fuzz_count_benign(void *ctx, const char *message);

/* Close and check that no file handle leaked; forgets the in-memory files. */
void fuzz_close(vd_image *img);

/* Getters: info, properties, size, backing; checks their invariants. */
void fuzz_getters(vd_image *img);
/*
 * Read the virtual disk: all of it up to FUZZ_FULL_READ_MAX, else
 * FUZZ_SAMPLE_REGIONS regions spread over it (unaligned ones included).
 * Stops at the first poisoning error.
 */
void fuzz_read_disk(vd_image *img);
/* Read up to max_regions regions spread over the disk (for snapshot views). */
void fuzz_read_sample(vd_image *img, unsigned max_regions);
/*
 * Walk vd_block_status from 0 for at most FUZZ_MAX_EXTENTS extents, checking
 * that extents are well formed and that the first zero_check_bytes of
 * extents flagged VD_EXTENT_ZERO do read as zeroes.
 */
void fuzz_block_status_walk(vd_image *img, uint64_t zero_check_bytes);

#endif
