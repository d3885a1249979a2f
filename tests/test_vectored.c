/*
 * vd_preadv()/vd_pwritev() and the cache modes: scattered buffers of odd
 * sizes (zero-length ones included) over raw and qcow2 images, across
 * clusters and into partly written clusters over a backing file, checked
 * against a model; argument refusals; qemu's cache mode names; O_DIRECT
 * with unaligned buffers, offsets and lengths on 512-byte clusters, then
 * qemu-img check and compare; a file system that refuses O_DIRECT.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define SIZE (4 * MiB)

/* Split buf[0..len) into at most max iovecs of random sizes, some empty; the count. */
static int scatter(uint8_t *buf, size_t len, struct iovec *iov, int max, uint64_t *rng)
{
    int n = 0;
    size_t at = 0;
    while (at < len && n < max - 1) {
        size_t piece = vt_rand_below(rng, 4) == 0 ? 0 : 1 + vt_rand_below(rng, 3000);
        if (piece > len - at)
            piece = len - at;
        iov[n++] = (struct iovec){ buf + at, piece };
        at += piece;
    }
    iov[n++] = (struct iovec){ buf + at, len - at };
    return n;
}

/*
 * Random scattered writes and reads at random offsets, each checked against
 * the model; then the whole image read back in one vd_read().
 */
static void exercise(vd_image *img, uint8_t *model, uint64_t size, uint64_t seed, int rounds)
{
    uint64_t rng = seed;
    struct iovec iov[64];
    uint8_t *buf = malloc(256 * KiB + 1), *back = malloc(256 * KiB + 1);
    ck_assert(buf && back);
    for (int r = 0; r < rounds; r++) {
        size_t len = 1 + vt_rand_below(&rng, 256 * KiB);
        uint64_t off = vt_rand_below(&rng, size - len);
        vt_pattern_fill(buf, len, seed + (uint64_t)r, off);
        int n = scatter(buf, len, iov, 64, &rng);
        vt_ok(vd_pwritev(img, off, iov, n, 0));
        memcpy(model + off, buf, len);

        len = 1 + vt_rand_below(&rng, 256 * KiB);
        off = vt_rand_below(&rng, size - len);
        memset(back, 0xAA, len);
        n = scatter(back, len, iov, 64, &rng);
        vt_ok(vd_preadv(img, off, iov, n, 0));
        ck_assert_msg(memcmp(back, model + off, len) == 0, "round %d: read at %llu+%zu differs",
                      r, (unsigned long long)off, len);
    }
    vt_assert_image_equals(img, model, size);
    free(buf);
    free(back);
}

static void run_exercise(const char *format, const char *options)
{
    const char *path = vt_path("image");
    vt_ok(vd_create(path, format, SIZE, options, 0));
    vd_image *img = vt_open(path, format, VD_OPEN_RDWR);
    uint8_t *model = calloc(1, SIZE);
    exercise(img, model, SIZE, 7, 60);
    vt_close(img);
    img = vt_open(path, format, 0);
    vt_assert_image_equals(img, model, SIZE);
    vt_close(img);
    free(model);
}

START_TEST(raw_scattered)
{
    run_exercise("raw", NULL);
}
END_TEST

START_TEST(qcow2_scattered)
{
    run_exercise("qcow2", "cluster_size=4096");
}
END_TEST

/* Partial clusters over a backing file: the copy-on-write path builds them whole. */
START_TEST(qcow2_cow_over_backing)
{
    const char *base = vt_path("base.raw"), *top = vt_path("top.qcow2");
    uint8_t *model = malloc(SIZE);
    vt_pattern_fill(model, SIZE, 3, 0);
    vt_write_file(base, model, SIZE);
    char options[512];
    snprintf(options, sizeof options, "backing_file=%s,backing_fmt=raw,cluster_size=65536", base);
    vt_ok(vd_create(top, "qcow2", SIZE, options, 0));
    vd_image *img = vt_open(top, "qcow2", VD_OPEN_RDWR);
    /* three pieces inside one cluster, leaving its start and end to the backing file */
    uint8_t a[100], b[1], c[4000];
    memset(a, 1, sizeof a);
    memset(b, 2, sizeof b);
    memset(c, 3, sizeof c);
    struct iovec iov[] = { { a, sizeof a }, { NULL, 0 }, { b, sizeof b }, { c, sizeof c } };
    vt_ok(vd_pwritev(img, 65536 + 777, iov, 4, 0));
    memcpy(model + 65536 + 777, a, sizeof a);
    memcpy(model + 65536 + 877, b, sizeof b);
    memcpy(model + 65536 + 878, c, sizeof c);
    exercise(img, model, SIZE, 11, 30);
    vt_close(img);
    free(model);
}
END_TEST

