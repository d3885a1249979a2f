/*
 * Fault injection: run one operation at a time on a prepared qcow2 image
 * with the fault layer failing the Nth pread, pwrite or sync, for every N
 * from 1 until the operation completes without meeting the fault. Each time:
 *
 *   - the call returns the injected error (VD_EIO or VD_ENOSPC), never
 *     success and never another code, and nothing crashes;
 *   - the handle is then either poisoned (every later call but vd_close
 *     fails with VD_EPOISONED) or still usable: it reads each byte as before
 *     the operation or as the operation would leave it, a fault-free
 *     vd_flush succeeds, and after vd_close the image reads exactly as the
 *     handle showed (never silently wrong);
 *   - the image opened afresh has no corruption per vd_check and qemu-img
 *     check (leaks allowed), and reads each byte as before the operation or
 *     as the operation would leave it: what was flushed before survives;
 *   - its snapshots are those before or after the operation, each intact.
 * When the operation finally runs without a fault it must succeed and leave
 * exactly the expected image.
 */
#include "crashutil.h"
#include "faultio.h"

#include "core/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_SNAPS 8
#define MAX_REPORTS 8
#define MAX_N 5000

/* The guest-visible state: content, size, snapshots (names s0..s7, each with its content). */
struct state {
    uint8_t *data;
    uint64_t size;
    unsigned snaps;                 /* bit i: snapshot "s<i>" exists */
};

struct ctx {
    const char *options;            /* qcow2 create options */
    uint64_t cs;
    uint64_t cap;                   /* bytes allocated for state data */
    struct state before, after;     /* around the operation under test */
    uint8_t *snap_data[MAX_SNAPS];  /* content of each snapshot when taken */
    uint64_t snap_size[MAX_SNAPS];
    const char *base;               /* the prepared image */
    const char *work;               /* the copy an iteration works on */
    unsigned failures, iterations, poisoned, usable, qemu_checks;
    const char *scenario, *plan_name;
    uint64_t problems_before;       /* what vd_check finds in a damaged prepared image (else 0) */
};

struct scenario {
    const char *name;
    /* Build the image before the operation (through a handle on ctx->base) and ctx->before. */
    void (*prepare)(struct ctx *c, vd_image *img);
    /* Damage the prepared image (closed), or NULL. */
    void (*damage)(const char *path);
    /* The operation under test; ctx->after is what it leaves on success. */
    int (*op)(struct ctx *c, vd_image *img);
    /*
     * May succeed although a fault fired: a repairing check re-checks the
     * repaired image, and a clean second pass is a true success.
     */
    bool may_absorb;
};

/* ----------------------------------------------------------- state helpers */

static void state_init(struct ctx *c, struct state *s, uint64_t size)
{
    s->data = calloc(1, (size_t)c->cap);
    ck_assert_ptr_nonnull(s->data);
    s->size = size;
    s->snaps = 0;
}

static void state_copy(struct ctx *c, struct state *dst, const struct state *src)
{
    memcpy(dst->data, src->data, (size_t)c->cap);
    dst->size = src->size;
    dst->snaps = src->snaps;
}

/* Write the pattern through the handle and into s. */
static void put(vd_image *img, struct state *s, uint64_t off, uint64_t len, uint64_t seed)
{
    vt_pattern_fill(s->data + off, (size_t)len, seed, off);
    vt_ok(vd_write(img, off, s->data + off, (size_t)len, 0));
}

static void take_snapshot(struct ctx *c, vd_image *img, struct state *s, int i)
{
    char name[8];
    snprintf(name, sizeof name, "s%d", i);
    vt_ok(vd_snapshot_create(img, name, 0));
    c->snap_size[i] = s->size;
    c->snap_data[i] = malloc((size_t)c->cap);
    ck_assert_ptr_nonnull(c->snap_data[i]);
    memcpy(c->snap_data[i], s->data, (size_t)c->cap);
    s->snaps |= 1u << i;
}

