/*
 * Files in use are never destroyed: vd_create() refuses an image another
 * handle holds (its lock) or that this process has open without locks (the
 * source of a copy, a backing file, an external data file, the new image's
 * own backing file), and leaves it intact; and an image whose external data
 * file is the image itself, a hard link of it or another file of its chain
 * is refused at open, so that guest writes cannot overwrite metadata.
 */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define CONTENT_SEED 11

/* A qcow2 image holding the pattern in its first 64 KiB. */
static const char *make_image(const char *name, const char *options)
{
    const char *path = vt_path(name);
    vt_ok(vd_create(path, "qcow2", MiB, options, 0));
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 0, 64 * KiB, CONTENT_SEED);
    vt_close(img);
    return path;
}

/* The bytes of a file, to compare it before and after (free them). */
static uint8_t *file_bytes(const char *path, uint64_t *size)
{
    *size = vt_file_size(path);
    uint8_t *bytes = malloc(*size ? *size : 1);
    ck_assert_ptr_nonnull(bytes);
    vt_pread_file(path, 0, bytes, (size_t)*size);
    return bytes;
}

/* vd_create(path) fails with code, naming the file, and leaves it as it was. */
static void assert_create_refused(const char *path, const char *options, int code,
                                  const char *why)
{
    uint64_t size_before, size_after;
    uint8_t *before = file_bytes(path, &size_before);
    vt_err(vd_create(path, "qcow2", MiB, options, 0), code);
    vt_assert_errmsg_has(path);
    vt_assert_errmsg_has(why);
    uint8_t *after = file_bytes(path, &size_after);
    ck_assert_uint_eq(size_after, size_before);
    ck_assert_mem_eq(after, before, (size_t)size_before);
    free(before);
    free(after);
}

/* Another process holding an image read-only, as a QEMU would, until release_holder(). */
struct holder {
    pid_t pid;
    int release_fd; /* closing it lets the holder close the image and exit */
};

static struct holder hold_in_child(const char *path)
{
    int ready[2], release[2];
    ck_assert_int_eq(pipe(ready), 0);
    ck_assert_int_eq(pipe(release), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(release[1]); /* so that the parent's close ends the wait below */
        vd_image *img = NULL;
        char byte = vd_open(&img, path, "qcow2", 0) == 0;
        if (write(ready[1], &byte, 1) == 1 && byte)
            while (read(release[0], &byte, 1) > 0)
                ;
        vd_close(img);
        _exit(0);
    }
    char opened = 0;
    ck_assert_int_eq(read(ready[0], &opened, 1), 1);
    ck_assert_msg(opened, "the holder could not open %s", path);
    close(ready[0]);
    close(ready[1]);
    close(release[0]);
    return (struct holder){ pid, release[1] };
}

static void release_holder(struct holder h)
{
    close(h.release_fd);
    int status;
    ck_assert_int_eq(waitpid(h.pid, &status, 0), h.pid);
}

START_TEST(create_over_an_image_another_process_holds_is_refused)
{
    const char *path = make_image("held.qcow2", NULL);
    struct holder h = hold_in_child(path);
    assert_create_refused(path, NULL, VD_ELOCKED, "lock");
    release_holder(h);
    vt_ok(vd_create(path, "qcow2", MiB, NULL, 0)); /* free again */
}
END_TEST

START_TEST(create_over_an_image_open_without_locks_is_refused)
{
    const char *path = make_image("open.qcow2", NULL);
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_NO_LOCK);
    assert_create_refused(path, NULL, VD_EBUSY, "in use");
    vt_close(img);
}
END_TEST

/* What 'convert -U overlay base' would do: the source's backing file is in use too. */
START_TEST(create_over_the_backing_file_of_an_open_image_is_refused)
{
    const char *base = make_image("base.qcow2", NULL);
    const char *overlay = vt_path("overlay.qcow2");
    vt_ok(vd_create(overlay, "qcow2", 0, "backing_file=base.qcow2,backing_fmt=qcow2", 0));
    vd_image *img = vt_open(overlay, "qcow2", VD_OPEN_NO_LOCK);
    assert_create_refused(base, NULL, VD_EBUSY, "in use");
    vt_close(img);
}
END_TEST

START_TEST(create_over_the_data_file_of_an_open_image_is_refused)
{
    make_image("image.qcow2", "data_file=image.data");
    vd_image *img = vt_open(vt_path("image.qcow2"), "qcow2", VD_OPEN_NO_LOCK);
    assert_create_refused(vt_path("image.data"), NULL, VD_EBUSY, "external data file");
    vt_close(img);
}
END_TEST

