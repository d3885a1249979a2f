/*
 * Files that are not regular files.
 *
 *   test_blockdev special   everywhere: character devices (/dev/null,
 *                           /dev/zero), FIFOs, sockets and directories have
 *                           no size an image could have, and are refused
 *                           with a message naming the file, never read as
 *                           empty images.
 *   test_blockdev loop      a block device (a loop device over a file of the
 *                           test's own) is a raw image of the device's size:
 *                           read, written, zeroed, discarded, refused a
 *                           resize, and usable as a backing file. Exits 77
 *                           (meson's skip) where no loop device can be set up.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* ------------------------------------------------------------ special files */

/* Opening path (read-only and read-write) fails with code, naming it and saying why. */
static void assert_refused(const char *path, int code, const char *why)
{
    static const uint32_t modes[] = { 0, VD_OPEN_RDWR };
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        vd_image *img = NULL;
        vt_err(vd_open(&img, path, NULL, modes[i]), code);
        ck_assert_ptr_null(img);
        vt_assert_errmsg_has(path);
        vt_assert_errmsg_has(why);
    }
    const char *format = NULL;
    ck_assert_int_lt(vd_probe(path, &format), 0);
    vt_assert_errmsg_has(path);
}

START_TEST(character_devices_are_refused)
{
    assert_refused("/dev/null", VD_EINVAL, "it is a character device");
    assert_refused("/dev/zero", VD_EINVAL, "it is a character device");
}
END_TEST

START_TEST(a_fifo_is_refused_without_blocking)
{
    const char *path = vt_path("fifo");
    ck_assert_int_eq(mkfifo(path, 0600), 0);
    /* nobody writes to the FIFO: an open that waited for a writer would hang here */
    assert_refused(path, VD_EINVAL, "it is a FIFO");
}
END_TEST

START_TEST(a_directory_is_refused)
{
    vd_image *img = NULL;
    vt_err(vd_open(&img, vt_tmpdir(), "raw", 0), VD_EINVAL);
    vt_assert_errmsg_has(vt_tmpdir());
    vt_assert_errmsg_has("it is a directory");
    /* read-write, open(2) itself refuses */
    ck_assert_int_lt(vd_open(&img, vt_tmpdir(), "raw", VD_OPEN_RDWR), 0);
    vt_assert_errmsg_has("Is a directory");
}
END_TEST

START_TEST(a_socket_is_refused)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    const char *path = vt_path("socket");
    ck_assert_uint_lt(strlen(path), sizeof addr.sun_path);
    strcpy(addr.sun_path, path);
    int sock = socket(AF_UNIX, SOCK_STREAM, 0);
    ck_assert_int_ge(sock, 0);
    ck_assert_int_eq(bind(sock, (struct sockaddr *)&addr, sizeof addr), 0);
    vd_image *img = NULL;
    ck_assert_int_lt(vd_open(&img, path, "raw", 0), 0); /* open(2) refuses: ENXIO */
    vt_assert_errmsg_has(path);
    close(sock);
}
END_TEST

/* A backing file that is a character device fails the overlay's open; it never reads as zeroes. */
START_TEST(a_character_device_backing_file_is_refused)
{
    const char *top = vt_path("top.qcow2");
    vt_ok(vd_create(top, "qcow2", MiB, "backing_file=/dev/zero,backing_fmt=raw",
                    VD_CREATE_UNSAFE_BACKING));
    vd_image *img = NULL;
    ck_assert_int_lt(vd_open(&img, top, "qcow2", 0), 0);
    ck_assert_ptr_null(img);
    vt_assert_errmsg_has("/dev/zero");
    vt_assert_errmsg_has("character device");
}
END_TEST

START_TEST(an_image_is_not_created_on_a_character_device)
{
    vt_err(vd_create("/dev/null", "raw", MiB, NULL, 0), VD_EINVAL);
    vt_assert_errmsg_has("/dev/null");
}
END_TEST

/* -------------------------------------------------------------- loop devices */

