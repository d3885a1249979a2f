/*
 * fuzz_write: the input is an image file, opened read-write on an in-memory
 * copy (growable by 32 MiB). A writable open repairs a dirty lazy-refcount
 * image by itself; an image marked corrupt is opened with VD_OPEN_REPAIR.
 * Then:
 *   - vd_check with VD_CHECK_REPAIR_ALL (even-sized inputs; odd-sized ones
 *     are only checked, so that writes also meet unrepaired images); if the
 *     repair reports nothing left, a fresh check must agree
 *   - writes (partial and whole clusters), write_zeroes and a discard, each
 *     checked by reading back windows around them: written bytes read back,
 *     zeroed bytes read as zeroes, bytes around them are unchanged (a discard
 *     may read either way)
 *   - flush and close; the windows must read the same after reopening, and
 *     an image that was clean after the repair must still check clean.
 * Backing files are never served; the image is opened without them if its
 * chain cannot be opened (reads of unallocated clusters then give zeroes).
 */
#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { NOPS = 6, MARGIN = 4096, GROWTH = 32 << 20 };

enum op_kind { OP_WRITE, OP_ZERO, OP_DISCARD };

struct op {
    enum op_kind kind;
    uint64_t off, len;
    int rc;
};

/* Expected content around an operation: bytes, and which of them are known. */
struct window {
    uint64_t off, len;
    uint8_t *expect;
    uint8_t *known;
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_init();
    return 0;
}

static uint8_t pattern(unsigned op, uint64_t pos)
{
    return (uint8_t)((pos * 2654435761u) >> 13 ^ (op + 1) * 0x3b);
}

static int open_rw(vd_image **img, uint32_t *flags)
{
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.format = FUZZ_OPEN_FORMAT;
    o.flags = VD_OPEN_RDWR | VD_OPEN_CONFINED | VD_OPEN_NO_LOCK;
    int rc = VD_EINVAL;
    for (int attempt = 0; attempt < 3; attempt++) {
        rc = vd_open_ext(img, MEMFILE_IMAGE, &o);
        fuzz_check_rc(rc, "vd_open_ext");
        if ((rc == VD_EBACKING || rc == VD_EPERM || rc == VD_ENOENT) &&
            !(o.flags & VD_OPEN_NO_BACKING))
            o.flags |= VD_OPEN_NO_BACKING;
        else if (rc == VD_ECORRUPT && !(o.flags & VD_OPEN_REPAIR))
            o.flags |= VD_OPEN_REPAIR;
        else
            break;
    }
    *flags = o.flags;
    return rc;
}

/* The first broken expectation of this input (reported at the end, unless a known bug explains it). */
static char failure[512];

#define EXPECT(cond, ...)                                                      \
    do {                                                                       \
        if (!(cond) && !failure[0])                                            \
            snprintf(failure, sizeof failure, __VA_ARGS__);                    \
    } while (0)

/* Read a window; false if the handle is disabled. Checks known bytes against it. */
static bool verify(vd_image *img, const struct window *w, const char *when)
{
    uint8_t *got = malloc(w->len ? (size_t)w->len : 1);
    FUZZ_ASSERT(got, "out of memory");
    int rc = vd_read(img, w->off, got, (size_t)w->len, 0);
    fuzz_check_rc(rc, "vd_read");
    for (uint64_t i = 0; rc == 0 && i < w->len; i++) {
        if (w->known[i] && got[i] != w->expect[i]) {
            EXPECT(false, "%s: byte %llu reads 0x%02x, expected 0x%02x", when,
                   (unsigned long long)(w->off + i), got[i], w->expect[i]);
            break;
        }
    }
    free(got);
    return rc == 0;
}

struct known {
    uint64_t cluster_size, file_size;
    bool past_eof;     /* references to, or refcounts of, clusters past the end of the file */
    bool rb_outside;   /* a refcount block past the end of the file */
};

/* Check messages of the original image (opened read-only) that point at a known bug. */
static void scan_known(void *ctx, const char *message)
{
    struct known *k = ctx;
    unsigned long long cluster, refcount;
    const char *p = strstr(message, "cluster ");
    if (strstr(message, "exceeding the end of the file"))
        k->past_eof = true;
    if (p && sscanf(p, "cluster %llu refcount=%llu", &cluster, &refcount) == 2 && refcount &&
        k->cluster_size && cluster >= k->file_size / k->cluster_size)
        k->past_eof = true;
    if (strstr(message, "refcount block") && strstr(message, "is outside image"))
        k->rb_outside = true;
}

/* KNOWN BUG qcow2-repair-refcount64-delta-ub: a repair of a 64-bit refcount that is off by 2^63
 * or more negates INT64_MIN (refcount.c) */
