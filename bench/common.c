/* Shared helpers of the C benchmarks (see common.h). */
#include "common.h"

#include <libvdisk/libvdisk.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
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

/* Scratch files to remove at exit (copies of their paths). */
#define MAX_SCRATCH 16
static char *scratch_paths[MAX_SCRATCH];
static volatile sig_atomic_t scratch_count;

static void remove_scratch(void)
{
    for (sig_atomic_t i = 0; i < scratch_count; i++)
        unlink(scratch_paths[i]); /* ENOENT if the caller removed it already */
}

static void remove_scratch_and_die(int sig)
{
    remove_scratch();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void remember_scratch(const char *path)
{
    if (scratch_count == 0) {
        atexit(remove_scratch);
        signal(SIGINT, remove_scratch_and_die);
        signal(SIGTERM, remove_scratch_and_die);
        signal(SIGHUP, remove_scratch_and_die);
    }
    char *copy = strdup(path);
    if (copy && scratch_count < MAX_SCRATCH) {
        scratch_paths[scratch_count] = copy;
        scratch_count = scratch_count + 1;
    } else {
        free(copy); /* not removed on a crash: harmless, it is in $TMPDIR */
    }
}

void bench_remove_scratch(const char *path)
{
    unlink(path);
    for (sig_atomic_t i = 0; i < scratch_count; i++)
        if (scratch_paths[i][0] && strcmp(scratch_paths[i], path) == 0)
            scratch_paths[i][0] = '\0'; /* unlink("") fails harmlessly */
}

/* mkstemp in bench_tmpdir(): the open descriptor, the path in *path (free() it). */
static int make_scratch(char **path)
{
    const char *dir = bench_tmpdir();
    size_t len = strlen(dir) + sizeof "/vdisk-bench-XXXXXX";
    *path = malloc(len);
    if (!*path) {
        perror("malloc");
        return -1;
    }
    snprintf(*path, len, "%s/vdisk-bench-XXXXXX", dir);
    int fd = mkstemp(*path);
    if (fd < 0) {
        fprintf(stderr, "creating a scratch file in %s: %s\n", dir, strerror(errno));
        free(*path);
        *path = NULL;
        return -1;
    }
    remember_scratch(*path);
    return fd;
}

char *bench_scratch_file(void)
{
    char *path;
    int fd = make_scratch(&path);
    if (fd < 0)
        return NULL;
    close(fd);
    return path;
}

char *bench_make_data_file(uint64_t size, uint64_t seed)
{
    char *path;
    int fd = make_scratch(&path);
    if (fd < 0)
        return NULL;
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
        bench_remove_scratch(path);
        free(path);
        return NULL;
    }
    return path;
}

int bench_drop_cache(const char *path)
{
    int fd = open(path, O_RDONLY);
    int rc = fd < 0 || fdatasync(fd) < 0 ? -1 : posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    if (rc != 0)
        fprintf(stderr, "%s: cannot drop it from the page cache: %s\n", path,
                strerror(rc > 0 ? rc : errno));
    if (fd >= 0)
        close(fd);
    return rc ? -1 : 0;
}

int bench_warm_file(const char *path)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    void *buf = bench_alloc(CHUNK);
    errno = 0;
    int rc = read_all(fd, (uint64_t)st.st_size, buf);
    if (rc < 0)
        fprintf(stderr, "reading %s: %s\n", path, errno ? strerror(errno) : "short read");
    free(buf);
    close(fd);
    return rc;
}

/* ------------------------------------------------------------ libvdisk */

int bench_lib_error(const char *what, const char *path)
{
    fprintf(stderr, "%s %s: %s\n", what, path, vd_errmsg());
    return -1;
}

int bench_write_image(const char *path, const char *format, uint64_t size, const char *options,
                      bench_fill_fn fill, void *ctx)
{
    vd_image *img;
    if (vd_create(path, format, size, options, 0) < 0)
        return bench_lib_error("creating", path);
    if (vd_open(&img, path, format, VD_OPEN_RDWR) < 0)
        return bench_lib_error("opening", path);
    unsigned char *buf = bench_alloc(CHUNK);
    int rc = 0;
    for (uint64_t off = 0; off < size && rc == 0; off += CHUNK) {
        fill(ctx, buf, CHUNK, off);
        if ((rc = vd_write(img, off, buf, CHUNK, 0)) < 0)
            bench_lib_error("writing", path);
    }
    free(buf);
    if (vd_close(img) < 0 && rc == 0)
        rc = bench_lib_error("closing", path);
    return rc < 0 ? -1 : bench_warm_file(path);
}

/* ------------------------------------------------------ external commands */