/*
 * Encrypted qcow2 (the engine's encrypt/decrypt ops): scattered pieces of
 * odd sizes go through the bounce buffers, whole-sector pieces are decrypted
 * in place; a write that left ciphertext in the caller's buffer would
 * corrupt the model the reads are checked against. Then qemu-img's check
 * and compare with the passphrase, and no plaintext in the file.
 */
static void encrypted_exercise(const char *options, const char *cache)
{
    static const char passphrase[] = "vectored secret";
    const char *path = vt_path("crypt.qcow2");
    vt_ok(vd_secret_add("sec0", passphrase, strlen(passphrase)));
    vt_ok(vd_create(path, "qcow2", SIZE, options, 0));
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.flags = VD_OPEN_RDWR;
    o.cache = cache;
    o.secret = passphrase;
    vd_image *img = NULL;
    vt_ok(vd_open_ext(&img, path, &o));
    uint8_t *model = calloc(1, SIZE);
    exercise(img, model, SIZE, 31, 40);
    /* whole sectors in every piece, at a sector offset: decrypted in the caller's buffers */
    uint8_t *back = malloc(8 * 512);
    struct iovec iov[] = { { back, 1024 }, { back + 1024, 0 }, { back + 1024, 3072 } };
    vt_ok(vd_preadv(img, 8192, iov, 3, 0));
    ck_assert(memcmp(back, model + 8192, 4096) == 0);
    free(back);
    vt_close(img);
    o.flags = 0;
    o.cache = NULL;
    vt_ok(vd_open_ext(&img, path, &o));
    vt_assert_image_equals(img, model, SIZE);
    vt_close(img);
    const char *qemu_img = vt_qemu_img();
    if (qemu_img) {
        const char *model_path = vt_path("model.raw");
        vt_write_file(model_path, model, SIZE);
        char image_opts[600];
        snprintf(image_opts, sizeof image_opts,
                 "driver=qcow2,encrypt.key-secret=sec0,file.filename=%s", path);
        char object[128];
        snprintf(object, sizeof object, "secret,id=sec0,data=%s", passphrase);
        const char *check[] = { qemu_img, "check", "-q", "--object", object, "--image-opts",
                                image_opts, NULL };
        ck_assert_int_eq(vt_run(check), 0);
        char raw_opts[600];
        snprintf(raw_opts, sizeof raw_opts, "driver=raw,file.filename=%s", model_path);
        const char *compare[] = { qemu_img, "compare", "-q", "--object", object,
                                  "--image-opts", image_opts, raw_opts, NULL };
        ck_assert_int_eq(vt_run(compare), 0);
    }
    free(model);
    vt_ok(vd_secret_remove("sec0"));
}

START_TEST(qcow2_luks_scattered)
{
    encrypted_exercise("cluster_size=4096,encrypt.format=luks,encrypt.key-secret=sec0,"
                       "encrypt.iter-time=10", NULL);
}
END_TEST

START_TEST(qcow2_aes_scattered_direct_512)
{
    encrypted_exercise("cluster_size=512,encrypt.format=aes,encrypt.key-secret=sec0", "none");
}
END_TEST

START_TEST(refusals)
{
    const char *path = vt_path("image.raw");
    vt_create_raw(path, 64 * KiB);
    vd_image *img = vt_open(path, "raw", VD_OPEN_RDWR);
    uint8_t buf[16];
    struct iovec one = { buf, sizeof buf };
    vt_err(vd_preadv(img, 0, NULL, 1, 0), VD_EINVAL);
    vt_assert_errmsg_has("NULL iovec array");
    vt_err(vd_pwritev(img, 0, &one, -1, 0), VD_EINVAL);
    vt_assert_errmsg_has("iovcnt -1");
    vt_err(vd_preadv(img, 0, &one, IOV_MAX + 1, 0), VD_EINVAL);
    struct iovec null_base[] = { { buf, 4 }, { NULL, 4 } };
    vt_err(vd_pwritev(img, 0, null_base, 2, 0), VD_EINVAL);
    vt_assert_errmsg_has("NULL buffer");
    vt_err(vd_preadv(img, 64 * KiB - 8, &one, 1, 0), VD_ERANGE);
    vt_assert_errmsg_has("past the end");
    vt_err(vd_pwritev(img, 0, &one, 1, 0x80), VD_EINVAL);
    vt_ok(vd_preadv(img, 64 * KiB, NULL, 0, 0)); /* nothing to do */
    vt_ok(vd_pwritev(img, 0, &(struct iovec){ NULL, 0 }, 1, 0));
    vt_close(img);
    img = vt_open(path, "raw", 0);
    vt_err(vd_pwritev(img, 0, &one, 1, 0), VD_EREADONLY);
    vt_close(img);
}
END_TEST

