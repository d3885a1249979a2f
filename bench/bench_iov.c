/*
 * vectored-io: vd_preadv/vd_pwritev against vd_read/vd_write, and qcow2
 * opened with cache=none (O_DIRECT) against O_DIRECT on a raw file.
 *
 *   qcow2 QD1 rand-read 4K, 4 iovecs   vd_preadv vs vd_read (target >= 0.95)
 *   qcow2 QD1 rand-write 4K, 4 iovecs  vd_pwritev vs vd_write, in place (>= 0.95)
 *   cache=none seq-read 1M             qcow2 through vd_read vs O_DIRECT pread of a raw
 *                                      file of the same data (>= 0.90)
 *   cache=none seq-write 1M            qcow2 (allocated) through vd_write vs O_DIRECT
 *                                      pwrite of the raw file (>= 0.90)
 *
 * QD1: one request at a time from one thread, page cache warm for the first
 * two figures. The qcow2 image (64 KiB clusters) is fully allocated, so
 * writes go in place. Every read is checked against the data written.
 *
 * Exits 0 whether the targets are met or not; 1 only when something is
 * functionally broken (an I/O error, data that does not read back).
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <libvdisk/libvdisk.h>

#define SEED    0x10feedu
#define CHUNK   (1u << 20)
#define BLOCK   4096u
#define PIECES  4          /* iovecs per vectored request */
#define QD1_OPS 100000u

static uint64_t image_size;

/* The image's content: seeded random bytes, the same for the raw file and the qcow2 image. */
static void fill_chunk(void *rng, unsigned char *buf, size_t len, uint64_t off)
{
    (void)off;
    bench_fill_random(rng, buf, len);
}

/* --------------------------------------------------------------- QD1 sides */

struct qd1 {
    vd_image *img;
    bool write;
    bool vectored;
    unsigned char *buf; /* BLOCK bytes, aligned */
};

static int qd1_request(const struct qd1 *q, uint64_t off)
{
    struct iovec iov[PIECES];
    for (unsigned i = 0; i < PIECES; i++)
        iov[i] = (struct iovec){ q->buf + i * (BLOCK / PIECES), BLOCK / PIECES };
    if (q->write)
        return q->vectored ? vd_pwritev(q->img, off, iov, PIECES, 0)
                           : vd_write(q->img, off, q->buf, BLOCK, 0);
    return q->vectored ? vd_preadv(q->img, off, iov, PIECES, 0)
                       : vd_read(q->img, off, q->buf, BLOCK, 0);
}

static int run_qd1(void *ctx, unsigned round, double *seconds)
{
    const struct qd1 *q = ctx;
    struct bench_rng rng = { SEED + round };
    const uint64_t blocks = image_size / BLOCK;
    double t0 = bench_now();
    for (unsigned i = 0; i < QD1_OPS; i++) {
        uint64_t off = bench_rng_below(&rng, blocks) * BLOCK;
        if (qd1_request(q, off) < 0)
            return bench_lib_error(q->write ? "writing" : "reading", "qcow2 image");
    }
    *seconds = bench_now() - t0;
    return 0;
}

static enum bench_verdict qd1_figure(vd_image *img, bool write, unsigned rounds)
{
    unsigned char *buf = bench_alloc(BLOCK);
    struct bench_rng rng = { SEED };
    bench_fill_random(&rng, buf, BLOCK);
    struct qd1 vectored = { img, write, true, buf }, flat = { img, write, false, buf };
    const struct bench_side sides[2] = {
        { write ? "vd_pwritev" : "vd_preadv", run_qd1, &vectored },
        { write ? "vd_write" : "vd_read", run_qd1, &flat },
    };
    const struct bench_figure fig = {
        write ? "qcow2 QD1 rand-write 4K (4 iovecs), in place" : "qcow2 QD1 rand-read 4K (4 iovecs)",
        QD1_OPS, 1e3, "kIOPS", 0.95 };
    enum bench_verdict v = bench_compare(&fig, sides, rounds);
    free(buf);
    return v;
}

/* ------------------------------------------------------ cache=none sides */

struct seq {
    vd_image *img; /* or NULL: the raw file through fd */
    int fd;
    bool write;
    unsigned char *buf; /* CHUNK bytes, aligned */
};

static int seq_chunk(const struct seq *s, uint64_t off)
{
    if (s->img)
        return (s->write ? vd_write(s->img, off, s->buf, CHUNK, 0)
                         : vd_read(s->img, off, s->buf, CHUNK, 0)) < 0
                   ? bench_lib_error(s->write ? "writing" : "reading", "qcow2 image") : 0;
    ssize_t n = s->write ? pwrite(s->fd, s->buf, CHUNK, (off_t)off)
                         : pread(s->fd, s->buf, CHUNK, (off_t)off);
    if (n == (ssize_t)CHUNK)
        return 0;
    fprintf(stderr, "O_DIRECT %s at %" PRIu64 ": %s\n", s->write ? "pwrite" : "pread", off,
            n < 0 ? strerror(errno) : "short transfer");
    return -1;
}

static int run_seq(void *ctx, unsigned round, double *seconds)
{
    const struct seq *s = ctx;
    (void)round;
    double t0 = bench_now();
    for (uint64_t off = 0; off < image_size; off += CHUNK)
        if (seq_chunk(s, off) < 0)
            return -1;
    if (s->write && (s->img ? vd_flush(s->img, 0) : fdatasync(s->fd)) < 0)
        return bench_lib_error("flushing", "the image");
    *seconds = bench_now() - t0;
    return 0;
}

