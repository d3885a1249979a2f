/*
 * qcow2-io: the qcow2 backend through the C API, page cache warm.
 *
 *   qcow2 rand-read 4K QD1    libvdisk vs `qemu-img bench`, same image, same offsets
 *   qcow2 alloc-write 4K QD1  libvdisk vs `qemu-img bench -w`, each on a fresh image,
 *                             every write allocating a new cluster
 *   qcow2 seq-read 1M         libvdisk on a qcow2 image vs libvdisk on a raw file
 *                             holding the same data
 *
 * qemu-img bench has no random pattern: it starts at offset 0 and adds a
 * fixed step, wrapping at the end of the image. The read figure therefore
 * uses a step of STRIDE_BLOCKS * 4 KiB (about 390 MiB, an odd number of
 * blocks, so it visits every block of a power-of-two sized image before
 * repeating one): consecutive reads land far apart, like random ones, and
 * libvdisk replays exactly the same offsets. qemu-img bench times its
 * request loop only (not opening or closing the image), and so does the
 * libvdisk side; both sides use the host page cache (qemu: -t writeback).
 *
 * usage: bench_qcow2 [QEMU_IMG]   (default: qemu-img from PATH; without it
 * only the seq-read figure runs)
 *
 * Exits 0 whether the targets are met or not; 1 only when something is
 * functionally broken (an I/O error, data that does not read back, an image
 * that fails `qemu-img check` or `qemu-img compare`).
 */
#include "common.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libvdisk/libvdisk.h>

#define SEED          0xc0c0a2u
#define CLUSTER       65536u
#define BLOCK         4096u
#define CHUNK         (1u << 20)
#define READ_OPS      50000u         /* requests per run of the read figure */
#define STRIDE_BLOCKS 100003u        /* read step in 4 KiB blocks (odd) */
#define WRITE_OPS     1024u          /* allocating writes per run (at most one per cluster; see README) */
#define SEQ_BYTES     (4ull << 30)   /* bytes per run of the seq-read figure */
#define PATTERN       0xa5           /* byte the write figure writes (qemu-img bench --pattern) */

#define TARGET_READ   4.0            /* libvdisk IOPS / qemu-img IOPS */
#define TARGET_WRITE  2.0
#define TARGET_SEQ    0.85           /* qcow2 / raw, both through libvdisk */

static const char *qemu_img; /* NULL: the qemu-img figures are skipped */
static uint64_t image_size;

/* ------------------------------------------------------------- helpers */

static int qemu(char *out, size_t outlen, char *const argv[])
{
    return bench_command(argv, out, outlen, 0);
}

/* `qemu-img check` must find nothing wrong with the image. */
static int qemu_check(const char *path)
{
    char *argv[] = { (char *)qemu_img, "check", "-q", "-f", "qcow2", (char *)path, NULL };
    if (qemu(NULL, 0, argv) == 0)
        return 0;
    fprintf(stderr, "%s fails qemu-img check\n", path);
    return -1;
}

/*
 * qemu-img bench, QD1, 4 KiB requests, count of them step bytes apart (writes:
 * of the byte PATTERN); *seconds is the run time it reports.
 */
static int qemu_bench(const char *path, const char *count, const char *step, bool write,
                      double *seconds)
{
    char pattern[8];
    snprintf(pattern, sizeof pattern, "%u", PATTERN);
    char *argv[] = {
        (char *)qemu_img, "bench", "-f", "qcow2", "-t", "writeback", "-d", "1", "-s", "4096",
        "-c", (char *)count, "-S", (char *)step, "-w", "--pattern", pattern, (char *)path, NULL,
    };
    if (!write) { /* drop "-w --pattern N" */
        argv[14] = (char *)path;
        argv[15] = NULL;
    }
    char out[4096];
    if (qemu(out, sizeof out, argv) < 0)
        return -1;
    const char *done = strstr(out, "Run completed in ");
    if (!done || sscanf(done, "Run completed in %lf", seconds) != 1 || *seconds < 0) {
        fprintf(stderr, "cannot find the run time in the output of qemu-img bench:\n%s", out);
        return -1;
    }
    if (*seconds == 0) /* it prints milliseconds: "0.000" for a tiny VDISK_BENCH_MIB */
        *seconds = 0.0005;
    return 0;
}

static bool all_bytes(const unsigned char *p, size_t len, unsigned char value)
{
    return len == 0 || (p[0] == value && memcmp(p, p + 1, len - 1) == 0);
}

/* -------------------------------------------------- the test images */

