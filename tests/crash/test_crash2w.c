/*
 * Crash consistency with two writers on one handle: two threads write at
 * once (allocating writes into new clusters, in-place writes into clusters
 * the image owns, partial and whole clusters, ranges of both threads
 * overlapping, some FUA, and flushes from one of them) with the crash layer
 * installed; then every write the library issued is a crash point, and the
 * image a power cut there could leave must:
 *
 *   - open read-write with no corruption in vd_check (leaks are fine, and
 *     repairing them leaves the image clean); every few points `qemu-img
 *     check` agrees (exit 0 or 3);
 *   - read, in every 512-byte sector, one whole value: the one it held
 *     before the workload or one a write covering it wrote; never a value
 *     of another sector's write, stale data or a torn sector.
 *
 * The variants: 64 KiB and 4 KiB clusters; 512-byte clusters with a cache
 * of 4 tables (tables written back and evicted by either thread's lookups);
 * and an image whose prefilled half is shared with an internal snapshot,
 * so that every first write there copies the cluster.
 */
#include "crashio.h"
#include "crashutil.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define WRITERS 2
#define OPS 40                 /* per writer; values 1 .. WRITERS * OPS */
#define PREFILL 0xee           /* the first half of the image before the workload */
#define SECTOR 512u

struct variant {
    const char *name;
    const char *options;       /* vd_create */
    uint64_t cluster_size;
    uint64_t clusters;         /* the image's size; the first half is prefilled */
    uint64_t cache_bytes;      /* vd_open_opts.cache_bytes; 0: default */
    bool snapshot;             /* snapshot the prefilled image before the workload */
};

static const struct variant variants[] = {
    { "qcow2-64k", "cluster_size=65536", 65536, 32, 0, false },
    { "qcow2-4k", "cluster_size=4096", 4096, 32, 0, false },
    /* 64 entries per L2 table, 8 tables, 4 cached (L2 and refcount blocks): evictions */
    { "qcow2-512-tinycache", "cluster_size=512", 512, 512, 4 * 512, false },
    { "qcow2-4k-snapshot", "cluster_size=4096", 4096, 32, 0, true },
};
#define N_VARIANTS ((int)(sizeof variants / sizeof variants[0]))

static uint64_t image_bytes(const struct variant *v)
{
    return v->clusters * v->cluster_size;
}

struct op {
    uint64_t first, count;     /* sectors */
    uint8_t value;
};

struct writer {
    int id;
    vd_image *img;
    const struct variant *v;
    uint64_t rng;
    struct op ops[OPS];
    char error[256];
};

static void *writer_body(void *arg)
{
    struct writer *w = arg;
    const uint64_t sectors = image_bytes(w->v) / SECTOR;
    /* up to two clusters, or 16 for the smallest */
    const uint64_t max_span = (w->v->cluster_size == SECTOR ? 16 : 2) * w->v->cluster_size / SECTOR;
    uint8_t *buf = malloc(max_span * SECTOR);
    for (int i = 0; i < OPS && buf && !w->error[0]; i++) {
        struct op *op = &w->ops[i];
        op->value = (uint8_t)(1 + w->id * OPS + i);
        op->count = 1 + vt_rand_below(&w->rng, max_span);
        op->first = vt_rand_below(&w->rng, sectors - op->count + 1);
        /* half the writes start at a cluster boundary: whole-cluster allocations too */
        if (vt_rand_below(&w->rng, 2))
            op->first -= op->first % (w->v->cluster_size / SECTOR);
        memset(buf, op->value, op->count * SECTOR);
        uint32_t flags = vt_rand_below(&w->rng, 10) == 0 ? VD_WRITE_FUA : 0;
        int rc = vd_write(w->img, op->first * SECTOR, buf, op->count * SECTOR, flags);
        if (rc == 0 && w->id == 0 && i % 15 == 14)
            rc = vd_flush(w->img, 0);
        if (rc < 0)
            snprintf(w->error, sizeof w->error, "writer %d op %d: %s", w->id, i, vd_errmsg());
    }
    if (!buf)
        snprintf(w->error, sizeof w->error, "out of memory");
    free(buf);
    return NULL;
}

/* The image before the workload: its first half PREFILL, flushed (and snapshotted). */
static void prepare(const struct variant *v, const char *path)
{
    vt_ok(vd_create(path, "qcow2", image_bytes(v), v->options, 0));
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    uint64_t half = image_bytes(v) / 2;
    uint8_t *buf = malloc(half);
    ck_assert_ptr_nonnull(buf);
    memset(buf, PREFILL, half);
    vt_ok(vd_write(img, 0, buf, half, 0));
    if (v->snapshot)
        vt_ok(vd_snapshot_create(img, "shared", 0));
    free(buf);
    vt_close(img);
}

/* Which values each sector may hold after a crash: a bit per value, 256 per sector. */
struct allowed {
    uint64_t sectors;
    uint64_t *bits;            /* sectors * 4 words */
};