static void scan_refcount64(void *ctx, const char *message)
{
    unsigned long long stored, wanted;
    const char *p = strstr(message, "refcount=");
    if (p && sscanf(p, "refcount=%llu reference=%llu", &stored, &wanted) == 2 &&
        (stored > wanted ? stored - wanted : wanted - stored) >= 1ull << 63)
        *(bool *)ctx = true;
}

static bool refcount64_bug(const uint8_t *data, size_t size)
{
    /* only images with 64-bit refcounts: qcow2 v3 with refcount order 6 */
    if (size < 104 || memcmp(data, "QFI\xfb\0\0\0\3", 8) != 0 || data[99] != 6 ||
        data[96] | data[97] | data[98])
        return false;
    memfile_add_readonly(MEMFILE_DIR "/original-64", data, size);
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.format = FUZZ_OPEN_FORMAT;
    o.flags = VD_OPEN_NO_LOCK | VD_OPEN_NO_BACKING;
    vd_image *img;
    bool hit = false;
    if (vd_open_ext(&img, MEMFILE_DIR "/original-64", &o) == 0) {
        vd_check_result res = VD_CHECK_RESULT_INIT;
        vd_check(img, 0, &res, scan_refcount64, &hit);
        vd_close(img);
    }
    return hit && fuzz_known_bug("qcow2-repair-refcount64-delta-ub");
}

static uint64_t be(const uint8_t *data, size_t size, uint64_t off, unsigned width)
{
    uint64_t v = 0;
    for (unsigned i = 0; off <= size && width <= size - off && i < width; i++)
        v = v << 8 | data[off + i];
    return v;
}

/* A qcow2 refcount block that shares its cluster with the header, the refcount table, the
 * active L1 table or another refcount block. */
static bool refblock_overlaps_metadata(const uint8_t *data, size_t size)
{
    if (size < 72 || be(data, size, 0, 4) != 0x514649fbu)
        return false;
    uint32_t bits = (uint32_t)be(data, size, 20, 4);
    if (bits < 9 || bits > 21)
        return false;
    uint64_t cs = 1ull << bits, rt = be(data, size, 48, 8), rt_clusters = be(data, size, 56, 4);
    uint64_t l1 = be(data, size, 40, 8) / cs, l1_end = (be(data, size, 40, 8) + be(data, size, 36, 4) * 8 + cs - 1) / cs;
    uint64_t entries = rt_clusters * cs / 8;
    for (uint64_t i = 0; i < entries && i < 65536; i++) {
        uint64_t b = be(data, size, rt + i * 8, 8) / cs;
        if (!b)
            continue;
        if ((b >= rt / cs && b < rt / cs + rt_clusters) || (b >= l1 && b < l1_end))
            return true;
        for (uint64_t j = 0; j < i; j++)
            if (be(data, size, rt + j * 8, 8) / cs == b)
                return true;
    }
    return false;
}

/* Whether a known library bug explains the failure on this input. */
static bool known_bug_explains(const uint8_t *data, size_t size)
{
    memfile_add_readonly(MEMFILE_DIR "/original", data, size);
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.format = FUZZ_OPEN_FORMAT;
    o.flags = VD_OPEN_NO_LOCK | VD_OPEN_NO_BACKING;
    vd_image *img;
    uint32_t bits = (uint32_t)be(data, size, 20, 4);
    struct known k = { bits >= 9 && bits <= 21 ? 1ull << bits : 0, size, false, false };
    if (vd_open_ext(&img, MEMFILE_DIR "/original", &o) == 0) {
        vd_check_result res = VD_CHECK_RESULT_INIT;
        vd_check(img, 0, &res, scan_known, &k);
        vd_close(img);
    }
    /* KNOWN BUG qcow2-alloc-reuses-clusters-past-eof: the allocator takes every cluster past
     * the end of the file for free (find_free_run), whatever its refcount, so clusters there
     * that L1/L2 entries still map are handed out again; the repair makes it worse by zeroing
     * their refcounts, as it does not count references past the end of the file */
    if (k.past_eof && fuzz_known_bug("qcow2-alloc-reuses-clusters-past-eof"))
        return true;
    /* KNOWN BUG qcow2-repair-keeps-refblock-overlapping-rt: the repair neither rebuilds the
     * refcount structures when a refcount block lies outside the image nor requires refcount
     * blocks to have refcount 1 (QEMU does both), so a refcount block that shares its cluster
     * with the refcount table (or other metadata) survives it, and refcount updates then
     * overwrite refcount table entries */
    return (k.rb_outside || refblock_overlaps_metadata(data, size)) &&
           fuzz_known_bug("qcow2-repair-keeps-refblock-overlapping-rt");
}