/* Copy the raw data file into a new qcow2 image through libvdisk. */
static int fill_qcow2(const char *raw, const char *path)
{
    if (vd_create(path, "qcow2", image_size, "cluster_size=65536", 0) < 0)
        return bench_lib_error("creating", path);
    vd_image *src = NULL, *dst = NULL;
    int rc = vd_open(&src, raw, "raw", 0);
    if (rc < 0)
        return bench_lib_error("opening", raw);
    rc = vd_open(&dst, path, "qcow2", VD_OPEN_RDWR);
    if (rc < 0) {
        vd_close(src);
        return bench_lib_error("opening", path);
    }
    unsigned char *buf = bench_alloc(CHUNK);
    for (uint64_t off = 0; off < image_size && rc == 0; off += CHUNK) {
        rc = vd_read(src, off, buf, CHUNK, 0);
        if (rc < 0)
            bench_lib_error("reading", raw);
        else if ((rc = vd_write(dst, off, buf, CHUNK, 0)) < 0)
            bench_lib_error("writing", path);
    }
    free(buf);
    vd_close(src);
    if (vd_close(dst) < 0 && rc == 0)
        rc = bench_lib_error("closing", path);
    return rc < 0 ? -1 : bench_warm_file(path);
}

/* The qcow2 image must read back (through libvdisk, and qemu-img) as the raw file. */
static int verify_copy(const char *raw, vd_image *rawimg, const char *path, vd_image *img)
{
    unsigned char *a = bench_alloc(CHUNK), *b = bench_alloc(CHUNK);
    int rc = 0;
    for (uint64_t off = 0; off < image_size && rc == 0; off += CHUNK) {
        if (vd_read(rawimg, off, a, CHUNK, 0) < 0)
            rc = bench_lib_error("reading", raw);
        else if (vd_read(img, off, b, CHUNK, 0) < 0)
            rc = bench_lib_error("reading", path);
        else if (memcmp(a, b, CHUNK) != 0) {
            fprintf(stderr, "%s reads back differently from %s at %" PRIu64 "+1M\n", path, raw, off);
            rc = -1;
        }
    }
    free(a);
    free(b);
    if (rc == 0 && qemu_img) {
        char *argv[] = { (char *)qemu_img, "compare", "-q", "-f", "raw", "-F", "qcow2",
                         (char *)raw, (char *)path, NULL };
        rc = qemu(NULL, 0, argv);
        if (rc < 0)
            fprintf(stderr, "qemu-img compare: %s differs from %s\n", path, raw);
        if (rc == 0)
            rc = qemu_check(path);
    }
    return rc;
}

/* ------------------------------------------------- rand-read 4K QD1 */

/* qemu-img bench's next offset (7.2 to 10.0 wrap modulo the image size). */
static uint64_t next_offset(uint64_t off, uint64_t step)
{
    return (off + step) % image_size;
}

struct read_job {
    vd_image *img;
    void *buf;
    const char *path;
    bool random; /* uniformly random blocks instead of qemu-img bench's sequence */
};

static int read_libvdisk(void *ctx, unsigned round, double *seconds)
{
    const struct read_job *j = ctx;
    const uint64_t step = (uint64_t)STRIDE_BLOCKS * BLOCK, blocks = image_size / BLOCK;
    struct bench_rng rng = { SEED + round };
    uint64_t off = 0;
    double t0 = bench_now();
    for (unsigned i = 0; i < READ_OPS; i++) {
        if (j->random)
            off = bench_rng_below(&rng, blocks) * BLOCK;
        if (vd_read(j->img, off, j->buf, BLOCK, 0) < 0)
            return bench_lib_error("reading", j->path);
        if (!j->random)
            off = next_offset(off, step);
    }
    *seconds = bench_now() - t0;
    return 0;
}

static int read_qemu(void *ctx, unsigned round, double *seconds)
{
    const struct read_job *j = ctx;
    char count[24], step[24];
    snprintf(count, sizeof count, "%u", READ_OPS);
    snprintf(step, sizeof step, "%" PRIu64, (uint64_t)STRIDE_BLOCKS * BLOCK);
    return qemu_bench(j->path, count, step, false, seconds);
}

static enum bench_verdict rand_read(vd_image *img, const char *path, unsigned rounds)
{
    void *buf = bench_alloc(BLOCK);
    struct read_job ours = { img, buf, path, false }, theirs = { NULL, NULL, path, false };
    const struct bench_side sides[2] = {
        { "libvdisk", read_libvdisk, &ours },
        { "qemu-img bench", read_qemu, &theirs },
    };
    const struct bench_figure fig = {
        "qcow2 rand-read 4K QD1", READ_OPS, 1e3, "kIOPS", TARGET_READ,
    };
    enum bench_verdict v = bench_compare(&fig, sides, rounds);

