/*
 * threads-write: random 4 KiB writes through ONE handle shared by 2 threads
 * against the same writes from 1 thread, page cache warm, no flushes.
 * Writes to different clusters run in parallel (lib/core shares the handle
 * between data-path writes; a request waits only for overlapping ones; an
 * allocation holds the metadata lock only while it changes the tables).
 *
 *   pwrite rand-write 4K         plain pwrite on the raw file: what this machine allows
 *   raw rand-write 4K            vd_write on a raw image
 *   qcow2 rand-write 4K          vd_write on a fully allocated qcow2 image (64 KiB clusters):
 *                                every write lands in place
 *   qcow2 (allocating) 4K        vd_write on a new, empty qcow2 image: every write
 *                                allocates its own cluster
 *
 * Each run does the same writes: all from one thread, or every other one
 * from each of two threads. The ratio is the 2-thread throughput over the
 * 1-thread throughput. Every 4 KiB block written starts with its own offset,
 * and after each figure the image must read back with every block stamped
 * so (untimed).
 *
 * Exits 0 whether the targets are met or not; 1 only when something is
 * functionally broken (an I/O error, data that does not read back).
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libvdisk/libvdisk.h>

#define SEED       0x3717eu
#define CHUNK      (1u << 20)
#define BLOCK      4096u
#define THREADS    2
#define WRITES     60000u   /* per run, in place */
#define ALLOC_CLUSTER 65536u

static uint64_t image_size;

/* Random bytes, each 4 KiB block stamped with its offset. */
static void fill_chunk(void *rng, unsigned char *buf, size_t len, uint64_t off)
{
    bench_fill_random(rng, buf, len);
    for (uint64_t pos = 0; pos < len; pos += BLOCK) {
        uint64_t stamp = off + pos;
        memcpy(buf + pos, &stamp, sizeof stamp);
    }
}

/* ------------------------------------------------------------- targets */

/* Something to write to: a libvdisk handle, or a file descriptor. */
struct target {
    const char *name;
    int (*write)(struct target *t, const void *buf, uint64_t off);
    vd_image *img;
    int fd;
    const char *path;
    bool fresh_each_run;   /* a new empty qcow2 image before every run */
    uint64_t span;         /* writes go to [0, span) */
    uint64_t stride;       /* one write per stride bytes at most (allocating: a cluster) */
    unsigned writes;       /* per run */
    double target;         /* the ratio to reach; 0 for the machine's own figure */
};

static int write_handle(struct target *t, const void *buf, uint64_t off)
{
    if (vd_write(t->img, off, buf, BLOCK, 0) == 0)
        return 0;
    fprintf(stderr, "vd_write of %s at %" PRIu64 ": %s\n", t->name, off, vd_errmsg());
    return -1;
}

static int write_fd(struct target *t, const void *buf, uint64_t off)
{
    ssize_t n = pwrite(t->fd, buf, BLOCK, (off_t)off);
    if (n == (ssize_t)BLOCK)
        return 0;
    fprintf(stderr, "pwrite at %" PRIu64 ": %s\n", off, n < 0 ? strerror(errno) : "short write");
    return -1;
}

/* ------------------------------------------------------------- writers */

struct job {
    struct target *target;
    unsigned threads;
};

struct writer {
    struct target *target;
    const uint64_t *offsets; /* every threads-th of the run's offsets, from first */
    unsigned first, step, count;
    int rc;
};

static void *write_loop(void *arg)
{
    struct writer *w = arg;
    unsigned char *buf = bench_alloc(BLOCK);
    struct bench_rng rng = { SEED + w->first };
    bench_fill_random(&rng, buf, BLOCK);
    for (unsigned i = w->first; i < w->count && w->rc == 0; i += w->step) {
        memcpy(buf, &w->offsets[i], sizeof w->offsets[i]);
        w->rc = w->target->write(w->target, buf, w->offsets[i]);
    }
    free(buf);
    return NULL;
}

