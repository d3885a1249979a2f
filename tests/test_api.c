/*
 * Misuse of the public API: NULL handles and out-pointers, unknown flags,
 * out-of-range offsets, read-only handles, bad names and options. Every
 * misuse must fail with the documented code and never crash.
 */
#include "common.h"

#include <stdio.h>

enum { IMAGE_SIZE = 64 * 1024 };

/* A 64 KiB raw image holding the pattern (seed 1), opened with flags. */
static vd_image *open_sample(uint32_t flags)
{
    const char *path = vt_path("sample.raw");
    if (!vt_file_exists(path)) {
        uint8_t data[IMAGE_SIZE];
        vt_pattern_fill(data, sizeof data, 1, 0);
        vt_write_file(path, data, sizeof data);
    }
    return vt_open(path, "raw", flags);
}

/* ------------------------------------------------------------ NULL handle */

START_TEST(null_handle_is_rejected_by_every_call)
{
    uint8_t buf[16] = { 0 };
    uint64_t size = 0;
    vd_info info = VD_INFO_INIT;
    vd_extent ext;
    const char *key, *value;
    int type;

    vt_err(vd_read(NULL, 0, buf, sizeof buf, 0), VD_EINVAL);
    vt_err(vd_write(NULL, 0, buf, sizeof buf, 0), VD_EINVAL);
    vt_err(vd_write_zeroes(NULL, 0, 16, 0), VD_EINVAL);
    vt_err(vd_discard(NULL, 0, 16, 0), VD_EINVAL);
    vt_err(vd_flush(NULL, 0), VD_EINVAL);
    vt_err(vd_resize(NULL, 4096, 0), VD_EINVAL);
    vt_err(vd_get_size(NULL, &size), VD_EINVAL);
    vt_err(vd_get_info(NULL, &info), VD_EINVAL);
    vt_err(vd_get_property(NULL, 0, &key, &value, &type), VD_EINVAL);
    vt_err(vd_block_status(NULL, 0, 16, &ext, 0), VD_EINVAL);
    vd_check_result check = VD_CHECK_RESULT_INIT;
    vt_err(vd_check(NULL, 0, &check, NULL, NULL), VD_EINVAL);
    ck_assert_ptr_null(vd_get_format(NULL));
    ck_assert_ptr_null(vd_get_filename(NULL));
    vt_ok(vd_close(NULL));
}
END_TEST

/* ------------------------------------------------------- NULL out-pointers */

START_TEST(null_out_pointers_are_rejected)
{
    const char *path = vt_path("sample.raw");
    vd_image *img = open_sample(VD_OPEN_RDWR);
    vd_image *other = NULL;
    vd_open_opts opts = VD_OPEN_OPTS_INIT;
    const char *name, *str;

    vt_err(vd_open(NULL, path, NULL, 0), VD_EINVAL);
    vt_err(vd_open(&other, NULL, NULL, 0), VD_EINVAL);
    vt_err(vd_open_ext(NULL, path, &opts), VD_EINVAL);
    vt_err(vd_open_ext(&other, NULL, &opts), VD_EINVAL);
    vt_err(vd_get_size(img, NULL), VD_EINVAL);
    vt_err(vd_get_info(img, NULL), VD_EINVAL);
    vt_err(vd_get_property(img, 0, NULL, &str, NULL), VD_EINVAL);
    vt_err(vd_get_property(img, 0, &name, NULL, NULL), VD_EINVAL);
    vt_err(vd_block_status(img, 0, 512, NULL, 0), VD_EINVAL);
    vt_err(vd_read(img, 0, NULL, 512, 0), VD_EINVAL);
    vt_err(vd_write(img, 0, NULL, 512, 0), VD_EINVAL);
    vt_err(vd_probe(path, NULL), VD_EINVAL);
    vt_err(vd_probe(NULL, &name), VD_EINVAL);
    vt_err(vd_create(NULL, "raw", 512, NULL, 0), VD_EINVAL);
    vt_err(vd_create(vt_path("new.raw"), NULL, 512, NULL, 0), VD_EINVAL);
    vt_err(vd_format_option(NULL, 0, &name, &str, &str), VD_EINVAL);
    vt_err(vd_format_option("raw", 0, NULL, &str, &str), VD_EINVAL);
    ck_assert(!vt_file_exists(vt_path("new.raw")));
    vt_close(img);
}
END_TEST