    /* for information: the same with uniformly random offsets (libvdisk only) */
    struct read_job random = { img, buf, path, true };
    double *iops = malloc(rounds * sizeof *iops);
    for (unsigned r = 0; v != BENCH_BROKEN && iops && r < rounds; r++) {
        double s;
        if (read_libvdisk(&random, r + 1, &s) < 0)
            v = BENCH_BROKEN;
        else
            iops[r] = READ_OPS / s;
    }
    if (v != BENCH_BROKEN && iops)
        printf("qcow2 rand-read 4K QD1, uniformly random offsets: libvdisk %.2f kIOPS "
               "(information)\n", bench_median(iops, rounds) / 1e3);
    free(iops);
    free(buf);
    return v;
}

/* ------------------------------------------------ alloc-write 4K QD1 */

/*
 * Each run writes one 4 KiB block at the start of each cluster of a new,
 * empty image (offsets 0, 64 KiB, 128 KiB, ...): every write allocates.
 */
struct write_job {
    const char *path; /* recreated for every run */
    const void *buf;
    uint64_t ops;
};

/* What a run left in the image: the pattern at the start of each cluster, zeroes elsewhere. */
static int verify_written(const char *path, uint64_t ops)
{
    vd_image *img;
    if (vd_open(&img, path, "qcow2", 0) < 0)
        return bench_lib_error("opening", path);
    unsigned char *buf = bench_alloc(CLUSTER);
    int rc = 0;
    for (uint64_t i = 0; i < image_size / CLUSTER && rc == 0; i++) {
        if (vd_read(img, i * CLUSTER, buf, CLUSTER, 0) < 0)
            rc = bench_lib_error("reading", path);
        else if (!all_bytes(buf, BLOCK, i < ops ? PATTERN : 0) ||
                 !all_bytes(buf + BLOCK, CLUSTER - BLOCK, 0)) {
            fprintf(stderr, "%s: cluster %" PRIu64 " does not read back as written\n", path, i);
            rc = -1;
        }
    }
    free(buf);
    vd_close(img);
    return rc == 0 && qemu_img ? qemu_check(path) : rc;
}

static int write_libvdisk(void *ctx, unsigned round, double *seconds)
{
    const struct write_job *j = ctx;
    vd_image *img;
    if (vd_create(j->path, "qcow2", image_size, "cluster_size=65536", 0) < 0)
        return bench_lib_error("creating", j->path);
    if (vd_open(&img, j->path, "qcow2", VD_OPEN_RDWR) < 0)
        return bench_lib_error("opening", j->path);
    int rc = 0;
    double t0 = bench_now();
    for (uint64_t i = 0; i < j->ops && rc == 0; i++)
        if ((rc = vd_write(img, i * CLUSTER, j->buf, BLOCK, 0)) < 0)
            bench_lib_error("writing", j->path);
    *seconds = bench_now() - t0;
    if (vd_close(img) < 0 && rc == 0) /* not timed, as qemu-img bench does not time it */
        rc = bench_lib_error("closing", j->path);
    if (rc == 0 && round == 0) /* the warm-up run */
        rc = verify_written(j->path, j->ops);
    bench_remove_scratch(j->path);
    return rc < 0 ? -1 : 0;
}

static int write_qemu(void *ctx, unsigned round, double *seconds)
{
    const struct write_job *j = ctx;
    char size[24], count[24], step[24];
    snprintf(size, sizeof size, "%" PRIu64, image_size);
    snprintf(count, sizeof count, "%" PRIu64, j->ops);
    snprintf(step, sizeof step, "%u", CLUSTER);
    char *create[] = { (char *)qemu_img, "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536",
                       (char *)j->path, size, NULL };
    int rc = qemu(NULL, 0, create);
    if (rc == 0)
        rc = qemu_bench(j->path, count, step, true, seconds);
    if (rc == 0 && round == 0) /* libvdisk must read what qemu-img wrote */
        rc = verify_written(j->path, j->ops);
    bench_remove_scratch(j->path);
    return rc;
}

static enum bench_verdict alloc_write(unsigned rounds)
{
    char *paths[2] = { bench_scratch_file(), bench_scratch_file() };
    enum bench_verdict v = BENCH_BROKEN;
    if (paths[0] && paths[1]) {
        unsigned char *buf = bench_alloc(BLOCK);
        memset(buf, PATTERN, BLOCK);
        uint64_t ops = image_size / CLUSTER < WRITE_OPS ? image_size / CLUSTER : WRITE_OPS;
        struct write_job ours = { paths[0], buf, ops }, theirs = { paths[1], buf, ops };
        const struct bench_side sides[2] = {
            { "libvdisk", write_libvdisk, &ours },
            { "qemu-img bench", write_qemu, &theirs },
        };
        const struct bench_figure fig = {
            "qcow2 alloc-write 4K QD1", (double)ops, 1e3, "kIOPS", TARGET_WRITE,
        };
        v = bench_compare(&fig, sides, rounds);
        free(buf);
    }
    free(paths[0]);
    free(paths[1]);
    return v;
}