enum { DEVICE_SIZE = 8 * MiB, PATTERN_SEED = 15 };

/* The loop device of the current test and the descriptor that keeps it attached. */
static char device[32];
static int device_keeper = -1;

/*
 * Attach a loop device over backing, with autoclear: the kernel detaches it
 * once its last user closes it, so that device_keeper, held until the test
 * process exits, however it exits, is all the cleanup there is. Returns 0, or
 * -1 with why filled in.
 */
static int attach_loop(const char *backing, char *why, size_t why_len)
{
    int control = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    int file = open(backing, O_RDWR | O_CLOEXEC);
    int rc = -1;
    if (control < 0 || file < 0) {
        snprintf(why, why_len, "cannot open %s: %s", control < 0 ? "/dev/loop-control" : backing,
                 strerror(errno));
        goto out;
    }
    /* another process may take the free device first: try again a few times */
    for (int attempt = 0; attempt < 10 && rc < 0; attempt++) {
        int n = ioctl(control, LOOP_CTL_GET_FREE);
        if (n < 0) {
            snprintf(why, why_len, "no free loop device: %s", strerror(errno));
            goto out;
        }
        snprintf(device, sizeof device, "/dev/loop%d", n);
        int fd = open(device, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            snprintf(why, why_len, "cannot open %s: %s", device, strerror(errno));
            goto out;
        }
        if (ioctl(fd, LOOP_SET_FD, file) < 0) {
            snprintf(why, why_len, "cannot attach %s: %s", device, strerror(errno));
            close(fd);
            if (errno == EBUSY)
                continue;
            goto out;
        }
        struct loop_info64 info = { .lo_flags = LO_FLAGS_AUTOCLEAR };
        if (ioctl(fd, LOOP_SET_STATUS64, &info) < 0) {
            snprintf(why, why_len, "cannot set autoclear on %s: %s", device, strerror(errno));
            ioctl(fd, LOOP_CLR_FD, 0);
            close(fd);
            goto out;
        }
        device_keeper = fd;
        rc = 0;
    }
out:
    if (control >= 0)
        close(control);
    if (file >= 0)
        close(file);
    return rc;
}

/* The backing file of the test's loop device: the pattern from 1 MiB to 4 MiB, zeroes elsewhere. */
static const char *make_device_file(void)
{
    const char *path = vt_path("device.img");
    vt_make_sparse(path, DEVICE_SIZE);
    static uint8_t data[3 * MiB];
    vt_pattern_fill(data, sizeof data, PATTERN_SEED, MiB);
    vt_pwrite_file(path, MiB, data, sizeof data);
    return path;
}

static const char *backing_file; /* the current test's device.img */

static void device_setup(void)
{
    char why[256];
    backing_file = make_device_file();
    ck_assert_msg(attach_loop(backing_file, why, sizeof why) == 0, "%s", why);
}

static void device_teardown(void)
{
    close(device_keeper);
    device_keeper = -1;
}

/* The device reads as the pattern on [MiB, 4 MiB) and zeroes elsewhere. */
static void assert_device_content(vd_image *img)
{
    vt_assert_image_zero(img, 0, MiB);
    vt_assert_image_pattern(img, MiB, 3 * MiB, PATTERN_SEED);
    vt_assert_image_zero(img, 4 * MiB, DEVICE_SIZE - 4 * MiB);
}

START_TEST(a_block_device_is_a_raw_image_of_its_size)
{
    vd_image *img = vt_open(device, NULL, 0);
    uint64_t size = 0;
    vt_ok(vd_get_size(img, &size));
    ck_assert_uint_eq(size, DEVICE_SIZE);
    vd_info info = VD_INFO_INIT;
    vt_ok(vd_get_info(img, &info));
    ck_assert_str_eq(info.format, "raw");
    ck_assert_uint_eq(info.virtual_size, DEVICE_SIZE);
    /* a device occupies all of itself (st_blocks of the node says 0) */
    ck_assert_uint_eq(info.actual_size, DEVICE_SIZE);
    assert_device_content(img);
    vt_close(img);
}
END_TEST

