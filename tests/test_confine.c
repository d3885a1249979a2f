/*
 * Confinement (VD_OPEN_CONFINED, VD_OPEN_SAFE, VD_CREATE_CONFINED): a file an
 * image names (backing file, external data file) is read only when it lies
 * inside the image's directory, and what was checked is what is read, even
 * while another process swaps names around.
 *
 * Layout of every test: <tmp>/img holds the images, <tmp>/out a secret file
 * outside it that no confined open may ever read.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { IMAGE_SIZE = 64 * 1024 };
#define INSIDE_BYTE 'I'
#define SECRET_BYTE 'S'

/* A raw file of IMAGE_SIZE bytes of one value. */
static void write_filled(const char *path, int byte)
{
    static uint8_t data[IMAGE_SIZE];
    memset(data, byte, sizeof data);
    vt_write_file(path, data, sizeof data);
}

/* <tmp>/img with inside.raw, and <tmp>/out with secret.raw. */
static void make_dirs(void)
{
    ck_assert_int_eq(mkdir(vt_path("img"), 0755), 0);
    ck_assert_int_eq(mkdir(vt_path("out"), 0755), 0);
    write_filled(vt_path("img/inside.raw"), INSIDE_BYTE);
    write_filled(vt_path("out/secret.raw"), SECRET_BYTE);
}

/* img/NAME.qcow2, an overlay naming backing (raw) without opening it. */
static const char *make_overlay(const char *name, const char *backing)
{
    char file[64], options[512];
    snprintf(file, sizeof file, "img/%s.qcow2", name);
    snprintf(options, sizeof options, "backing_file=%s,backing_fmt=raw", backing);
    const char *path = vt_path(file);
    vt_ok(vd_create(path, "qcow2", IMAGE_SIZE, options, VD_CREATE_UNSAFE_BACKING));
    return path;
}

/* The first byte the image shows. */
static uint8_t first_byte(vd_image *img)
{
    uint8_t b;
    vt_ok(vd_read(img, 0, &b, 1, 0));
    return b;
}

/* Unconfined, path opens and shows the secret; confined, it is refused. */
static void assert_only_unconfined_reads_the_secret(const char *path)
{
    vd_image *img = vt_open(path, NULL, 0);
    ck_assert_int_eq(first_byte(img), SECRET_BYTE);
    vt_close(img);
    img = NULL;
    vt_err(vd_open(&img, path, NULL, VD_OPEN_CONFINED), VD_EPERM);
    ck_assert_ptr_null(img);
    vt_assert_errmsg_has("outside");
}

/* --------------------------------------------------------- backing files */

START_TEST(confined_backing_inside_opens)
{
    make_dirs();
    ck_assert_int_eq(mkdir(vt_path("img/sub"), 0755), 0);
    write_filled(vt_path("img/sub/deep.raw"), INSIDE_BYTE);
    char absolute[1024];
    snprintf(absolute, sizeof absolute, "%s", vt_path("img/inside.raw"));
    const char *names[] = { "inside.raw", "./inside.raw", "sub/deep.raw", "sub/../inside.raw",
                            "sub//deep.raw", absolute };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *path = make_overlay("top", names[i]);
        vd_image *img = vt_open(path, NULL, VD_OPEN_CONFINED);
        ck_assert_msg(first_byte(img) == INSIDE_BYTE, "backing file '%s'", names[i]);
        vt_close(img);
    }
}
END_TEST

START_TEST(confined_refuses_backing_that_climbs_out)
{
    make_dirs();
    assert_only_unconfined_reads_the_secret(make_overlay("up", "../out/secret.raw"));
    ck_assert_int_eq(mkdir(vt_path("img/sub"), 0755), 0);
    assert_only_unconfined_reads_the_secret(make_overlay("deep", "sub/../../out/secret.raw"));
}
END_TEST

START_TEST(confined_refuses_absolute_backing_outside)
{
    make_dirs();
    assert_only_unconfined_reads_the_secret(make_overlay("abs", vt_path("out/secret.raw")));
}
END_TEST

START_TEST(confined_refuses_backing_through_symlinks)
{
    make_dirs();
    ck_assert_int_eq(symlink("../out/secret.raw", vt_path("img/link.raw")), 0);
    assert_only_unconfined_reads_the_secret(make_overlay("file-link", "link.raw"));
    ck_assert_int_eq(symlink("../out", vt_path("img/dir-link")), 0);
    assert_only_unconfined_reads_the_secret(make_overlay("dir-link", "dir-link/secret.raw"));
    ck_assert_int_eq(symlink(vt_path("out/secret.raw"), vt_path("img/abs-link.raw")), 0);
    assert_only_unconfined_reads_the_secret(make_overlay("abs-link", "abs-link.raw"));
}
END_TEST