START_TEST(create_over_its_own_backing_file_is_refused)
{
    const char *path = make_image("self.qcow2", NULL);
    assert_create_refused(path, "backing_file=self.qcow2,backing_fmt=qcow2", VD_EBUSY, "in use");
}
END_TEST

START_TEST(create_with_the_image_as_its_data_file_is_refused)
{
    const char *path = vt_path("self.qcow2");
    vt_err(vd_create(path, "qcow2", MiB, "data_file=self.qcow2", 0), VD_EINVAL);
    vt_assert_errmsg_has("the image file itself");
}
END_TEST

/* Open read-write without locks (locks would hide the problem behind a lock conflict). */
static void assert_open_refused(const char *path, const char *why)
{
    vd_image *img = NULL;
    vt_err(vd_open(&img, path, "qcow2", VD_OPEN_RDWR | VD_OPEN_NO_LOCK), VD_EBACKING);
    vt_assert_errmsg_has(why);
    ck_assert_ptr_null(img);
    vt_err(vd_open(&img, path, "qcow2", 0), VD_EBACKING);
}

/* Replace a file by a hard link to target. */
static void link_over(const char *target, const char *name)
{
    ck_assert_int_eq(unlink(name), 0);
    ck_assert_int_eq(link(target, name), 0);
}

START_TEST(a_data_file_that_is_the_image_itself_is_refused)
{
    /* made as other.qcow2 with data file self.qcow2, then moved over its data file */
    make_image("other.qcow2", "data_file=self.qcow2");
    const char *path = vt_path("self.qcow2");
    ck_assert_int_eq(rename(vt_path("other.qcow2"), path), 0);
    uint64_t size;
    uint8_t *before = file_bytes(path, &size);
    assert_open_refused(path, "the same file as image");
    uint8_t *after = file_bytes(path, &size);
    ck_assert_mem_eq(after, before, (size_t)size);
    free(before);
    free(after);
}
END_TEST

START_TEST(a_data_file_that_is_a_hard_link_of_the_image_is_refused)
{
    const char *path = make_image("image.qcow2", "data_file=image.data");
    link_over(path, vt_path("image.data"));
    assert_open_refused(path, "the same file as image");
}
END_TEST

START_TEST(a_data_file_that_is_the_backing_file_is_refused)
{
    const char *base = make_image("base.qcow2", NULL);
    const char *overlay = vt_path("overlay.qcow2");
    vt_ok(vd_create(overlay, "qcow2", 0,
                    "backing_file=base.qcow2,backing_fmt=qcow2,data_file=overlay.data", 0));
    link_over(base, vt_path("overlay.data"));
    assert_open_refused(overlay, "external data file of image");
}
END_TEST

START_TEST(a_backing_data_file_that_is_the_overlay_is_refused)
{
    make_image("base.qcow2", "data_file=base.data");
    const char *overlay = vt_path("overlay.qcow2");
    vt_ok(vd_create(overlay, "qcow2", 0, "backing_file=base.qcow2,backing_fmt=qcow2", 0));
    link_over(overlay, vt_path("base.data"));
    assert_open_refused(overlay, "the same file as image");
}
END_TEST

static Suite *in_use_suite(void)
{
    Suite *s = suite_create("in-use");
    TCase *tc = vt_tcase(s, "create");
    tcase_add_test(tc, create_over_an_image_another_process_holds_is_refused);
    tcase_add_test(tc, create_over_an_image_open_without_locks_is_refused);
    tcase_add_test(tc, create_over_the_backing_file_of_an_open_image_is_refused);
    tcase_add_test(tc, create_over_the_data_file_of_an_open_image_is_refused);
    tcase_add_test(tc, create_over_its_own_backing_file_is_refused);
    tcase_add_test(tc, create_with_the_image_as_its_data_file_is_refused);
    tc = vt_tcase(s, "data-file");
    tcase_add_test(tc, a_data_file_that_is_the_image_itself_is_refused);
    tcase_add_test(tc, a_data_file_that_is_a_hard_link_of_the_image_is_refused);
    tcase_add_test(tc, a_data_file_that_is_the_backing_file_is_refused);
    tcase_add_test(tc, a_backing_data_file_that_is_the_overlay_is_refused);
    return s;
}

int main(void)
{
    return vt_run_suite(in_use_suite());
}
