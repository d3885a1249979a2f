/*
 * raw-io: the raw backend through vd_read/vd_write against plain
 * pread/pwrite on the same file, with the same access pattern and offsets.
 * The file is in the page cache, so the figures measure the per-call cost
 * libvdisk adds on top of the system calls.
 *
 * Exits 0 whether the targets are met or not; 1 only when something is
 * functionally broken (an I/O error, data that does not read back).
 */
#include "common.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libvdisk/libvdisk.h>

#define SEED        0x5eedu
#define TARGET      0.90            /* libvdisk speed / pread speed */
#define RANDOM_OPS  200000u         /* operations per run of a random figure */
#define SEQ_BYTES   (4ull << 30)    /* bytes per run of a sequential figure (passes wrap) */
#define MAX_BLOCK   (1u << 20)
#define VERIFY_OPS  32

/* One way to do I/O on the file. */
struct io_target {
    int (*read)(void *h, void *buf, size_t len, uint64_t off);
    int (*write)(void *h, const void *buf, size_t len, uint64_t off);
    void *h;
};

static int vd_target_read(void *h, void *buf, size_t len, uint64_t off)
{
    int rc = vd_read(h, off, buf, len, 0);
    if (rc < 0)
        fprintf(stderr, "vd_read at %" PRIu64 ": %s\n", off, vd_errmsg());
    return rc < 0 ? -1 : 0;
}

static int vd_target_write(void *h, const void *buf, size_t len, uint64_t off)
{
    int rc = vd_write(h, off, buf, len, 0);
    if (rc < 0)
        fprintf(stderr, "vd_write at %" PRIu64 ": %s\n", off, vd_errmsg());
    return rc < 0 ? -1 : 0;
}

static int fd_read(void *h, void *buf, size_t len, uint64_t off)
{
    if (pread(*(int *)h, buf, len, (off_t)off) == (ssize_t)len)
        return 0;
    perror("pread");
    return -1;
}

static int fd_write(void *h, const void *buf, size_t len, uint64_t off)
{
    if (pwrite(*(int *)h, buf, len, (off_t)off) == (ssize_t)len)
        return 0;
    perror("pwrite");
    return -1;
}

/* ------------------------------------------------------------ workloads */

struct pattern {
    const char *title;
    size_t block;
    bool random; /* else sequential, wrapping at the end of the file */
    bool write;  /* overwrite in place; else read */
};

static const struct pattern patterns[] = {
    { "raw seq-read 1M",       1u << 20, false, false },
    { "raw rand-read 4K QD1",  4096,     true,  false },
    { "raw seq-write 1M",      1u << 20, false, true },
    { "raw rand-write 4K QD1", 4096,     true,  true },
};

struct job {
    const struct pattern *pat;
    const struct io_target *io;
    uint64_t blocks; /* of pat->block in the file */
    uint64_t ops;
    void *buf;
};

/* One run: the offsets depend only on the round, so both sides match. */
static int run_job(void *ctx, unsigned round, double *seconds)
{
    const struct job *j = ctx;
    const struct io_target *io = j->io;
    struct bench_rng rng = { SEED + round };
    size_t len = j->pat->block;
    double t0 = bench_now();
    for (uint64_t i = 0; i < j->ops; i++) {
        uint64_t off = (j->pat->random ? bench_rng_below(&rng, j->blocks) : i % j->blocks) * len;
        int rc = j->pat->write ? io->write(io->h, j->buf, len, off)
                               : io->read(io->h, j->buf, len, off);
        if (rc < 0)
            return -1;
    }
    *seconds = bench_now() - t0;
    return 0;
}

static enum bench_verdict run_pattern(const struct pattern *pat, const struct io_target io[2],
                                      uint64_t size, void *buf, unsigned rounds)
{
    uint64_t blocks = size / pat->block;
    uint64_t ops = pat->random ? RANDOM_OPS : SEQ_BYTES / pat->block;
    struct job jobs[2] = { { pat, &io[0], blocks, ops, buf }, { pat, &io[1], blocks, ops, buf } };
    const struct bench_side sides[2] = {
        { "libvdisk", run_job, &jobs[0] },
        { pat->write ? "pwrite" : "pread", run_job, &jobs[1] },
    };
    const struct bench_figure fig = {
        pat->title,
        pat->random ? (double)ops : (double)(ops * pat->block),
        pat->random ? 1e3 : 1e9,
        pat->random ? "kIOPS" : "GB/s",
        TARGET,
    };
    return bench_compare(&fig, sides, rounds);
}