/* A chain level found in img/sub resolves its own names beneath img/sub. */
START_TEST(confined_chain_levels_resolve_beneath_their_own_directory)
{
    make_dirs();
    ck_assert_int_eq(mkdir(vt_path("img/sub"), 0755), 0);
    vt_ok(vd_create(vt_path("img/sub/mid.qcow2"), "qcow2", IMAGE_SIZE,
                    "backing_file=../../out/secret.raw,backing_fmt=raw", VD_CREATE_UNSAFE_BACKING));
    const char *top = vt_path("img/top.qcow2");
    vt_ok(vd_create(top, "qcow2", IMAGE_SIZE, "backing_file=sub/mid.qcow2,backing_fmt=qcow2",
                    VD_CREATE_UNSAFE_BACKING));
    assert_only_unconfined_reads_the_secret(top);
}
END_TEST

/* ------------------------------------------------------ external data file */

/* img/NAME.qcow2 whose raw external data file is named data_name; then the secret is put there. */
static const char *make_data_file_image(const char *name, const char *data_name, const char *where)
{
    char file[64], options[512];
    snprintf(file, sizeof file, "img/%s.qcow2", name);
    snprintf(options, sizeof options, "data_file=%s,data_file_raw=on", data_name);
    const char *path = vt_path(file);
    vt_ok(vd_create(path, "qcow2", IMAGE_SIZE, options, 0));
    write_filled(where, SECRET_BYTE);
    return path;
}

START_TEST(confined_refuses_data_files_outside)
{
    make_dirs();
    assert_only_unconfined_reads_the_secret(
        make_data_file_image("up", "../out/up.raw", vt_path("out/up.raw")));
    assert_only_unconfined_reads_the_secret(
        make_data_file_image("abs", vt_path("out/abs.raw"), vt_path("out/abs.raw")));
    /* made as a plain file inside, then swapped for a symlink to the secret */
    const char *linked = make_data_file_image("link", "link.raw", vt_path("img/link.raw"));
    ck_assert_int_eq(unlink(vt_path("img/link.raw")), 0);
    ck_assert_int_eq(symlink("../out/secret.raw", vt_path("img/link.raw")), 0);
    assert_only_unconfined_reads_the_secret(linked);
}
END_TEST

START_TEST(confined_data_file_inside_opens)
{
    make_dirs();
    const char *path = make_data_file_image("inside", "data.raw", vt_path("img/data.raw"));
    write_filled(vt_path("img/data.raw"), INSIDE_BYTE);
    vd_image *img = vt_open(path, NULL, VD_OPEN_CONFINED | VD_OPEN_RDWR);
    ck_assert_int_eq(first_byte(img), INSIDE_BYTE);
    vt_close(img);
}
END_TEST

/* -------------------------------------------------------------- the race */

/*
 * img/base.raw flips, as fast as a child can rename, between a regular file
 * (a hard link to inside.raw) and a symbolic link to the secret. A check that
 * resolves the name first and opens it again later reads the secret when a
 * flip falls between the two; a confined open must never.
 */
static void flip_forever(void)
{
    const char *file_tmp = vt_path("img/.file"), *link_tmp = vt_path("img/.link");
    const char *name = vt_path("img/base.raw"), *inside = vt_path("img/inside.raw");
    const char *secret = vt_path("out/secret.raw");
    for (;;) {
        unlink(file_tmp);
        if (link(inside, file_tmp) == 0)
            rename(file_tmp, name);
        unlink(link_tmp);
        if (symlink(secret, link_tmp) == 0)
            rename(link_tmp, name);
    }
}

static double seconds_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

START_TEST(confined_open_never_reads_through_a_flipping_symlink)
{
    enum { MAX_ATTEMPTS = 200000 };
    const double max_seconds = 2.0; /* the check-then-reopen code read the secret within 20 opens */
    make_dirs();
    const char *top = make_overlay("top", "base.raw");
    pid_t child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0)
        flip_forever();
    unsigned long inside_reads = 0, secret_reads = 0, attempts = 0;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (secret_reads == 0 && attempts < MAX_ATTEMPTS && seconds_since(&start) < max_seconds) {
        attempts++;
        vd_image *img;
        if (vd_open(&img, top, "qcow2", VD_OPEN_CONFINED | VD_OPEN_NO_LOCK) < 0)
            continue;
        uint8_t b = first_byte(img);
        inside_reads += b == INSIDE_BYTE;
        secret_reads += b == SECRET_BYTE;
        vt_close(img);
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    ck_assert_msg(secret_reads == 0, "the secret was read after %lu confined opens", attempts);
    ck_assert_msg(inside_reads > 0, "no open of %lu read the file inside", attempts);
}
END_TEST