static enum bench_verdict seq_figure(vd_image *img, int raw_fd, bool write, unsigned rounds)
{
    unsigned char *a = bench_alloc(CHUNK), *b = bench_alloc(CHUNK);
    struct bench_rng rng = { SEED + 1 };
    bench_fill_random(&rng, a, CHUNK);
    memcpy(b, a, CHUNK);
    struct seq ours = { img, -1, write, a }, theirs = { NULL, raw_fd, write, b };
    const struct bench_side sides[2] = {
        { "qcow2 cache=none", run_seq, &ours },
        { "raw O_DIRECT", run_seq, &theirs },
    };
    const struct bench_figure fig = {
        write ? "cache=none seq-write 1M (qcow2 in place vs raw pwrite)"
              : "cache=none seq-read 1M (qcow2 vs raw pread)",
        (double)image_size, 1e9, "GB/s", 0.90 };
    enum bench_verdict v = bench_compare(&fig, sides, rounds);
    free(a);
    free(b);
    return v;
}

/* ------------------------------------------------------------------ checks */

/* The qcow2 image must read as the raw file does (after the write figures too). */
static int same_content(vd_image *img, int raw_fd)
{
    unsigned char *want = bench_alloc(CHUNK), *got = bench_alloc(CHUNK);
    int rc = 0;
    for (uint64_t off = 0; off < image_size && rc == 0; off += CHUNK) {
        if (pread(raw_fd, want, CHUNK, (off_t)off) != (ssize_t)CHUNK ||
            vd_read(img, off, got, CHUNK, 0) < 0) {
            fprintf(stderr, "vectored-io: cannot read at %" PRIu64 "\n", off);
            rc = -1;
        } else if (memcmp(want, got, CHUNK) != 0) {
            fprintf(stderr, "vectored-io: the images differ at %" PRIu64 "+1M\n", off);
            rc = -1;
        }
    }
    free(want);
    free(got);
    return rc;
}

static vd_image *open_qcow2(const char *path, const char *cache)
{
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.format = "qcow2";
    o.flags = VD_OPEN_RDWR;
    o.cache = cache;
    vd_image *img = NULL;
    if (vd_open_ext(&img, path, &o) < 0)
        bench_lib_error("opening", path);
    return img;
}

/* ------------------------------------------------------------------ main */

static int run_all(const char *qcow2, const char *raw, unsigned rounds)
{
    unsigned pass = 0, n = 0;
    int rc = 0;
    vd_image *img = open_qcow2(qcow2, NULL);
    if (!img)
        return -1;
    int fd = open(raw, O_RDONLY);
    if (fd < 0 || same_content(img, fd) < 0)
        rc = -1;
    if (rc == 0)
        rc = bench_tally(qd1_figure(img, false, rounds), &pass, &n);
    if (rc == 0)
        rc = bench_tally(qd1_figure(img, true, rounds), &pass, &n);
    vd_close(img);
    if (fd >= 0)
        close(fd);
    if (rc < 0)
        return rc;

    /* the QD1 writes changed the image: give the raw file the same content, then go direct */
    if (!(img = open_qcow2(qcow2, NULL)))
        return -1;
    unsigned char *buf = bench_alloc(CHUNK);
    fd = open(raw, O_WRONLY);
    for (uint64_t off = 0; off < image_size && rc == 0 && fd >= 0; off += CHUNK)
        if (vd_read(img, off, buf, CHUNK, 0) < 0 || pwrite(fd, buf, CHUNK, (off_t)off) != CHUNK)
            rc = -1;
    free(buf);
    vd_close(img);
    if (fd < 0 || rc < 0 || fsync(fd) < 0 || close(fd) < 0) {
        fprintf(stderr, "vectored-io: cannot copy the image to the raw file\n");
        return -1;
    }
    if (!(img = open_qcow2(qcow2, "none")))
        return -1;
    fd = open(raw, O_RDWR | O_DIRECT);
    if (fd < 0) {
        fprintf(stderr, "vectored-io: %s: O_DIRECT: %s\n", raw, strerror(errno));
        rc = -1;
    }
    if (rc == 0)
        rc = bench_tally(seq_figure(img, fd, false, rounds), &pass, &n);
    if (rc == 0)
        rc = bench_tally(seq_figure(img, fd, true, rounds), &pass, &n);
    if (rc == 0)
        rc = same_content(img, fd);
    vd_close(img);
    if (fd >= 0)
        close(fd);
    if (rc == 0)
        printf("vectored-io: %u of %u figures meet their targets\n", pass, n);
    return rc;
}

int main(void)
{
    unsigned rounds = bench_rounds(5);
    image_size = bench_image_bytes(256);
    if (image_size % CHUNK || image_size < CHUNK) {
        fprintf(stderr, "vectored-io: VDISK_BENCH_MIB must be a whole number of MiB\n");
        return 1;
    }
    printf("vectored-io: libvdisk %s, %" PRIu64 " MiB images in %s, median of %u rounds\n",
           vd_version(), image_size >> 20, bench_tmpdir(), rounds);
    fflush(stdout);
    char *qcow2 = bench_scratch_file(), *raw = bench_scratch_file();
    int rc = qcow2 && raw ? 0 : -1;
    struct bench_rng rng = { SEED };
    if (rc == 0)
        rc = bench_write_image(qcow2, "qcow2", image_size, "cluster_size=65536", fill_chunk, &rng);
    rng = (struct bench_rng){ SEED };
    if (rc == 0)
        rc = bench_write_image(raw, "raw", image_size, NULL, fill_chunk, &rng);
    if (rc == 0)
        rc = run_all(qcow2, raw, rounds);
    if (qcow2)
        bench_remove_scratch(qcow2);
    if (raw)
        bench_remove_scratch(raw);
    free(qcow2);
    free(raw);
    if (rc < 0)
        fprintf(stderr, "vectored-io: BROKEN (see above)\n");
    return rc < 0 ? 1 : 0;
}