START_TEST(a_block_device_is_data_throughout)
{
    vd_image *img = vt_open(device, "raw", 0);
    vd_extent ext;
    vt_ok(vd_block_status(img, 0, DEVICE_SIZE, &ext, 0));
    ck_assert_uint_eq(ext.length, DEVICE_SIZE);
    ck_assert_uint_eq(ext.flags, VD_EXTENT_DATA | VD_EXTENT_ALLOCATED);
    ck_assert_uint_eq(ext.host_offset, 0);
    vt_ok(vd_block_status(img, 5 * MiB, MiB, &ext, 0));
    ck_assert_uint_eq(ext.length, MiB);
    ck_assert_uint_eq(ext.host_offset, 5 * MiB);
    vt_close(img);
}
END_TEST

START_TEST(writes_and_zeroes_reach_the_device)
{
    vd_image *img = vt_open(device, "raw", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 6 * MiB, MiB, PATTERN_SEED + 1);
    vt_ok(vd_write_zeroes(img, MiB, 64 * KiB, 0));
    vt_ok(vd_write_zeroes(img, 2 * MiB, 64 * KiB, VD_ZERO_MAY_UNMAP));
    vt_ok(vd_write_zeroes(img, 3 * MiB + 512, 1024, 0));
    vt_assert_image_zero(img, MiB, 64 * KiB);
    vt_assert_image_pattern(img, MiB + 64 * KiB, MiB - 64 * KiB, PATTERN_SEED);
    vt_assert_image_zero(img, 2 * MiB, 64 * KiB);
    vt_assert_image_zero(img, 3 * MiB + 512, 1024);
    vt_assert_image_pattern(img, 3 * MiB + 1536, 64 * KiB, PATTERN_SEED);
    vt_assert_image_pattern(img, 6 * MiB, MiB, PATTERN_SEED + 1);
    /* a write past the end of the device fails: it does not grow */
    uint8_t byte = 1;
    ck_assert_int_lt(vd_write(img, DEVICE_SIZE, &byte, 1, 0), 0);
    vt_close(img); /* flushes the device into its backing file */

    uint8_t head[512];
    vt_pread_file(backing_file, 6 * MiB, head, sizeof head);
    ck_assert_int_eq(vt_pattern_mismatch(head, sizeof head, PATTERN_SEED + 1, 6 * MiB), -1);
    vt_pread_file(backing_file, 2 * MiB, head, sizeof head);
    ck_assert_int_eq(vt_nonzero_at(head, sizeof head), -1);
}
END_TEST

/* Discard is a hint: it succeeds and leaves the bytes around the range as they were. */
START_TEST(discard_keeps_the_neighbours)
{
    vd_image *img = vt_open(device, "raw", VD_OPEN_RDWR);
    vt_ok(vd_discard(img, MiB + 512, MiB, 0));
    vt_ok(vd_discard(img, 3 * MiB + 100, 200, 0)); /* inside one block: nothing to discard */
    vt_assert_image_pattern(img, MiB, 512, PATTERN_SEED);
    vt_assert_image_pattern(img, 2 * MiB + 512, MiB - 512, PATTERN_SEED);
    vt_close(img);
}
END_TEST

START_TEST(a_block_device_is_not_resized)
{
    vd_image *img = vt_open(device, "raw", VD_OPEN_RDWR);
    vt_err(vd_resize(img, DEVICE_SIZE + MiB, 0), VD_EUNSUPPORTED);
    vt_assert_errmsg_has("block device cannot be resized");
    vt_err(vd_resize(img, MiB, VD_RESIZE_SHRINK), VD_EUNSUPPORTED);
    uint64_t size = 0;
    vt_ok(vd_get_size(img, &size));
    ck_assert_uint_eq(size, DEVICE_SIZE);
    assert_device_content(img);
    vt_close(img);
}
END_TEST