/* ------------------------------------------------------ rebase and create */

START_TEST(confined_rebase_refuses_a_new_backing_outside)
{
    make_dirs();
    vt_ok(vd_create(vt_path("out/base.qcow2"), "qcow2", IMAGE_SIZE, NULL, 0));
    const char *top = make_overlay("top", "inside.raw");
    vd_image *img = vt_open(top, "qcow2", VD_OPEN_CONFINED | VD_OPEN_RDWR);
    vt_err(vd_rebase(img, "../out/base.qcow2", NULL, 0), VD_EPERM);
    vt_assert_errmsg_has("outside");
    vt_err(vd_rebase(img, "../out/base.qcow2", "qcow2", 0), VD_EPERM);
    vd_info info = VD_INFO_INIT;
    vt_ok(vd_get_info(img, &info));
    ck_assert_str_eq(info.backing_file, "inside.raw");
    ck_assert_int_eq(first_byte(img), INSIDE_BYTE);
    vt_close(img);
}
END_TEST

START_TEST(confined_commit_writes_only_inside)
{
    make_dirs();
    vt_ok(vd_create(vt_path("img/base.qcow2"), "qcow2", IMAGE_SIZE, NULL, 0));
    vt_ok(vd_create(vt_path("out/base.qcow2"), "qcow2", IMAGE_SIZE, NULL, 0));
    const char *top = vt_path("img/top.qcow2");
    vt_ok(vd_create(top, "qcow2", 0, "backing_file=base.qcow2", 0));
    vd_image *img = vt_open(top, "qcow2", VD_OPEN_CONFINED | VD_OPEN_RDWR);
    uint8_t data[4096];
    memset(data, 0xc5, sizeof data);
    vt_ok(vd_write(img, 0, data, sizeof data, 0));
    /* the backing file checked at open is swapped for a link to a file outside */
    ck_assert_int_eq(rename(vt_path("img/base.qcow2"), vt_path("img/old.qcow2")), 0);
    ck_assert_int_eq(symlink("../out/base.qcow2", vt_path("img/base.qcow2")), 0);
    vt_err(vd_commit(img, 0), VD_EPERM);
    vd_close(img);
    vd_image *outside = vt_open(vt_path("out/base.qcow2"), "qcow2", 0);
    vt_assert_image_zero(outside, 0, IMAGE_SIZE);
    vt_close(outside);
}
END_TEST

START_TEST(create_confined_refuses_a_backing_file_outside)
{
    make_dirs();
    vt_ok(vd_create(vt_path("out/base.qcow2"), "qcow2", IMAGE_SIZE, NULL, 0));
    ck_assert_int_eq(symlink("../out/base.qcow2", vt_path("img/link.qcow2")), 0);
    const char *names[] = { "backing_file=../out/base.qcow2", "backing_file=link.qcow2" };
    const char *path = vt_path("img/new.qcow2");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        vt_err(vd_create(path, "qcow2", 0, names[i], VD_CREATE_CONFINED), VD_EPERM);
        vt_assert_errmsg_has("outside");
        ck_assert(!vt_file_exists(path));
        vt_ok(vd_create(path, "qcow2", 0, names[i], 0));
        ck_assert_int_eq(unlink(path), 0);
    }
    vt_ok(vd_create(path, "qcow2", 0, "backing_file=inside.raw,backing_fmt=raw",
                    VD_CREATE_CONFINED));
}
END_TEST

/* ------------------------------------------------------------ VD_OPEN_SAFE */

static int open_with(vd_image **img, const char *path, uint32_t flags, const char *formats)
{
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.flags = flags;
    o.formats = formats;
    *img = NULL;
    return vd_open_ext(img, path, &o);
}