/* Apply an operation's effect to a window's expectation. */
static void apply(struct window *w, unsigned index, const struct op *op)
{
    uint64_t from = op->off > w->off ? op->off : w->off;
    uint64_t to = op->off + op->len < w->off + w->len ? op->off + op->len : w->off + w->len;
    for (uint64_t pos = from; pos < to; pos++) {
        uint64_t i = pos - w->off;
        if (op->rc < 0 || op->kind == OP_DISCARD) { /* failed: undefined; discard: either */
            w->known[i] = 0;
        } else {
            w->expect[i] = op->kind == OP_WRITE ? pattern(index, pos) : 0;
            w->known[i] = 1;
        }
    }
}

/*
 * A check error that valid writes may cause on a clean image, as in QEMU: a
 * cluster two L2 entries shared (refcount 2, which checks clean) is written
 * through one of them, and the other is left with refcount 1 but without
 * the COPIED flag. Only a missed optimisation (a needless copy on the next
 * write); COPIED set on a shared cluster, the dangerous direction, stays an
 * error.
 */
static void count_benign(void *ctx, const char *message)
{
    fuzz_report(NULL, message);
    const char *entry = strstr(message, "_entry=");
    if (strncmp(message, "ERROR OFLAG_COPIED", 18) == 0 && strstr(message, " refcount=1") &&
        !(strstr(message, " refcount=1") && strstr(message, " refcount=1")[11]) && entry &&
        !(strtoull(entry + 7, NULL, 16) >> 63))
        ++*(uint64_t *)ctx;
}

static void plan(uint64_t size, struct op *ops)
{
    uint64_t z = (size / 4) & ~0xfffull;
    struct op all[NOPS] = {
        { OP_WRITE, 519, 3000, 0 },                                    /* partial clusters */
        { OP_WRITE, (size / 2) & ~0xffffull, 65536, 0 },               /* whole clusters */
        { OP_WRITE, size > 4096 ? size - 4096 : 0, 4096, 0 },          /* the end */
        { OP_ZERO, z, 8192, 0 },
        { OP_DISCARD, (size / 4 * 3) & ~0xffffull, 65536, 0 },
        { OP_WRITE, z + 1000, 2000, 0 },                               /* into zeroed clusters */
    };
    for (unsigned i = 0; i < NOPS; i++) {
        ops[i] = all[i];
        if (ops[i].off >= size)
            ops[i].off = ops[i].len = 0;
        else if (ops[i].len > size - ops[i].off)
            ops[i].len = size - ops[i].off;
    }
}