/* A raw image is created on a device only at the device's size, which it keeps, and its data. */
START_TEST(raw_create_on_a_device_keeps_it)
{
    vt_err(vd_create(device, "raw", 4 * MiB, NULL, 0), VD_EUNSUPPORTED);
    vt_assert_errmsg_has(device);
    vt_ok(vd_create(device, "raw", DEVICE_SIZE, NULL, 0));
    vt_ok(vd_create(device, "raw", DEVICE_SIZE, "preallocation=falloc", 0));
    vd_image *img = vt_open(device, "raw", 0);
    assert_device_content(img);
    vt_close(img);
}
END_TEST

START_TEST(a_block_device_is_a_backing_file)
{
    const char *top = vt_path("top.qcow2");
    char options[96];
    snprintf(options, sizeof options, "backing_file=%s,backing_fmt=raw", device);
    vt_ok(vd_create(top, "qcow2", 0, options, 0)); /* size 0: the device's */
    vd_image *img = vt_open(top, NULL, VD_OPEN_RDWR);
    uint64_t size = 0;
    vt_ok(vd_get_size(img, &size));
    ck_assert_uint_eq(size, DEVICE_SIZE);
    assert_device_content(img);
    vt_image_write_pattern(img, MiB, 64 * KiB, PATTERN_SEED + 2);
    vt_assert_image_pattern(img, MiB, 64 * KiB, PATTERN_SEED + 2);
    vt_close(img);

    img = vt_open(device, "raw", 0); /* the overlay's write stayed in the overlay */
    assert_device_content(img);
    vt_close(img);
}
END_TEST

/* ----------------------------------------------------------------------- main */

static Suite *special_suite(void)
{
    Suite *s = suite_create("special files");
    TCase *tc = vt_tcase(s, "refused");
    tcase_add_test(tc, character_devices_are_refused);
    tcase_add_test(tc, a_fifo_is_refused_without_blocking);
    tcase_add_test(tc, a_directory_is_refused);
    tcase_add_test(tc, a_socket_is_refused);
    tcase_add_test(tc, a_character_device_backing_file_is_refused);
    tcase_add_test(tc, an_image_is_not_created_on_a_character_device);
    return s;
}

static Suite *loop_suite(void)
{
    Suite *s = suite_create("block devices");
    TCase *tc = vt_tcase(s, "loop");
    tcase_add_checked_fixture(tc, device_setup, device_teardown);
    tcase_add_test(tc, a_block_device_is_a_raw_image_of_its_size);
    tcase_add_test(tc, a_block_device_is_data_throughout);
    tcase_add_test(tc, writes_and_zeroes_reach_the_device);
    tcase_add_test(tc, discard_keeps_the_neighbours);
    tcase_add_test(tc, a_block_device_is_not_resized);
    tcase_add_test(tc, raw_create_on_a_device_keeps_it);
    tcase_add_test(tc, a_block_device_is_a_backing_file);
    return s;
}

/* Whether a loop device can be attached here (root, /dev/loop-control, device nodes). */
static bool loop_devices_work(void)
{
    char path[] = "/tmp/vdisk-loop-probe-XXXXXX", why[256];
    int fd = mkstemp(path);
    bool works = fd >= 0 && ftruncate(fd, MiB) == 0 && attach_loop(path, why, sizeof why) == 0;
    if (fd < 0)
        snprintf(why, sizeof why, "cannot make a file in /tmp: %s", strerror(errno));
    if (works)
        close(device_keeper);
    else
        printf("SKIP: no loop device can be set up here (%s); block devices are not tested\n",
               why);
    device_keeper = -1;
    if (fd >= 0) {
        close(fd);
        unlink(path);
    }
    return works;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "special") == 0)
        return vt_run_suite(special_suite());
    if (argc == 2 && strcmp(argv[1], "loop") == 0)
        return loop_devices_work() ? vt_run_suite(loop_suite()) : 77;
    fprintf(stderr, "usage: %s special|loop\n", argv[0]);
    return 2;
}
