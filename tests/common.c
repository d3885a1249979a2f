/* Helpers shared by the test programs (see common.h). */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------ temp folder */

/*
 * A failed Check assertion ends a forked test with _exit(), skipping its
 * checked teardown. So the parent owns a folder per test case (unchecked
 * fixture: it runs in the parent, whatever the child did) and each test
 * makes its own subfolder there.
 */
static char *case_dir;    /* parent: this test case's folder */
static char *current_dir; /* child: this test's folder */
static char **paths;
static size_t npaths;

/* Make a "vdtest-XXXXXX" folder in parent (NULL: $TMPDIR or /tmp). */
static char *make_temp_dir(const char *parent)
{
    const char *base = parent ? parent : getenv("TMPDIR");
    char *templ;
    ck_assert(asprintf(&templ, "%s/vdtest-XXXXXX", base && *base ? base : "/tmp") > 0);
    ck_assert_msg(mkdtemp(templ) != NULL, "mkdtemp(%s): %s", templ, strerror(errno));
    return templ;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st, (void)type, (void)ftw;
    remove(path);
    return 0;
}

static void remove_tree(const char *dir)
{
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void case_dir_setup(void)
{
    case_dir = make_temp_dir(NULL);
}

static void case_dir_teardown(void)
{
    remove_tree(case_dir);
    free(case_dir);
    case_dir = NULL;
}

static void test_dir_setup(void)
{
    current_dir = make_temp_dir(case_dir);
}

static void test_dir_teardown(void)
{
    for (size_t i = 0; i < npaths; i++)
        free(paths[i]);
    free(paths);
    paths = NULL;
    npaths = 0;
    if (current_dir)
        remove_tree(current_dir);
    free(current_dir);
    current_dir = NULL;
}

const char *vt_tmpdir(void)
{
    ck_assert_msg(current_dir != NULL, "no temporary folder: use vt_tcase()");
    return current_dir;
}

const char *vt_path(const char *name)
{
    char *p;
    ck_assert(asprintf(&p, "%s/%s", vt_tmpdir(), name) > 0);
    char **grown = realloc(paths, (npaths + 1) * sizeof *grown);
    ck_assert(grown != NULL);
    paths = grown;
    paths[npaths++] = p;
    return p;
}

/* ------------------------------------------------------------------ files */

static int open_or_fail(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC, 0644);
    ck_assert_msg(fd >= 0, "open(%s): %s", path, strerror(errno));
    return fd;
}

static void pwrite_all(int fd, const char *path, uint64_t off, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        ck_assert_msg(n > 0, "pwrite(%s, %llu): %s", path, (unsigned long long)off,
                      strerror(errno));
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
}

void vt_write_file(const char *path, const void *data, size_t len)
{
    int fd = open_or_fail(path, O_WRONLY | O_CREAT | O_TRUNC);
    pwrite_all(fd, path, 0, data, len);
    close(fd);
}

void vt_make_sparse(const char *path, uint64_t size)
{
    int fd = open_or_fail(path, O_WRONLY | O_CREAT | O_TRUNC);
    ck_assert_msg(ftruncate(fd, (off_t)size) == 0, "ftruncate(%s): %s", path, strerror(errno));
    close(fd);
}

void vt_pwrite_file(const char *path, uint64_t off, const void *data, size_t len)
{
    int fd = open_or_fail(path, O_WRONLY);
    pwrite_all(fd, path, off, data, len);
    close(fd);
}

void vt_pread_file(const char *path, uint64_t off, void *buf, size_t len)
{
    int fd = open_or_fail(path, O_RDONLY);
    char *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        ck_assert_msg(n > 0, "pread(%s, %llu): %s", path, (unsigned long long)off,
                      n == 0 ? "end of file" : strerror(errno));
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    close(fd);
}

static struct stat stat_or_fail(const char *path)
{
    struct stat st;
    ck_assert_msg(stat(path, &st) == 0, "stat(%s): %s", path, strerror(errno));
    return st;
}

uint64_t vt_file_size(const char *path)
{
    return (uint64_t)stat_or_fail(path).st_size;
}

uint64_t vt_file_allocated(const char *path)
{
    return (uint64_t)stat_or_fail(path).st_blocks * 512;
}

bool vt_file_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* ---------------------------------------------------------------- pattern */

