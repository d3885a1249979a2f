/*
 * vd_amend() and vd_amend_option(): qcow2 compat both ways, refcount
 * widths and lazy refcounts on an image with data, zero clusters and a snapshot, checked
 * and read back after each step; refusals that leave the image as it was.
 */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>

#define SIZE (8 * MiB)

/* The value of a format-specific property, or NULL. */
static const char *property(vd_image *img, const char *name)
{
    const char *key, *value;
    for (size_t i = 0; vd_get_property(img, i, &key, &value, NULL) == 0; i++)
        if (strcmp(key, name) == 0)
            return value;
    return NULL;
}

/* Data, zero clusters with and without a host cluster, and a snapshot sharing them. */
static const char *make_image(const char *create_options)
{
    const char *path = vt_path("image.qcow2");
    vt_ok(vd_create(path, "qcow2", SIZE, create_options, 0));
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 0, 512 * KiB, 1);
    vt_ok(vd_write_zeroes(img, 128 * KiB, 64 * KiB, 0));
    vt_ok(vd_write_zeroes(img, 4 * MiB, 128 * KiB, 0));
    vt_ok(vd_snapshot_create(img, "before", 0));
    vt_ok(vd_write_zeroes(img, 0, 64 * KiB, 0));
    vt_image_write_pattern(img, 6 * MiB, 64 * KiB, 2);
    vt_close(img);
    return path;
}

/* What make_image's image reads as now, and as its snapshot. */
static void assert_content(const char *path)
{
    vd_image *img = vt_open(path, "qcow2", 0);
    vt_assert_image_zero(img, 0, 64 * KiB);
    vt_assert_image_pattern(img, 64 * KiB, 64 * KiB, 1);
    vt_assert_image_zero(img, 128 * KiB, 64 * KiB);
    vt_assert_image_pattern(img, 192 * KiB, 320 * KiB, 1);
    vt_assert_image_zero(img, 4 * MiB, 128 * KiB);
    vt_assert_image_pattern(img, 6 * MiB, 64 * KiB, 2);
    vt_close(img);
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.format = "qcow2";
    o.snapshot = "before";
    vt_ok(vd_open_ext(&img, path, &o));
    vt_assert_image_pattern(img, 0, 128 * KiB, 1);
    vt_assert_image_zero(img, 128 * KiB, 64 * KiB);
    vt_assert_image_zero(img, 6 * MiB, 64 * KiB);
    vt_close(img);
}

static void assert_clean(const char *path)
{
    vd_image *img = vt_open(path, "qcow2", 0);
    vd_check_result res = VD_CHECK_RESULT_INIT;
    vt_ok(vd_check(img, 0, &res, NULL, NULL));
    ck_assert_uint_eq(res.corruptions, 0);
    ck_assert_uint_eq(res.leaks, 0);
    vt_close(img);
    const char *qemu_img = vt_qemu_img();
    if (qemu_img) {
        const char *argv[] = { qemu_img, "check", "-q", path, NULL };
        ck_assert_int_eq(vt_run(argv), 0);
    }
}

static void amend(const char *path, const char *options)
{
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    vt_ok(vd_amend(img, options, 0));
    vt_close(img);
}

static void assert_property(const char *path, const char *name, const char *want)
{
    vd_image *img = vt_open(path, "qcow2", 0);
    const char *got = property(img, name);
    ck_assert_msg(got && strcmp(got, want) == 0, "%s is %s, not %s", name, got ? got : "absent",
                  want);
    vt_close(img);
}

START_TEST(compat_both_ways_keeps_content)
{
    const char *path = make_image("lazy_refcounts=on");
    amend(path, "compat=0.10");
    assert_property(path, "compat", "0.10");
    assert_clean(path);
    assert_content(path);
    amend(path, "compat=1.1,lazy_refcounts=on");
    assert_property(path, "compat", "1.1");
    assert_property(path, "lazy-refcounts", "true");
    assert_clean(path);
    assert_content(path);
}
END_TEST

