/*
 * vd_convert(): every option, content against the source, sparseness,
 * progress and cancellation, the fate of the destination on failure, and
 * messages that name the file.
 */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define SEED 15
#define SIZE (8 * MiB)

/* A raw source: pattern at [0, 1M) and [5M, 5M + 64K), written zeroes at [2M, 3M), holes between. */
static const char *make_source(void)
{
    const char *path = vt_path("src.raw");
    vt_make_sparse(path, SIZE);
    vd_image *img = vt_open(path, "raw", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 0, MiB, SEED);
    vt_image_write_pattern(img, 5 * MiB, 64 * KiB, SEED);
    void *zeroes = calloc(1, MiB);
    vt_ok(vd_write(img, 2 * MiB, zeroes, MiB, 0));
    free(zeroes);
    vt_close(img);
    return path;
}

static void assert_like_source(const char *path, const char *format)
{
    vd_image *img = vt_open(path, format, 0);
    uint64_t size;
    vt_ok(vd_get_size(img, &size));
    ck_assert_uint_eq(size, SIZE);
    vt_assert_image_pattern(img, 0, MiB, SEED);
    vt_assert_image_zero(img, MiB, 4 * MiB);
    vt_assert_image_pattern(img, 5 * MiB, 64 * KiB, SEED);
    vt_assert_image_zero(img, 5 * MiB + 64 * KiB, SIZE - 5 * MiB - 64 * KiB);
    vt_close(img);
}

/* Bytes of the image that this image itself holds as data (not zero, not its backing file's). */
static uint64_t own_data(const char *path, const char *format)
{
    vd_image *img = vt_open(path, format, VD_OPEN_NO_BACKING);
    uint64_t size, total = 0;
    vt_ok(vd_get_size(img, &size));
    vd_extent ext;
    for (uint64_t off = 0; off < size; off += ext.length) {
        vt_ok(vd_block_status(img, off, size - off, &ext, 0));
        if ((ext.flags & VD_EXTENT_DATA) && ext.depth == 0)
            total += ext.length;
    }
    vt_close(img);
    return total;
}

/* qemu-img check passes, when qemu-img is there. */
static void assert_qemu_check(const char *path)
{
    if (!vt_qemu_img())
        return;
    const char *argv[] = { vt_qemu_img(), "check", "-q", path, NULL };
    ck_assert_int_eq(vt_run(argv), 0);
}

static vd_convert_opts paths(const char *src, const char *dst, const char *dst_format)
{
    vd_convert_opts o = VD_CONVERT_OPTS_INIT;
    o.src_path = src;
    o.dst_path = dst;
    o.dst_format = dst_format;
    return o;
}

/* ----------------------------------------------------------------- formats */

START_TEST(raw_to_qcow2_to_raw)
{
    const char *src = make_source(), *q = vt_path("out.qcow2"), *r = vt_path("back.raw");
    vd_convert_opts o = paths(src, q, "qcow2");
    vt_ok(vd_convert(&o));
    assert_like_source(q, "qcow2");
    assert_qemu_check(q);
    /* only the pattern is data: the written zeroes and the holes are not */
    ck_assert_uint_eq(own_data(q, "qcow2"), MiB + 64 * KiB);
    o = paths(q, r, NULL);
    o.src_format = "qcow2";
    vt_ok(vd_convert(&o));
    assert_like_source(r, "raw");
    ck_assert_uint_le(vt_file_allocated(r), MiB + 64 * KiB + 64 * KiB);
}
END_TEST

START_TEST(raw_to_raw_copies_data_and_keeps_holes)
{
    const char *src = make_source(), *dst = vt_path("out.raw");
    vd_convert_opts o = paths(src, dst, "raw");
    vt_ok(vd_convert(&o));
    assert_like_source(dst, "raw");
    ck_assert_uint_le(vt_file_allocated(dst), MiB + 64 * KiB + 64 * KiB);
    /* -S 0: nothing is read into a buffer, everything is copied file to file or written */
    o.sparse_size = 0;
    vt_ok(vd_convert(&o));
    assert_like_source(dst, "raw");
    ck_assert_uint_ge(vt_file_allocated(dst), SIZE);
}
END_TEST