/* ------------------------------------------------------------ unknown flags */

START_TEST(unknown_flag_bits_are_rejected)
{
    /* bits far above every flag defined so far: new flags start low */
    static const uint32_t unknown[] = { UINT32_C(1) << 16, UINT32_C(1) << 31 };
    vd_image *img = open_sample(VD_OPEN_RDWR);
    vd_image *other = NULL;
    uint8_t buf[512];
    vd_extent ext;
    vt_pattern_fill(buf, sizeof buf, 2, 0);

    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        uint32_t bad = unknown[i];
        vt_err(vd_read(img, 0, buf, sizeof buf, bad), VD_EINVAL);
        vt_err(vd_write(img, 0, buf, sizeof buf, bad), VD_EINVAL);
        vt_err(vd_write(img, 0, buf, sizeof buf, VD_WRITE_FUA | bad), VD_EINVAL);
        vt_err(vd_write_zeroes(img, 0, 512, VD_ZERO_MAY_UNMAP | bad), VD_EINVAL);
        vt_err(vd_discard(img, 0, 512, bad), VD_EINVAL);
        vt_err(vd_flush(img, bad), VD_EINVAL);
        vt_err(vd_resize(img, 2 * IMAGE_SIZE, bad), VD_EINVAL);
        vt_err(vd_resize(img, 4096, VD_RESIZE_SHRINK | bad), VD_EINVAL);
        vt_err(vd_block_status(img, 0, 512, &ext, bad), VD_EINVAL);
        vt_err(vd_open(&other, vt_path("sample.raw"), "raw", bad), VD_EINVAL);
        vt_err(vd_open(&other, vt_path("sample.raw"), "raw", VD_OPEN_RDWR | bad), VD_EINVAL);
        vt_err(vd_create(vt_path("new.raw"), "raw", 512, NULL, bad), VD_EINVAL);
    }
    ck_assert(!vt_file_exists(vt_path("new.raw")));

    /* nothing changed: the write, zeroing, discard and resize were all refused */
    uint64_t size;
    vt_ok(vd_get_size(img, &size));
    ck_assert_uint_eq(size, IMAGE_SIZE);
    vt_assert_image_pattern(img, 0, IMAGE_SIZE, 1);
    vt_close(img);
}
END_TEST

/* -------------------------------------------------------------------- ranges */

START_TEST(ranges_past_the_end_are_rejected)
{
    vd_image *img = open_sample(VD_OPEN_RDWR);
    uint8_t buf[1024];
    vd_extent ext;
    vt_pattern_fill(buf, sizeof buf, 3, 0);

    vt_err(vd_read(img, IMAGE_SIZE, buf, 1, 0), VD_ERANGE);
    vt_err(vd_read(img, IMAGE_SIZE - 511, buf, 512, 0), VD_ERANGE);
    vt_err(vd_read(img, UINT64_MAX, buf, 1, 0), VD_ERANGE);
    vt_err(vd_write(img, IMAGE_SIZE - 1, buf, 2, 0), VD_ERANGE);
    vt_err(vd_write(img, IMAGE_SIZE + 4096, buf, 512, 0), VD_ERANGE);
    vt_err(vd_write_zeroes(img, IMAGE_SIZE - 512, 1024, 0), VD_ERANGE);
    vt_err(vd_discard(img, 0, IMAGE_SIZE + 1, 0), VD_ERANGE);
    vt_err(vd_block_status(img, IMAGE_SIZE, 512, &ext, 0), VD_ERANGE);
    vt_err(vd_block_status(img, 0, IMAGE_SIZE + 1, &ext, 0), VD_ERANGE);

    /* offset + length wraps around to a small number: still out of range */
    vt_err(vd_read(img, UINT64_MAX - 15, buf, 32, 0), VD_ERANGE);
    vt_err(vd_write(img, UINT64_MAX - 15, buf, 32, 0), VD_ERANGE);
    vt_err(vd_write_zeroes(img, 4096, UINT64_MAX - 4000, 0), VD_ERANGE);
    vt_err(vd_discard(img, 4096, UINT64_MAX - 4000, 0), VD_ERANGE);
    vt_err(vd_block_status(img, 4096, UINT64_MAX - 4000, &ext, 0), VD_ERANGE);
    vt_err(vd_write_zeroes(img, UINT64_MAX, 2, 0), VD_ERANGE);

    /* the last byte is in range */
    vt_ok(vd_read(img, IMAGE_SIZE - 1, buf, 1, 0));
    ck_assert_int_eq(buf[0], vt_pattern_byte(1, IMAGE_SIZE - 1));

    /* nothing was written, zeroed or discarded */
    uint64_t size;
    vt_ok(vd_get_size(img, &size));
    ck_assert_uint_eq(size, IMAGE_SIZE);
    vt_assert_image_pattern(img, 0, IMAGE_SIZE, 1);
    vt_close(img);
    ck_assert_uint_eq(vt_file_size(vt_path("sample.raw")), IMAGE_SIZE);
}
END_TEST