/* A new empty image for a run in which every write allocates (untimed). */
static int reopen_fresh(struct target *t)
{
    if (t->img && vd_close(t->img) < 0)
        return bench_lib_error("closing", t->path);
    t->img = NULL;
    char options[64];
    snprintf(options, sizeof options, "cluster_size=%u", ALLOC_CLUSTER);
    if (vd_create(t->path, "qcow2", image_size, options, 0) < 0)
        return bench_lib_error("creating", t->path);
    if (vd_open(&t->img, t->path, "qcow2", VD_OPEN_RDWR) < 0)
        return bench_lib_error("opening", t->path);
    return 0;
}

/*
 * The run's offsets: distinct strides of the span in random order (so an
 * allocating run never writes a cluster twice), a random block inside each.
 */
static uint64_t *run_offsets(const struct target *t, unsigned round)
{
    uint64_t slots = t->span / t->stride;
    uint64_t *slot = malloc(slots * sizeof *slot);
    uint64_t *offsets = malloc(t->writes * sizeof *offsets);
    if (!slot || !offsets) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    struct bench_rng rng = { SEED ^ ((uint64_t)round << 20) };
    for (uint64_t i = 0; i < slots; i++)
        slot[i] = i;
    for (unsigned i = 0; i < t->writes; i++) { /* a partial Fisher-Yates shuffle */
        uint64_t j = i + bench_rng_below(&rng, slots - i);
        uint64_t s = slot[j];
        slot[j] = slot[i];
        offsets[i] = s * t->stride + bench_rng_below(&rng, t->stride / BLOCK) * BLOCK;
    }
    free(slot);
    return offsets;
}

static int run_writers(void *ctx, unsigned round, double *seconds)
{
    const struct job *j = ctx;
    struct target *t = j->target;
    if (t->fresh_each_run && reopen_fresh(t) < 0)
        return -1;
    uint64_t *offsets = run_offsets(t, round);
    struct writer writers[THREADS];
    pthread_t tids[THREADS];
    for (unsigned k = 0; k < j->threads; k++)
        writers[k] = (struct writer){ t, offsets, k, j->threads, t->writes, 0 };
    unsigned started = 0;
    double t0 = bench_now();
    while (started < j->threads &&
           pthread_create(&tids[started], NULL, write_loop, &writers[started]) == 0)
        started++;
    for (unsigned k = 0; k < started; k++)
        pthread_join(tids[k], NULL);
    *seconds = bench_now() - t0;
    int rc = started == j->threads ? 0 : -1;
    if (rc < 0)
        fprintf(stderr, "cannot start writer thread %u\n", started);
    for (unsigned k = 0; k < j->threads; k++)
        rc = writers[k].rc < 0 ? -1 : rc;
    free(offsets);
    return rc;
}

/* Every block written (or, in place, every block) carries its offset. */
static int verify(struct target *t)
{
    if (!t->img)
        return 0;
    unsigned char *buf = bench_alloc(CHUNK);
    int rc = 0;
    for (uint64_t off = 0; off < t->span && rc == 0; off += CHUNK) {
        if (vd_read(t->img, off, buf, CHUNK, 0) < 0) {
            rc = bench_lib_error("reading", t->path);
            break;
        }
        for (uint64_t pos = 0; pos < CHUNK && rc == 0; pos += BLOCK) {
            uint64_t stamp;
            memcpy(&stamp, buf + pos, sizeof stamp);
            bool unwritten = t->fresh_each_run && stamp == 0;
            if (stamp != off + pos && !unwritten) {
                fprintf(stderr, "%s: the block at %" PRIu64 " holds another block's data\n",
                        t->name, off + pos);
                rc = -1;
            }
        }
    }
    free(buf);
    return rc;
}

static enum bench_verdict figure(struct target *t, unsigned rounds)
{
    char title[128];
    snprintf(title, sizeof title, "%s rand-write 4K, %s", t->name,
             t->img || t->fresh_each_run ? "one handle" : "one file descriptor (the machine's limit)");
    struct job two = { t, THREADS }, one = { t, 1 };
    const struct bench_side sides[2] = {
        { "2 threads", run_writers, &two },
        { "1 thread", run_writers, &one },
    };
    const struct bench_figure fig = { title, t->writes, 1e3, "kIOPS", t->target };
    enum bench_verdict v = bench_compare(&fig, sides, rounds);
    return v != BENCH_BROKEN && verify(t) < 0 ? BENCH_BROKEN : v;
}