static void run(vd_image *img, uint32_t open_flags, bool clean)
{
    uint64_t size;
    FUZZ_ASSERT(vd_get_size(img, &size) == 0, "vd_get_size");
    if (size == 0 || size > INT64_MAX) {
        vd_close(img);
        return;
    }
    struct op ops[NOPS];
    struct window w[NOPS] = { 0 };
    plan(size, ops);
    bool alive = true;
    for (unsigned i = 0; i < NOPS && alive; i++) {
        w[i].off = ops[i].off > MARGIN ? ops[i].off - MARGIN : 0;
        uint64_t end = ops[i].off + ops[i].len + MARGIN;
        w[i].len = (end < size ? end : size) - w[i].off;
        w[i].expect = malloc((size_t)w[i].len + 1);
        w[i].known = calloc(1, (size_t)w[i].len + 1);
        FUZZ_ASSERT(w[i].expect && w[i].known, "out of memory");
        int rc = vd_read(img, w[i].off, w[i].expect, (size_t)w[i].len, 0);
        fuzz_check_rc(rc, "vd_read");
        if (rc == 0)
            memset(w[i].known, 1, (size_t)w[i].len);
        alive = rc != VD_EPOISONED && rc != VD_ECORRUPT;
    }
    for (unsigned i = 0; i < NOPS && alive; i++) {
        struct op *op = &ops[i];
        if (!op->len)
            continue;
        if (op->kind == OP_WRITE) {
            uint8_t *buf = malloc((size_t)op->len);
            FUZZ_ASSERT(buf, "out of memory");
            for (uint64_t k = 0; k < op->len; k++)
                buf[k] = pattern(i, op->off + k);
            op->rc = vd_write(img, op->off, buf, (size_t)op->len, 0);
            free(buf);
        } else if (op->kind == OP_ZERO) {
            op->rc = vd_write_zeroes(img, op->off, op->len, VD_ZERO_MAY_UNMAP);
        } else {
            op->rc = vd_discard(img, op->off, op->len, 0);
        }
        fuzz_check_rc(op->rc, "a write");
        fuzz_log("op %u (kind %d) %llu+%llu: %s %s", i, op->kind, (unsigned long long)op->off,
                 (unsigned long long)op->len, vd_errname(op->rc), op->rc ? vd_errmsg() : "");
        FUZZ_ASSERT(op->rc != VD_EREADONLY && op->rc != VD_ERANGE && op->rc != VD_EINVAL,
                    "operation %u (%llu+%llu) failed with %s", i, (unsigned long long)op->off,
                    (unsigned long long)op->len, vd_errname(op->rc));
        for (unsigned j = 0; j < NOPS; j++)
            if (w[j].expect)
                apply(&w[j], i, op);
        alive = op->rc != VD_EPOISONED && op->rc != VD_ECORRUPT;
    }
    for (unsigned i = 0; i < NOPS && alive; i++)
        if (w[i].expect)
            alive = verify(img, &w[i], "after writing");
    int rc = vd_flush(img, 0);
    fuzz_check_rc(rc, "vd_flush");
    alive &= rc == 0;
    rc = vd_close(img);
    fuzz_check_rc(rc, "vd_close");
    alive &= rc == 0;

    if (alive) { /* everything is flushed: it must all be there after reopening */
        vd_open_opts o = VD_OPEN_OPTS_INIT;
        o.format = FUZZ_OPEN_FORMAT;
        o.flags = open_flags & ~(uint32_t)(VD_OPEN_RDWR | VD_OPEN_REPAIR);
        vd_image *again;
        rc = vd_open_ext(&again, MEMFILE_IMAGE, &o);
        EXPECT(rc == 0, "the image no longer opens after writing and closing it: %s", vd_errmsg());
        if (rc < 0)
            goto out;
        uint64_t size2;
        FUZZ_ASSERT(vd_get_size(again, &size2) == 0 && size2 == size, "size changed");
        for (unsigned i = 0; i < NOPS; i++)
            if (w[i].expect && !verify(again, &w[i], "after reopening"))
                break;
        vd_check_result res = VD_CHECK_RESULT_INIT;
        uint64_t benign = 0;
        rc = vd_check(again, 0, &res, count_benign, &benign);
        fuzz_check_rc(rc, "vd_check");
        if (clean && rc == 0)
            EXPECT(res.corruptions <= benign && res.leaks == 0,
                   "an image that checked clean has %llu corruptions and %llu leaks after "
                   "writing", (unsigned long long)(res.corruptions - benign),
                   (unsigned long long)res.leaks);
        vd_close(again);
    }
out:
    for (unsigned i = 0; i < NOPS; i++) {
        free(w[i].expect);
        free(w[i].known);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    failure[0] = '\0';
    if (refcount64_bug(data, size)) { /* a writable open may repair it, too */
        memfile_clear();
        return 0;
    }
    memfile_add_copy(MEMFILE_IMAGE, data, size, size + GROWTH);
    vd_image *img = NULL;
    uint32_t flags;
    if (open_rw(&img, &flags) < 0) {
        memfile_clear();
        return 0;
    }
    /* even-sized inputs are repaired first; odd-sized ones are written as they are (the
     * writable open still repairs a dirty image) */
    bool repair = size % 2 == 0, clean = false;
    vd_check_result res = VD_CHECK_RESULT_INIT;
    fuzz_log("opened with flags 0x%x; %s", flags, repair ? "repairing" : "checking");
    int rc = vd_check(img, repair ? VD_CHECK_REPAIR_ALL : 0, &res, fuzz_report, NULL);
    fuzz_log("check: rc %d, %llu corruptions and %llu leaks left, %llu and %llu fixed", rc,
             (unsigned long long)res.corruptions, (unsigned long long)res.leaks,
             (unsigned long long)res.corruptions_fixed, (unsigned long long)res.leaks_fixed);
    fuzz_check_rc(rc, "vd_check");
    if (rc == 0 && res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0) {
        clean = true;
        if (repair) {
            vd_check_result after = VD_CHECK_RESULT_INIT;
            rc = vd_check(img, 0, &after, NULL, NULL);
            fuzz_check_rc(rc, "vd_check");
            EXPECT(rc != 0 || (after.corruptions == 0 && after.leaks == 0),
                   "a repair left nothing to fix, but a check then finds %llu corruptions and "
                   "%llu leaks", (unsigned long long)after.corruptions,
                   (unsigned long long)after.leaks);
            clean = rc == 0;
        }
    }
    if (rc == VD_EUNSUPPORTED) /* raw: nothing to check; it is clean */
        clean = true;
    run(img, flags, clean); /* closes img */
    if (failure[0] && !known_bug_explains(data, size))
        fuzz_fail(__FILE__, __LINE__, "expectation", "%s", failure);
    memfile_clear();
    return 0;
}