/* A typical image: data in several clusters of the first L2 table, one snapshot, all flushed. */
static void prepare_common(struct ctx *c, vd_image *img)
{
    struct state *s = &c->before;
    put(img, s, 0, 3 * c->cs + 100, 11);
    put(img, s, 8 * c->cs + 17, 2 * c->cs, 12);
    take_snapshot(c, img, s, 0);
    put(img, s, c->cs / 2, c->cs, 13);        /* COW of shared clusters */
    put(img, s, 12 * c->cs, 4 * c->cs, 14);
    for (uint64_t i = 1; i < 8; i++) /* data under several L2 tables (for small caches) */
        put(img, s, i * (s->size / 8) + 3 * c->cs, 100, 15 + i);
    vt_ok(vd_flush(img, 0));
}

/* ------------------------------------------------------------- operations */

/* An unaligned write over unallocated clusters, one of them behind a new L2 table. */
static int op_write_alloc(struct ctx *c, vd_image *img)
{
    uint64_t l2_span = c->cs * (c->cs / 8);
    uint64_t off = l2_span - c->cs - 333, len = 3 * c->cs;
    if (off + len > c->after.size)
        off = c->after.size - len - 1;
    vt_pattern_fill(c->after.data + off, (size_t)len, 21, off);
    return vd_write(img, off, c->after.data + off, (size_t)len, 0);
}

/* A write into clusters shared with a snapshot (copy-on-write). */
static int op_write_cow(struct ctx *c, vd_image *img)
{
    uint64_t off = 8 * c->cs + 5, len = 2 * c->cs;
    vt_pattern_fill(c->after.data + off, (size_t)len, 22, off);
    return vd_write(img, off, c->after.data + off, (size_t)len, 0);
}

static int op_zero(struct ctx *c, vd_image *img)
{
    uint64_t off = 100, len = 3 * c->cs;
    memset(c->after.data + off, 0, (size_t)len);
    return vd_write_zeroes(img, off, len, 0);
}

static int op_zero_unmap(struct ctx *c, vd_image *img)
{
    uint64_t off = 12 * c->cs - 7, len = 3 * c->cs;
    memset(c->after.data + off, 0, (size_t)len);
    return vd_write_zeroes(img, off, len, VD_ZERO_MAY_UNMAP);
}

/* A discard of whole clusters (they read as zeroes after it with qcow2 v3, no backing). */
static int op_discard(struct ctx *c, vd_image *img)
{
    uint64_t off = 12 * c->cs, len = 2 * c->cs;
    memset(c->after.data + off, 0, (size_t)len);
    return vd_discard(img, off, len, 0);
}

/* Unflushed writes, then the flush that must make them durable. */
static int op_flush(struct ctx *c, vd_image *img)
{
    struct {
        uint64_t off, len;
    } w[] = { { 5 * c->cs + 9, c->cs }, { 20 * c->cs, 2 * c->cs }, { 1, 700 },
              { c->after.size / 2 + 77, c->cs }, { c->after.size / 4 * 3, 3 * c->cs } };
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) {
        vt_pattern_fill(c->after.data + w[i].off, (size_t)w[i].len, 30 + i, w[i].off);
        int rc = vd_write(img, w[i].off, c->after.data + w[i].off, (size_t)w[i].len, 0);
        if (rc < 0)
            return rc;
    }
    return vd_flush(img, 0);
}

static int op_snapshot_create(struct ctx *c, vd_image *img)
{
    c->after.snaps |= 1u << 1;
    c->snap_size[1] = c->after.size;
    if (!c->snap_data[1]) {
        c->snap_data[1] = malloc((size_t)c->cap);
        ck_assert_ptr_nonnull(c->snap_data[1]);
    }
    memcpy(c->snap_data[1], c->after.data, (size_t)c->cap);
    return vd_snapshot_create(img, "s1", 0);
}

