/*
 * threads-read: random reads through ONE handle shared by 2 threads against
 * the same reads from 1 thread, page cache warm. Reads of different clusters
 * must run in parallel (lib/core takes a shared lock for reads, the qcow2
 * table cache must not serialise them), so on 2 cores two readers should
 * reach nearly twice the throughput of one.
 *
 *   pread rand-read 4K       plain pread on the raw file: what this machine allows
 *   raw rand-read 4K/64K     vd_read on a raw image
 *   qcow2 rand-read 4K/64K   vd_read on a fully allocated qcow2 image (64 KiB clusters)
 *   qcow2 (L2 cache misses) rand-read 4K
 *                            the same with 4 KiB clusters and a small L2 table cache
 *
 * Each run does the same number of reads at uniformly random aligned offsets:
 * all of them from one thread, or half from each of two threads on the same
 * handle. The ratio is the 2-thread throughput over the 1-thread throughput.
 * Every 4 KiB block of the images starts with its own offset, and every read
 * checks that it got the blocks it asked for.
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

#define SEED       0x7ead5u
#define CHUNK      (1u << 20)
#define STAMP_EVERY 4096u           /* every 4 KiB block starts with its offset */
#define MAX_BLOCK  65536u
#define THREADS    2
#define TARGET     1.6              /* 2-thread throughput / 1-thread throughput */

static uint64_t image_size;

/* ------------------------------------------------------------ the images */

/* The next chunk of the images' content: random bytes, each block stamped with its offset. */
static void fill_chunk(void *rng, unsigned char *buf, size_t len, uint64_t off)
{
    bench_fill_random(rng, buf, len);
    for (uint64_t pos = 0; pos < len; pos += STAMP_EVERY) {
        uint64_t stamp = off + pos;
        memcpy(buf + pos, &stamp, sizeof stamp);
    }
}

/* Did a read at off get the blocks at off? */
static bool stamps_match(const unsigned char *buf, size_t len, uint64_t off)
{
    for (uint64_t pos = 0; pos < len; pos += STAMP_EVERY) {
        uint64_t stamp;
        memcpy(&stamp, buf + pos, sizeof stamp);
        if (stamp != off + pos)
            return false;
    }
    return true;
}

/* Create the image at path and write the content through libvdisk; leave it in the page cache. */
static int make_image(const char *path, const char *format, const char *options)
{
    struct bench_rng rng = { SEED };
    return bench_write_image(path, format, image_size, options, fill_chunk, &rng);
}

/* The image must read back as written. */
static int verify_image(vd_image *img, const char *path)
{
    unsigned char *want = bench_alloc(CHUNK), *got = bench_alloc(CHUNK);
    struct bench_rng rng = { SEED };
    int rc = 0;
    for (uint64_t off = 0; off < image_size && rc == 0; off += CHUNK) {
        fill_chunk(&rng, want, CHUNK, off);
        if (vd_read(img, off, got, CHUNK, 0) < 0) {
            rc = bench_lib_error("reading", path);
        } else if (memcmp(want, got, CHUNK) != 0) {
            fprintf(stderr, "%s does not read back as written at %" PRIu64 "+1M\n", path, off);
            rc = -1;
        }
    }
    free(want);
    free(got);
    return rc;
}

/* --------------------------------------------------------------- readers */

/* Something to read from: a libvdisk handle, or a file descriptor (img NULL). */
struct source {
    const char *name; /* in the figure titles */
    int (*read)(const struct source *s, void *buf, size_t len, uint64_t off);
    vd_image *img;
    int fd;
    size_t npatterns; /* the first npatterns of patterns[] are its figures */
};

static int read_handle(const struct source *s, void *buf, size_t len, uint64_t off)
{
    if (vd_read(s->img, off, buf, len, 0) == 0)
        return 0;
    fprintf(stderr, "vd_read of %s at %" PRIu64 ": %s\n", s->name, off, vd_errmsg());
    return -1;
}

static int read_fd(const struct source *s, void *buf, size_t len, uint64_t off)
{
    ssize_t n = pread(s->fd, buf, len, (off_t)off);
    if (n == (ssize_t)len)
        return 0;
    fprintf(stderr, "pread at %" PRIu64 ": %s\n", off, n < 0 ? strerror(errno) : "short read");
    return -1;
}

/* One side of a figure: ops random reads of block bytes, split among threads. */
struct job {
    const struct source *source;
    size_t block;
    unsigned ops;
    unsigned threads;
};

struct reader {
    const struct job *job;
    uint64_t seed;
    unsigned ops;
    void *buf;
    int rc;
};

static void *read_loop(void *arg)
{
    struct reader *r = arg;
    const struct job *j = r->job;
    struct bench_rng rng = { r->seed };
    const uint64_t blocks = image_size / j->block;
    for (unsigned i = 0; i < r->ops && r->rc == 0; i++) {
        uint64_t off = bench_rng_below(&rng, blocks) * j->block;
        if (j->source->read(j->source, r->buf, j->block, off) < 0) {
            r->rc = -1;
        } else if (!stamps_match(r->buf, j->block, off)) {
            fprintf(stderr, "%s: a read at %" PRIu64 " returned other blocks\n", j->source->name,
                    off);
            r->rc = -1;
        }
    }
    return NULL;
}

