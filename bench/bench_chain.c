/*
 * chain-read and snapshot-cost: what backing chains and internal snapshots
 * cost, through the C API, page cache warm. One program, two benchmarks,
 * chosen by the first argument.
 *
 * bench_chain chain-read
 *   A 1 GiB qcow2 image of random data at the bottom of a chain of CHAIN_LEN
 *   qcow2 images (the others empty overlays), read whole, sequentially,
 *   through the top image vs through the bottom image alone:
 *     chain seq-read 1M, chain seq-read 64K      target >= 0.80
 *
 * bench_chain snapshot-cost [QEMU_IMG]
 *   Fully allocated qcow2 images of 1 GiB and 4 GiB: preallocation=metadata
 *   maps every cluster in L2 (the data stay holes in the host file, which
 *   snapshots never read). One run creates a snapshot and deletes it again,
 *   which returns the image to its first state:
 *     4 GiB vs 1 GiB       the time ratio: 4 when proportional to the
 *                          metadata (and to the size); target <= 8
 *     4 GiB vs its data    snapshot create+delete vs one vd_read pass over
 *                          the image, the cheapest thing proportional to the
 *                          data; target: the snapshot >= 10x faster
 *     4 GiB vs qemu-img    open, create, close, open, delete, close vs
 *                          `qemu-img snapshot -c` then `-d` (skipped without
 *                          qemu-img); target >= 1.00
 *
 * Exits 0 whether the targets are met or not; 1 only when something is
 * functionally broken (an I/O error, a chain that does not read as its
 * bottom image, an image that is not fully allocated, fails `qemu-img check`
 * or keeps a snapshot).
 */
#include "common.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libvdisk/libvdisk.h>

#define SEED          0xc4a1u
#define CLUSTER       65536u
#define CHUNK         (1u << 20)
#define CHAIN_LEN     8u             /* images in the chain, the bottom one included */
#define SNAPSHOT      "bench"
#define BIG_FACTOR    4              /* the large snapshot image is this many times the small one */

#define TARGET_CHAIN  0.80           /* chain / bottom alone */
#define MAX_SCALING   8.0            /* time(big) / time(small) */
#define TARGET_DATA   10.0           /* snapshot create+delete / one read of the data */
#define TARGET_QEMU   1.0            /* libvdisk / qemu-img */

/* ------------------------------------------------ sequential reading */

struct read_job {
    vd_image *img;
    const char *path;
    uint64_t size;
    size_t request; /* bytes per vd_read */
    void *buf;
};

/* One run: read the whole image front to back. */
static int read_whole(void *ctx, unsigned round, double *seconds)
{
    const struct read_job *j = ctx;
    (void)round;
    double t0 = bench_now();
    for (uint64_t off = 0; off < j->size; off += j->request)
        if (vd_read(j->img, off, j->buf, j->request, 0) < 0)
            return bench_lib_error("reading", j->path);
    *seconds = bench_now() - t0;
    return 0;
}

/* ------------------------------------------------------ chain-read */

static void fill_random(void *rng, unsigned char *buf, size_t len, uint64_t off)
{
    (void)off;
    bench_fill_random(rng, buf, len);
}

/* A qcow2 image of size bytes of seeded random data, written through libvdisk. */
static int make_data_image(const char *path, uint64_t size)
{
    struct bench_rng rng = { SEED };
    return bench_write_image(path, "qcow2", size, "cluster_size=65536", fill_random, &rng);
}

/*
 * An empty qcow2 overlay of backing. All scratch files share one directory,
 * so the overlay names its backing file relatively: its bare name, which
 * needs no escaping in the option list (mkstemp names are alphanumeric).
 */
static int make_overlay(const char *path, const char *backing)
{
    const char *slash = strrchr(backing, '/');
    char options[256];
    snprintf(options, sizeof options, "backing_file=%s,backing_fmt=qcow2",
             slash ? slash + 1 : backing);
    return vd_create(path, "qcow2", 0, options, 0) < 0 ? bench_lib_error("creating", path) : 0;
}

