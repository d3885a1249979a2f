/*
 * Shared helpers of the C benchmarks: timing, medians, a seeded PRNG,
 * aligned buffers, scratch data files, and the interleaved two-contender
 * comparison that prints one "figure" line with its ratio and verdict.
 *
 * Every figure is a ratio measured within one run: the machine may be shared
 * and noisy, so absolute numbers mean little on their own.
 */
#ifndef VDISK_BENCH_COMMON_H
#define VDISK_BENCH_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------- settings */

/* Timed rounds per figure: $VDISK_BENCH_ROUNDS, or def. */
unsigned bench_rounds(unsigned def);
/* Scratch image size in bytes: $VDISK_BENCH_MIB MiB, or def_mib MiB. */
uint64_t bench_image_bytes(uint64_t def_mib);
/* Directory for scratch files: $TMPDIR, or /tmp. */
const char *bench_tmpdir(void);

/* ------------------------------------------------------ timing, numbers */

/* Monotonic time in seconds. */
double bench_now(void);
/* The median of n > 0 values (v is left untouched). */
double bench_median(const double *v, size_t n);

/* --------------------------------------------------------- data, memory */

/* A small, fast, seeded PRNG (splitmix64): equal seeds give equal streams. */
struct bench_rng {
    uint64_t state;
};

uint64_t bench_rng_next(struct bench_rng *rng);
/* A uniform value in [0, bound), bound > 0. */
uint64_t bench_rng_below(struct bench_rng *rng, uint64_t bound);
void bench_fill_random(struct bench_rng *rng, void *buf, size_t len);

/* A page-aligned buffer, or exit(1) if memory runs out. Release with free(). */
void *bench_alloc(size_t len);

/*
 * Create an empty scratch file in bench_tmpdir(). Returns its path (free()
 * it) or NULL with a message printed. Scratch files still there when the
 * program exits, or is killed by SIGINT/SIGTERM/SIGHUP, are removed.
 */
char *bench_scratch_file(void);
/* Remove a scratch file now (and forget it). */
void bench_remove_scratch(const char *path);

/*
 * Create a scratch file of size bytes filled with seeded random data in
 * bench_tmpdir(), flushed to disk and then read once so that it is in the
 * page cache. Returns its path (free() it) or NULL with a message printed.
 */
char *bench_make_data_file(uint64_t size, uint64_t seed);

/*
 * Sync the file at path and drop it from the page cache, so that timed
 * writes start from small cached folios (on ext4 with large folios a 4 KiB
 * write into a file written sequentially before costs several times as
 * much): 0, or -1 with a message printed.
 */
int bench_drop_cache(const char *path);
/* Read a whole file once, so that it is in the page cache: 0, or -1 with a message printed. */
int bench_warm_file(const char *path);

/* ------------------------------------------------------------ libvdisk */

/* Print "what path: <vd_errmsg()>" on stderr; returns -1. */
int bench_lib_error(const char *what, const char *path);

/* Fill buf (len bytes) with the content of an image at guest offset off. */
typedef void (*bench_fill_fn)(void *ctx, unsigned char *buf, size_t len, uint64_t off);

/*
 * Create an image of size bytes (a multiple of 1 MiB) at path with
 * vd_create(format, options), write all of it through libvdisk, 1 MiB at a
 * time from fill, close it and read the file once (page cache warm).
 * 0, or -1 with a message printed.
 */
int bench_write_image(const char *path, const char *format, uint64_t size, const char *options,
                      bench_fill_fn fill, void *ctx);

/* ------------------------------------------------------ external commands */

/*
 * Run argv (argv[0] is looked up in PATH) and wait for it. Its standard
 * output and error are captured together into out (NUL-terminated, cut at
 * outlen - 1 bytes; out may be NULL). Returns 0 if it exited with status 0;
 * otherwise -1, with the command and its output printed on stderr unless
 * quiet.
 */
int bench_command(char *const argv[], char *out, size_t outlen, int quiet);

/*
 * Run `program --version`: 0 with the first line of its output in version
 * (len bytes), or -1, quietly, if it does not run.
 */
int bench_version(const char *program, char *version, size_t len);

/* -------------------------------------------------------- comparisons */

/* One way of doing a run of a figure: time it, store the seconds. */
struct bench_side {
    const char *name;  /* "libvdisk", "pread", ... */
    /* One run (round 0 is the untimed warm-up); 0, or -1 with a message printed. */
    int (*run)(void *ctx, unsigned round, double *seconds);
    void *ctx;
};

struct bench_figure {
    const char *title; /* "raw seq-read 1M" */
    double work;       /* units of work per run (bytes, operations) */
    double scale;      /* print work/s divided by this... */
    const char *unit;  /* ...with this unit: 1e9 "GB/s", 1e3 "kIOPS" */
    double target;     /* pass if speed(sides[0]) / speed(sides[1]) >= target */
};

enum bench_verdict { BENCH_BROKEN = -1, BENCH_MISS = 0, BENCH_PASS = 1 };

/*
 * Time sides[0] and sides[1]: one untimed warm-up run of each, then rounds
 * timed rounds, each running both sides back to back in alternating order.
 * seconds[s][r] receives side s's time in round r. 0, or -1 if a run failed.
 * For figures that bench_compare() does not print.
 */
int bench_interleave(const struct bench_side sides[2], unsigned rounds, double *seconds[2]);

/*
 * Compare sides[0] (the contender) with sides[1] (the baseline), timed by
 * bench_interleave(). Prints the median speed of each side and the
 * median of the per-round speed ratios, with PASS or MISS against the target.
 */
enum bench_verdict bench_compare(const struct bench_figure *fig,
                                 const struct bench_side sides[2], unsigned rounds);

/* bench_compare(), also storing the median ratio it printed in *ratio. */
enum bench_verdict bench_compare_ratio(const struct bench_figure *fig,
                                       const struct bench_side sides[2], unsigned rounds,
                                       double *ratio);

/* Count a figure's verdict into pass and n: 0, or -1 if it is BROKEN. */
int bench_tally(enum bench_verdict v, unsigned *pass, unsigned *n);

#endif /* VDISK_BENCH_COMMON_H */