START_TEST(source_handle_is_left_open)
{
    const char *src = make_source(), *dst = vt_path("out.qcow2");
    vd_image *img = vt_open(src, "raw", 0);
    vd_convert_opts o = VD_CONVERT_OPTS_INIT;
    o.src = img;
    o.dst_path = dst;
    o.dst_format = "qcow2";
    vt_ok(vd_convert(&o));
    vt_assert_image_pattern(img, 0, MiB, SEED); /* still usable */
    vt_close(img);
    assert_like_source(dst, "qcow2");
}
END_TEST

START_TEST(sparse_size_zero_allocates_everything)
{
    const char *src = make_source(), *dst = vt_path("out.qcow2");
    vd_convert_opts o = paths(src, dst, "qcow2");
    o.sparse_size = 0;
    vt_ok(vd_convert(&o));
    assert_like_source(dst, "qcow2");
    /* the source's allocated zeroes are written; its holes are left (they read as zeroes) */
    ck_assert_uint_ge(own_data(dst, "qcow2"), 2 * MiB + 64 * KiB);
}
END_TEST

START_TEST(create_options_and_backing_file)
{
    const char *src = make_source(), *base = vt_path("base.raw"), *dst = vt_path("top.qcow2");
    /* the base holds the source's first MiB already, and other data at 6M */
    vt_create_raw(base, SIZE);
    vd_image *img = vt_open(base, "raw", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 0, MiB, SEED);
    vt_image_write_pattern(img, 6 * MiB, 64 * KiB, 99);
    vt_close(img);
    vd_convert_opts o = paths(src, dst, "qcow2");
    o.dst_options = "cluster_size=65536";
    o.backing_file = "base.raw"; /* relative to the destination's directory */
    o.backing_format = "raw";
    vt_ok(vd_convert(&o));
    assert_like_source(dst, "qcow2");
    assert_qemu_check(dst);
    /* the overlay holds the 64 KiB at 5M as data and zeroes over the base's data at 6M */
    ck_assert_uint_eq(own_data(dst, "qcow2"), 64 * KiB);
    img = vt_open(dst, "qcow2", 0);
    vd_info info = VD_INFO_INIT;
    vt_ok(vd_get_info(img, &info));
    ck_assert_str_eq(info.backing_file, "base.raw");
    ck_assert_uint_eq(info.cluster_size, 65536);
    vt_close(img);
}
END_TEST

START_TEST(snapshot_of_the_source)
{
    const char *src = vt_path("src.qcow2"), *dst = vt_path("out.raw");
    vt_ok(vd_create(src, "qcow2", SIZE, NULL, 0));
    vd_image *img = vt_open(src, "qcow2", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 0, MiB, SEED);
    vt_ok(vd_snapshot_create(img, "before", 0));
    vt_image_write_pattern(img, 0, MiB, SEED + 1);
    vt_close(img);
    vd_convert_opts o = paths(src, dst, "raw");
    o.snapshot = "before";
    vt_ok(vd_convert(&o));
    img = vt_open(dst, "raw", 0);
    vt_assert_image_pattern(img, 0, MiB, SEED);
    vt_close(img);
    o.snapshot = "nosuch";
    ck_assert_int_lt(vd_convert(&o), 0);
    vt_assert_errmsg_has("nosuch");
}
END_TEST

/* ----------------------------------------------------------- existing target */

/* A raw target of size bytes full of 0xee. */
static const char *make_dirty_target(uint64_t size)
{
    const char *path = vt_path("target.raw");
    unsigned char *junk = malloc(size);
    memset(junk, 0xee, size);
    vt_write_file(path, junk, size);
    free(junk);
    return path;
}