START_TEST(refcount_width_both_ways_keeps_content)
{
    const char *path = make_image("compat=1.1");
    static const char *const widths[] = { "64", "2", "8", "16" };
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++) {
        char options[32];
        snprintf(options, sizeof options, "refcount_bits=%s", widths[i]);
        amend(path, options);
        assert_property(path, "refcount-bits", widths[i]);
        assert_clean(path);
        assert_content(path);
    }
    /* the snapshot shares clusters: two references do not fit in one bit */
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    vt_err(vd_amend(img, "refcount_bits=1", 0), VD_EINVAL);
    vt_assert_errmsg_has("Cannot decrease refcount entry width to 1 bits");
    vt_close(img);
    assert_property(path, "refcount-bits", "16");
}
END_TEST

START_TEST(lazy_refcounts_off_writes_refcounts_first)
{
    const char *path = make_image("lazy_refcounts=on");
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 7 * MiB, 192 * KiB, 3); /* refcounts only in memory */
    vt_ok(vd_amend(img, "lazy_refcounts=off", 0));
    vd_info info = VD_INFO_INIT;
    vt_ok(vd_get_info(img, &info));
    ck_assert(!info.dirty);
    vt_close(img);
    assert_property(path, "lazy-refcounts", "false");
    assert_clean(path);
}
END_TEST

START_TEST(refusals_change_nothing)
{
    const char *path = make_image("compat=1.1");
    uint64_t size = vt_file_size(path);
    uint8_t *before = malloc(size), *after = malloc(size);
    vt_pread_file(path, 0, before, size);
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    vt_err(vd_amend(img, "cluster_size=4096", 0), VD_EINVAL);
    vt_assert_errmsg_has("This option is only supported for image creation");
    vt_err(vd_amend(img, "nonsense=1", 0), VD_EINVAL);
    vt_assert_errmsg_has("Invalid parameter 'nonsense'");
    vt_err(vd_amend(img, "compat=0.10,lazy_refcounts=on", 0), VD_EINVAL);
    vt_err(vd_amend(img, "compat=0.10,size=16M", 0), VD_EUNSUPPORTED);
    vt_assert_errmsg_has("Internal snapshots prevent downgrade of image");
    vt_err(vd_amend(img, "backing_file=elsewhere", 0), VD_EINVAL);
    vt_err(vd_amend(img, "compat=1.1", 1), VD_EINVAL);
    vt_ok(vd_amend(img, "", 0));
    vt_close(img);
    vt_pread_file(path, 0, after, size);
    ck_assert(memcmp(before, after, size) == 0);
    free(before);
    free(after);

    img = vt_open(path, "qcow2", 0);
    vt_err(vd_amend(img, "compat=0.10", 0), VD_EREADONLY);
    vt_close(img);
    vt_create_raw(vt_path("raw"), MiB);
    img = vt_open(vt_path("raw"), "raw", VD_OPEN_RDWR);
    vt_err(vd_amend(img, "size=2M", 0), VD_EUNSUPPORTED);
    vt_close(img);
}
END_TEST

START_TEST(amend_options_are_listed)
{
    const char *name, *help;
    bool refcount_bits = false;
    for (size_t i = 0; vd_amend_option("qcow2", i, &name, &help) == 0; i++) {
        ck_assert(help && *help);
        ck_assert_str_ne(name, "cluster_size");
        refcount_bits |= strcmp(name, "refcount_bits") == 0;
    }
    ck_assert(refcount_bits);
    vt_err(vd_amend_option("raw", 0, &name, &help), VD_ENOENT);
    vt_err(vd_amend_option("nosuch", 0, &name, &help), VD_EFORMAT);
    vt_err(vd_amend_option("qcow2", 0, NULL, &help), VD_EINVAL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("amend");
    TCase *tc = vt_tcase(s, "qcow2");
    tcase_add_test(tc, compat_both_ways_keeps_content);
    tcase_add_test(tc, refcount_width_both_ways_keeps_content);
    tcase_add_test(tc, lazy_refcounts_off_writes_refcounts_first);
    tcase_add_test(tc, refusals_change_nothing);
    tc = vt_tcase(s, "options");
    tcase_add_test(tc, amend_options_are_listed);
    return vt_run_suite(s);
}