/* paths[0] is the bottom image (with the data), paths[CHAIN_LEN - 1] the top. */
static int make_chain(char *paths[CHAIN_LEN], uint64_t size)
{
    for (unsigned i = 0; i < CHAIN_LEN; i++)
        if (!(paths[i] = bench_scratch_file()))
            return -1;
    if (make_data_image(paths[0], size) < 0)
        return -1;
    for (unsigned i = 1; i < CHAIN_LEN; i++)
        if (make_overlay(paths[i], paths[i - 1]) < 0)
            return -1;
    return 0;
}

/* The top must map everything to the bottom image's data and read exactly as it. */
static int verify_chain(const struct read_job *top, const struct read_job *bottom)
{
    vd_extent ext;
    for (uint64_t off = 0; off < top->size; off += ext.length) {
        if (vd_block_status(top->img, off, top->size - off, &ext, 0) < 0)
            return bench_lib_error("querying", top->path);
        if (!(ext.flags & VD_EXTENT_DATA) || ext.depth != CHAIN_LEN - 1) {
            fprintf(stderr, "%s at %" PRIu64 ": flags 0x%x at depth %d, not data at depth %u\n",
                    top->path, off, ext.flags, ext.depth, CHAIN_LEN - 1);
            return -1;
        }
    }
    unsigned char *a = bench_alloc(CHUNK), *b = bench_alloc(CHUNK);
    int rc = 0;
    for (uint64_t off = 0; off < top->size && rc == 0; off += CHUNK) {
        if (vd_read(top->img, off, a, CHUNK, 0) < 0)
            rc = bench_lib_error("reading", top->path);
        else if (vd_read(bottom->img, off, b, CHUNK, 0) < 0)
            rc = bench_lib_error("reading", bottom->path);
        else if (memcmp(a, b, CHUNK) != 0) {
            fprintf(stderr, "%s reads differently from its bottom image at %" PRIu64 "+1M\n",
                    top->path, off);
            rc = -1;
        }
    }
    free(a);
    free(b);
    return rc;
}

static enum bench_verdict chain_figure(struct read_job *top, struct read_job *bottom,
                                       size_t request, const char *title, unsigned rounds)
{
    top->request = bottom->request = request;
    const struct bench_side sides[2] = {
        { "chain of 8", read_whole, top },
        { "bottom alone", read_whole, bottom },
    };
    const struct bench_figure fig = { title, (double)top->size, 1e9, "GB/s", TARGET_CHAIN };
    return bench_compare(&fig, sides, rounds);
}

static int chain_read(unsigned rounds)
{
    uint64_t size = bench_image_bytes(1024);
    printf("chain-read: libvdisk %s, %" PRIu64 " MiB of data at the bottom of %u qcow2 images "
           "in %s (page cache warm), median of %u rounds\n", vd_version(), size >> 20, CHAIN_LEN,
           bench_tmpdir(), rounds);
    fflush(stdout);
    char *paths[CHAIN_LEN] = { NULL };
    vd_image *top = NULL, *bottom = NULL;
    int rc = make_chain(paths, size);
    if (rc == 0 && vd_open(&top, paths[CHAIN_LEN - 1], "qcow2", 0) < 0)
        rc = bench_lib_error("opening", paths[CHAIN_LEN - 1]);
    if (rc == 0 && vd_open(&bottom, paths[0], "qcow2", 0) < 0)
        rc = bench_lib_error("opening", paths[0]);
    void *buf = bench_alloc(CHUNK);
    struct read_job top_job = { top, paths[CHAIN_LEN - 1], size, CHUNK, buf };
    struct read_job bottom_job = { bottom, paths[0], size, CHUNK, buf };
    if (rc == 0)
        rc = verify_chain(&top_job, &bottom_job);
    unsigned pass = 0, n = 0;
    if (rc == 0)
        rc = bench_tally(chain_figure(&top_job, &bottom_job, CHUNK, "chain seq-read 1M", rounds), &pass, &n);
    if (rc == 0)
        rc = bench_tally(chain_figure(&top_job, &bottom_job, 64 << 10, "chain seq-read 64K", rounds), &pass, &n);
    if (rc == 0)
        printf("chain-read: %u of %u figures PASS\n", pass, n);
    free(buf);
    vd_close(top);
    vd_close(bottom);
    for (unsigned i = 0; i < CHAIN_LEN && paths[i]; i++) {
        bench_remove_scratch(paths[i]);
        free(paths[i]);
    }
    return rc;
}