static int op_snapshot_delete(struct ctx *c, vd_image *img)
{
    c->after.snaps &= ~1u;
    return vd_snapshot_delete(img, "s0", 0);
}

static int op_snapshot_apply(struct ctx *c, vd_image *img)
{
    memcpy(c->after.data, c->snap_data[0], (size_t)c->cap);
    c->after.size = c->snap_size[0];
    return vd_snapshot_apply(img, "s0", 0);
}

/* Growing past what the L1 table covers moves the L1 table. */
static int op_resize(struct ctx *c, vd_image *img)
{
    uint64_t grow = c->cap - c->after.size;
    c->after.size += grow;
    return vd_resize(img, c->after.size, 0);
}

/* A version 2 image cannot be resized while it has snapshots (qemu-img refuses it too). */
static void prepare_resize(struct ctx *c, vd_image *img)
{
    prepare_common(c, img);
    if (strstr(c->options, "compat=0.10")) {
        vt_ok(vd_snapshot_delete(img, "s0", 0));
        c->before.snaps &= ~1u;
        vt_ok(vd_flush(img, 0));
    }
}

/* A repairing check of an image with leaked clusters. */
static void prepare_leaks(struct ctx *c, vd_image *img)
{
    prepare_common(c, img);
    cu_leak_clusters(img, 3);
    cu_leak_clusters(img, 1);
}

static int check_repairing(uint32_t flags, vd_image *img)
{
    vd_check_result res = VD_CHECK_RESULT_INIT;
    int rc = vd_check(img, flags, &res, NULL, NULL);
    /* a check that could not read something reports it in check_errors, not in its result */
    if (rc == 0 && res.check_errors)
        return VD_EIO;
    if (rc == 0 && (res.leaks || res.corruptions))
        return vd_err(VD_EINVAL, "the repair left leaks=%llu corruptions=%llu",
                      (unsigned long long)res.leaks, (unsigned long long)res.corruptions);
    return rc;
}

/* Zero clusters with and without a host cluster, for the downgrade to expand. */
static void prepare_amend(struct ctx *c, vd_image *img)
{
    prepare_common(c, img);
    memset(c->before.data + c->cs, 0, (size_t)c->cs);
    vt_ok(vd_write_zeroes(img, c->cs, c->cs, 0));
    memset(c->before.data + 30 * c->cs, 0, (size_t)(2 * c->cs));
    vt_ok(vd_write_zeroes(img, 30 * c->cs, 2 * c->cs, 0));
    vt_ok(vd_flush(img, 0));
}

/* The compat change each kind allows: up from v2, down from v3 (extended L2: lazy refcounts). */
static int op_amend_compat(struct ctx *c, vd_image *img)
{
    const char *options = strstr(c->options, "compat=0.10") ? "compat=1.1"
                        : strstr(c->options, "extended_l2=on") ? "lazy_refcounts=on"
                        : "compat=0.10";
    return vd_amend(img, options, 0);
}

/* New refcount structures at 64 bits (a v2 image is upgraded first). */
static int op_amend_refcount_bits(struct ctx *c, vd_image *img)
{
    return vd_amend(img, strstr(c->options, "compat=0.10") ? "compat=1.1,refcount_bits=64"
                                                           : "refcount_bits=64", 0);
}

static int op_check_repair(struct ctx *c, vd_image *img)
{
    (void)c;
    return check_repairing(VD_CHECK_REPAIR_LEAKS, img);
}

/* check -r all of an image whose refcount structures need a rebuild. */
static int op_check_rebuild(struct ctx *c, vd_image *img)
{
    (void)c;
    return check_repairing(VD_CHECK_REPAIR_ALL, img);
}