/* ------------------------------------------------------------------ read-only */

START_TEST(writes_to_a_read_only_handle_are_refused)
{
    vd_image *img = open_sample(0);
    uint8_t buf[512];
    vt_pattern_fill(buf, sizeof buf, 4, 0);

    vt_err(vd_write(img, 4096, buf, sizeof buf, 0), VD_EREADONLY);
    vt_err(vd_write(img, 4096, buf, sizeof buf, VD_WRITE_FUA), VD_EREADONLY);
    vt_err(vd_write_zeroes(img, 4096, 4096, 0), VD_EREADONLY);
    vt_err(vd_write_zeroes(img, 4096, 4096, VD_ZERO_MAY_UNMAP), VD_EREADONLY);
    vt_err(vd_discard(img, 0, IMAGE_SIZE, 0), VD_EREADONLY);
    vt_err(vd_resize(img, 2 * IMAGE_SIZE, 0), VD_EREADONLY);
    vt_err(vd_resize(img, 4096, VD_RESIZE_SHRINK), VD_EREADONLY);

    vd_info info = VD_INFO_INIT;
    vt_ok(vd_get_info(img, &info));
    ck_assert_int_eq(info.read_only, 1);
    vt_assert_image_pattern(img, 0, IMAGE_SIZE, 1);
    vt_close(img);

    /* and the file itself is untouched */
    uint8_t data[IMAGE_SIZE];
    ck_assert_uint_eq(vt_file_size(vt_path("sample.raw")), IMAGE_SIZE);
    vt_pread_file(vt_path("sample.raw"), 0, data, sizeof data);
    ck_assert_int_eq(vt_pattern_mismatch(data, sizeof data, 1, 0), -1);
}
END_TEST

/* ------------------------------------------------------------ names and files */

START_TEST(opening_a_missing_file_is_enoent_naming_the_path)
{
    const char *path = vt_path("missing.qcow2");
    vd_image *img = NULL;
    vt_err(vd_open(&img, path, NULL, 0), VD_ENOENT);
    vt_assert_errmsg_has(path);
    vt_err(vd_open(&img, path, "raw", VD_OPEN_RDWR), VD_ENOENT);
    vt_assert_errmsg_has(path);
    const char *format;
    vt_err(vd_probe(path, &format), VD_ENOENT);
    vt_assert_errmsg_has(path);
    ck_assert(!vt_file_exists(path)); /* a read-write open does not create */
}
END_TEST

START_TEST(unknown_format_names_are_eformat)
{
    vd_image *img = NULL;
    const char *name;
    vt_close(open_sample(0)); /* makes the file */
    vt_err(vd_open(&img, vt_path("sample.raw"), "no-such-format", 0), VD_EFORMAT);
    vt_assert_errmsg_has("no-such-format");
    ck_assert_ptr_null(img);
    vt_err(vd_create(vt_path("new.img"), "no-such-format", 4096, NULL, 0), VD_EFORMAT);
    ck_assert(!vt_file_exists(vt_path("new.img")));
    vt_err(vd_format_option("no-such-format", 0, &name, NULL, NULL), VD_EFORMAT);
    vt_err(vd_open(&img, vt_path("sample.raw"), "", 0), VD_EFORMAT);
}
END_TEST