/* --------------------------------------------------- snapshot-cost */

struct snap_image {
    const char *path;
    uint64_t size;
    vd_image *img; /* open read-write, or NULL while closed */
};

/* Every cluster of the image must be mapped to data in the image itself. */
static int verify_allocated(const struct snap_image *s)
{
    vd_extent ext;
    for (uint64_t off = 0; off < s->size; off += ext.length) {
        if (vd_block_status(s->img, off, s->size - off, &ext, 0) < 0)
            return bench_lib_error("querying", s->path);
        if (!(ext.flags & VD_EXTENT_DATA) || ext.depth != 0 || ext.host_offset == VD_NO_HOST_OFFSET) {
            fprintf(stderr, "%s is not fully allocated: flags 0x%x at %" PRIu64 "\n", s->path,
                    ext.flags, off);
            return -1;
        }
    }
    return 0;
}

static int make_allocated_image(struct snap_image *s)
{
    if (vd_create(s->path, "qcow2", s->size, "cluster_size=65536,preallocation=metadata", 0) < 0)
        return bench_lib_error("creating", s->path);
    if (vd_open(&s->img, s->path, "qcow2", VD_OPEN_RDWR) < 0)
        return bench_lib_error("opening", s->path);
    return verify_allocated(s);
}

static int create_snapshot(vd_image *img, const char *path)
{
    return vd_snapshot_create(img, SNAPSHOT, 0) < 0 ? bench_lib_error("creating a snapshot in", path) : 0;
}

static int delete_snapshot(vd_image *img, const char *path)
{
    return vd_snapshot_delete(img, SNAPSHOT, 0) < 0 ? bench_lib_error("deleting a snapshot in", path) : 0;
}

/* One run: create and delete a snapshot on the open image. */
static int snapshot_cycle(void *ctx, unsigned round, double *seconds)
{
    const struct snap_image *s = ctx;
    (void)round;
    double t0 = bench_now();
    if (create_snapshot(s->img, s->path) < 0 || delete_snapshot(s->img, s->path) < 0)
        return -1;
    *seconds = bench_now() - t0;
    return 0;
}

/* Open the image read-write, run op, close (flushing) it, as one qemu-img command does. */
static int in_own_open(const struct snap_image *s, int (*op)(vd_image *, const char *))
{
    vd_image *img;
    if (vd_open(&img, s->path, "qcow2", VD_OPEN_RDWR) < 0)
        return bench_lib_error("opening", s->path);
    int rc = op(img, s->path);
    if (vd_close(img) < 0 && rc == 0)
        rc = bench_lib_error("closing", s->path);
    return rc;
}

/* One run, as two qemu-img commands would do it: create, then delete, each opening the image. */
static int reopening_cycle(void *ctx, unsigned round, double *seconds)
{
    const struct snap_image *s = ctx;
    (void)round;
    double t0 = bench_now();
    if (in_own_open(s, create_snapshot) < 0 || in_own_open(s, delete_snapshot) < 0)
        return -1;
    *seconds = bench_now() - t0;
    return 0;
}

struct qemu_job {
    const char *qemu_img;
    const char *path;
};

static int qemu_cycle(void *ctx, unsigned round, double *seconds)
{
    const struct qemu_job *j = ctx;
    (void)round;
    char *create[] = { (char *)j->qemu_img, "snapshot", "-q", "-c", SNAPSHOT,
                       (char *)j->path, NULL };
    char *delete[] = { (char *)j->qemu_img, "snapshot", "-q", "-d", SNAPSHOT,
                       (char *)j->path, NULL };
    double t0 = bench_now();
    if (bench_command(create, NULL, 0, 0) < 0 || bench_command(delete, NULL, 0, 0) < 0)
        return -1;
    *seconds = bench_now() - t0;
    return 0;
}

