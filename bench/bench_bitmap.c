/*
 * bitmaps: the cost of persistent dirty bitmaps.
 *
 *   qcow2 QD1 rand-write 4K, 3 bitmaps   in-place writes with three enabled bitmaps
 *                                        (64 KiB, 1 MiB, 4 KiB) vs the same writes with
 *                                        them disabled, one image and handle
 *                                        (target >= 0.95: tracking costs <= 5%)
 *   vd_bitmap_extents, 1 TiB             the dirty and clean runs of a 64 KiB bitmap
 *                                        over a 1 TiB image with 1000 scattered dirty
 *                                        granules (target: median <= 50 ms)
 *
 * QD1: one request at a time from one thread, page cache warm; the image is
 * fully allocated, so every write goes in place.
 *
 * Exits 0 whether the targets are met or not; 1 only when something is
 * functionally broken (an I/O error, a wrong extent count).
 */
#include "common.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include <libvdisk/libvdisk.h>

#define SEED     0xb17b17u
#define BLOCK    4096u
#define QD1_OPS  100000u
#define TIB      (1ull << 40)
#define GRANULE  (64u * 1024)
#define SCATTERED 1000u

static uint64_t image_size;

static void fill_chunk(void *rng, unsigned char *buf, size_t len, uint64_t off)
{
    (void)off;
    bench_fill_random(rng, buf, len);
}

/* ------------------------------------------------------- tracking cost */

static const char *const bitmap_names[3] = { "backup-64k", "backup-1m", "backup-4k" };

/*
 * Both sides write into the same image through the same handle; one with
 * the three bitmaps enabled, the other with them disabled. Before each run
 * the image is flushed and dropped from the page cache (untimed), so that
 * both start from the same cache: the cost of a buffered 4 KiB write
 * depends on the size of the cached folio it lands in, not on libvdisk.
 */
struct qd1 {
    vd_image *img;
    const char *path;
    unsigned char *buf;
    bool tracked;
};

static int run_writes(void *ctx, unsigned round, double *seconds)
{
    const struct qd1 *q = ctx;
    for (int i = 0; i < 3; i++)
        if ((q->tracked ? vd_bitmap_enable : vd_bitmap_disable)(q->img, bitmap_names[i], 0) < 0)
            return bench_lib_error("switching a bitmap of", "qcow2 image");
    if (vd_flush(q->img, 0) < 0)
        return bench_lib_error("flushing", q->path);
    if (bench_drop_cache(q->path) < 0)
        return -1;
    struct bench_rng rng = { SEED + round };
    const uint64_t blocks = image_size / BLOCK;
    double t0 = bench_now();
    for (unsigned i = 0; i < QD1_OPS; i++)
        if (vd_write(q->img, bench_rng_below(&rng, blocks) * BLOCK, q->buf, BLOCK, 0) < 0)
            return bench_lib_error("writing", "qcow2 image");
    *seconds = bench_now() - t0;
    return 0;
}

static vd_image *open_rw(const char *path)
{
    vd_image *img = NULL;
    if (vd_open(&img, path, "qcow2", VD_OPEN_RDWR) < 0)
        bench_lib_error("opening", path);
    return img;
}

static int tracking_figure(const char *path, unsigned rounds, unsigned *pass, unsigned *n)
{
    vd_image *img = open_rw(path);
    int rc = img ? 0 : -1;
    static const uint64_t granularities[3] = { 64 * 1024, 1 << 20, 4096 };
    for (int i = 0; i < 3 && rc == 0; i++)
        if (vd_bitmap_add(img, bitmap_names[i], granularities[i], 0) < 0)
            rc = bench_lib_error("adding a bitmap to", path);
    if (rc == 0) {
        unsigned char *buf = bench_alloc(BLOCK);
        struct bench_rng rng = { SEED };
        bench_fill_random(&rng, buf, BLOCK);
        struct qd1 with = { img, path, buf, true }, without = { img, path, buf, false };
        const struct bench_side sides[2] = {
            { "3 bitmaps", run_writes, &with },
            { "none enabled", run_writes, &without },
        };
        const struct bench_figure fig = { "qcow2 QD1 rand-write 4K in place, 3 enabled bitmaps",
                                          QD1_OPS, 1e3, "kIOPS", 0.95 };
        rc = bench_tally(bench_compare(&fig, sides, rounds), pass, n);
        free(buf);
    }
    if (img && vd_close(img) < 0 && rc == 0)
        rc = bench_lib_error("closing", path);
    return rc;
}