/* ---------------------------------------------------------- correctness */

/* Write random extents through one side and read them back through the other. */
static int cross_check(const struct io_target *writer, const struct io_target *reader,
                       uint64_t size, struct bench_rng *rng, unsigned char *buf[2])
{
    for (int i = 0; i < VERIFY_OPS; i++) {
        size_t len = 1 + (size_t)bench_rng_below(rng, MAX_BLOCK);
        uint64_t off = bench_rng_below(rng, size - len + 1);
        bench_fill_random(rng, buf[0], len);
        if (writer->write(writer->h, buf[0], len, off) < 0 ||
            reader->read(reader->h, buf[1], len, off) < 0)
            return -1;
        if (memcmp(buf[0], buf[1], len) != 0) {
            fprintf(stderr, "data written at %" PRIu64 "+%zu reads back differently\n", off, len);
            return -1;
        }
    }
    return 0;
}

static int verify(const struct io_target io[2], uint64_t size)
{
    struct bench_rng rng = { SEED };
    unsigned char *buf[2] = { bench_alloc(MAX_BLOCK), bench_alloc(MAX_BLOCK) };
    int rc = cross_check(&io[0], &io[1], size, &rng, buf);
    if (rc == 0)
        rc = cross_check(&io[1], &io[0], size, &rng, buf);
    free(buf[0]);
    free(buf[1]);
    return rc;
}

/* ----------------------------------------------------------------- main */

/* Open the scratch file both ways, then unlink it (and free path): it goes away with us. */
static int open_both(char *path, vd_image **img, int *fd)
{
    int rc = vd_open(img, path, "raw", VD_OPEN_RDWR);
    if (rc < 0)
        fprintf(stderr, "vd_open: %s\n", vd_errmsg());
    *fd = open(path, O_RDWR);
    if (*fd < 0)
        perror(path);
    bench_remove_scratch(path);
    free(path);
    return rc < 0 || *fd < 0 ? -1 : 0;
}

static int run_all(const struct io_target io[2], uint64_t size, unsigned rounds)
{
    unsigned char *buf = bench_alloc(MAX_BLOCK);
    struct bench_rng rng = { SEED };
    unsigned pass = 0, n = sizeof patterns / sizeof patterns[0];
    bench_fill_random(&rng, buf, MAX_BLOCK);
    for (unsigned i = 0; i < n; i++) {
        enum bench_verdict v = run_pattern(&patterns[i], io, size, buf, rounds);
        if (v == BENCH_BROKEN) {
            free(buf);
            return -1;
        }
        pass += v == BENCH_PASS;
    }
    printf("raw-io: %u of %u figures PASS\n", pass, n);
    free(buf);
    return 0;
}

int main(void)
{
    uint64_t size = bench_image_bytes(1024);
    unsigned rounds = bench_rounds(7);
    vd_image *img = NULL;
    int fd = -1;

    printf("raw-io: libvdisk %s, %" PRIu64 " MiB file in %s (page cache warm), "
           "median of %u rounds\n", vd_version(), size >> 20, bench_tmpdir(), rounds);
    fflush(stdout);
    char *path = bench_make_data_file(size, SEED);
    int rc = path ? open_both(path, &img, &fd) : -1;
    if (rc == 0) {
        const struct io_target io[2] = {
            { vd_target_read, vd_target_write, img },
            { fd_read, fd_write, &fd },
        };
        rc = verify(io, size);
        if (rc == 0)
            rc = run_all(io, size, rounds);
    }
    if (fd >= 0 && ftruncate(fd, 0) < 0) /* nothing left for vd_close() to flush */
        perror("ftruncate");
    if (img && vd_close(img) < 0) {
        fprintf(stderr, "vd_close: %s\n", vd_errmsg());
        rc = -1;
    }
    if (fd >= 0)
        close(fd);
    if (rc < 0)
        fprintf(stderr, "raw-io: BROKEN (see above)\n");
    return rc < 0 ? 1 : 0;
}