/*
 * The time of the big image against the small one. Not a bench_compare()
 * figure: the two do different amounts of work, and the target is an upper
 * bound on the time ratio (a smaller one, fixed costs such as syncs
 * dominating, is only better).
 */
static enum bench_verdict scaling_figure(struct snap_image *big, struct snap_image *small,
                                         unsigned rounds)
{
    const struct bench_side sides[2] = {
        { "big", snapshot_cycle, big },
        { "small", snapshot_cycle, small },
    };
    double *seconds[2] = { malloc(rounds * sizeof(double)), malloc(rounds * sizeof(double)) };
    double *ratio = malloc(rounds * sizeof(double));
    enum bench_verdict v = BENCH_BROKEN;
    if (!seconds[0] || !seconds[1] || !ratio)
        perror("malloc");
    else if (bench_interleave(sides, rounds, seconds) == 0) {
        for (unsigned r = 0; r < rounds; r++)
            ratio[r] = seconds[0][r] / seconds[1][r];
        double t_big = bench_median(seconds[0], rounds), t_small = bench_median(seconds[1], rounds);
        double ratio_med = bench_median(ratio, rounds);
        v = ratio_med <= MAX_SCALING ? BENCH_PASS : BENCH_MISS;
        printf("snapshot create+delete %" PRIu64 "M vs %" PRIu64 "M: %.2f ms, %.2f ms "
               "(%.0f, %.0f ns per cluster), time ratio %.2f (%d if proportional to the metadata; "
               "target <= %.2f) %s\n", big->size >> 20, small->size >> 20, t_big * 1e3,
               t_small * 1e3, t_big * 1e9 / (double)(big->size / CLUSTER),
               t_small * 1e9 / (double)(small->size / CLUSTER), ratio_med, BIG_FACTOR,
               MAX_SCALING, v == BENCH_PASS ? "PASS" : "MISS");
        fflush(stdout);
    }
    free(seconds[0]);
    free(seconds[1]);
    free(ratio);
    return v;
}

static enum bench_verdict data_figure(struct snap_image *big, unsigned rounds)
{
    void *buf = bench_alloc(CHUNK);
    struct read_job read = { big->img, big->path, big->size, CHUNK, buf };
    const struct bench_side sides[2] = {
        { "snapshot create+delete", snapshot_cycle, big },
        { "vd_read of the data", read_whole, &read },
    };
    char title[96];
    snprintf(title, sizeof title, "snapshot create+delete %" PRIu64 "M vs reading it once (GiB of image)",
             big->size >> 20);
    const struct bench_figure fig = { title, (double)big->size, 1u << 30, "GiB/s", TARGET_DATA };
    enum bench_verdict v = bench_compare(&fig, sides, rounds);
    free(buf);
    return v;
}

static enum bench_verdict qemu_figure(struct snap_image *big, const char *qemu_img, unsigned rounds)
{
    struct qemu_job qemu = { qemu_img, big->path };
    const struct bench_side sides[2] = {
        { "libvdisk", reopening_cycle, big },
        { "qemu-img snapshot", qemu_cycle, &qemu },
    };
    char title[96];
    snprintf(title, sizeof title, "snapshot create+delete %" PRIu64 "M, opening the image for each",
             big->size >> 20);
    const struct bench_figure fig = { title, 1, 1, "cycles/s", TARGET_QEMU };
    return bench_compare(&fig, sides, rounds);
}

