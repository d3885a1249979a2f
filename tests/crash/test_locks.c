/*
 * QEMU's lock protocol (lib/io/lock.c) when a lock cannot be had: a file
 * system that cannot lock (the fault layer fails the Nth lock primitive with
 * ENOLCK, EOPNOTSUPP or EINVAL) fails the open, as in QEMU, unless the
 * caller opted out with VD_OPEN_NO_LOCK; and a lock that fails part way, or
 * a conflict found after the bytes were taken, leaves no lock byte held.
 */
#include "common.h"
#include "faultio.h"

#include "core/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

/* More than a writer's lock ever makes: 5 bytes taken, 5 tested. */
#define MAX_LOCK_CALLS 32

static const int no_lock_errnos[] = { ENOLCK, EOPNOTSUPP, EINVAL };
#define N_ERRNOS (int)(sizeof no_lock_errnos / sizeof no_lock_errnos[0])

/* Is any of QEMU's lock bytes (100..103, 200..203) locked through an open file other than a fresh one? */
static bool any_lock_byte_held(const char *path)
{
    int fd = open(path, O_RDONLY);
    ck_assert_int_ge(fd, 0);
    bool held = false;
    for (off_t base = 100; base <= 200; base += 100) {
        for (off_t byte = base; byte < base + 4; byte++) {
            struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
            ck_assert_int_eq(fcntl(fd, F_OFD_GETLK, &fl), 0);
            held |= fl.l_type != F_UNLCK;
        }
    }
    close(fd);
    return held;
}

static void arm_lock_fault(uint64_t nth, int errnum)
{
    struct fault_plan plan = { .kinds = FAULT_LOCK, .nth = nth, .errnum = errnum };
    fault_arm(&plan);
}

/* Each lock primitive in turn fails as on a file system without locks: the open fails. */
START_TEST(a_file_system_without_locks_fails_the_open)
{
    int errnum = no_lock_errnos[_i % N_ERRNOS];
    bool writer = _i / N_ERRNOS;
    const char *path = vt_path("image.raw");
    vt_create_raw(path, MiB);
    fault_install();
    bool completed = false;
    for (uint64_t nth = 1; !completed && nth <= MAX_LOCK_CALLS; nth++) {
        arm_lock_fault(nth, errnum);
        vd_image *img = NULL;
        int rc = vd_open(&img, path, "raw", writer ? VD_OPEN_RDWR : 0);
        completed = !fault_fired();
        fault_disarm();
        if (completed) {
            vt_ok(rc);
            vt_close(img);
            break;
        }
        ck_assert_msg(rc == VD_EUNSUPPORTED, "lock call %llu failing with %s: vd_open gave %s (%s)",
                      (unsigned long long)nth, strerror(errnum), vd_errname(rc), vd_errmsg());
        vt_assert_errmsg_has(path);
        vt_assert_errmsg_has("lock");
        vt_assert_errmsg_has("VD_OPEN_NO_LOCK");
        ck_assert_ptr_null(img);
    }
    ck_assert_msg(completed, "the lock still failed after %d calls", MAX_LOCK_CALLS);
    fault_uninstall();
}
END_TEST

/* The caller who opted out of locks is not stopped by a file system without them. */
START_TEST(no_lock_opens_where_locks_fail)
{
    const char *path = vt_path("image.raw");
    vt_create_raw(path, MiB);
    fault_install();
    struct fault_plan plan = { .kinds = FAULT_LOCK, .nth = 1, .errnum = ENOLCK, .persistent = true };
    fault_arm(&plan);
    vt_close(vt_open(path, "raw", VD_OPEN_RDWR | VD_OPEN_NO_LOCK));
    ck_assert(!fault_fired());
    fault_uninstall();
}
END_TEST

/* A lock that fails part way gives back the bytes it took before it returns. */
START_TEST(a_failed_lock_releases_the_bytes_it_took)
{
    int errnum = no_lock_errnos[_i % N_ERRNOS];
    const char *path = vt_path("image.raw");
    vt_create_raw(path, MiB);
    fault_install();
    bool completed = false;
    for (uint64_t nth = 1; !completed && nth <= MAX_LOCK_CALLS; nth++) {
        vd_file *f;
        vt_ok(vd_file_open(&f, path, VD_FILE_RDWR));
        arm_lock_fault(nth, errnum);
        int rc = vd_file_lock(f, true);
        completed = !fault_fired();
        fault_disarm();
        if (completed)
            vt_ok(rc);
        else
            ck_assert_msg(rc < 0 && !any_lock_byte_held(path),
                          "lock call %llu failing with %s: %s, and lock bytes are still held",
                          (unsigned long long)nth, strerror(errnum), vd_errname(rc));
        vd_file_close(f);
    }
    ck_assert(completed);
    fault_uninstall();
}
END_TEST

/* A conflict found after our bytes were taken leaves none of them held. */
START_TEST(a_lock_conflict_releases_the_bytes_it_took)
{
    const char *path = vt_path("image.raw");
    vt_create_raw(path, MiB);
    vd_image *reader = vt_open(path, "raw", 0);
    vd_file *f;
    vt_ok(vd_file_open(&f, path, VD_FILE_RDWR));
    vt_err(vd_file_lock(f, true), VD_ELOCKED);
    vt_close(reader);
    ck_assert_msg(!any_lock_byte_held(path), "the failed writer still holds lock bytes");
    /* and so another writer gets the image */
    vt_close(vt_open(path, "raw", VD_OPEN_RDWR));
    vd_file_close(f);
}
END_TEST

/* Creating over an image on a file system without locks fails before anything is truncated. */
START_TEST(create_fails_before_truncating_where_locks_fail)
{
    const char *path = vt_path("image.raw");
    uint8_t data[4096];
    vt_pattern_fill(data, sizeof data, 7, 0);
    vt_write_file(path, data, sizeof data);
    fault_install();
    struct fault_plan plan = { .kinds = FAULT_LOCK, .nth = 1, .errnum = ENOLCK, .persistent = true };
    fault_arm(&plan);
    vt_err(vd_create(path, "raw", MiB, NULL, 0), VD_EUNSUPPORTED);
    vt_assert_errmsg_has(path);
    fault_uninstall();
    uint8_t after[sizeof data];
    ck_assert_uint_eq(vt_file_size(path), sizeof data);
    vt_pread_file(path, 0, after, sizeof after);
    ck_assert_mem_eq(after, data, sizeof data);
}
END_TEST

static Suite *locks_suite(void)
{
    Suite *s = suite_create("locks");
    TCase *tc = vt_tcase(s, "lock-failure");
    tcase_add_loop_test(tc, a_file_system_without_locks_fails_the_open, 0, 2 * N_ERRNOS);
    tcase_add_test(tc, no_lock_opens_where_locks_fail);
    tcase_add_loop_test(tc, a_failed_lock_releases_the_bytes_it_took, 0, N_ERRNOS);
    tcase_add_test(tc, a_lock_conflict_releases_the_bytes_it_took);
    tcase_add_test(tc, create_fails_before_truncating_where_locks_fail);
    return s;
}

int main(void)
{
    return vt_run_suite(locks_suite());
}