/* One timed run: start the readers (each with its own stream of offsets), wait for all. */
static int run_readers(void *ctx, unsigned round, double *seconds)
{
    const struct job *j = ctx;
    struct reader readers[THREADS];
    pthread_t tids[THREADS];
    for (unsigned t = 0; t < j->threads; t++)
        readers[t] = (struct reader){ j, SEED + round * THREADS + t, j->ops / j->threads,
                                      bench_alloc(MAX_BLOCK), 0 };
    unsigned started = 0;
    double t0 = bench_now();
    while (started < j->threads &&
           pthread_create(&tids[started], NULL, read_loop, &readers[started]) == 0)
        started++;
    for (unsigned t = 0; t < started; t++)
        pthread_join(tids[t], NULL);
    *seconds = bench_now() - t0;
    int rc = started == j->threads ? 0 : -1;
    if (rc < 0)
        fprintf(stderr, "cannot start reader thread %u\n", started);
    for (unsigned t = 0; t < j->threads; t++) {
        if (readers[t].rc < 0)
            rc = -1;
        free(readers[t].buf);
    }
    return rc;
}

/* ---------------------------------------------------------------- figures */

struct pattern {
    const char *name;
    size_t block;
    unsigned ops; /* reads per run */
};

static const struct pattern patterns[] = {
    { "4K", 4096, 100000 },
    { "64K", 65536, 20000 },
};

static enum bench_verdict figure(const struct source *s, const struct pattern *p, unsigned rounds)
{
    char title[128];
    snprintf(title, sizeof title, "%s rand-read %s, %s", s->name, p->name,
             s->img ? "one handle" : "one file descriptor (the machine's limit)");
    const struct job two = { s, p->block, p->ops, THREADS }, one = { s, p->block, p->ops, 1 };
    const struct bench_side sides[2] = {
        { "2 threads", run_readers, (void *)&two },
        { "1 thread", run_readers, (void *)&one },
    };
    const struct bench_figure fig = { title, p->ops, 1e3, "kIOPS", TARGET };
    return bench_compare(&fig, sides, rounds);
}

/* Every figure of the sources; those of libvdisk count in pass/n. */
static int run_figures(const struct source *sources, size_t nsources, unsigned rounds,
                       unsigned *pass, unsigned *n)
{
    for (size_t i = 0; i < nsources; i++)
        for (size_t k = 0; k < sources[i].npatterns; k++) {
            enum bench_verdict v = figure(&sources[i], &patterns[k], rounds);
            if (v == BENCH_BROKEN)
                return -1;
            if (sources[i].img) {
                *pass += v == BENCH_PASS;
                *n += 1;
            }
        }
    return 0;
}

/* ------------------------------------------------------------------ main */

struct image {
    const char *name;
    const char *format;
    const char *options;  /* for vd_create */
    uint64_t cache_bytes; /* vd_open_opts.cache_bytes; 0: the default */
    size_t npatterns;     /* see struct source */
};

static const struct image images[] = {
    { "raw", "raw", NULL, 0, 2 },
    { "qcow2", "qcow2", "cluster_size=65536", 0, 2 },
    /*
     * 4 KiB clusters: an L2 table maps 2 MiB, and 16 of them are cached (of
     * 128 at 256 MiB): most reads load a table, which must not hold up the
     * other thread's reads
     */
    { "qcow2 (L2 cache misses)", "qcow2", "cluster_size=4096", 16 * 4096, 1 },
};
#define NIMAGES (sizeof images / sizeof images[0])

static int open_image(struct source *s, const struct image *im, const char *path)
{
    vd_open_opts opts = VD_OPEN_OPTS_INIT;
    opts.format = im->format;
    opts.cache_bytes = im->cache_bytes;
    *s = (struct source){ im->name, read_handle, NULL, -1, im->npatterns };
    if (vd_open_ext(&s->img, path, &opts) < 0)
        return bench_lib_error("opening", path);
    return verify_image(s->img, path);
}

/* pread on the raw image (images[0]) first, then the images through libvdisk. */
static int run_all(char *const paths[NIMAGES], unsigned rounds)
{
    struct source sources[1 + NIMAGES] = {
        { "pread", read_fd, NULL, open(paths[0], O_RDONLY), 1 },
    };
    int rc = 0;
    if (sources[0].fd < 0) {
        fprintf(stderr, "%s: %s\n", paths[0], strerror(errno));
        rc = -1;
    }
    for (size_t i = 0; i < NIMAGES && rc == 0; i++)
        rc = open_image(&sources[1 + i], &images[i], paths[i]);
    unsigned pass = 0, n = 0;
    if (rc == 0)
        rc = run_figures(sources, 1 + NIMAGES, rounds, &pass, &n);
    if (rc == 0)
        printf("threads-read: %u of %u libvdisk figures PASS\n", pass, n);
    for (size_t i = 1; i < 1 + NIMAGES; i++)
        vd_close(sources[i].img);
    if (sources[0].fd >= 0)
        close(sources[0].fd);
    return rc;
}

int main(void)
{
    unsigned rounds = bench_rounds(7);
    image_size = bench_image_bytes(256);
    if (image_size % CHUNK || image_size < CHUNK) {
        fprintf(stderr, "threads-read: VDISK_BENCH_MIB must be a whole number of MiB\n");
        return 1;
    }
    printf("threads-read: libvdisk %s, %" PRIu64 " MiB images in %s (page cache warm), "
           "%d threads vs 1 on one handle, median of %u rounds\n", vd_version(),
           image_size >> 20, bench_tmpdir(), THREADS, rounds);
    fflush(stdout);

    char *paths[NIMAGES] = { NULL };
    int rc = 0;
    for (size_t i = 0; i < NIMAGES && rc == 0; i++) {
        paths[i] = bench_scratch_file();
        rc = paths[i] ? make_image(paths[i], images[i].format, images[i].options) : -1;
    }
    if (rc == 0)
        rc = run_all(paths, rounds);
    for (size_t i = 0; i < NIMAGES; i++) {
        if (paths[i])
            bench_remove_scratch(paths[i]);
        free(paths[i]);
    }
    if (rc < 0)
        fprintf(stderr, "threads-read: BROKEN (see above)\n");
    return rc < 0 ? 1 : 0;
}