START_TEST(existing_target_gets_zeroes_written)
{
    const char *src = make_source(), *dst = make_dirty_target(SIZE + MiB);
    vd_convert_opts o = paths(src, dst, "raw");
    o.flags = VD_CONVERT_EXISTING;
    vt_ok(vd_convert(&o));
    vd_image *img = vt_open(dst, "raw", 0);
    vt_assert_image_pattern(img, 0, MiB, SEED);
    vt_assert_image_zero(img, MiB, 4 * MiB);
    vt_assert_image_pattern(img, 5 * MiB, 64 * KiB, SEED);
    vt_assert_image_zero(img, 5 * MiB + 64 * KiB, SIZE - 5 * MiB - 64 * KiB);
    unsigned char tail[512];
    vt_ok(vd_read(img, SIZE, tail, sizeof tail, 0)); /* past the source: untouched */
    ck_assert_uint_eq(tail[0], 0xee);
    vt_close(img);
}
END_TEST

START_TEST(target_is_zero_writes_no_zeroes)
{
    const char *src = make_source(), *dst = make_dirty_target(SIZE);
    vd_convert_opts o = paths(src, dst, "raw");
    o.flags = VD_CONVERT_EXISTING | VD_CONVERT_TARGET_IS_ZERO;
    vt_ok(vd_convert(&o));
    unsigned char byte;
    vt_pread_file(dst, 3 * MiB, &byte, 1); /* a zero run of the source: left alone */
    ck_assert_uint_eq(byte, 0xee);
    vt_pread_file(dst, 0, &byte, 1);
    ck_assert_uint_eq(byte, vt_pattern_byte(SEED, 0));
}
END_TEST

START_TEST(existing_target_refusals)
{
    const char *src = make_source(), *dst = make_dirty_target(SIZE - MiB);
    vd_convert_opts o = paths(src, dst, "raw");
    o.flags = VD_CONVERT_EXISTING;
    vt_err(vd_convert(&o), VD_ERANGE);
    vt_assert_errmsg_has(dst);
    vt_assert_errmsg_has("smaller");
    o.dst_options = "preallocation=off";
    vt_err(vd_convert(&o), VD_EINVAL);
    o.dst_options = NULL;
    o.flags = VD_CONVERT_TARGET_IS_ZERO;
    vt_err(vd_convert(&o), VD_EINVAL);
    o.flags = VD_CONVERT_EXISTING;
    o.dst_path = vt_path("missing.raw");
    vt_err(vd_convert(&o), VD_ENOENT);
    vt_assert_errmsg_has("missing.raw");
    ck_assert(!vt_file_exists(o.dst_path));
}
END_TEST

/* ---------------------------------------------------------------- parallel */

START_TEST(parallel_and_out_of_order)
{
    const char *src = make_source();
    static const struct { uint32_t parallel; uint32_t flags; } cases[] = {
        { 1, 0 }, { 16, 0 }, { 1, VD_CONVERT_OUT_OF_ORDER }, { 0, VD_CONVERT_OUT_OF_ORDER },
        { 16, VD_CONVERT_OUT_OF_ORDER },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *dst = vt_path(i % 2 ? "out.qcow2" : "out.raw");
        vd_convert_opts o = paths(src, dst, i % 2 ? "qcow2" : "raw");
        o.parallel = cases[i].parallel;
        o.flags = cases[i].flags;
        vt_ok(vd_convert(&o));
        assert_like_source(dst, i % 2 ? "qcow2" : "raw");
        if (i % 2)
            assert_qemu_check(dst);
    }
    vd_convert_opts o = paths(src, vt_path("x.raw"), "raw");
    o.parallel = VD_CONVERT_MAX_PARALLEL + 1;
    vt_err(vd_convert(&o), VD_EINVAL);
    ck_assert(!vt_file_exists(vt_path("x.raw")));
}
END_TEST

/* ---------------------------------------------------------------- progress */

struct progress_log {
    uint64_t calls, last_done, total;
    uint64_t cancel_after; /* calls; 0: never */
    bool monotonic;
};

static int log_progress(void *ctx, uint64_t done, uint64_t total)
{
    struct progress_log *log = ctx;
    log->monotonic &= done >= log->last_done && done <= total &&
                      (!log->calls || total == log->total);
    log->last_done = done;
    log->total = total;
    return ++log->calls == log->cancel_after;
}

