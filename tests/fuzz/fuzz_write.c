/*
 * fuzz_write: the input is an image file, opened read-write on an in-memory
 * copy (growable by 32 MiB). A writable open repairs a dirty lazy-refcount
 * image by itself; an image marked corrupt is opened with VD_OPEN_REPAIR.
 * Then:
 *   - vd_check with VD_CHECK_REPAIR_ALL (even-sized inputs; odd-sized ones
 *     are only checked, so that writes also meet unrepaired images); if the
 *     repair reports nothing left, a fresh check must agree
 *   - writes (partial and whole clusters, and a compressed one), write_zeroes and a discard, each
 *     checked by reading back windows around them: written bytes read back,
 *     zeroed bytes read as zeroes, bytes around them are unchanged (a discard
 *     may read either way); on an image checked corrupt and not repaired the
 *     windows are only read (see expect_data)
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

enum { NOPS = 7, MARGIN = 4096, GROWTH = 32 << 20 };

enum op_kind { OP_WRITE, OP_WRITE_COMPRESSED, OP_ZERO, OP_DISCARD };

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

/* What write op number index puts at pos: compressed writes get compressible data. */
static uint8_t written_byte(const struct op *op, unsigned index, uint64_t pos)
{
    return op->kind == OP_WRITE_COMPRESSED ? (uint8_t)(pos / 512 * 7 + index) : pattern(index, pos);
}

/* The first broken expectation of this input (reported at the end). */
static char failure[512];

/*
 * Whether written data must read back: the image checked clean, or was
 * repaired (whatever the repair could not fix). An image whose check found
 * corruptions that were left alone (odd-sized inputs) is only written to and
 * read, without comparing: a cluster it references with refcount 0 is free to
 * the allocator, so a write may land on it, in QEMU as here; what qemu-img
 * check means by "further writes to the image may corrupt it".
 */
static bool expect_data;

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
    for (uint64_t i = 0; rc == 0 && expect_data && i < w->len; i++) {
        if (w->known[i] && got[i] != w->expect[i]) {
            EXPECT(false, "%s: byte %llu reads 0x%02x, expected 0x%02x", when,
                   (unsigned long long)(w->off + i), got[i], w->expect[i]);
            break;
        }
    }
    free(got);
    return rc == 0;
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
            w->expect[i] = op->kind == OP_ZERO ? 0 : written_byte(op, index, pos);
            w->known[i] = 1;
        }
    }
}

static void plan(uint64_t size, uint64_t cluster, struct op *ops)
{
    uint64_t z = (size / 4) & ~0xfffull;
    struct op all[NOPS] = {
        { OP_WRITE, 519, 3000, 0 },                                    /* partial clusters */
        { OP_WRITE, (size / 2) & ~0xffffull, 65536, 0 },               /* whole clusters */
        { OP_WRITE, size > 4096 ? size - 4096 : 0, 4096, 0 },          /* the end */
        { OP_ZERO, z, 8192, 0 },
        { OP_DISCARD, (size / 4 * 3) & ~0xffffull, 65536, 0 },
        { OP_WRITE, z + 1000, 2000, 0 },                               /* into zeroed clusters */
        { OP_WRITE_COMPRESSED, (size / 8) & ~(cluster - 1), cluster, 0 }, /* a whole cluster */
    };
    for (unsigned i = 0; i < NOPS; i++) {
        ops[i] = all[i];
        if (ops[i].off >= size)
            ops[i].off = ops[i].len = 0;
        else if (ops[i].len > size - ops[i].off)
            ops[i].len = size - ops[i].off;
    }
}

/* old_end: the clusters of the file before writing */
static void run(vd_image *img, uint32_t open_flags, bool clean, uint64_t old_end)
{
    uint64_t size;
    FUZZ_ASSERT(vd_get_size(img, &size) == 0, "vd_get_size");
    if (size == 0 || size > INT64_MAX) {
        vd_close(img);
        return;
    }
    vd_info info = VD_INFO_INIT;
    FUZZ_ASSERT(vd_get_info(img, &info) == 0, "vd_get_info");
    struct op ops[NOPS];
    struct window w[NOPS] = { 0 };
    plan(size, info.cluster_size ? info.cluster_size : 65536, ops);
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
        if (op->kind == OP_WRITE || op->kind == OP_WRITE_COMPRESSED) {
            uint8_t *buf = malloc((size_t)op->len);
            FUZZ_ASSERT(buf, "out of memory");
            for (uint64_t k = 0; k < op->len; k++)
                buf[k] = written_byte(op, i, op->off + k);
            op->rc = vd_write(img, op->off, buf, (size_t)op->len,
                              op->kind == OP_WRITE_COMPRESSED ? VD_WRITE_COMPRESSED : 0);
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
        /* an image that opened only for a repair, and was not repaired, still needs one */
        bool still_corrupt = rc == VD_ECORRUPT && (open_flags & VD_OPEN_REPAIR) && !expect_data;
        EXPECT(rc == 0 || still_corrupt, "the image no longer opens after writing and closing it: %s",
               vd_errmsg());
        if (rc < 0)
            goto out;
        uint64_t size2;
        FUZZ_ASSERT(vd_get_size(again, &size2) == 0 && size2 == size, "size changed");
        for (unsigned i = 0; i < NOPS; i++)
            if (w[i].expect && !verify(again, &w[i], "after reopening"))
                break;
        vd_check_result res = VD_CHECK_RESULT_INIT;
        struct fuzz_benign benign = { .old_end = old_end };
        rc = vd_check(again, 0, &res, fuzz_count_benign, &benign);
        fuzz_check_rc(rc, "vd_check");
        if (clean && rc == 0)
            EXPECT(res.corruptions <= benign.corruptions && res.leaks <= benign.leaks,
                   "an image that checked clean has %llu corruptions and %llu leaks after "
                   "writing", (unsigned long long)(res.corruptions - benign.corruptions),
                   (unsigned long long)(res.leaks - benign.leaks));
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
    memfile_add_copy(MEMFILE_IMAGE, data, size, size + GROWTH);
    vd_image *img = NULL;
    uint32_t flags;
    if (fuzz_open_rw(&img, FUZZ_OPEN_FORMAT, &flags) < 0) {
        memfile_clear();
        return 0;
    }
    /* even-sized inputs are repaired first; odd-sized ones are written as they are (the
     * writable open still repairs a dirty image) */
    bool repair = size % 2 == 0;
    fuzz_log("opened with flags 0x%x", flags);
    bool clean = fuzz_check_clean(img, repair);
    expect_data = clean || repair;
    vd_info info = VD_INFO_INIT;
    FUZZ_ASSERT(vd_get_info(img, &info) == 0, "vd_get_info");
    uint64_t cs = info.cluster_size;
    run(img, flags, clean, cs ? size / cs + (size % cs != 0) : 0); /* closes img */
    if (failure[0])
        fuzz_fail(__FILE__, __LINE__, "expectation", "%s", failure);
    memfile_clear();
    return 0;
}
