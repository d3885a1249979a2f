/* Shared helpers of the C benchmarks (see common.h). */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1u << 20)

/* ------------------------------------------------------------- settings */

static unsigned long env_number(const char *name, unsigned long def)
{
    const char *s = getenv(name);
    char *end;
    if (!s || !*s)
        return def;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v == 0) {
        fprintf(stderr, "ignoring %s=%s (not a positive number)\n", name, s);
        return def;
    }
    return v;
}

unsigned bench_rounds(unsigned def)
{
    return (unsigned)env_number("VDISK_BENCH_ROUNDS", def);
}

uint64_t bench_image_bytes(uint64_t def_mib)
{
    return (uint64_t)env_number("VDISK_BENCH_MIB", (unsigned long)def_mib) << 20;
}

const char *bench_tmpdir(void)
{
    const char *dir = getenv("TMPDIR");
    return dir && *dir ? dir : "/tmp";
}

/* ------------------------------------------------------ timing, numbers */

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(const double *v, size_t n)
{
    double *s = malloc(n * sizeof *s);
    if (!s) {
        perror("malloc");
        exit(1);
    }
    memcpy(s, v, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_double);
    double m = n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
    free(s);
    return m;
}

/* --------------------------------------------------------- data, memory */

uint64_t bench_rng_next(struct bench_rng *rng)
{
    uint64_t z = (rng->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t bench_rng_below(struct bench_rng *rng, uint64_t bound)
{
    return bench_rng_next(rng) % bound; /* the bias is irrelevant here */
}

void bench_fill_random(struct bench_rng *rng, void *buf, size_t len)
{
    unsigned char *p = buf;
    for (size_t i = 0; i < len; i += sizeof(uint64_t)) {
        uint64_t v = bench_rng_next(rng);
        memcpy(p + i, &v, len - i < sizeof v ? len - i : sizeof v);
    }
}

void *bench_alloc(size_t len)
{
    void *p;
    int rc = posix_memalign(&p, 4096, len);
    if (rc) {
        fprintf(stderr, "posix_memalign(%zu): %s\n", len, strerror(rc));
        exit(1);
    }
    return p;
}

static int write_random(int fd, uint64_t size, uint64_t seed, void *buf)
{
    struct bench_rng rng = { seed };
    for (uint64_t off = 0; off < size; off += CHUNK) {
        size_t n = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
        bench_fill_random(&rng, buf, n);
        if (pwrite(fd, buf, n, (off_t)off) != (ssize_t)n)
            return -1;
    }
    return fdatasync(fd);
}

static int read_all(int fd, uint64_t size, void *buf)
{
    for (uint64_t off = 0; off < size; off += CHUNK) {
        size_t n = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
        if (pread(fd, buf, n, (off_t)off) != (ssize_t)n)
            return -1;
    }
    return 0;
}

char *bench_make_data_file(uint64_t size, uint64_t seed)
{
    const char *dir = bench_tmpdir();
    size_t len = strlen(dir) + sizeof "/vdisk-bench-XXXXXX";
    char *path = malloc(len);
    if (!path)
        return NULL;
    snprintf(path, len, "%s/vdisk-bench-XXXXXX", dir);
    int fd = mkstemp(path);
    if (fd < 0) {
        fprintf(stderr, "creating a scratch file in %s: %s\n", dir, strerror(errno));
        free(path);
        return NULL;
    }
    void *buf = bench_alloc(CHUNK);
    errno = 0;
    int rc = write_random(fd, size, seed, buf);
    if (rc == 0)
        rc = read_all(fd, size, buf);
    if (rc < 0)
        fprintf(stderr, "filling %s: %s\n", path, errno ? strerror(errno) : "short I/O");
    free(buf);
    close(fd);
    if (rc < 0) {
        unlink(path);
        free(path);
        return NULL;
    }
    return path;
}

/* -------------------------------------------------------- comparisons */

/* Run both sides once for a round, the order alternating with the round. */
static int run_round(const struct bench_side sides[2], unsigned round, double seconds[2])
{
    for (unsigned i = 0; i < 2; i++) {
        unsigned s = (round + i) % 2;
        if (sides[s].run(sides[s].ctx, round, &seconds[s]) < 0)
            return -1;
    }
    return 0;
}

static void print_figure(const struct bench_figure *fig, const struct bench_side sides[2],
                         const double speed[2], double ratio)
{
    printf("%s: %s %.2f %s, %s %.2f %s, ratio %.2f (target >= %.2f) %s\n", fig->title,
           sides[0].name, speed[0] / fig->scale, fig->unit,
           sides[1].name, speed[1] / fig->scale, fig->unit,
           ratio, fig->target, ratio >= fig->target ? "PASS" : "MISS");
    fflush(stdout);
}

enum bench_verdict bench_compare(const struct bench_figure *fig,
                                 const struct bench_side sides[2], unsigned rounds)
{
    double *speed[2] = { malloc(rounds * sizeof(double)), malloc(rounds * sizeof(double)) };
    double *ratio = malloc(rounds * sizeof(double));
    double seconds[2];
    enum bench_verdict verdict = BENCH_BROKEN;
    if (!speed[0] || !speed[1] || !ratio) {
        perror("malloc");
        goto out;
    }
    if (run_round(sides, 0, seconds) < 0) /* warm-up */
        goto out;
    for (unsigned r = 0; r < rounds; r++) {
        if (run_round(sides, r + 1, seconds) < 0)
            goto out;
        speed[0][r] = fig->work / seconds[0];
        speed[1][r] = fig->work / seconds[1];
        ratio[r] = seconds[1] / seconds[0];
    }
    double med[2] = { bench_median(speed[0], rounds), bench_median(speed[1], rounds) };
    double med_ratio = bench_median(ratio, rounds);
    print_figure(fig, sides, med, med_ratio);
    verdict = med_ratio >= fig->target ? BENCH_PASS : BENCH_MISS;
out:
    free(speed[0]);
    free(speed[1]);
    free(ratio);
    return verdict;
}