START_TEST(create_rejects_an_unknown_option_naming_it)
{
    const char *path = vt_path("new.raw");
    vt_err(vd_create(path, "raw", 4096, "cluster_size=65536", 0), VD_EINVAL);
    vt_assert_errmsg_has("cluster_size");
    ck_assert(!vt_file_exists(path));
    vt_err(vd_create(path, "raw", 4096, "preallocation=off,bogus_key=1", 0), VD_EINVAL);
    vt_assert_errmsg_has("bogus_key");
    ck_assert(!vt_file_exists(path));
    /* a key without a value is malformed */
    vt_err(vd_create(path, "raw", 4096, "preallocation", 0), VD_EINVAL);
    ck_assert(!vt_file_exists(path));
    /* ",," is a literal comma, so this value is "off,falloc": not a mode */
    vt_err(vd_create(path, "raw", 4096, "preallocation=off,,falloc", 0), VD_EINVAL);
    ck_assert(!vt_file_exists(path));
    /* a known key with a good value, and an empty list, are accepted */
    vt_ok(vd_create(path, "raw", 4096, "preallocation=off", 0));
    vt_ok(vd_create(path, "raw", 4096, "", 0));
}
END_TEST

START_TEST(create_excl_refuses_an_existing_file)
{
    const char *path = vt_path("existing.raw");
    uint8_t data[4096];
    vt_pattern_fill(data, sizeof data, 5, 0);
    vt_write_file(path, data, sizeof data);

    vt_err(vd_create(path, "raw", 1 * MiB, NULL, VD_CREATE_EXCL), VD_EEXIST);
    vt_assert_errmsg_has(path);
    ck_assert_uint_eq(vt_file_size(path), sizeof data);
    uint8_t back[sizeof data];
    vt_pread_file(path, 0, back, sizeof back);
    ck_assert_int_eq(vt_pattern_mismatch(back, sizeof back, 5, 0), -1);

    /* without EXCL the file is truncated and overwritten */
    vt_ok(vd_create(path, "raw", 1024, NULL, 0));
    ck_assert_uint_eq(vt_file_size(path), 1024);
    vd_image *img = vt_open(path, "raw", 0);
    vt_assert_image_zero(img, 0, 1024);
    vt_close(img);

    /* EXCL on a new file works */
    vt_ok(vd_create(vt_path("fresh.raw"), "raw", 1024, NULL, VD_CREATE_EXCL));
    ck_assert_uint_eq(vt_file_size(vt_path("fresh.raw")), 1024);
}
END_TEST

/* ------------------------------------------------------------- enumeration */

START_TEST(format_names_include_raw)
{
    bool have_raw = false;
    size_t i;
    for (i = 0; i < 64 && vd_format_name(i); i++) {
        const char *name = vd_format_name(i);
        ck_assert_int_gt((int)strlen(name), 0);
        have_raw |= strcmp(name, "raw") == 0;
        for (size_t j = 0; j < i; j++)
            ck_assert_str_ne(vd_format_name(j), name);
    }
    ck_assert_msg(i < 64, "vd_format_name() never returns NULL");
    ck_assert(have_raw);
    ck_assert_ptr_null(vd_format_name(i + 1));
    ck_assert_ptr_null(vd_format_name(SIZE_MAX));
}
END_TEST

START_TEST(raw_lists_the_preallocation_option)
{
    const char *name, *help, *dflt;
    bool found = false;
    size_t i;
    int rc = 0;
    for (i = 0; i < 64 && (rc = vd_format_option("raw", i, &name, &help, &dflt)) == 0; i++) {
        ck_assert_ptr_nonnull(name);
        ck_assert_ptr_nonnull(help);
        ck_assert_int_gt((int)strlen(help), 0);
        if (strcmp(name, "preallocation") == 0) {
            found = true;
            ck_assert_ptr_nonnull(dflt);
            ck_assert_str_eq(dflt, "off");
        }
    }
    ck_assert_int_eq(rc, VD_ENOENT);
    ck_assert(found);
    vt_err(vd_format_option("raw", SIZE_MAX, &name, NULL, NULL), VD_ENOENT);
    /* help and default are optional out-pointers */
    vt_ok(vd_format_option("raw", 0, &name, NULL, NULL));
}
END_TEST

