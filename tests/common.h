/*
 * Helpers shared by the Check suites and the test helper programs: a
 * per-test temporary folder, file making, a deterministic pattern, running
 * external tools, and assertions that print libvdisk's error detail.
 */
#ifndef VD_TESTS_COMMON_H
#define VD_TESTS_COMMON_H

#include <check.h>
#include <libvdisk/libvdisk.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

/* ------------------------------------------------------------ temp folder */

/*
 * A fresh folder for the current test, removed after it even when the test
 * fails or crashes (vt_tcase() installs the fixtures).
 */
const char *vt_tmpdir(void);
/* "<tmpdir>/<name>"; the string lives until teardown. */
const char *vt_path(const char *name);

/* ------------------------------------------------------------------ files */

/* Create (or truncate) path holding exactly data[0..len). */
void vt_write_file(const char *path, const void *data, size_t len);
/* Create (or truncate) path as a sparse file of size bytes. */
void vt_make_sparse(const char *path, uint64_t size);
/* pwrite into an existing file, all or fail. */
void vt_pwrite_file(const char *path, uint64_t off, const void *data, size_t len);
/* pread from a file, all or fail. */
void vt_pread_file(const char *path, uint64_t off, void *buf, size_t len);
uint64_t vt_file_size(const char *path);
/* Bytes the file occupies on the host (st_blocks * 512). */
uint64_t vt_file_allocated(const char *path);
bool vt_file_exists(const char *path);

/* ---------------------------------------------------------------- pattern */

/* splitmix64: the next value of a deterministic generator. */
uint64_t vt_rand(uint64_t *state);
/* A value in [0, bound). */
uint64_t vt_rand_below(uint64_t *state, uint64_t bound);
/*
 * The pattern byte at absolute position pos for a seed. Filling any range
 * with vt_pattern_fill gives the same bytes at the same positions, however
 * the range is split.
 */
uint8_t vt_pattern_byte(uint64_t seed, uint64_t pos);
void vt_pattern_fill(void *buf, size_t len, uint64_t seed, uint64_t pos);
/* The first position where buf differs from the pattern, or -1. */
long long vt_pattern_mismatch(const void *buf, size_t len, uint64_t seed, uint64_t pos);
/* The first non-zero position in buf, or -1. */
long long vt_nonzero_at(const void *buf, size_t len);

/* ------------------------------------------------------------ libvdisk use */

/* vd_create a raw image or fail the test. */
void vt_create_raw(const char *path, uint64_t size);
/* vd_open or fail the test. */
vd_image *vt_open(const char *path, const char *format, uint32_t flags);
/* The same with a metadata cache of cache_bytes (vd_open_opts.cache_bytes; 0: the default). */
vd_image *vt_open_cached(const char *path, const char *format, uint32_t flags, uint64_t cache_bytes);
/* vd_close or fail the test. */
void vt_close(vd_image *img);
/* Write the pattern over [off, off+len) through vd_write. */
void vt_image_write_pattern(vd_image *img, uint64_t off, uint64_t len, uint64_t seed);

/* --------------------------------------------------------- external tools */

/* The qemu-img meson found (env QEMU_IMG), or NULL. */
const char *vt_qemu_img(void);
/* Run argv (NULL-terminated) with stdout/stderr to /dev/null; its exit status or -1. */
int vt_run(const char *const argv[]);

/* -------------------------------------------------------------- asserting */

/* Assert that a libvdisk call returns 0, printing the code and message if not. */
#define vt_ok(expr) vt_check_rc_((expr), 0, #expr, __FILE__, __LINE__)
/* Assert that a libvdisk call fails with exactly code. */
#define vt_err(expr, code) vt_check_rc_((expr), (code), #expr, __FILE__, __LINE__)
void vt_check_rc_(int got, int want, const char *expr, const char *file, int line);

/* Assert that the calling thread's vd_errmsg() contains needle. */
#define vt_assert_errmsg_has(needle) \
    ck_assert_msg(strstr(vd_errmsg(), (needle)) != NULL, \
                  "vd_errmsg() \"%s\" does not mention \"%s\"", vd_errmsg(), (needle))

/* Assert that [off, off+len) of the image reads as the pattern / as zeroes. */
void vt_assert_image_pattern(vd_image *img, uint64_t off, uint64_t len, uint64_t seed);
void vt_assert_image_zero(vd_image *img, uint64_t off, uint64_t len);
/* Assert that the image reads exactly as model[0..len) from offset 0. */
void vt_assert_image_equals(vd_image *img, const uint8_t *model, uint64_t len);

/* ------------------------------------------------------------ suite glue */

/* A test case whose tests each get a fresh vt_tmpdir() and a roomy timeout. */
TCase *vt_tcase(Suite *s, const char *name);
/* Run a suite, print the results; the process exit status. */
int vt_run_suite(Suite *s);

/* n rounded up to whole 512-byte sectors, the granularity of every image. */
static inline uint64_t vt_sectors(uint64_t n)
{
    return (n + 511) & ~(uint64_t)511;
}

#endif