static const struct scenario scenarios[] = {
    { "write-alloc", prepare_common, NULL, op_write_alloc, false },
    { "write-cow", prepare_common, NULL, op_write_cow, false },
    { "write-zeroes", prepare_common, NULL, op_zero, false },
    { "write-zeroes-unmap", prepare_common, NULL, op_zero_unmap, false },
    { "discard", prepare_common, NULL, op_discard, false },
    { "flush", prepare_common, NULL, op_flush, false },
    { "snapshot-create", prepare_common, NULL, op_snapshot_create, false },
    { "snapshot-delete", prepare_common, NULL, op_snapshot_delete, false },
    { "snapshot-apply", prepare_common, NULL, op_snapshot_apply, false },
    { "resize", prepare_resize, NULL, op_resize, false },
    { "check-repair", prepare_leaks, NULL, op_check_repair, true },
    { "check-rebuild", prepare_leaks, cu_drop_first_refblock, op_check_rebuild, true },
    { "amend-compat", prepare_amend, NULL, op_amend_compat, false },
    { "amend-refcount-bits", prepare_amend, NULL, op_amend_refcount_bits, false },
};

/* --------------------------------------------------------------- checking */

static void report(struct ctx *c, uint64_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void report(struct ctx *c, uint64_t n, const char *fmt, ...)
{
    c->failures++;
    if (c->failures > MAX_REPORTS)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "FAULT FAILURE [%s, %s, %s, fault at call %" PRIu64 "]: %s\n", c->options,
            c->scenario, c->plan_name, n, msg);
}

/* Every byte as before or as after the operation; the first that is neither, or -1. */
static long long stray_byte(const struct ctx *c, const uint8_t *got, uint64_t size)
{
    for (uint64_t b = 0; b < size; b++)
        if (got[b] != c->before.data[b] && got[b] != c->after.data[b])
            return (long long)b;
    return -1;
}

/* The snapshots of img: a bit per "s<i>"; the contents are checked with the image closed. */
static unsigned list_snapshots(vd_image *img)
{
    size_t count;
    vt_ok(vd_snapshot_count(img, &count));
    unsigned have = 0;
    for (size_t i = 0; i < count; i++) {
        vd_snapshot_info si = VD_SNAPSHOT_INFO_INIT;
        vt_ok(vd_snapshot_get(img, i, &si));
        int idx;
        if (sscanf(si.name, "s%d", &idx) == 1 && idx >= 0 && idx < MAX_SNAPS)
            have |= 1u << idx;
        else
            have |= 1u << 31;
    }
    return have;
}

static void check_snapshot_contents(struct ctx *c, uint64_t n, unsigned have)
{
    for (int i = 0; i < MAX_SNAPS; i++) {
        if (!((have >> i) & 1))
            continue;
        char name[8];
        snprintf(name, sizeof name, "s%d", i);
        vd_open_opts o = VD_OPEN_OPTS_INIT;
        o.format = "qcow2";
        o.flags = VD_OPEN_NO_LOCK;
        o.snapshot = name;
        vd_image *snap = NULL;
        if (vd_open_ext(&snap, c->work, &o) < 0) {
            report(c, n, "snapshot %s does not open: %s", name, vd_errmsg());
            continue;
        }
        uint64_t size;
        uint8_t *got = cu_read_image(snap, &size);
        if (size != c->snap_size[i] || memcmp(got, c->snap_data[i], (size_t)size) != 0)
            report(c, n, "snapshot %s does not read as when it was taken", name);
        free(got);
        vd_close(snap);
    }
}

/* What vd_check finds in the image at path (opened read-only). */
static uint64_t problems_of(const char *path)
{
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_NO_LOCK);
    vd_check_result res = VD_CHECK_RESULT_INIT;
    vt_ok(vd_check(img, 0, &res, NULL, NULL));
    vd_close(img);
    return cu_check_problems(&res);
}

