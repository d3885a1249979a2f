/*
 * Real processes: a child writes numbered records into a qcow2 image and
 * calls vd_flush after each batch, reporting every completed flush through a
 * pipe; the parent kills it with SIGKILL at a random moment, then checks the
 * image (qemu-img check exits 0 or 3; vd_check finds no corruption) and that
 * every record reported flushed reads back. Many rounds, each child picking
 * up where the last flush left off.
 *
 * A killed process loses nothing the kernel already has, so this tests the
 * library's own ordering of its writes (metadata written before the data it
 * points to, or never written at all), not the disk's.
 */
#include "crashutil.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RECORD 3000u   /* bytes: records straddle clusters, so many writes copy-on-write */
#define BATCH 24u      /* records per flush */

struct kill_variant {
    const char *name;
    const char *options;
    uint64_t size;      /* virtual size: records wrap around and overwrite older ones */
    uint64_t cluster_size;
    bool snapshots;     /* the child also takes and drops snapshots now and then */
};

static uint64_t slots_of(const struct kill_variant *v)
{
    return v->size / RECORD;
}

/* Record n: RECORD pattern bytes at slot n % slots, seeded by n. */
static void record_fill(uint8_t *buf, uint64_t n)
{
    vt_pattern_fill(buf, RECORD, n + 1, 0);
}

/* The child: write records from `next` on, flushing after every batch, until killed. */
static void child(const struct kill_variant *v, const char *path, uint64_t next, int out)
{
    vd_image *img;
    if (vd_open(&img, path, "qcow2", VD_OPEN_RDWR) < 0) {
        fprintf(stderr, "sigkill child: open: %s\n", vd_errmsg());
        _exit(2);
    }
    uint8_t buf[RECORD];
    uint64_t slots = slots_of(v), snaps = 0;
    for (uint64_t n = next;; n++) {
        record_fill(buf, n);
        if (vd_write(img, (n % slots) * RECORD, buf, RECORD, 0) < 0) {
            fprintf(stderr, "sigkill child: write: %s\n", vd_errmsg());
            _exit(3);
        }
        if ((n + 1) % BATCH)
            continue;
        if (vd_flush(img, 0) < 0) {
            fprintf(stderr, "sigkill child: flush: %s\n", vd_errmsg());
            _exit(4);
        }
        uint64_t done = n + 1;
        if (write(out, &done, sizeof done) != sizeof done)
            _exit(5);
        if (v->snapshots && done % (BATCH * 16) == 0) {
            char name[32];
            snprintf(name, sizeof name, "k%" PRIu64, snaps++);
            size_t count = 0;
            if (vd_snapshot_count(img, &count) == 0 && count >= 2) {
                vd_snapshot_info si = VD_SNAPSHOT_INFO_INIT;
                if (vd_snapshot_get(img, 0, &si) == 0) {
                    char old[64];
                    snprintf(old, sizeof old, "%s", si.id);
                    if (vd_snapshot_delete(img, old, 0) < 0)
                        _exit(6);
                }
            }
            /* a name that is taken already (from a killed earlier child) is fine */
            int rc = vd_snapshot_create(img, name, 0);
            if (rc < 0 && rc != VD_EEXIST) {
                fprintf(stderr, "sigkill child: snapshot: %s\n", vd_errmsg());
                _exit(7);
            }
        }
    }
}

