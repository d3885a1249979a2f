/*
 * threads-write: random 4 KiB writes through ONE handle shared by 2 threads
 * against the same writes from 1 thread, no flushes.
 * Writes to different clusters run in parallel (lib/core shares the handle
 * between data-path writes; a request waits only for overlapping ones; an
 * allocation holds the metadata lock only while it changes the tables).
 *
 * Each libvdisk figure is printed beside its ceiling: the same kind of
 * writes with plain pwrite from 2 threads against 1 on one descriptor,
 * which is what the kernel allows. With buffered I/O that ceiling is low:
 * ext4 serialises buffered writes to one file under its inode lock, and
 * writes that extend a file under the same lock. With O_DIRECT
 * (cache=none, what hypervisors use) overwrites of allocated blocks take
 * that lock shared and run in parallel. An allocating qcow2 write does not
 * extend the file the way its appending ceiling does: the image file grows
 * ahead of its writes (lib/io/ahead.c), so new clusters are overwrites of
 * reserved space, and can beat that ceiling.
 *
 *   pwrite in place             ceiling for the two in-place figures below
 *   raw in place                vd_write on a raw image
 *   qcow2 in place              vd_write on a fully allocated qcow2 image (64 KiB clusters)
 *   pwrite appending            ceiling for the allocating figure: writes that extend a
 *                               new file by 64 KiB each
 *   qcow2 allocating            vd_write on a new, empty qcow2 image: every write
 *                               allocates its own cluster
 *   pwrite O_DIRECT in place    ceiling for the cache=none figure
 *   qcow2 cache=none in place   vd_write on the allocated qcow2 opened with VD_OPEN_DIRECT
 *   pwrite O_DIRECT appending   ceiling for the cache=none allocating figure
 *   qcow2 cache=none allocating every write allocates, VD_OPEN_DIRECT
 *
 * Each run does the same writes: all from one thread, or every other one
 * from each of two threads. The ratio is the 2-thread throughput over the
 * 1-thread throughput. Before every run (untimed) the file is synced and
 * dropped from the page cache, so that every run, and a figure and its
 * ceiling, start from the same page cache (the cost of a 4 KiB buffered
 * write depends on the size of the cached folio it lands in). Every 4 KiB
 * block written starts with its own offset, and after each figure the image
 * must read back with every block stamped so (untimed).
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
#define WRITES_DIRECT 6000u /* per run with O_DIRECT: each one waits for the disk */
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
    bool fresh_each_run;   /* a new empty file or qcow2 image before every run */
    bool direct;           /* O_DIRECT / VD_OPEN_DIRECT */
    uint64_t span;         /* writes go to [0, span) */
    uint64_t stride;       /* one write per stride bytes at most (allocating: a cluster) */
    unsigned writes;       /* per run */
    double target;         /* the ratio to reach; 0 for a ceiling */
    double ratio;          /* measured */
    const struct target *ceiling; /* what the kernel allows for such writes */
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


static int open_target(struct target *t, const char *format)
{
    if (vd_open(&t->img, t->path, format, VD_OPEN_RDWR | (t->direct ? VD_OPEN_DIRECT : 0)) < 0)
        return bench_lib_error("opening", t->path);
    return 0;
}

/* An empty file for a run whose writes extend it (untimed). */
static int truncate_fresh(struct target *t)
{
    if (ftruncate(t->fd, 0) == 0)
        return 0;
    fprintf(stderr, "%s: %s\n", t->path, strerror(errno));
    return -1;
}

/* A new empty image for a run in which every write allocates (untimed). */
static int reopen_fresh(struct target *t)
{
    if (t->fd >= 0)
        return truncate_fresh(t);
    if (t->img && vd_close(t->img) < 0)
        return bench_lib_error("closing", t->path);
    t->img = NULL;
    char options[64];
    snprintf(options, sizeof options, "cluster_size=%u", ALLOC_CLUSTER);
    if (vd_create(t->path, "qcow2", image_size, options, 0) < 0)
        return bench_lib_error("creating", t->path);
    return open_target(t, "qcow2");
}

/*
 * The run's offsets: distinct strides of the span in random order (so an
 * allocating run never writes a cluster twice), a random block inside each;
 * for a descriptor that a run makes anew, the strides in order, so that
 * every write extends the file as a qcow2 allocation does.
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
        if (t->fresh_each_run && t->fd >= 0)
            s = i;
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
    if (t->img && vd_flush(t->img, 0) < 0)
        return bench_lib_error("flushing", t->path);
    if (bench_drop_cache(t->path) < 0)
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
             t->fd < 0 ? "one handle" : "one file descriptor (the ceiling)");
    struct job two = { t, THREADS }, one = { t, 1 };
    const struct bench_side sides[2] = {
        { "2 threads", run_writers, &two },
        { "1 thread", run_writers, &one },
    };
    const struct bench_figure fig = { title, t->writes, 1e3, "kIOPS", t->target };
    enum bench_verdict v = bench_compare_ratio(&fig, sides, rounds, &t->ratio);
    if (v != BENCH_BROKEN && t->ceiling)
        printf("    beside its ceiling (%s): %.2f, %.0f%% of it\n", t->ceiling->name,
               t->ceiling->ratio, 100.0 * t->ratio / t->ceiling->ratio);
    return v != BENCH_BROKEN && verify(t) < 0 ? BENCH_BROKEN : v;
}

/* ------------------------------------------------------------------ main */

static int open_fd(struct target *t)
{
    t->fd = open(t->path, O_WRONLY | (t->direct ? O_DIRECT : 0));
    if (t->fd >= 0)
        return 0;
    fprintf(stderr, "%s: %s\n", t->path, strerror(errno));
    return -1;
}