uint64_t vt_rand(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

uint64_t vt_rand_below(uint64_t *state, uint64_t bound)
{
    return bound ? vt_rand(state) % bound : 0;
}

/* One generator step per 8-byte word, keyed by seed and the word's position. */
static uint64_t pattern_word(uint64_t seed, uint64_t word_index)
{
    uint64_t state = seed * UINT64_C(0x2545f4914f6cdd1d) ^ word_index;
    return vt_rand(&state);
}

uint8_t vt_pattern_byte(uint64_t seed, uint64_t pos)
{
    return (uint8_t)(pattern_word(seed, pos / 8) >> (8 * (pos % 8)));
}

void vt_pattern_fill(void *buf, size_t len, uint64_t seed, uint64_t pos)
{
    uint8_t *p = buf;
    size_t i = 0;
    while (i < len) {
        uint64_t w = pattern_word(seed, (pos + i) / 8);
        for (unsigned b = (unsigned)((pos + i) % 8); b < 8 && i < len; b++, i++)
            p[i] = (uint8_t)(w >> (8 * b));
    }
}

long long vt_pattern_mismatch(const void *buf, size_t len, uint64_t seed, uint64_t pos)
{
    const uint8_t *p = buf;
    size_t i = 0;
    while (i < len) {
        uint64_t w = pattern_word(seed, (pos + i) / 8);
        for (unsigned b = (unsigned)((pos + i) % 8); b < 8 && i < len; b++, i++)
            if (p[i] != (uint8_t)(w >> (8 * b)))
                return (long long)i;
    }
    return -1;
}

long long vt_nonzero_at(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return (long long)i;
    return -1;
}

/* ------------------------------------------------------------ libvdisk use */

void vt_check_rc_(int got, int want, const char *expr, const char *file, int line)
{
    ck_assert_msg(got == want, "%s:%d: %s returned %d (%s), expected %d (%s); vd_errmsg: \"%s\"",
                  file, line, expr, got, vd_errname(got), want, vd_errname(want), vd_errmsg());
}

void vt_create_raw(const char *path, uint64_t size)
{
    vt_ok(vd_create(path, "raw", size, NULL, 0));
}

vd_image *vt_open_cached(const char *path, const char *format, uint32_t flags, uint64_t cache_bytes)
{
    vd_open_opts opts = VD_OPEN_OPTS_INIT;
    opts.format = format;
    opts.flags = flags;
    opts.cache_bytes = cache_bytes;
    vd_image *img = NULL;
    vt_ok(vd_open_ext(&img, path, &opts));
    ck_assert_ptr_nonnull(img);
    return img;
}

vd_image *vt_open(const char *path, const char *format, uint32_t flags)
{
    return vt_open_cached(path, format, flags, 0);
}

void vt_close(vd_image *img)
{
    vt_ok(vd_close(img));
}

enum { CHUNK = 1 << 20 };

void vt_image_write_pattern(vd_image *img, uint64_t off, uint64_t len, uint64_t seed)
{
    uint8_t *buf = malloc(CHUNK);
    ck_assert_ptr_nonnull(buf);
    for (uint64_t done = 0; done < len;) {
        size_t n = len - done < CHUNK ? (size_t)(len - done) : CHUNK;
        vt_pattern_fill(buf, n, seed, off + done);
        vt_ok(vd_write(img, off + done, buf, n, 0));
        done += n;
    }
    free(buf);
}

/* Read the image in chunks; check(chunk, n, pos, ctx) gives the first bad index or -1. */
typedef long long (*chunk_check)(const uint8_t *chunk, size_t n, uint64_t pos, const void *ctx);

static void assert_image_chunks(vd_image *img, uint64_t off, uint64_t len, chunk_check check,
                                const void *ctx, const char *what)
{
    uint8_t *buf = malloc(CHUNK);
    ck_assert_ptr_nonnull(buf);
    for (uint64_t done = 0; done < len;) {
        size_t n = len - done < CHUNK ? (size_t)(len - done) : CHUNK;
        vt_ok(vd_read(img, off + done, buf, n, 0));
        long long bad = check(buf, n, off + done, ctx);
        ck_assert_msg(bad < 0, "image byte at offset %llu is 0x%02x, not %s",
                      (unsigned long long)(off + done + (uint64_t)bad), buf[bad], what);
        done += n;
    }
    free(buf);
}

static long long check_pattern(const uint8_t *chunk, size_t n, uint64_t pos, const void *ctx)
{
    return vt_pattern_mismatch(chunk, n, *(const uint64_t *)ctx, pos);
}

static long long check_zero(const uint8_t *chunk, size_t n, uint64_t pos, const void *ctx)
{
    (void)pos, (void)ctx;
    return vt_nonzero_at(chunk, n);
}

static long long check_model(const uint8_t *chunk, size_t n, uint64_t pos, const void *ctx)
{
    const uint8_t *model = (const uint8_t *)ctx + pos;
    for (size_t i = 0; i < n; i++)
        if (chunk[i] != model[i])
            return (long long)i;
    return -1;
}

void vt_assert_image_pattern(vd_image *img, uint64_t off, uint64_t len, uint64_t seed)
{
    assert_image_chunks(img, off, len, check_pattern, &seed, "the pattern");
}

void vt_assert_image_zero(vd_image *img, uint64_t off, uint64_t len)
{
    assert_image_chunks(img, off, len, check_zero, NULL, "zero");
}

void vt_assert_image_equals(vd_image *img, const uint8_t *model, uint64_t len)
{
    uint64_t size;
    vt_ok(vd_get_size(img, &size));
    ck_assert_uint_eq(size, len);
    assert_image_chunks(img, 0, len, check_model, model, "the model's byte");
}

/* --------------------------------------------------------- external tools */

const char *vt_qemu_img(void)
{
    const char *p = getenv("QEMU_IMG");
    return p && *p && access(p, X_OK) == 0 ? p : NULL;
}

int vt_run(const char *const argv[])
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, STDOUT_FILENO);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* ------------------------------------------------------------ suite glue */

TCase *vt_tcase(Suite *s, const char *name)
{
    TCase *tc = tcase_create(name);
    tcase_add_unchecked_fixture(tc, case_dir_setup, case_dir_teardown);
    tcase_add_checked_fixture(tc, test_dir_setup, test_dir_teardown);
    /* Check's 4 s default is tight for sanitizer builds; CK_TIMEOUT_MULTIPLIER scales this. */
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);
    return tc;
}

int vt_run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