START_TEST(runtime_version_matches_the_header)
{
    ck_assert_str_eq(vd_version(), VD_VERSION_STRING);
    ck_assert_uint_eq(vd_version_number(), VD_VERSION_NUMBER);
    char expect[64];
    snprintf(expect, sizeof expect, "%d.%d.%d", VD_VERSION_MAJOR, VD_VERSION_MINOR,
             VD_VERSION_PATCH);
    ck_assert_str_eq(vd_version(), expect);
    ck_assert_uint_eq(vd_version_number(),
                      VD_VERSION_MAJOR * 10000u + VD_VERSION_MINOR * 100u + VD_VERSION_PATCH);
}
END_TEST

/* ------------------------------------------------------------ versioned structs */

START_TEST(open_ext_rejects_a_too_small_struct_size)
{
    const char *path = vt_path("sample.raw");
    vt_close(open_sample(0));
    static const uint32_t bad_sizes[] = { 0, 1, 4, 8 };
    for (size_t i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++) {
        vd_open_opts opts = VD_OPEN_OPTS_INIT;
        opts.struct_size = bad_sizes[i];
        vd_image *img = NULL;
        vt_err(vd_open_ext(&img, path, &opts), VD_EINVAL);
        ck_assert_ptr_null(img);
    }
    /* the INIT macro's size works, and its fields are honoured */
    vd_open_opts opts = VD_OPEN_OPTS_INIT;
    opts.format = "raw";
    opts.flags = VD_OPEN_RDWR;
    vd_image *img = NULL;
    vt_ok(vd_open_ext(&img, path, &opts));
    ck_assert_str_eq(vd_get_format(img), "raw");
    vd_info info = VD_INFO_INIT;
    vt_ok(vd_get_info(img, &info));
    ck_assert_int_eq(info.read_only, 0);
    ck_assert_int_eq(info.probed, 0);
    vt_close(img);
}
END_TEST

START_TEST(get_info_rejects_a_zero_struct_size)
{
    vd_image *img = open_sample(0);
    vd_info info = VD_INFO_INIT;
    info.struct_size = 0;
    vt_err(vd_get_info(img, &info), VD_EINVAL);
    vt_close(img);
}
END_TEST

START_TEST(getters_report_format_and_filename)
{
    vd_image *img = open_sample(0);
    ck_assert_str_eq(vd_get_format(img), "raw");
    ck_assert_str_eq(vd_get_filename(img), vt_path("sample.raw"));
    uint64_t size = 0;
    vt_ok(vd_get_size(img, &size));
    ck_assert_uint_eq(size, IMAGE_SIZE);
    vt_close(img);
}
END_TEST

/* The figures qemu-img measure prints for the same sizes and options. */
START_TEST(measure_matches_qemu_img_figures)
{
    vd_measure_result r = VD_MEASURE_RESULT_INIT;
    vt_ok(vd_measure(&r, "qcow2", NULL, NULL, UINT64_C(1) << 30, 0));
    ck_assert_uint_eq(r.required, 393216);
    ck_assert_uint_eq(r.fully_allocated, 1074135040);
    ck_assert_int_eq(r.has_bitmaps, 0);
    vt_ok(vd_measure(&r, "qcow2", "preallocation=full", NULL, UINT64_C(1) << 30, 0));
    ck_assert_uint_eq(r.required, 1074135040);
    vt_ok(vd_measure(&r, "raw", NULL, NULL, 1000, 0));
    ck_assert_uint_eq(r.required, 1024);
    ck_assert_uint_eq(r.fully_allocated, 1024);

    vd_image *img = open_sample(0); /* a raw source: all data, its whole size */
    vt_ok(vd_measure(&r, "raw", NULL, img, 0, 0));
    ck_assert_uint_eq(r.required, IMAGE_SIZE);
    vt_err(vd_measure(&r, "raw", NULL, img, 4096, 0), VD_EINVAL); /* a source or a size */
    vt_close(img);
}
END_TEST