enum {
    PWRITE, RAW, QCOW2, PWRITE_APPEND, QCOW2_ALLOC,
    PWRITE_DIRECT, QCOW2_DIRECT, PWRITE_APPEND_DIRECT, QCOW2_ALLOC_DIRECT, NTARGETS
};

static int run_all(char *raw_path, char *qcow2_path, char *fresh_path, char *append_path,
                   unsigned rounds)
{
    /* each run writes distinct blocks (or clusters): as many as the image has at most */
    uint64_t blocks = image_size / BLOCK, alloc_writes = image_size / ALLOC_CLUSTER;
    unsigned in_place = (unsigned)(blocks < WRITES ? blocks : WRITES);
    unsigned in_place_direct = in_place < WRITES_DIRECT ? in_place : WRITES_DIRECT;
    unsigned allocating = (unsigned)(alloc_writes < WRITES ? alloc_writes : WRITES);
    unsigned allocating_direct = allocating < WRITES_DIRECT ? allocating : WRITES_DIRECT;
    struct target t[NTARGETS] = {
        [PWRITE] = { "pwrite in place", write_fd, .path = raw_path, .span = image_size,
                     .stride = BLOCK, .writes = in_place },
        [RAW] = { "raw in place", write_handle, .path = raw_path, .span = image_size,
                  .stride = BLOCK, .writes = in_place },
        [QCOW2] = { "qcow2 in place", write_handle, .path = qcow2_path, .span = image_size,
                    .stride = BLOCK, .writes = in_place, .target = 1.5 },
        [PWRITE_APPEND] = { "pwrite appending", write_fd, .path = append_path,
                            .fresh_each_run = true, .span = image_size,
                            .stride = ALLOC_CLUSTER, .writes = allocating },
        [QCOW2_ALLOC] = { "qcow2 allocating", write_handle, .path = fresh_path,
                          .fresh_each_run = true, .span = image_size,
                          .stride = ALLOC_CLUSTER, .writes = allocating, .target = 1.3 },
        [PWRITE_DIRECT] = { "pwrite O_DIRECT in place", write_fd, .path = raw_path,
                            .direct = true, .span = image_size, .stride = BLOCK,
                            .writes = in_place_direct },
        [QCOW2_DIRECT] = { "qcow2 cache=none in place", write_handle, .path = qcow2_path,
                           .direct = true, .span = image_size, .stride = BLOCK,
                           .writes = in_place_direct, .target = 1.5 },
        [PWRITE_APPEND_DIRECT] = { "pwrite O_DIRECT appending", write_fd, .path = append_path,
                                   .fresh_each_run = true, .direct = true, .span = image_size,
                                   .stride = ALLOC_CLUSTER, .writes = allocating_direct },
        [QCOW2_ALLOC_DIRECT] = { "qcow2 cache=none allocating", write_handle, .path = fresh_path,
                                 .fresh_each_run = true, .direct = true, .span = image_size,
                                 .stride = ALLOC_CLUSTER, .writes = allocating_direct,
                                 .target = 1.3 },
    };
    t[RAW].ceiling = t[QCOW2].ceiling = &t[PWRITE];
    t[QCOW2_ALLOC].ceiling = &t[PWRITE_APPEND];
    t[QCOW2_DIRECT].ceiling = &t[PWRITE_DIRECT];
    t[QCOW2_ALLOC_DIRECT].ceiling = &t[PWRITE_APPEND_DIRECT];
    int rc = 0;
    unsigned pass = 0, n = 0;
    for (size_t i = 0; i < NTARGETS && rc == 0; i++) {
        struct target *x = &t[i];
        x->fd = -1;
        if (x->write == write_fd)
            rc = open_fd(x);
        else if (!x->fresh_each_run)
            rc = open_target(x, i == RAW ? "raw" : "qcow2");
        enum bench_verdict v = rc < 0 ? BENCH_BROKEN : figure(x, rounds);
        if (x->target > 0)
            rc = bench_tally(v, &pass, &n);
        else if (v == BENCH_BROKEN)
            rc = -1;
        /* one open handle per file at a time: the next figure may open it with other flags */
        if (x->img && vd_close(x->img) < 0)
            rc = bench_lib_error("closing", x->path);
        x->img = NULL;
        if (x->fd >= 0)
            close(x->fd);
    }
    if (rc == 0)
        printf("threads-write: %u of %u libvdisk figures PASS\n", pass, n);
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
    printf("threads-write: libvdisk %s, %" PRIu64 " MiB images in %s (dropped from the page cache before each run), "
           "%d threads vs 1 on one handle, median of %u rounds\n", vd_version(),
           image_size >> 20, bench_tmpdir(), THREADS, rounds);
    fflush(stdout);

    char *raw = bench_scratch_file(), *qcow2 = bench_scratch_file(), *fresh = bench_scratch_file();
    char *append = bench_scratch_file();
    struct bench_rng rng = { SEED };
    int rc = raw && qcow2 && fresh && append ? 0 : -1;
    if (rc == 0)
        rc = bench_write_image(raw, "raw", image_size, NULL, fill_chunk, &rng);
    if (rc == 0)
        rc = bench_write_image(qcow2, "qcow2", image_size, "cluster_size=65536", fill_chunk, &rng);
    if (rc == 0)
        rc = run_all(raw, qcow2, fresh, append, rounds);
    char *paths[] = { raw, qcow2, fresh, append };
    for (size_t i = 0; i < 4; i++) {
        if (paths[i])
            bench_remove_scratch(paths[i]);
        free(paths[i]);
    }
    if (rc < 0)
        fprintf(stderr, "threads-write: BROKEN (see above)\n");
    return rc < 0 ? 1 : 0;
}