/* ------------------------------------------------------------------ main */

static int open_target(struct target *t, const char *format)
{
    if (vd_open(&t->img, t->path, format, VD_OPEN_RDWR) < 0)
        return bench_lib_error("opening", t->path);
    return 0;
}

static int run_all(char *raw_path, char *qcow2_path, char *fresh_path, unsigned rounds)
{
    uint64_t alloc_writes = image_size / ALLOC_CLUSTER;
    struct target targets[] = {
        { "pwrite", write_fd, NULL, open(raw_path, O_WRONLY), raw_path, false, image_size,
          BLOCK, WRITES, 0 },
        { "raw", write_handle, NULL, -1, raw_path, false, image_size, BLOCK, WRITES, 0 },
        { "qcow2", write_handle, NULL, -1, qcow2_path, false, image_size, BLOCK, WRITES, 1.5 },
        { "qcow2 (allocating)", write_handle, NULL, -1, fresh_path, true, image_size,
          ALLOC_CLUSTER, (unsigned)(alloc_writes < WRITES ? alloc_writes : WRITES), 1.3 },
    };
    int rc = targets[0].fd < 0 ? -1 : 0;
    if (rc < 0)
        fprintf(stderr, "%s: %s\n", raw_path, strerror(errno));
    if (rc == 0)
        rc = open_target(&targets[1], "raw");
    if (rc == 0)
        rc = open_target(&targets[2], "qcow2");
    unsigned pass = 0, n = 0;
    for (size_t i = 0; i < sizeof targets / sizeof targets[0] && rc == 0; i++) {
        enum bench_verdict v = figure(&targets[i], rounds);
        if (targets[i].target > 0)
            rc = bench_tally(v, &pass, &n);
        else if (v == BENCH_BROKEN)
            rc = -1;
    }
    if (rc == 0)
        printf("threads-write: %u of %u libvdisk figures PASS\n", pass, n);
    for (size_t i = 1; i < sizeof targets / sizeof targets[0]; i++)
        if (targets[i].img && vd_close(targets[i].img) < 0)
            rc = bench_lib_error("closing", targets[i].path);
    if (targets[0].fd >= 0)
        close(targets[0].fd);
    return rc;
}

int main(void)
{
    unsigned rounds = bench_rounds(7);
    image_size = bench_image_bytes(256);
    if (image_size % CHUNK || image_size < CHUNK) {
        fprintf(stderr, "threads-write: VDISK_BENCH_MIB must be a whole number of MiB\n");
        return 1;
    }
    printf("threads-write: libvdisk %s, %" PRIu64 " MiB images in %s (page cache warm), "
           "%d threads vs 1 on one handle, median of %u rounds\n", vd_version(),
           image_size >> 20, bench_tmpdir(), THREADS, rounds);
    fflush(stdout);

    char *raw = bench_scratch_file(), *qcow2 = bench_scratch_file(), *fresh = bench_scratch_file();
    struct bench_rng rng = { SEED };
    int rc = raw && qcow2 && fresh ? 0 : -1;
    if (rc == 0)
        rc = bench_write_image(raw, "raw", image_size, NULL, fill_chunk, &rng);
    if (rc == 0)
        rc = bench_write_image(qcow2, "qcow2", image_size, "cluster_size=65536", fill_chunk, &rng);
    if (rc == 0)
        rc = run_all(raw, qcow2, fresh, rounds);
    char *paths[] = { raw, qcow2, fresh };
    for (size_t i = 0; i < 3; i++) {
        if (paths[i])
            bench_remove_scratch(paths[i]);
        free(paths[i]);
    }
    if (rc < 0)
        fprintf(stderr, "threads-write: BROKEN (see above)\n");
    return rc < 0 ? 1 : 0;
}