/* ------------------------------------------------------- extents query */

struct runs {
    uint64_t dirty_runs;
    uint64_t bytes;
};

static int count_run(void *ctx, uint64_t offset, uint64_t length, int dirty)
{
    struct runs *r = ctx;
    (void)offset;
    r->dirty_runs += dirty != 0;
    r->bytes += length;
    return 0;
}

static int extents_figure(const char *path, unsigned rounds, unsigned *pass, unsigned *n)
{
    if (vd_create(path, "qcow2", TIB, NULL, 0) < 0)
        return bench_lib_error("creating", path);
    vd_image *img = open_rw(path);
    if (!img)
        return -1;
    int rc = vd_bitmap_add(img, "backup", GRANULE, 0) < 0 ? bench_lib_error("adding a bitmap to", path) : 0;
    unsigned char *buf = bench_alloc(BLOCK);
    struct bench_rng rng = { SEED };
    bench_fill_random(&rng, buf, BLOCK);
    /* granules a stride apart, so that each is a dirty run of its own */
    const uint64_t stride = TIB / SCATTERED / GRANULE * GRANULE;
    for (unsigned i = 0; i < SCATTERED && rc == 0; i++)
        if (vd_write(img, i * stride, buf, BLOCK, 0) < 0)
            rc = bench_lib_error("writing", path);
    free(buf);
    if (vd_close(img) < 0 && rc == 0)
        rc = bench_lib_error("closing", path);
    if (rc < 0 || !(img = NULL, vd_open(&img, path, "qcow2", 0) == 0))
        return rc < 0 ? rc : bench_lib_error("opening", path);
    double *seconds = calloc(rounds, sizeof *seconds);
    for (unsigned r = 0; r < rounds && rc == 0; r++) {
        struct runs runs = { 0, 0 };
        double t0 = bench_now();
        if (vd_bitmap_extents(img, "backup", 0, TIB, count_run, &runs, 0) < 0)
            rc = bench_lib_error("querying the bitmap of", path);
        seconds[r] = bench_now() - t0;
        if (rc == 0 && (runs.dirty_runs != SCATTERED || runs.bytes != TIB)) {
            fprintf(stderr, "bitmaps: %" PRIu64 " dirty runs over %" PRIu64 " bytes, expected %u over 1 TiB\n",
                    runs.dirty_runs, runs.bytes, SCATTERED);
            rc = -1;
        }
    }
    vd_close(img);
    if (rc == 0) {
        double ms = bench_median(seconds, rounds) * 1e3;
        bool met = ms <= 50.0;
        printf("vd_bitmap_extents, 1 TiB image, 64 KiB bitmap, %u dirty runs: %.2f ms (target <= 50 ms) %s\n",
               SCATTERED, ms, met ? "PASS" : "MISS");
        *pass += met;
        ++*n;
    }
    free(seconds);
    return rc;
}

int main(void)
{
    unsigned rounds = bench_rounds(5);
    image_size = bench_image_bytes(256);
    printf("bitmaps: libvdisk %s, %" PRIu64 " MiB images in %s, median of %u rounds\n", vd_version(),
           image_size >> 20, bench_tmpdir(), rounds);
    fflush(stdout);
    char *image = bench_scratch_file(), *huge = bench_scratch_file();
    int rc = image && huge ? 0 : -1;
    struct bench_rng rng = { SEED };
    if (rc == 0)
        rc = bench_write_image(image, "qcow2", image_size, "cluster_size=65536", fill_chunk, &rng);
    unsigned pass = 0, n = 0;
    if (rc == 0)
        rc = tracking_figure(image, rounds, &pass, &n);
    if (rc == 0)
        rc = extents_figure(huge, rounds, &pass, &n);
    char *scratch[2] = { image, huge };
    for (int i = 0; i < 2; i++) {
        if (scratch[i])
            bench_remove_scratch(scratch[i]);
        free(scratch[i]);
    }
    if (rc < 0) {
        fprintf(stderr, "bitmaps: BROKEN (see above)\n");
        return 1;
    }
    printf("bitmaps: %u of %u figures meet their targets\n", pass, n);
    return 0;
}