/* After the runs: no snapshot left, and (with qemu-img) refcounts and COPIED flags consistent. */
static int verify_after(const struct snap_image *s, const char *qemu_img)
{
    vd_image *img;
    size_t count = 1;
    if (vd_open(&img, s->path, "qcow2", 0) < 0)
        return bench_lib_error("opening", s->path);
    int rc = vd_snapshot_count(img, &count) < 0 ? bench_lib_error("counting snapshots in", s->path) : 0;
    vd_close(img);
    if (rc == 0 && count) {
        fprintf(stderr, "%s keeps %zu snapshots after the runs\n", s->path, count);
        rc = -1;
    }
    char *check[] = { (char *)qemu_img, "check", "-q", "-f", "qcow2", (char *)s->path, NULL };
    if (rc == 0 && qemu_img && bench_command(check, NULL, 0, 0) < 0) {
        fprintf(stderr, "%s fails qemu-img check\n", s->path);
        rc = -1;
    }
    return rc;
}

static int snapshot_figures(struct snap_image *big, struct snap_image *small,
                            const char *qemu_img, unsigned rounds)
{
    unsigned pass = 0, n = 0;
    int rc = bench_tally(scaling_figure(big, small, rounds), &pass, &n);
    if (rc == 0)
        rc = bench_tally(data_figure(big, rounds), &pass, &n);
    /* the qemu-img figure and the checks open the images themselves */
    vd_close(big->img);
    vd_close(small->img);
    big->img = small->img = NULL;
    if (rc == 0 && qemu_img)
        rc = bench_tally(qemu_figure(big, qemu_img, rounds), &pass, &n);
    if (rc == 0)
        rc = verify_after(small, qemu_img);
    if (rc == 0)
        rc = verify_after(big, qemu_img);
    if (rc == 0)
        printf("snapshot-cost: %u of %u figures PASS%s\n", pass, n,
               qemu_img ? "" : " (1 skipped: no qemu-img)");
    return rc;
}

static int snapshot_cost(const char *qemu_candidate, unsigned rounds)
{
    uint64_t small_size = bench_image_bytes(1024);
    char version[256];
    const char *qemu_img = bench_version(qemu_candidate, version, sizeof version) == 0
                         ? qemu_candidate : NULL;
    printf("snapshot-cost: libvdisk %s, fully allocated qcow2 images (64 KiB clusters, "
           "preallocation=metadata) of %" PRIu64 " and %" PRIu64 " MiB in %s, median of %u rounds\n",
           vd_version(), small_size >> 20, BIG_FACTOR * small_size >> 20, bench_tmpdir(), rounds);
    if (qemu_img)
        printf("snapshot-cost: against %s\n", version);
    else
        printf("snapshot-cost: no qemu-img (%s): the figure against it is skipped\n", qemu_candidate);
    fflush(stdout);
    char *paths[2] = { bench_scratch_file(), bench_scratch_file() };
    struct snap_image big = { paths[0], BIG_FACTOR * small_size, NULL };
    struct snap_image small = { paths[1], small_size, NULL };
    int rc = paths[0] && paths[1] ? 0 : -1;
    if (rc == 0)
        rc = make_allocated_image(&big);
    if (rc == 0)
        rc = make_allocated_image(&small);
    if (rc == 0)
        rc = snapshot_figures(&big, &small, qemu_img, rounds);
    vd_close(big.img);
    vd_close(small.img);
    for (unsigned i = 0; i < 2 && paths[i]; i++) {
        bench_remove_scratch(paths[i]);
        free(paths[i]);
    }
    return rc;
}

/* ----------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    unsigned rounds = bench_rounds(7);
    int rc;
    const char *which = argc > 1 ? argv[1] : "";
    if (strcmp(which, "chain-read") == 0)
        rc = chain_read(rounds);
    else if (strcmp(which, "snapshot-cost") == 0)
        rc = snapshot_cost(argc > 2 ? argv[2] : "qemu-img", rounds);
    else {
        fprintf(stderr, "usage: %s chain-read | snapshot-cost [QEMU_IMG]\n", argv[0]);
        return 2;
    }
    if (rc < 0)
        fprintf(stderr, "%s: BROKEN (see above)\n", which);
    return rc < 0 ? 1 : 0;
}