START_TEST(measure_rejects_bad_arguments)
{
    vd_measure_result r = VD_MEASURE_RESULT_INIT;
    vt_err(vd_measure(&r, "no-such-format", NULL, NULL, 4096, 0), VD_EFORMAT);
    vt_err(vd_measure(&r, "qcow2", "bogus=1", NULL, 4096, 0), VD_EINVAL);
    vt_assert_errmsg_has("bogus");
    vt_err(vd_measure(&r, "qcow2", "cluster_size=1000", NULL, 4096, 0), VD_EINVAL);
    vt_err(vd_measure(&r, "qcow2", NULL, NULL, UINT64_C(1) << 62, 0), VD_ETOOBIG);
    vt_err(vd_measure(&r, "qcow2", NULL, NULL, 4096, 1), VD_EINVAL);
    r.struct_size = 8;
    vt_err(vd_measure(&r, "qcow2", NULL, NULL, 4096, 0), VD_EINVAL);
    vt_err(vd_measure(NULL, "qcow2", NULL, NULL, 4096, 0), VD_EINVAL);
}
END_TEST


/* --------------------------------------------------------------- secrets */

/* The passphrases of a two-image chain by depth, and the calls the library made. */
struct chain_secrets {
    const char *by_depth[2];
    unsigned calls;
    unsigned depths_seen; /* bit per depth */
    int fail_with;        /* returned instead of a passphrase when not 0 */
};

static int give_secret(void *ctx, const char *path, unsigned depth, char *buf, size_t size)
{
    struct chain_secrets *cs = ctx;
    cs->calls++;
    cs->depths_seen |= 1u << depth;
    ck_assert_ptr_nonnull(path);
    ck_assert_uint_eq(size, 4096);
    if (cs->fail_with)
        return cs->fail_with;
    const char *pass = depth < 2 ? cs->by_depth[depth] : NULL;
    if (!pass)
        return 0;
    memcpy(buf, pass, strlen(pass));
    return (int)strlen(pass);
}

static int open_with_secrets(vd_image **img, const char *path, const char *secret,
                             struct chain_secrets *cs)
{
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.flags = VD_OPEN_RDWR;
    o.secret = secret;
    o.secret_fn = cs ? give_secret : NULL;
    o.secret_ctx = cs;
    return vd_open_ext(img, path, &o);
}