/* Read everything the child reported; the last value is the flushed record count. */
static uint64_t drain(int fd, uint64_t flushed)
{
    uint64_t v;
    ssize_t n;
    while ((n = read(fd, &v, sizeof v)) == sizeof v || (n < 0 && errno == EINTR))
        if (n == sizeof v)
            flushed = v;
    return flushed;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Check the image after a kill; returns the number of problems found. */
static unsigned verify(const struct kill_variant *v, const char *path, uint64_t flushed, unsigned round)
{
    unsigned bad = 0;
    bool lazy = strstr(v->options, "lazy_refcounts=on") != NULL, benign;
    char why[1024];
    if (!lazy && !cu_qemu_check_ok(path, v->cluster_size, &benign, why, sizeof why)) {
        fprintf(stderr, "SIGKILL FAILURE [%s round %u]: %s\n", v->name, round, why);
        bad++;
    }
    struct cu_check chk;
    vd_image *img = cu_open_checked(path, "qcow2", 0, why, sizeof why, &chk);
    if (!img) {
        fprintf(stderr, "SIGKILL FAILURE [%s round %u]: %s\n", v->name, round, why);
        return bad + 1;
    }
    /*
     * The killed child may have written up to two batches past the last
     * flush it reported (killed between a flush and its report): those
     * overwrite the oldest slots, which are then not checked.
     */
    uint64_t slots = slots_of(v), reach = flushed + 2 * BATCH;
    uint64_t first = reach > slots ? reach - slots : 0;
    uint8_t got[RECORD], want[RECORD];
    for (uint64_t n = first; n < flushed; n++) {
        vt_ok(vd_read(img, (n % slots) * RECORD, got, RECORD, 0));
        record_fill(want, n);
        if (memcmp(got, want, RECORD) != 0) {
            if (bad++ < 4)
                fprintf(stderr, "SIGKILL FAILURE [%s round %u]: record %" PRIu64 " (of %" PRIu64
                        " flushed) does not read back\n", v->name, round, n, flushed);
        }
    }
    vd_close(img);
    if (lazy && !cu_qemu_check_ok(path, v->cluster_size, &benign, why, sizeof why)) {
        /* the open above repaired it: now qemu-img must agree */
        fprintf(stderr, "SIGKILL FAILURE [%s round %u]: after the repairing open, %s\n", v->name,
                round, why);
        bad++;
    }
    return bad;
}

static void run_kills(const struct kill_variant *v)
{
    const char *path = vt_path("records.qcow2");
    vt_ok(vd_create(path, "qcow2", v->size, v->options, 0));
    unsigned rounds = 30 * cu_scale();
    uint64_t rng = cu_seed(7), flushed = 0;
    unsigned bad = 0, early = 0;
    for (unsigned round = 0; round < rounds; round++) {
        int fds[2];
        ck_assert(pipe(fds) == 0);
        pid_t pid = fork();
        ck_assert(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            child(v, path, flushed, fds[1]);
        }
        close(fds[1]);
        /* mostly early (mid-batch, mid-flush), sometimes after many batches */
        unsigned ms = vt_rand_below(&rng, 4) ? 1 + (unsigned)vt_rand_below(&rng, 40)
                                               : 40 + (unsigned)vt_rand_below(&rng, 200);
        sleep_ms(ms);
        kill(pid, SIGKILL);
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        uint64_t now = drain(fds[0], flushed);
        close(fds[0]);
        if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) {
            fprintf(stderr, "SIGKILL FAILURE [%s round %u]: the child ended by itself (status 0x%x)\n",
                    v->name, round, status);
            early++;
        }
        ck_assert_msg(now >= flushed, "the flushed count went back");
        flushed = now;
        bad += verify(v, path, flushed, round);
        if (bad + early > 8)
            break;
    }
    fprintf(stderr, "sigkill %s: %u rounds, %" PRIu64 " records flushed, %u problems\n", v->name, rounds,
            flushed, bad + early);
    ck_assert_msg(bad + early == 0, "%s: %u problems after SIGKILL (details on stderr)", v->name, bad + early);
}

static const struct kill_variant variants[] = {
    { "64k", "", 8 * MiB, 65536, true },
    { "4k-lazy", "cluster_size=4096,lazy_refcounts=on", 4 * MiB, 4096, true },
    { "512-v2", "compat=0.10,cluster_size=512", 2 * MiB, 512, false },
};
#define N_VARIANTS (sizeof variants / sizeof variants[0])

START_TEST(test_sigkill)
{
    run_kills(&variants[_i]);
}
END_TEST

static Suite *sigkill_suite(void)
{
    Suite *s = suite_create("crash");
    TCase *tc = vt_tcase(s, "sigkill");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_sigkill, 0, (int)N_VARIANTS);
    return s;
}

int main(void)
{
    return vt_run_suite(sigkill_suite());
}