START_TEST(cache_mode_names)
{
    static const struct { const char *name; uint32_t flags; } modes[] = {
        { "writeback", 0 },
        { "writethrough", VD_OPEN_WRITETHROUGH },
        { "none", VD_OPEN_DIRECT },
        { "off", VD_OPEN_DIRECT },
        { "directsync", VD_OPEN_DIRECT | VD_OPEN_WRITETHROUGH },
        { "unsafe", VD_OPEN_NO_FLUSH },
    };
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        uint32_t flags = 0xdead;
        vt_ok(vd_cache_mode_flags(modes[i].name, &flags));
        ck_assert_uint_eq(flags, modes[i].flags);
    }
    uint32_t flags;
    vt_err(vd_cache_mode_flags("bogus", &flags), VD_EINVAL);
    ck_assert_str_eq(vd_errmsg(), "Invalid cache option: bogus");

    const char *path = vt_path("image.raw");
    vt_create_raw(path, 64 * KiB);
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.cache = "Writeback";
    vd_image *img = NULL;
    vt_err(vd_open_ext(&img, path, &o), VD_EINVAL);
    vt_assert_errmsg_has("Invalid cache option: Writeback");
    ck_assert_ptr_null(img);
}
END_TEST

/* Open path with cache mode, as format, read-write. */
static vd_image *open_cached(const char *path, const char *format, const char *cache)
{
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.format = format;
    o.flags = VD_OPEN_RDWR;
    o.cache = cache;
    vd_image *img = NULL;
    vt_ok(vd_open_ext(&img, path, &o));
    return img;
}

/* Let qemu-img judge an image and compare it with a raw model. */
static void qemu_agrees(const char *path, const char *model_path)
{
    const char *qemu_img = vt_qemu_img();
    if (!qemu_img)
        return;
    const char *check[] = { qemu_img, "check", "-q", "-f", "qcow2", path, NULL };
    ck_assert_int_eq(vt_run(check), 0);
    const char *compare[] = { qemu_img, "compare", "-q", "-f", "qcow2", "-F", "raw", path,
                              model_path, NULL };
    ck_assert_int_eq(vt_run(compare), 0);
}

/*
 * The nasty case of O_DIRECT: 512-byte clusters on a file system that
 * wants 4096-byte alignment, written through unaligned scattered buffers
 * at unaligned offsets; metadata and data must both come out right.
 */
static void direct_qcow2(const char *cache)
{
    const char *path = vt_path("direct.qcow2"), *model_path = vt_path("model.raw");
    vt_ok(vd_create(path, "qcow2", SIZE, "cluster_size=512", 0));
    uint8_t *model = calloc(1, SIZE);
    vd_image *img = open_cached(path, "qcow2", cache);
    exercise(img, model, SIZE, 21, 40);
    /* a single unaligned buffer, one byte off a page */
    uint8_t *page = aligned_alloc(4096, 3 * 4096); /* page + 1: one byte off a page */
    vt_pattern_fill(page + 1, 8192, 99, 1000);
    vt_ok(vd_write(img, 1000, page + 1, 8192, 0));
    memcpy(model + 1000, page + 1, 8192);
    vt_ok(vd_read(img, 999, page + 1, 8192, 0));
    ck_assert(memcmp(page + 1, model + 999, 8192) == 0);
    free(page);
    vt_close(img);
    vt_write_file(model_path, model, SIZE);
    img = open_cached(path, "qcow2", cache);
    vt_assert_image_equals(img, model, SIZE);
    vt_close(img);
    qemu_agrees(path, model_path);
    free(model);
}

START_TEST(direct_qcow2_512)
{
    direct_qcow2("none");
}
END_TEST

START_TEST(directsync_qcow2_512)
{
    direct_qcow2("directsync");
}
END_TEST