/* A damaged image after a failed repair: it opens read-write and is no worse than before. */
static vd_image *open_no_worse(struct ctx *c, char *why, size_t whylen)
{
    vd_image *img = NULL;
    vd_check_result res = VD_CHECK_RESULT_INIT;
    int rc = vd_open(&img, c->work, "qcow2", VD_OPEN_RDWR | VD_OPEN_NO_FLUSH);
    if (rc == 0)
        rc = vd_check(img, 0, &res, NULL, NULL);
    if (rc == 0 && cu_check_problems(&res) <= c->problems_before)
        return img;
    snprintf(why, whylen, "%s: rc=%s corruptions=%llu leaks=%llu check_errors=%llu (before: %llu problems)",
             img ? "vd_check" : "open", vd_errname(rc), (unsigned long long)res.corruptions,
             (unsigned long long)res.leaks, (unsigned long long)res.check_errors,
             (unsigned long long)c->problems_before);
    vd_close(img);
    return NULL;
}

/* The image on disk, opened afresh: consistent (or, damaged before, no worse), and as
   expected (exact, if given). */
static void check_on_disk(struct ctx *c, uint64_t n, const struct state *exact)
{
    char why[1024];
    bool benign;
    /* a damaged image fails qemu-img check until a repair completes (open_no_worse compares) */
    bool sound = !c->problems_before || exact == &c->after;
    if (sound && c->iterations % cu_slowdown() == 0) { /* sanitizer builds: every third */
        c->qemu_checks++;
        if (!cu_qemu_check_ok(c->work, c->cs, &benign, why, sizeof why))
            report(c, n, "%s", why);
    }
    struct cu_check chk;
    vd_image *img = c->problems_before ? open_no_worse(c, why, sizeof why)
                                       : cu_open_checked(c->work, "qcow2", VD_OPEN_NO_FLUSH, why, sizeof why, &chk);
    if (!img) {
        report(c, n, "after reopening: %s", why);
        return;
    }
    uint64_t size;
    uint8_t *got = cu_read_image(img, &size);
    unsigned have = list_snapshots(img);
    vd_close(img);
    if (exact) {
        if (size != exact->size || memcmp(got, exact->data, (size_t)size) != 0)
            report(c, n, "the reopened image does not read as the handle did before closing");
        if (have != exact->snaps)
            report(c, n, "the reopened image has snapshots 0x%x, the handle had 0x%x", have, exact->snaps);
    } else {
        long long bad = stray_byte(c, got, size);
        if (size != c->before.size && size != c->after.size)
            report(c, n, "the reopened image is %" PRIu64 " bytes (before: %" PRIu64 ", after: %" PRIu64 ")",
                   size, c->before.size, c->after.size);
        else if (bad >= 0)
            report(c, n, "the reopened image reads 0x%02x at %lld (before: 0x%02x, after: 0x%02x)",
                   got[bad], bad, c->before.data[bad], c->after.data[bad]);
        unsigned may = c->before.snaps | c->after.snaps, must = c->before.snaps & c->after.snaps;
        if ((have & ~may) || (must & ~have))
            report(c, n, "the reopened image has snapshots 0x%x (before 0x%x, after 0x%x)", have,
                   c->before.snaps, c->after.snaps);
    }
    free(got);
    check_snapshot_contents(c, n, have);
}