START_TEST(progress_counts_the_data)
{
    const char *src = make_source();
    struct progress_log log = { .monotonic = true };
    vd_convert_opts o = paths(src, vt_path("out.qcow2"), "qcow2");
    o.progress = log_progress;
    o.progress_ctx = &log;
    vt_ok(vd_convert(&o));
    ck_assert(log.monotonic);
    /* the allocated data (the written zeroes too: they are read), not the 8 MiB */
    ck_assert_uint_eq(log.total, 2 * MiB + 64 * KiB);
    ck_assert_uint_eq(log.last_done, log.total);
    ck_assert_uint_ge(log.calls, 3); /* the start, and each chunk */
}
END_TEST

START_TEST(cancel_removes_a_created_destination)
{
    const char *src = make_source(), *dst = vt_path("out.qcow2");
    struct progress_log log = { .monotonic = true, .cancel_after = 2 };
    vd_convert_opts o = paths(src, dst, "qcow2");
    o.progress = log_progress;
    o.progress_ctx = &log;
    vt_err(vd_convert(&o), VD_ECANCELED);
    vt_assert_errmsg_has("cancelled");
    ck_assert(!vt_file_exists(dst));
    /* also when cancelled before anything is written */
    log = (struct progress_log){ .monotonic = true, .cancel_after = 1 };
    vt_err(vd_convert(&o), VD_ECANCELED);
    ck_assert(!vt_file_exists(dst));
}
END_TEST

START_TEST(cancel_keeps_an_existing_target)
{
    const char *src = make_source(), *dst = make_dirty_target(SIZE);
    struct progress_log log = { .monotonic = true, .cancel_after = 2 };
    vd_convert_opts o = paths(src, dst, "raw");
    o.flags = VD_CONVERT_EXISTING;
    o.progress = log_progress;
    o.progress_ctx = &log;
    vt_err(vd_convert(&o), VD_ECANCELED);
    vt_assert_errmsg_has("left as written so far");
    vt_assert_errmsg_has(dst);
    ck_assert_uint_eq(vt_file_size(dst), SIZE);
}
END_TEST

START_TEST(overwritten_file_is_not_removed)
{
    const char *src = make_source(), *dst = make_dirty_target(MiB);
    struct progress_log log = { .monotonic = true, .cancel_after = 2 };
    vd_convert_opts o = paths(src, dst, "raw");
    o.progress = log_progress;
    o.progress_ctx = &log;
    vt_err(vd_convert(&o), VD_ECANCELED);
    ck_assert(vt_file_exists(dst)); /* it was not the call's to remove */
}
END_TEST

/* ------------------------------------------------------------------ errors */

/* A qcow2 image whose last data cluster was cut off its file: reading it fails. */
static const char *make_truncated_qcow2(void)
{
    const char *path = vt_path("cut.qcow2");
    vt_ok(vd_create(path, "qcow2", SIZE, NULL, 0));
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 0, 64 * KiB, SEED);
    vt_image_write_pattern(img, 4 * MiB, 64 * KiB, SEED);
    vt_close(img);
    ck_assert_int_eq(truncate(path, (off_t)(vt_file_size(path) - 64 * KiB)), 0);
    return path;
}

START_TEST(read_error_midway_removes_the_destination)
{
    const char *src = make_truncated_qcow2(), *dst = vt_path("out.raw");
    vd_convert_opts o = paths(src, dst, "raw");
    o.src_format = "qcow2";
    ck_assert_int_lt(vd_convert(&o), 0);
    vt_assert_errmsg_has("error while reading at byte 4194304");
    vt_assert_errmsg_has("cut.qcow2");
    ck_assert(!vt_file_exists(dst));
}
END_TEST