static void print_command(char *const argv[])
{
    fprintf(stderr, "FAILED:");
    for (size_t i = 0; argv[i]; i++)
        fprintf(stderr, " %s", argv[i]);
    fprintf(stderr, "\n");
}

int bench_command(char *const argv[], char *out, size_t outlen, int quiet)
{
    char dummy[4096];
    if (!out || outlen == 0) {
        out = dummy;
        outlen = sizeof dummy;
    }
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        perror("pipe");
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        close(pipefd[0]);
        close(pipefd[1]);
        return -1;
    }
    if (pid == 0) {
        dup2(pipefd[1], STDOUT_FILENO);
        dup2(pipefd[1], STDERR_FILENO);
        execvp(argv[0], argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(pipefd[1]);
    size_t used = 0;
    for (;;) {
        char sink[4096];
        char *dst = used < outlen - 1 ? out + used : sink;
        size_t room = used < outlen - 1 ? outlen - 1 - used : sizeof sink;
        ssize_t n = read(pipefd[0], dst, room);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (dst != sink)
            used += (size_t)n;
    }
    out[used] = '\0';
    close(pipefd[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            perror("waitpid");
            return -1;
        }
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    if (!quiet) {
        print_command(argv);
        fputs(out, stderr);
        if (WIFEXITED(status))
            fprintf(stderr, "(exit status %d)\n", WEXITSTATUS(status));
        else
            fprintf(stderr, "(killed by signal %d)\n", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    }
    return -1;
}

int bench_version(const char *program, char *version, size_t len)
{
    char *argv[] = { (char *)program, "--version", NULL };
    if (bench_command(argv, version, len, 1) < 0)
        return -1;
    version[strcspn(version, "\n")] = '\0';
    return 0;
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
    /* two decimals, or three where two would round a MISS up to the target */
    char shown[32];
    snprintf(shown, sizeof shown, "%.2f", ratio);
    if (ratio < fig->target && strtod(shown, NULL) >= fig->target)
        snprintf(shown, sizeof shown, "%.3f", ratio);
    printf("%s: %s %.2f %s, %s %.2f %s, ratio %s (target >= %.2f) %s\n", fig->title,
           sides[0].name, speed[0] / fig->scale, fig->unit,
           sides[1].name, speed[1] / fig->scale, fig->unit,
           shown, fig->target, ratio >= fig->target ? "PASS" : "MISS");
    fflush(stdout);
}

int bench_interleave(const struct bench_side sides[2], unsigned rounds, double *seconds[2])
{
    double t[2];
    if (run_round(sides, 0, t) < 0) /* warm-up */
        return -1;
    for (unsigned r = 0; r < rounds; r++) {
        if (run_round(sides, r + 1, t) < 0)
            return -1;
        seconds[0][r] = t[0];
        seconds[1][r] = t[1];
    }
    return 0;
}

enum bench_verdict bench_compare(const struct bench_figure *fig,
                                 const struct bench_side sides[2], unsigned rounds)
{
    double ratio;
    return bench_compare_ratio(fig, sides, rounds, &ratio);
}

enum bench_verdict bench_compare_ratio(const struct bench_figure *fig,
                                       const struct bench_side sides[2], unsigned rounds,
                                       double *med_ratio_out)
{
    double *seconds[2] = { malloc(rounds * sizeof(double)), malloc(rounds * sizeof(double)) };
    double *speed[2] = { malloc(rounds * sizeof(double)), malloc(rounds * sizeof(double)) };
    double *ratio = malloc(rounds * sizeof(double));
    enum bench_verdict verdict = BENCH_BROKEN;
    if (!seconds[0] || !seconds[1] || !speed[0] || !speed[1] || !ratio) {
        perror("malloc");
        goto out;
    }
    if (bench_interleave(sides, rounds, seconds) < 0)
        goto out;
    for (unsigned r = 0; r < rounds; r++) {
        speed[0][r] = fig->work / seconds[0][r];
        speed[1][r] = fig->work / seconds[1][r];
        ratio[r] = seconds[1][r] / seconds[0][r];
    }
    double med[2] = { bench_median(speed[0], rounds), bench_median(speed[1], rounds) };
    double med_ratio = bench_median(ratio, rounds);
    print_figure(fig, sides, med, med_ratio);
    *med_ratio_out = med_ratio;
    verdict = med_ratio >= fig->target ? BENCH_PASS : BENCH_MISS;
out:
    for (unsigned s = 0; s < 2; s++) {
        free(seconds[s]);
        free(speed[s]);
    }
    free(ratio);
    return verdict;
}

int bench_tally(enum bench_verdict v, unsigned *pass, unsigned *n)
{
    *pass += v == BENCH_PASS;
    *n += 1;
    return v == BENCH_BROKEN ? -1 : 0;
}