/* After a failed operation: poisoned for good, or usable and truthful. */
static void check_handle(struct ctx *c, uint64_t n, vd_image *img)
{
    uint64_t size;
    vt_ok(vd_get_size(img, &size));
    uint8_t *got = malloc((size_t)(size ? size : 1));
    ck_assert_ptr_nonnull(got);
    int rc = vd_read(img, 0, got, (size_t)size, 0);
    if (rc == VD_EPOISONED) {
        c->poisoned++;
        uint8_t byte = 0;
        int w = vd_write(img, 0, &byte, 1, 0), f = vd_flush(img, 0), s = vd_snapshot_create(img, "x", 0);
        if (w != VD_EPOISONED || f != VD_EPOISONED || s != VD_EPOISONED)
            report(c, n, "poisoned handle: write %s, flush %s, snapshot_create %s", vd_errname(w),
                   vd_errname(f), vd_errname(s));
        vd_close(img);
        free(got);
        check_on_disk(c, n, NULL);
        return;
    }
    c->usable++;
    if (rc < 0) {
        report(c, n, "after the failure, vd_read gives %s (neither success nor VD_EPOISONED): %s",
               vd_errname(rc), vd_errmsg());
        vd_close(img);
        free(got);
        return;
    }
    long long bad = stray_byte(c, got, size);
    if (size != c->before.size && size != c->after.size)
        report(c, n, "the usable handle has size %" PRIu64, size);
    else if (bad >= 0)
        report(c, n, "the usable handle reads 0x%02x at %lld (before: 0x%02x, after: 0x%02x)",
               got[bad], bad, c->before.data[bad], c->after.data[bad]);
    rc = vd_flush(img, 0);
    if (rc < 0)
        report(c, n, "a fault-free vd_flush on the usable handle fails: %s: %s", vd_errname(rc), vd_errmsg());
    struct state shown = { got, size, list_snapshots(img) };
    rc = vd_close(img);
    if (rc < 0)
        report(c, n, "vd_close of the usable handle fails: %s", vd_errname(rc));
    check_on_disk(c, n, &shown);
    free(got);
}

/* ----------------------------------------------------------------- driver */

struct plan_desc {
    const char *name;
    struct fault_plan plan;
};

static const struct plan_desc plans[] = {
    { "pread EIO", { FAULT_PREAD, 0, EIO, false, false } },
    { "pwrite EIO (half written)", { FAULT_PWRITE, 0, EIO, false, true } },
    { "pwrite ENOSPC from then on", { FAULT_PWRITE, 0, ENOSPC, true, false } },
    { "sync EIO", { FAULT_SYNC, 0, EIO, false, false } },
    { "any call EIO from then on", { FAULT_ANY, 0, EIO, true, false } },
};

struct image_kind {
    const char *name;
    const char *options;
    uint64_t size, cap;     /* the virtual size, and how far the resize scenario grows it */
    uint64_t cache_bytes;   /* vd_open_opts.cache_bytes for the operation (0: default) */
};

static void run_scenario(const struct image_kind *kind, const struct scenario *sc)
{
    const char *options = kind->options;
    struct ctx c = { .options = options, .scenario = sc->name };
    const uint64_t size = kind->size;
    c.cap = kind->cap;
    c.base = vt_path("base.qcow2");
    c.work = vt_path("work.qcow2");
    vt_ok(vd_create(c.base, "qcow2", size, options, 0));
    state_init(&c, &c.before, size);
    state_init(&c, &c.after, size);
    vd_image *img = vt_open(c.base, "qcow2", VD_OPEN_RDWR);
    vd_info info = VD_INFO_INIT;
    vt_ok(vd_get_info(img, &info));
    c.cs = info.cluster_size;
    sc->prepare(&c, img);
    vt_close(img);
    if (sc->damage) {
        sc->damage(c.base);
        c.problems_before = problems_of(c.base);
        ck_assert_uint_ne(c.problems_before, 0);
    }

    for (size_t p = 0; p < sizeof plans / sizeof plans[0]; p++) {
        c.plan_name = plans[p].name;
        for (uint64_t n = 1; n <= MAX_N; n++) {
            cu_copy_file(c.base, c.work);
            state_copy(&c, &c.after, &c.before);
            fault_install();
            img = vt_open_cached(c.work, "qcow2", VD_OPEN_RDWR, kind->cache_bytes);
            struct fault_plan plan = plans[p].plan;
            plan.nth = n;
            if (getenv("VD_FAULT_VERBOSE"))
                fprintf(stderr, "fault %s [%s]: %s at call %" PRIu64 "\n", sc->name, options,
                        c.plan_name, n);
            fault_arm(&plan);
            int rc = sc->op(&c, img);
            bool fired = fault_fired();
            fault_uninstall();
            c.iterations++;
            if (!fired) {
                if (rc < 0)
                    report(&c, n, "fails without a fault: %s: %s", vd_errname(rc), vd_errmsg());
                rc = vd_close(img);
                if (rc < 0)
                    report(&c, n, "vd_close after success fails: %s", vd_errname(rc));
                check_on_disk(&c, n, &c.after);
                break;
            }
            int want = plan.errnum == ENOSPC ? VD_ENOSPC : VD_EIO;
            if (rc == 0 && !sc->may_absorb)
                report(&c, n, "succeeds although the fault fired");
            else if (rc != 0 && rc != want)
                report(&c, n, "fails with %s, not %s: %s", vd_errname(rc), vd_errname(want), vd_errmsg());
            check_handle(&c, n, img);
            ck_assert_msg(n < MAX_N, "%s: the operation never got past the faults", sc->name);
        }
    }
    fprintf(stderr, "fault %s [%s]: %u runs (%u left the handle poisoned, %u usable), %u qemu-img checks, "
            "%u failures\n", sc->name, options, c.iterations, c.poisoned, c.usable, c.qemu_checks, c.failures);
    free(c.before.data);
    free(c.after.data);
    for (int i = 0; i < MAX_SNAPS; i++)
        free(c.snap_data[i]);
    ck_assert_msg(c.failures == 0, "%s [%s]: %u failures (details on stderr)", sc->name, options,
                  c.failures);
}