/* ---------------------------------------------------- seq-read 1M */

struct seq_job {
    vd_image *img;
    const char *path;
    void *buf;
};

static int seq_read(void *ctx, unsigned round, double *seconds)
{
    const struct seq_job *j = ctx;
    uint64_t chunks = image_size / CHUNK;
    double t0 = bench_now();
    for (uint64_t i = 0; i < SEQ_BYTES / CHUNK; i++)
        if (vd_read(j->img, (i % chunks) * CHUNK, j->buf, CHUNK, 0) < 0)
            return bench_lib_error("reading", j->path);
    *seconds = bench_now() - t0;
    return 0;
}

static enum bench_verdict seq_read_figure(vd_image *img, const char *path, vd_image *raw,
                                          const char *raw_path, unsigned rounds)
{
    void *buf = bench_alloc(CHUNK);
    struct seq_job jobs[2] = { { img, path, buf }, { raw, raw_path, buf } };
    const struct bench_side sides[2] = {
        { "qcow2", seq_read, &jobs[0] },
        { "raw", seq_read, &jobs[1] },
    };
    const struct bench_figure fig = {
        "qcow2 seq-read 1M (libvdisk qcow2 vs libvdisk raw)", (double)SEQ_BYTES, 1e9, "GB/s",
        TARGET_SEQ,
    };
    enum bench_verdict v = bench_compare(&fig, sides, rounds);
    free(buf);
    return v;
}

/* ----------------------------------------------------------------- main */

static void find_qemu_img(int argc, char **argv)
{
    static char version[256];
    const char *candidate = argc > 1 ? argv[1] : "qemu-img";
    if (bench_version(candidate, version, sizeof version) < 0) {
        printf("qcow2-io: no qemu-img (%s): the figures against qemu-img bench are skipped\n",
               candidate);
        return;
    }
    qemu_img = candidate;
    printf("qcow2-io: against %s\n", version);
}

static int run_all(const char *raw, const char *path, unsigned rounds)
{
    vd_image *img = NULL, *rawimg = NULL;
    if (vd_open(&rawimg, raw, "raw", 0) < 0)
        return bench_lib_error("opening", raw);
    int rc = vd_open(&img, path, "qcow2", 0);
    if (rc < 0)
        bench_lib_error("opening", path);
    if (rc == 0)
        rc = verify_copy(raw, rawimg, path, img);
    unsigned pass = 0, n = 0;
    if (rc == 0 && qemu_img && bench_tally(rand_read(img, path, rounds), &pass, &n) < 0)
        rc = -1;
    if (rc == 0 && qemu_img && bench_tally(alloc_write(rounds), &pass, &n) < 0)
        rc = -1;
    if (rc == 0 && bench_tally(seq_read_figure(img, path, rawimg, raw, rounds), &pass, &n) < 0)
        rc = -1;
    if (rc == 0)
        printf("qcow2-io: %u of %u figures PASS%s\n", pass, n,
               qemu_img ? "" : " (2 skipped: no qemu-img)");
    vd_close(img);
    vd_close(rawimg);
    return rc;
}

int main(int argc, char **argv)
{
    unsigned rounds = bench_rounds(7);
    image_size = bench_image_bytes(1024);
    if (image_size % CHUNK || image_size < CHUNK) {
        fprintf(stderr, "qcow2-io: VDISK_BENCH_MIB must be a whole number of MiB\n");
        return 1;
    }
    printf("qcow2-io: libvdisk %s, %" PRIu64 " MiB images (64 KiB clusters) in %s "
           "(page cache warm), median of %u rounds\n", vd_version(), image_size >> 20,
           bench_tmpdir(), rounds);
    find_qemu_img(argc, argv);
    fflush(stdout);

    char *raw = bench_make_data_file(image_size, SEED);
    char *path = raw ? bench_scratch_file() : NULL;
    int rc = path ? fill_qcow2(raw, path) : -1;
    if (rc == 0)
        rc = run_all(raw, path, rounds);
    if (raw)
        bench_remove_scratch(raw);
    if (path)
        bench_remove_scratch(path);
    free(raw);
    free(path);
    if (rc < 0)
        fprintf(stderr, "qcow2-io: BROKEN (see above)\n");
    return rc < 0 ? 1 : 0;
}