START_TEST(safe_profile_is_confined)
{
    make_dirs();
    vd_image *img;
    vt_err(open_with(&img, make_overlay("up", "../out/secret.raw"), VD_OPEN_SAFE, NULL),
           VD_EPERM);
    vt_assert_errmsg_has("outside");
    vt_ok(open_with(&img, make_overlay("in", "inside.raw"), VD_OPEN_SAFE, NULL));
    ck_assert_int_eq(first_byte(img), INSIDE_BYTE);
    vt_close(img);
    vt_err(open_with(&img, vt_path("img/in.qcow2"), VD_OPEN_SAFE | VD_OPEN_UNSAFE_RAW, NULL),
           VD_EINVAL);
}
END_TEST

START_TEST(formats_list_refuses_other_formats_in_the_chain)
{
    make_dirs();
    const char *top = make_overlay("top", "inside.raw");
    vd_image *img;
    vt_err(open_with(&img, top, VD_OPEN_SAFE, "raw"), VD_EPERM);
    vt_assert_errmsg_has("not among the allowed formats");
    vt_err(open_with(&img, top, 0, "qcow2"), VD_EPERM); /* the raw backing file */
    vt_assert_errmsg_has("inside.raw");
    vt_ok(open_with(&img, top, VD_OPEN_SAFE, "qcow2,raw"));
    vt_close(img);
    vt_ok(open_with(&img, top, VD_OPEN_SAFE | VD_OPEN_NO_BACKING, "qcow2"));
    vt_close(img);
    vt_err(open_with(&img, top, 0, "qcow3"), VD_EFORMAT);
    vt_err(open_with(&img, top, 0, "qcow2,"), VD_EINVAL);
    ck_assert_ptr_null(img);
}
END_TEST

START_TEST(relative_to_opens_as_a_backing_file_would)
{
    make_dirs();
    const char *top = make_overlay("top", "inside.raw");
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.relative_to = top;
    o.format = "raw";
    vd_image *img;
    vt_ok(vd_open_ext(&img, "inside.raw", &o));
    ck_assert_str_eq(vd_get_filename(img), vt_path("img/inside.raw"));
    vt_close(img);
    vt_ok(vd_open_ext(&img, "../out/secret.raw", &o));
    vt_close(img);
    o.flags = VD_OPEN_CONFINED;
    vt_err(vd_open_ext(&img, "../out/secret.raw", &o), VD_EPERM);
}
END_TEST

/* ------------------------------------------------------------------ suite */

/*
 * Make openat2 fail with ENOSYS in this (forked) test process, as on kernels
 * before 5.6, so that the component walk does the resolving.
 */
static void without_openat2(void)
{
#ifdef SYS_openat2
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_openat2, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = { sizeof filter / sizeof filter[0], filter };
    ck_assert_int_eq(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
    ck_assert_int_eq(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program), 0);
    ck_assert_int_eq(syscall(SYS_openat2, AT_FDCWD, ".", NULL, 0), -1);
    ck_assert_int_eq(errno, ENOSYS);
#endif
}

/* The resolution tests, run with openat2 and again with the component walk. */
static void add_resolution_tests(Suite *s, const char *name, void (*setup)(void))
{
    TCase *tc = vt_tcase(s, name);
    if (setup)
        tcase_add_checked_fixture(tc, setup, NULL);
    tcase_add_test(tc, confined_backing_inside_opens);
    tcase_add_test(tc, confined_refuses_backing_that_climbs_out);
    tcase_add_test(tc, confined_refuses_absolute_backing_outside);
    tcase_add_test(tc, confined_refuses_backing_through_symlinks);
    tcase_add_test(tc, confined_chain_levels_resolve_beneath_their_own_directory);
    tcase_add_test(tc, confined_refuses_data_files_outside);
    tcase_add_test(tc, confined_data_file_inside_opens);
    tcase_add_test(tc, confined_open_never_reads_through_a_flipping_symlink);
}

int main(void)
{
    Suite *s = suite_create("confine");
    add_resolution_tests(s, "openat2", NULL);
    add_resolution_tests(s, "component-walk", without_openat2);
    TCase *tc = vt_tcase(s, "chain-changes");
    tcase_add_test(tc, confined_rebase_refuses_a_new_backing_outside);
    tcase_add_test(tc, confined_commit_writes_only_inside);
    tcase_add_test(tc, create_confined_refuses_a_backing_file_outside);
    tc = vt_tcase(s, "safe");
    tcase_add_test(tc, safe_profile_is_confined);
    tcase_add_test(tc, formats_list_refuses_other_formats_in_the_chain);
    tcase_add_test(tc, relative_to_opens_as_a_backing_file_would);
    return vt_run_suite(s);
}