#define N_SCENARIOS (sizeof scenarios / sizeof scenarios[0])

/* 4 KiB clusters: an L2 table covers 2 MiB, so the write-alloc scenario needs a new one. */
static const struct image_kind kinds[] = {
    { "fault-4k", "cluster_size=4096", 3 * MiB, 6 * MiB, 0 },
    { "fault-4k-lazy", "cluster_size=4096,lazy_refcounts=on", 3 * MiB, 6 * MiB, 0 },
    { "fault-extl2", "cluster_size=16384,extended_l2=on", 2 * MiB, 4 * MiB, 0 },
    { "fault-v2", "compat=0.10,cluster_size=4096", 3 * MiB, 6 * MiB, 0 },
    /* 4 tables of 512 bytes: lookups evict dirty tables, and eviction writes fail too */
    { "fault-512-tinycache", "cluster_size=512", 1 * MiB, 2 * MiB, 2048 },
};
#define N_KINDS (sizeof kinds / sizeof kinds[0])

/* Test cases per image kind (meson runs each alone: CK_RUN_CASE=fault-4k, ...), a test per scenario. */
static int case_kind;

static void set_kind(int k)
{
    case_kind = k;
}

START_TEST(test_fault)
{
    const char *only = getenv("VD_FAULT_ONLY"); /* a scenario name, to study one */
    const struct scenario *sc = &scenarios[_i];
    if (only && *only && strcmp(only, sc->name) != 0)
        return;
    run_scenario(&kinds[case_kind], sc);
}
END_TEST

static void kind0(void) { set_kind(0); }
static void kind1(void) { set_kind(1); }
static void kind2(void) { set_kind(2); }
static void kind3(void) { set_kind(3); }
static void kind4(void) { set_kind(4); }

static Suite *fault_suite(void)
{
    static void (*const setters[N_KINDS])(void) = { kind0, kind1, kind2, kind3, kind4 };
    Suite *s = suite_create("crash");
    for (size_t k = 0; k < N_KINDS; k++) {
        TCase *tc = vt_tcase(s, kinds[k].name);
        tcase_set_timeout(tc, 600);
        tcase_add_checked_fixture(tc, setters[k], NULL);
        tcase_add_loop_test(tc, test_fault, 0, (int)N_SCENARIOS);
    }
    return s;
}

int main(void)
{
    return vt_run_suite(fault_suite());
}