START_TEST(each_image_of_a_chain_opens_with_its_own_passphrase)
{
    char base[4096], top[4096], plain[4096];
    snprintf(base, sizeof base, "%s", vt_path("enc-base.qcow2"));
    snprintf(top, sizeof top, "%s", vt_path("enc-top.qcow2"));
    snprintf(plain, sizeof plain, "%s", vt_path("plain.qcow2"));
    vt_ok(vd_secret_add("base-key", "base pass", 9));
    vt_ok(vd_secret_add("top-key", "top pass", 8));
    vt_ok(vd_create(base, "qcow2", 1 << 20, "encrypt.format=luks,encrypt.key-secret=base-key,"
                       "encrypt.iter-time=10", 0));
    vd_image *img;
    vt_ok(open_with_secrets(&img, base, "base pass", NULL));
    vt_image_write_pattern(img, 0, 65536, 1);
    vt_close(img);
    char opts[8192];
    snprintf(opts, sizeof opts, "backing_file=%s,backing_fmt=qcow2,encrypt.format=luks,"
             "encrypt.key-secret=top-key,encrypt.iter-time=10", base);
    vt_ok(vd_create(top, "qcow2", 1 << 20, opts, 0));

    /* the callback gives each image its own passphrase */
    struct chain_secrets cs = { { "top pass", "base pass" }, 0, 0, 0 };
    vt_ok(open_with_secrets(&img, top, NULL, &cs));
    ck_assert_uint_eq(cs.calls, 2);
    ck_assert_uint_eq(cs.depths_seen, 3);
    vt_image_write_pattern(img, 65536, 65536, 2);
    vt_assert_image_pattern(img, 0, 65536, 1); /* decrypted from the base */
    vt_assert_image_pattern(img, 65536, 65536, 2);
    vt_close(img);

    /* where it gives none, secret serves: here for the top image */
    struct chain_secrets base_only = { { NULL, "base pass" }, 0, 0, 0 };
    vt_ok(open_with_secrets(&img, top, "top pass", &base_only));
    vt_assert_image_pattern(img, 0, 65536, 1);
    vt_assert_image_pattern(img, 65536, 65536, 2);
    vt_close(img);

    /* one secret for the chain no longer unlocks a base with another passphrase */
    vt_err(open_with_secrets(&img, top, "top pass", NULL), VD_EKEY);
    vt_assert_errmsg_has("enc-base.qcow2");

    /* a wrong passphrase for the base fails the open, naming it */
    struct chain_secrets wrong = { { "top pass", "not it" }, 0, 0, 0 };
    vt_err(open_with_secrets(&img, top, NULL, &wrong), VD_EKEY);
    vt_assert_errmsg_has("enc-base.qcow2");

    /* the callback's error code fails the open */
    struct chain_secrets refuse = { { NULL, NULL }, 0, 0, VD_ECANCELED };
    vt_err(open_with_secrets(&img, top, NULL, &refuse), VD_ECANCELED);
    ck_assert_uint_eq(refuse.calls, 1);
    /* a negative value that is no VD_E* code fails it as a missing key */
    struct chain_secrets odd = { { NULL, NULL }, 0, 0, -1000 };
    vt_err(open_with_secrets(&img, top, NULL, &odd), VD_EKEY);
    ck_assert_uint_eq(odd.calls, 1);

    /* an image that is not encrypted is never asked about */
    vt_ok(vd_create(plain, "qcow2", 1 << 20, NULL, 0));
    struct chain_secrets none = { { "x", "y" }, 0, 0, 0 };
    vt_ok(open_with_secrets(&img, plain, NULL, &none));
    ck_assert_uint_eq(none.calls, 0);
    vt_close(img);
    vt_ok(vd_secret_remove("base-key"));
    vt_ok(vd_secret_remove("top-key"));
}
END_TEST

static Suite *api_suite(void)
{
    Suite *s = suite_create("api");
    TCase *tc = vt_tcase(s, "misuse");
    tcase_add_test(tc, null_handle_is_rejected_by_every_call);
    tcase_add_test(tc, null_out_pointers_are_rejected);
    tcase_add_test(tc, unknown_flag_bits_are_rejected);
    tcase_add_test(tc, ranges_past_the_end_are_rejected);
    tcase_add_test(tc, writes_to_a_read_only_handle_are_refused);
    tc = vt_tcase(s, "names");
    tcase_add_test(tc, opening_a_missing_file_is_enoent_naming_the_path);
    tcase_add_test(tc, unknown_format_names_are_eformat);
    tcase_add_test(tc, create_rejects_an_unknown_option_naming_it);
    tcase_add_test(tc, create_excl_refuses_an_existing_file);
    tcase_add_test(tc, format_names_include_raw);
    tcase_add_test(tc, raw_lists_the_preallocation_option);
    tcase_add_test(tc, runtime_version_matches_the_header);
    tc = vt_tcase(s, "structs");
    tcase_add_test(tc, open_ext_rejects_a_too_small_struct_size);
    tcase_add_test(tc, get_info_rejects_a_zero_struct_size);
    tcase_add_test(tc, getters_report_format_and_filename);
    tc = vt_tcase(s, "measure");
    tcase_add_test(tc, measure_matches_qemu_img_figures);
    tcase_add_test(tc, measure_rejects_bad_arguments);
    tc = vt_tcase(s, "secrets");
    tcase_add_test(tc, each_image_of_a_chain_opens_with_its_own_passphrase);
    return s;
}

int main(void)
{
    return vt_run_suite(api_suite());
}