static void allow(struct allowed *a, uint64_t sector, uint8_t value)
{
    a->bits[sector * 4 + value / 64] |= 1ull << (value % 64);
}

static bool allowed(const struct allowed *a, uint64_t sector, uint8_t value)
{
    return (a->bits[sector * 4 + value / 64] >> (value % 64)) & 1;
}

static void build_allowed(struct allowed *a, const struct variant *v, const struct writer *ws)
{
    a->sectors = image_bytes(v) / SECTOR;
    a->bits = calloc(a->sectors * 4, sizeof *a->bits);
    ck_assert_ptr_nonnull(a->bits);
    for (uint64_t s = 0; s < a->sectors; s++)
        allow(a, s, s < a->sectors / 2 ? PREFILL : 0);
    for (int t = 0; t < WRITERS; t++)
        for (int i = 0; i < OPS; i++)
            for (uint64_t s = ws[t].ops[i].first; s < ws[t].ops[i].first + ws[t].ops[i].count; s++)
                allow(a, s, ws[t].ops[i].value);
}

/* The first sector that is torn or holds a value nothing wrote there, or -1. */
static long long bad_sector(const struct allowed *a, const uint8_t *got)
{
    for (uint64_t s = 0; s < a->sectors; s++) {
        const uint8_t *p = got + s * SECTOR;
        if (!allowed(a, s, p[0]) || memcmp(p, p + 1, SECTOR - 1) != 0)
            return (long long)s;
    }
    return -1;
}

/* One crash image: false with why filled in if it is wrong. */
static bool check_point(const struct variant *v, const struct allowed *a, const char *crash_path,
                        bool qemu, char *why, size_t whylen)
{
    bool benign;
    if (qemu && !cu_qemu_check_ok(crash_path, v->cluster_size, &benign, why, whylen))
        return false;
    struct cu_check chk;
    vd_image *img = cu_open_checked(crash_path, "qcow2", VD_OPEN_NO_FLUSH, why, whylen, &chk);
    if (!img)
        return false;
    uint8_t *got = malloc(image_bytes(v));
    ck_assert_ptr_nonnull(got);
    bool ok = vd_read(img, 0, got, image_bytes(v), 0) == 0;
    if (!ok) {
        snprintf(why, whylen, "reading the image fails: %s", vd_errmsg());
    } else {
        long long bad = bad_sector(a, got);
        ok = bad < 0;
        if (!ok)
            snprintf(why, whylen, "sector %lld reads 0x%02x..0x%02x, which no write there left",
                     bad, got[bad * SECTOR], got[bad * SECTOR + SECTOR - 1]);
    }
    free(got);
    vd_close(img);
    return ok;
}

START_TEST(test_two_writers)
{
    const struct variant *v = &variants[_i];
    const char *path = vt_path("image"), *crash_path = vt_path("crash");
    prepare(v, path);

    crash_install();
    crash_track(path);
    vd_image *img = vt_open_cached(path, "qcow2", VD_OPEN_RDWR, v->cache_bytes);
    struct writer ws[WRITERS];
    pthread_t tids[WRITERS];
    for (int t = 0; t < WRITERS; t++) {
        ws[t] = (struct writer){ .id = t, .img = img, .v = v, .rng = cu_seed(1) * 31 + (uint64_t)t };
        ck_assert_int_eq(pthread_create(&tids[t], NULL, writer_body, &ws[t]), 0);
    }
    for (int t = 0; t < WRITERS; t++)
        pthread_join(tids[t], NULL);
    for (int t = 0; t < WRITERS; t++)
        ck_assert_msg(!ws[t].error[0], "%s", ws[t].error);
    vt_close(img);

    struct allowed a;
    build_allowed(&a, v, ws);
    uint64_t npoints = crash_write_count() + 2, stride = cu_slowdown();
    unsigned failures = 0, images = 0;
    for (uint64_t point = 0; point < npoints && failures < 3; point += stride) {
        char why[1024];
        crash_materialize(point, point * 7919 + cu_seed(1), crash_path);
        images++;
        if (!check_point(v, &a, crash_path, point % (10 * stride) == 0, why, sizeof why)) {
            fprintf(stderr, "%s: crash point %" PRIu64 " of %" PRIu64 ": %s\n", v->name, point,
                    npoints, why);
            failures++;
        }
    }
    fprintf(stderr, "crash2w %s: %" PRIu64 " writes, %" PRIu64 " syncs; %u crash images checked, "
            "%u failures\n", v->name, crash_write_count(), crash_sync_count(), images, failures);
    crash_reset();
    crash_uninstall();
    free(a.bits);
    ck_assert_msg(failures == 0, "%u crash images fail (see above)", failures);
}
END_TEST

static Suite *crash2w_suite(void)
{
    Suite *s = suite_create("crash2w");
    for (int i = 0; i < N_VARIANTS; i++)
        tcase_add_loop_test(vt_tcase(s, variants[i].name), test_two_writers, i, i + 1);
    return s;
}

int main(void)
{
    return vt_run_suite(crash2w_suite());
}