/* A raw file whose size is no multiple of the alignment: unaligned writes at its end. */
START_TEST(direct_raw_tail)
{
    const char *path = vt_path("tail.raw");
    uint8_t *model = malloc(10000 + 3000);
    vt_pattern_fill(model, 10000, 5, 0);
    vt_write_file(path, model, 10000);
    vd_image *img = open_cached(path, "raw", "none");
    /* inside the file, crossing no block boundary, then up to its last byte */
    vt_pattern_fill(model + 4100, 10, 6, 4100);
    vt_ok(vd_write(img, 4100, model + 4100, 10, 0));
    vt_pattern_fill(model + 9000, 1000, 7, 9000);
    vt_ok(vd_write(img, 9000, model + 9000, 1000, 0));
    vt_close(img);
    ck_assert_uint_eq(vt_file_size(path), 10000);
    uint8_t back[10000];
    vt_pread_file(path, 0, back, sizeof back);
    ck_assert(memcmp(back, model, sizeof back) == 0);
    memset(model + 10000, 0, 240); /* the image ends with the sector: zeroes past the file */
    img = open_cached(path, "raw", "none");
    vt_assert_image_equals(img, model, 10240);
    vt_close(img);
    free(model);
}
END_TEST

/* Backing files are opened as the overlay is: a chain read through O_DIRECT. */
START_TEST(direct_chain)
{
    const char *base = vt_path("base.qcow2"), *top = vt_path("top.qcow2");
    vt_ok(vd_create(base, "qcow2", SIZE, "cluster_size=512", 0));
    vd_image *img = open_cached(base, "qcow2", "none");
    vt_image_write_pattern(img, 0, SIZE, 8);
    vt_close(img);
    char options[512];
    snprintf(options, sizeof options, "backing_file=%s,backing_fmt=qcow2", base);
    vt_ok(vd_create(top, "qcow2", SIZE, options, 0));
    img = open_cached(top, "qcow2", "writethrough");
    vt_image_write_pattern(img, 3, 5000, 9);
    vt_close(img);
    img = open_cached(top, "qcow2", "none");
    vt_assert_image_pattern(img, 0, 3, 8);
    vt_assert_image_pattern(img, 3, 5000, 9);
    vt_assert_image_pattern(img, 5003, SIZE - 5003, 8);
    vt_close(img);
}
END_TEST

/* Whether dir's file system takes O_DIRECT (tmpfs did not before Linux 6.6). */
static bool takes_o_direct(const char *dir)
{
    char path[256];
    snprintf(path, sizeof path, "%s/vdtest-direct-XXXXXX", dir);
    int fd = mkstemp(path);
    if (fd < 0)
        return true;
    close(fd);
    fd = open(path, O_RDWR | O_DIRECT);
    unlink(path);
    if (fd >= 0)
        close(fd);
    return fd >= 0;
}

START_TEST(tmpfs_refusal)
{
    if (access("/dev/shm", W_OK) != 0 || takes_o_direct("/dev/shm")) {
        printf("SKIP tmpfs_refusal: /dev/shm is missing or takes O_DIRECT on this kernel, "
               "so there is no refusal to see\n");
        return;
    }
    char path[] = "/dev/shm/vdtest-refuse-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    vt_create_raw(path, 64 * KiB);
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.format = "raw";
    o.cache = "none";
    vd_image *img = NULL;
    int rc = vd_open_ext(&img, path, &o);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", vd_errmsg());
    o.flags = VD_OPEN_DIRECT_FALLBACK;
    int fallback_rc = vd_open_ext(&img, path, &o);
    if (fallback_rc == 0)
        vd_close(img);
    unlink(path);
    ck_assert_int_eq(rc, VD_EUNSUPPORTED);
    ck_assert_msg(strstr(msg, path) && strstr(msg, "O_DIRECT"), "message: %s", msg);
    ck_assert_int_eq(fallback_rc, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("vectored");
    TCase *tc = vt_tcase(s, "vectored");
    tcase_add_test(tc, raw_scattered);
    tcase_add_test(tc, qcow2_scattered);
    tcase_add_test(tc, qcow2_cow_over_backing);
    tcase_add_test(tc, qcow2_luks_scattered);
    tcase_add_test(tc, qcow2_aes_scattered_direct_512);
    tcase_add_test(tc, refusals);
    tc = vt_tcase(s, "cache");
    tcase_add_test(tc, cache_mode_names);
    tcase_add_test(tc, direct_qcow2_512);
    tcase_add_test(tc, directsync_qcow2_512);
    tcase_add_test(tc, direct_raw_tail);
    tcase_add_test(tc, direct_chain);
    tcase_add_test(tc, tmpfs_refusal);
    return vt_run_suite(s);
}