START_TEST(bad_options)
{
    const char *src = make_source(), *dst = vt_path("out.img");
    vd_convert_opts o = paths(src, dst, "nosuch");
    vt_err(vd_convert(&o), VD_EFORMAT);
    vt_assert_errmsg_has("nosuch");
    o = paths(src, dst, "raw");
    o.backing_file = "base.raw";
    vt_err(vd_convert(&o), VD_EUNSUPPORTED);
    o = paths(src, dst, "raw");
    o.flags = VD_CONVERT_COMPRESS;
    vt_err(vd_convert(&o), VD_EUNSUPPORTED);
    o.flags = VD_CONVERT_BITMAPS;
    vt_err(vd_convert(&o), VD_EUNSUPPORTED);
    o.flags = VD_CONVERT_SKIP_BROKEN_BITMAPS; /* only with VD_CONVERT_BITMAPS */
    vt_err(vd_convert(&o), VD_EINVAL);
    vt_assert_errmsg_has("requires --bitmaps");
    o.flags = 1u << 31;
    vt_err(vd_convert(&o), VD_EINVAL);
    o = paths(src, dst, "raw");
    o.sparse_size = 1000;
    vt_err(vd_convert(&o), VD_EINVAL);
    o.sparse_size = VD_CONVERT_MAX_SPARSE_SIZE + 512;
    vt_err(vd_convert(&o), VD_EINVAL);
    o = paths(NULL, dst, "raw");
    vt_err(vd_convert(&o), VD_EINVAL);
    o = paths(src, dst, "raw");
    o.dst_open_flags = VD_OPEN_NO_LOCK;
    vt_err(vd_convert(&o), VD_EINVAL);
    o = paths(src, dst, "raw");
    o.struct_size = 8;
    vt_err(vd_convert(&o), VD_EINVAL);
    vt_err(vd_convert(NULL), VD_EINVAL);
    ck_assert(!vt_file_exists(dst));
    o = paths(vt_path("missing.raw"), dst, "raw");
    vt_err(vd_convert(&o), VD_ENOENT);
    vt_assert_errmsg_has("missing.raw");
    ck_assert(!vt_file_exists(dst));
}
END_TEST

START_TEST(destination_in_use_is_refused)
{
    const char *src = make_source();
    vd_convert_opts o = paths(src, src, "raw");
    ck_assert_int_lt(vd_convert(&o), 0);
    vt_assert_errmsg_has("error while converting raw");
    assert_like_source(src, "raw");
}
END_TEST

START_TEST(syncs_only_when_asked)
{
    /* content is the same either way; the CLI test counts the syncs */
    const char *src = make_source(), *dst = vt_path("out.qcow2");
    vd_convert_opts o = paths(src, dst, "qcow2");
    o.dst_open_flags = 0;
    vt_ok(vd_convert(&o));
    assert_like_source(dst, "qcow2");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("convert");
    TCase *tc = vt_tcase(s, "formats");
    tcase_add_test(tc, raw_to_qcow2_to_raw);
    tcase_add_test(tc, raw_to_raw_copies_data_and_keeps_holes);
    tcase_add_test(tc, source_handle_is_left_open);
    tcase_add_test(tc, sparse_size_zero_allocates_everything);
    tcase_add_test(tc, create_options_and_backing_file);
    tcase_add_test(tc, snapshot_of_the_source);
    tcase_add_test(tc, syncs_only_when_asked);
    tc = vt_tcase(s, "existing");
    tcase_add_test(tc, existing_target_gets_zeroes_written);
    tcase_add_test(tc, target_is_zero_writes_no_zeroes);
    tcase_add_test(tc, existing_target_refusals);
    tc = vt_tcase(s, "parallel");
    tcase_add_test(tc, parallel_and_out_of_order);
    tc = vt_tcase(s, "progress");
    tcase_add_test(tc, progress_counts_the_data);
    tcase_add_test(tc, cancel_removes_a_created_destination);
    tcase_add_test(tc, cancel_keeps_an_existing_target);
    tcase_add_test(tc, overwritten_file_is_not_removed);
    tc = vt_tcase(s, "errors");
    tcase_add_test(tc, read_error_midway_removes_the_destination);
    tcase_add_test(tc, bad_options);
    tcase_add_test(tc, destination_in_use_is_refused);
    return vt_run_suite(s);
}
