/*
 * Crash consistency: run a seeded random workload through the public API with
 * the crash layer installed, then, for (nearly) every write the library
 * issued, build the images a power cut there could leave and check them:
 *
 *   - it opens read-write (a lazy-refcount image is repaired on open);
 *   - vd_check finds no corruption (leaks are fine, and repairing them with
 *     VD_CHECK_REPAIR_LEAKS leaves the image clean);
 *   - a sample also passes `qemu-img check` (exit 0 or 3);
 *   - the virtual size is the one of the last completed flush or one an
 *     operation after it set (for raw, anything in between);
 *   - every byte reads as it did at the last completed vd_flush, unless an
 *     operation issued after that flush covered it; then it reads as before
 *     or as one of those operations left it (never anything else);
 *   - the internal snapshots are those of the last completed flush, give or
 *     take the ones created or deleted after it, and each reads exactly as
 *     the guest disk read when it was taken.
 */
#include "crashio.h"
#include "crashutil.h"

#include "core/internal.h"
#include "formats/qcow2/qcow2.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#define MAX_SNAPS 64
#define MAX_LIVE_SNAPS 4
#define MAX_REPORTS 6
#define N_KNOWN 1
#define MB (1024 * 1024ull)

enum op_kind {
    OP_WRITE, OP_ZERO, OP_ZERO_UNMAP, OP_DISCARD, OP_FLUSH, OP_RESIZE,
    OP_SNAP_CREATE, OP_SNAP_DELETE, OP_SNAP_APPLY, OP_CLOSE, OP_WRITE_FUA, OP_AMEND,
    OP_WRITE_COMPRESSED,
};

static const char *const op_names[] = {
    "write", "write_zeroes", "write_zeroes(unmap)", "discard", "flush", "resize",
    "snapshot_create", "snapshot_delete", "snapshot_apply", "close", "write(FUA)", "amend",
};

struct op {
    enum op_kind kind;
    uint64_t off, len;      /* the guest range it may change */
    uint64_t seed;          /* WRITE: pattern seed */
    uint8_t *after;         /* DISCARD: what the range read as right after */
    int snap;               /* SNAP_*: snapshot index */
    uint64_t start_w, end_w;/* crash_write_count() before and after */
    uint64_t size_after;
    uint64_t snaps_after;   /* bit i: snapshot i exists */
};

struct snap {
    char name[16];
    uint8_t *content;
    uint64_t size;
};

struct variant {
    const char *name;
    const char *format;
    const char *options;
    uint64_t size, max_size;
    bool lazy, snapshots;
    bool backing;           /* an overlay over a raw backing file full of data */
    uint64_t backing_size;  /* its size if not the overlay's (larger: growing must not reveal it) */
    uint64_t cache_bytes;   /* vd_open_opts.cache_bytes for the workload (0: default) */
    bool recrash;           /* also crash while recovering from crashes (see recrash()) */
    bool amend;             /* vd_amend between the guest ops: compat both ways, lazy refcounts */
    bool compress;          /* some whole-cluster writes are compressed (VD_WRITE_COMPRESSED) */
    unsigned nops;
    unsigned points;        /* crash points to test per workload (at scale 1) */
};

static bool is_v2(const struct variant *v)
{
    return v->options && strstr(v->options, "compat=0.10");
}

struct run {
    const struct variant *v;
    uint64_t seed;
    uint64_t cs;            /* cluster size (512 for raw) */
    struct op *ops;
    size_t nops, cap;
    struct snap snaps[MAX_SNAPS];
    int nsnaps;
    uint64_t writes;        /* crash_write_count() at the end */
    uint8_t *initial;       /* the guest content before the workload (max_size bytes) */
    const char *base_path;  /* the backing file, if the variant has one */
};

/* Ops after which everything written before is durable. */
static bool is_flush(const struct op *op)
{
    return op->kind == OP_FLUSH || op->kind == OP_CLOSE || op->kind == OP_WRITE_FUA;
}

/* ------------------------------------------------------------- the model */

/* What a compressed write puts at guest byte b: runs of 64 equal bytes, which compress. */
static uint8_t compressible_byte(uint64_t seed, uint64_t b)
{
    return vt_pattern_byte(seed, b / 64);
}

static void model_apply(const struct run *r, uint8_t *model, uint64_t *size, const struct op *op)
{
    switch (op->kind) {
    case OP_WRITE:
    case OP_WRITE_FUA:
        vt_pattern_fill(model + op->off, (size_t)op->len, op->seed, op->off);
        break;
    case OP_WRITE_COMPRESSED:
        for (uint64_t b = op->off; b < op->off + op->len; b++)
            model[b] = compressible_byte(op->seed, b);
        break;
    case OP_ZERO:
    case OP_ZERO_UNMAP:
        memset(model + op->off, 0, (size_t)op->len);
        break;
    case OP_DISCARD:
        memcpy(model + op->off, op->after, (size_t)op->len);
        break;
    case OP_RESIZE:
        *size = op->off + op->len;
        break;
    case OP_SNAP_APPLY: {
        const struct snap *s = &r->snaps[op->snap];
        memset(model, 0, (size_t)r->v->max_size);
        memcpy(model, s->content, (size_t)s->size);
        *size = s->size;
        break;
    }
    default:
        break;
    }
}

/* What op leaves at guest byte b (which it covers). */
static uint8_t op_value(const struct run *r, const struct op *op, uint64_t b)
{
    switch (op->kind) {
    case OP_WRITE:
    case OP_WRITE_FUA:
        return vt_pattern_byte(op->seed, b);
    case OP_WRITE_COMPRESSED:
        return compressible_byte(op->seed, b);
    case OP_DISCARD:
        return op->after[b - op->off];
    case OP_SNAP_APPLY: {
        const struct snap *s = &r->snaps[op->snap];
        return b < s->size ? s->content[b] : 0;
    }
    default:
        return 0;
    }
}

static bool op_covers(const struct op *op, uint64_t b)
{
    switch (op->kind) {
    case OP_WRITE: case OP_WRITE_FUA: case OP_ZERO: case OP_ZERO_UNMAP: case OP_DISCARD:
    case OP_RESIZE: case OP_SNAP_APPLY: case OP_WRITE_COMPRESSED:
        return b >= op->off && b - op->off < op->len;
    default:
        return false;
    }
}

/* ---------------------------------------------------------- the workload */

/* The compat level and lazy refcounts as amend ops change them. */
struct amend_state {
    bool v2, lazy;
};

/*
 * One amend op: a version 2 image goes back to version 3 (maybe with lazy
 * refcounts); a version 3 one toggles lazy refcounts, changes its refcount
 * width (4 bits at least: the snapshot ops need refcounts up to 6) or
 * downgrades (back to 16-bit refcounts in the same amend). A downgrade
 * while a snapshot has another virtual size is refused before anything
 * changes, as qemu-img refuses it.
 */
static void amend_step(vd_image *img, uint64_t *rng, struct amend_state *st, struct op *op)
{
    static const unsigned widths[] = { 4, 8, 16, 32, 64 };
    char options[64];
    unsigned choice = st->v2 ? 0 : 1 + (unsigned)vt_rand_below(rng, 3);
    bool lazy_on = choice == 0 && vt_rand_below(rng, 2);
    unsigned bits = widths[vt_rand_below(rng, sizeof widths / sizeof widths[0])];
    if (choice == 0)
        snprintf(options, sizeof options, "compat=1.1%s", lazy_on ? ",lazy_refcounts=on" : "");
    else if (choice == 1)
        snprintf(options, sizeof options, "lazy_refcounts=%s", st->lazy ? "off" : "on");
    else if (choice == 2)
        snprintf(options, sizeof options, "refcount_bits=%u", bits);
    else
        snprintf(options, sizeof options, "compat=0.10,refcount_bits=16");
    op->kind = OP_AMEND;
    int rc = vd_amend(img, options, 0);
    if (choice == 3 && rc == VD_EUNSUPPORTED) {
        vt_assert_errmsg_has("Internal snapshots prevent downgrade");
        return;
    }
    vt_ok(rc);
    if (choice == 0)
        st->lazy = lazy_on;
    else if (choice == 1)
        st->lazy = !st->lazy;
    else if (choice == 3)
        st->lazy = false;
    st->v2 = choice == 3;
}

static struct op *add_op(struct run *r)
{
    if (r->nops == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 256;
        r->ops = realloc(r->ops, r->cap * sizeof *r->ops);
        ck_assert_ptr_nonnull(r->ops);
    }
    struct op *op = &r->ops[r->nops++];
    memset(op, 0, sizeof *op);
    return op;
}

/* A random guest range inside size, unaligned, often spanning clusters. */
static void pick_range(struct run *r, uint64_t *rng, uint64_t size, uint64_t *off, uint64_t *len)
{
    uint64_t cs = r->cs, unit = cs < 4096 ? 4096 : cs;
    uint64_t n;
    switch (vt_rand_below(rng, 10)) {
    case 0: case 1: /* whole clusters */
        n = cs * (1 + vt_rand_below(rng, 8));
        if (n > size)
            n = size;
        *len = n;
        *off = vt_rand_below(rng, (size - n) / cs + 1) * cs;
        return;
    case 2: /* large */
        n = 1 + vt_rand_below(rng, unit * 12);
        break;
    case 3: /* tiny */
        n = 1 + vt_rand_below(rng, 64);
        break;
    default:
        n = 1 + vt_rand_below(rng, unit * 2);
        break;
    }
    if (n > size)
        n = size;
    *len = n;
    *off = vt_rand_below(rng, size - n + 1);
}

/* Whole clusters written compressed (the last one may end with the image). */
static void compressed_write(struct run *r, uint64_t *rng, vd_image *img, uint64_t size,
                             uint8_t *buf, struct op *op)
{
    uint64_t clusters = (size + r->cs - 1) / r->cs;
    uint64_t first = vt_rand_below(rng, clusters), n = 1 + vt_rand_below(rng, 4);
    n = first + n > clusters ? clusters - first : n;
    op->kind = OP_WRITE_COMPRESSED;
    op->off = first * r->cs;
    op->len = (first + n) * r->cs > size ? size - op->off : n * r->cs;
    op->seed = vt_rand(rng);
    for (uint64_t b = 0; b < op->len; b++)
        buf[b] = compressible_byte(op->seed, op->off + b);
    vt_ok(vd_write(img, op->off, buf, (size_t)op->len, VD_WRITE_COMPRESSED));
}

static int live_snaps(uint64_t mask)
{
    return __builtin_popcountll(mask);
}

/* A random existing snapshot (mask must be non-zero). */
static int pick_snap(uint64_t *rng, uint64_t mask)
{
    int k = (int)vt_rand_below(rng, (uint64_t)live_snaps(mask));
    for (int i = 0; i < MAX_SNAPS; i++)
        if ((mask >> i) & 1 && k-- == 0)
            return i;
    return -1;
}

static void assert_live_model(vd_image *img, const uint8_t *model, uint64_t size, const char *when)
{
    uint64_t got_size;
    uint8_t *got = cu_read_image(img, &got_size);
    ck_assert_msg(got_size == size, "%s: the live image is %" PRIu64 " bytes, the model %" PRIu64,
                  when, got_size, size);
    /* no ck_assert per byte: Check writes to a pipe on every assertion */
    uint64_t b = 0;
    while (b < size && got[b] == model[b])
        b++;
    if (b < size)
        ck_abort_msg("%s: the live image differs from the model at %" PRIu64
                     " (0x%02x, expected 0x%02x)", when, b, got[b], model[b]);
    free(got);
}

/*
 * Run r's workload on the image at path. Unless r->initial is set already
 * (an existing image, whose content it is), create the image first.
 */
static void run_workload(struct run *r, const char *path)
{
    const struct variant *v = r->v;
    uint64_t rng = r->seed;
    if (r->initial) {
        crash_track(path);
        goto open;
    }
    r->initial = calloc(1, (size_t)v->max_size);
    ck_assert_ptr_nonnull(r->initial);
    char options[256];
    snprintf(options, sizeof options, "%s", v->options ? v->options : "");
    if (v->backing) { /* the backing file: a data pattern over its first 3/4 (then a hole) */
        const char *base = r->base_path = vt_path("image.base");
        uint64_t base_size = v->backing_size ? v->backing_size : v->size;
        uint8_t *content = calloc(1, (size_t)base_size);
        ck_assert_ptr_nonnull(content);
        vt_pattern_fill(content, (size_t)(base_size / 4 * 3), r->seed ^ 0xba5e, 0);
        vt_write_file(base, content, (size_t)base_size);
        /* the guest sees the backing file up to its own size; growing shows zeroes */
        memcpy(r->initial, content, (size_t)(base_size < v->size ? base_size : v->size));
        free(content);
        snprintf(options + strlen(options), sizeof options - strlen(options),
                 "%sbacking_file=image.base,backing_fmt=raw", *options ? "," : "");
    }
    vt_ok(vd_create(path, v->format, v->size, *options ? options : NULL, 0));
    crash_track(path);
open:
    crash_install();
    vd_image *img = vt_open_cached(path, v->format, VD_OPEN_RDWR, v->cache_bytes);
    vd_info info = VD_INFO_INIT;
    vt_ok(vd_get_info(img, &info));
    r->cs = info.cluster_size ? info.cluster_size : 512;

    uint8_t *model = malloc((size_t)v->max_size);
    ck_assert_ptr_nonnull(model);
    memcpy(model, r->initial, (size_t)v->max_size);
    uint64_t size = v->size, snaps = 0;
    struct amend_state amended = { is_v2(v), v->options && strstr(v->options, "lazy_refcounts=on") };
    uint8_t *buf = malloc((size_t)v->max_size);
    ck_assert_ptr_nonnull(buf);

    for (unsigned i = 0; i < v->nops; i++) {
        struct op *op = add_op(r);
        unsigned roll = (unsigned)vt_rand_below(&rng, 100);
        op->start_w = crash_write_count();
        if (roll < 45 && v->compress && vt_rand_below(&rng, 3) == 0) {
            compressed_write(r, &rng, img, size, buf, op);
        } else if (roll < 45) {
            op->kind = vt_rand_below(&rng, 12) ? OP_WRITE : OP_WRITE_FUA;
            pick_range(r, &rng, size, &op->off, &op->len);
            op->seed = vt_rand(&rng);
            vt_pattern_fill(buf, (size_t)op->len, op->seed, op->off);
            vt_ok(vd_write(img, op->off, buf, (size_t)op->len,
                           op->kind == OP_WRITE_FUA ? VD_WRITE_FUA : 0));
        } else if (roll < 55) {
            op->kind = roll < 50 ? OP_ZERO : OP_ZERO_UNMAP;
            pick_range(r, &rng, size, &op->off, &op->len);
            vt_ok(vd_write_zeroes(img, op->off, op->len, op->kind == OP_ZERO_UNMAP ? VD_ZERO_MAY_UNMAP : 0));
        } else if (roll < 64) {
            op->kind = OP_DISCARD;
            pick_range(r, &rng, size, &op->off, &op->len);
            vt_ok(vd_discard(img, op->off, op->len, 0));
            op->after = malloc((size_t)op->len);
            ck_assert_ptr_nonnull(op->after);
            vt_ok(vd_read(img, op->off, op->after, (size_t)op->len, 0));
            for (uint64_t b = 0; b < op->len; b++)
                if (op->after[b] != 0 && op->after[b] != model[op->off + b])
                    ck_abort_msg("discard left foreign data at %" PRIu64, op->off + b);
        } else if (roll < 70 && v->amend) {
            amend_step(img, &rng, &amended, op);
        } else if (roll < 78) {
            op->kind = OP_FLUSH;
            vt_ok(vd_flush(img, 0));
        } else if (roll < 82 && size < v->max_size && (!snaps || !amended.v2)) {
            /* (a version 2 image with snapshots is not resized: qemu-img refuses it too) */
            op->kind = OP_RESIZE;
            uint64_t grow = 512 * (1 + vt_rand_below(&rng, (v->max_size - size) / 512));
            op->off = size;
            op->len = grow;
            vt_ok(vd_resize(img, size + grow, 0));
        } else if (roll < 88 && v->snapshots && live_snaps(snaps) < MAX_LIVE_SNAPS &&
                   r->nsnaps < MAX_SNAPS) {
            op->kind = OP_SNAP_CREATE;
            struct snap *s = &r->snaps[r->nsnaps];
            snprintf(s->name, sizeof s->name, "s%d", r->nsnaps);
            s->size = size;
            s->content = malloc((size_t)size);
            ck_assert_ptr_nonnull(s->content);
            memcpy(s->content, model, (size_t)size);
            op->snap = r->nsnaps++;
            vt_ok(vd_snapshot_create(img, s->name, 0));
            snaps |= 1ull << op->snap;
        } else if (roll < 93 && v->snapshots && snaps) {
            op->kind = OP_SNAP_DELETE;
            op->snap = pick_snap(&rng, snaps);
            vt_ok(vd_snapshot_delete(img, r->snaps[op->snap].name, 0));
            snaps &= ~(1ull << op->snap);
        } else if (v->snapshots && snaps) {
            op->kind = OP_SNAP_APPLY;
            op->snap = pick_snap(&rng, snaps);
            uint64_t ssize = r->snaps[op->snap].size;
            op->off = 0;
            op->len = ssize > size ? ssize : size;
            vt_ok(vd_snapshot_apply(img, r->snaps[op->snap].name, 0));
        } else {
            op->kind = OP_FLUSH;
            vt_ok(vd_flush(img, 0));
        }
        model_apply(r, model, &size, op);
        op->end_w = crash_write_count();
        op->size_after = size;
        op->snaps_after = snaps;
        if (getenv("VD_CRASH_TRACE"))
            fprintf(stderr, "op %zu: %s off=%" PRIu64 " len=%" PRIu64 " snap=%d writes [%" PRIu64 ", %" PRIu64
                    ") size %" PRIu64 "\n", r->nops - 1, op_names[op->kind], op->off, op->len, op->snap,
                    op->start_w, op->end_w, size);
        if (is_flush(op))
            assert_live_model(img, model, size, "after a flush");
    }
    struct op *close_op = add_op(r);
    close_op->kind = OP_CLOSE;
    close_op->start_w = crash_write_count();
    vt_close(img);
    close_op->end_w = crash_write_count();
    close_op->size_after = size;
    close_op->snaps_after = snaps;
    crash_uninstall();
    r->writes = crash_write_count();
    free(model);
    free(buf);
}

/* -------------------------------------------------------------- checking */

struct verifier {
    struct run *r;
    long flush;             /* index of the last completed flush op, -1 for the start */
    uint8_t *model;         /* the model as of that flush */
    uint8_t *all;           /* scratch: the model with every pending op applied */
    uint64_t size, snaps;
    size_t applied;         /* ops [0, applied) are in model */
    unsigned failures, images, qemu_checks;
    uint64_t leaky;         /* images that had leaks */
    unsigned known[N_KNOWN];/* images that met a known problem (enum cu_known bit k) */
    const char *crash_path;
};

static void verifier_init(struct verifier *vf, struct run *r, const char *crash_path)
{
    memset(vf, 0, sizeof *vf);
    vf->r = r;
    vf->flush = -1;
    vf->model = malloc((size_t)r->v->max_size);
    vf->all = malloc((size_t)r->v->max_size);
    ck_assert(vf->model && vf->all);
    memcpy(vf->model, r->initial, (size_t)r->v->max_size);
    vf->size = r->v->size;
    vf->crash_path = crash_path;
}

/* Move the model to the last flush that completed before point. */
static void advance_to(struct verifier *vf, uint64_t point)
{
    struct run *r = vf->r;
    long last = vf->flush;
    for (size_t i = (size_t)(vf->flush + 1); i < r->nops; i++)
        if (is_flush(&r->ops[i]) && r->ops[i].end_w < point)
            last = (long)i;
    for (; vf->applied <= (size_t)last && last >= 0; vf->applied++)
        model_apply(r, vf->model, &vf->size, &r->ops[vf->applied]);
    if (last >= 0) {
        vf->snaps = r->ops[last].snaps_after;
        vf->size = r->ops[last].size_after;
    }
    vf->flush = last;
}

/* Ops that may have left a trace at point: issued after the flush and before the crash. */
static void pending_ops(const struct verifier *vf, uint64_t point, size_t *first, size_t *end)
{
    *first = (size_t)(vf->flush + 1);
    size_t e = *first;
    while (e < vf->r->nops && vf->r->ops[e].start_w < point)
        e++;
    *end = e;
}

/*
 * Where to keep a crash image: DIR/PREFIX-VARIANT-wSEED-pPOINT-sSEED/image,
 * with a copy of the backing file beside it as the image names it.
 */
static void keep_path(const struct verifier *vf, const char *prefix, uint64_t point, uint64_t seed,
                      char *path, size_t len)
{
    const struct run *r = vf->r;
    char dir[400];
    snprintf(dir, sizeof dir, "%s/%s-%s-w%" PRIu64 "-p%" PRIu64 "-s%" PRIu64, cu_keep_dir(), prefix,
             r->v->name, r->seed, point, seed);
    mkdir(dir, 0755);
    snprintf(path, len, "%s/image", dir);
    if (r->v->backing) {
        char base[512];
        snprintf(base, sizeof base, "%s/image.base", dir);
        cu_copy_file(r->base_path, base);
    }
}

static void report(struct verifier *vf, uint64_t point, uint64_t seed, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void report(struct verifier *vf, uint64_t point, uint64_t seed, const char *fmt, ...)
{
    vf->failures++;
    if (vf->failures > MAX_REPORTS)
        return;
    struct run *r = vf->r;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char keep[512];
    keep_path(vf, "vdcrash", point, seed, keep, sizeof keep);
    crash_materialize(point, seed, keep); /* deterministic: the image as the crash left it */
    fprintf(stderr, "CRASH FAILURE [%s workload seed %" PRIu64 ", crash point %" PRIu64 " of %" PRIu64
            ", materialize seed %" PRIu64 "]: %s\n  image kept as %s\n", r->v->name, r->seed, point,
            r->writes, seed, msg, keep);
    fprintf(stderr, "  last completed flush: op %ld\n", vf->flush);
    size_t first, end;
    pending_ops(vf, point, &first, &end);
    for (size_t i = first; i < end; i++) {
        const struct op *op = &r->ops[i];
        fprintf(stderr, "  pending op %zu: %s off=%" PRIu64 " len=%" PRIu64 " snap=%d writes [%" PRIu64
                ", %" PRIu64 ")\n", i, op_names[op->kind], op->off, op->len, op->snap, op->start_w, op->end_w);
    }
    uint64_t from = point > 12 ? point - 12 : 0;
    for (uint64_t w = from; w < point && w < r->writes; w++) {
        char d[128];
        crash_describe(w, d, sizeof d);
        fprintf(stderr, "    %s\n", d);
    }
}

static const char *const known_names[N_KNOWN] = {
    "benign OFLAG_COPIED mismatches right after the crash",
};

/* The first time a workload meets a tolerated known problem: say so (VD_CRASH_STRICT=1 fails on it). */
static void note_known(struct verifier *vf, uint64_t point, uint64_t seed, unsigned k)
{
    struct run *r = vf->r;
    fprintf(stderr, "note [%s workload seed %" PRIu64 ", crash point %" PRIu64 ", seed %" PRIu64
            "]: %s (tolerated; VD_CRASH_STRICT=1 fails on it)\n", r->v->name, r->seed, point, seed,
            known_names[k]);
}

/*
 * The flushed size or one a pending op set. A raw image is as large as its
 * file, and the crash layer may keep a later write past the old end without
 * the unsynced truncate that grew the file first: any size in between goes.
 */
static bool size_allowed(const struct verifier *vf, size_t first, size_t end, uint64_t size)
{
    bool raw = strcmp(vf->r->v->format, "raw") == 0;
    if (size == vf->size)
        return true;
    for (size_t i = first; i < end; i++) {
        const struct op *op = &vf->r->ops[i];
        if ((op->kind == OP_RESIZE || op->kind == OP_SNAP_APPLY) &&
            (op->size_after == size || (raw && size > vf->size && size <= op->size_after)))
            return true;
    }
    return false;
}

/*
 * The first byte of got that neither the flushed model nor a pending op
 * explains, or -1. vf->all is the flushed model with every pending op
 * applied: most bytes match one of the two, and only the others need the
 * (slow) look at each pending op.
 */
static long long unexplained_byte(struct verifier *vf, size_t first, size_t end,
                                  const uint8_t *got, uint64_t size)
{
    const uint64_t chunk = 4096;
    uint64_t all_size = vf->size;
    memcpy(vf->all, vf->model, (size_t)vf->r->v->max_size);
    for (size_t i = first; i < end; i++)
        model_apply(vf->r, vf->all, &all_size, &vf->r->ops[i]);
    for (uint64_t base = 0; base < size; base += chunk) {
        uint64_t n = size - base < chunk ? size - base : chunk;
        if (memcmp(got + base, vf->model + base, (size_t)n) == 0 ||
            memcmp(got + base, vf->all + base, (size_t)n) == 0)
            continue;
        for (uint64_t b = base; b < base + n; b++) {
            if (got[b] == vf->model[b] || got[b] == vf->all[b])
                continue;
            bool ok = false;
            for (size_t i = first; i < end && !ok; i++)
                ok = op_covers(&vf->r->ops[i], b) && op_value(vf->r, &vf->r->ops[i], b) == got[b];
            if (!ok)
                return (long long)b;
        }
    }
    return -1;
}

static bool snapshot_op_pending(const struct verifier *vf, size_t first, size_t end)
{
    for (size_t i = first; i < end; i++)
        if (vf->r->ops[i].kind >= OP_SNAP_CREATE && vf->r->ops[i].kind <= OP_SNAP_APPLY)
            return true;
    return false;
}

/* The snapshot list always; with contents, what each snapshot reads too. */
static void check_snapshots(struct verifier *vf, uint64_t point, uint64_t seed, vd_image **imgp,
                            size_t first, size_t end, bool contents)
{
    struct run *r = vf->r;
    uint64_t may = vf->snaps, must = vf->snaps;
    for (size_t i = first; i < end; i++) {
        if (r->ops[i].kind == OP_SNAP_CREATE)
            may |= 1ull << r->ops[i].snap;
        if (r->ops[i].kind == OP_SNAP_DELETE)
            must &= ~(1ull << r->ops[i].snap);
    }
    size_t count;
    vt_ok(vd_snapshot_count(*imgp, &count));
    uint64_t have = 0;
    for (size_t i = 0; i < count; i++) {
        vd_snapshot_info si = VD_SNAPSHOT_INFO_INIT;
        vt_ok(vd_snapshot_get(*imgp, i, &si));
        int idx = -1;
        if (sscanf(si.name, "s%d", &idx) != 1 || idx < 0 || idx >= r->nsnaps ||
            !((may >> idx) & 1)) {
            report(vf, point, seed, "unexpected snapshot '%s'", si.name);
            continue;
        }
        if ((have >> idx) & 1)
            report(vf, point, seed, "snapshot '%s' is listed twice", si.name);
        have |= 1ull << idx;
        if (si.disk_size != r->snaps[idx].size)
            report(vf, point, seed, "snapshot '%s' has disk size %" PRIu64 ", not %" PRIu64,
                   si.name, si.disk_size, r->snaps[idx].size);
    }
    if (must & ~have)
        report(vf, point, seed, "snapshots lost (mask 0x%" PRIx64 " of 0x%" PRIx64 ")", must & ~have, must);
    vt_close(*imgp);
    *imgp = NULL;
    for (int idx = 0; idx < r->nsnaps && contents; idx++) {
        if (!((have >> idx) & 1))
            continue;
        vd_open_opts o = VD_OPEN_OPTS_INIT;
        o.format = "qcow2";
        o.flags = VD_OPEN_NO_LOCK;
        o.snapshot = r->snaps[idx].name;
        vd_image *snap = NULL;
        int rc = vd_open_ext(&snap, vf->crash_path, &o);
        if (rc < 0) {
            report(vf, point, seed, "snapshot '%s' does not open: %s", r->snaps[idx].name, vd_errmsg());
            continue;
        }
        uint64_t size;
        uint8_t *got = cu_read_image(snap, &size);
        if (size != r->snaps[idx].size || memcmp(got, r->snaps[idx].content, (size_t)size) != 0) {
            uint64_t b = 0;
            while (b < size && b < r->snaps[idx].size && got[b] == r->snaps[idx].content[b])
                b++;
            report(vf, point, seed, "snapshot '%s' reads differently at %" PRIu64 " (0x%02x, expected "
                   "0x%02x)", r->snaps[idx].name, b, b < size ? got[b] : 0,
                   b < r->snaps[idx].size ? r->snaps[idx].content[b] : 0);
        }
        free(got);
        vd_close(snap);
    }
}

/* qemu-img check: exit 0 or 3, or 2 for nothing but benign OFLAG_COPIED mismatches (a known problem). */
static void qemu_check(struct verifier *vf, uint64_t point, uint64_t seed, const char *when)
{
    char why[512];
    bool benign;
    vf->qemu_checks++;
    if (!cu_qemu_check_ok(vf->crash_path, vf->r->cs, &benign, why, sizeof why))
        report(vf, point, seed, "%s%s", why, when);
}

/* Materialize one crash image and check it. */
static uint64_t check_point(struct verifier *vf, uint64_t point, uint64_t seed, bool qemu)
{
    struct run *r = vf->r;
    const struct variant *v = r->v;
    uint64_t npending = crash_materialize(point, seed, vf->crash_path);
    vf->images++;
    const char *dump = getenv("VD_CRASH_DUMP"); /* keep the images of this crash point */
    if (dump && *dump && strtoull(dump, NULL, 0) == point) {
        char keep[512];
        keep_path(vf, "vdcrash-dump", point, seed, keep, sizeof keep);
        cu_copy_file(vf->crash_path, keep);
    }
    bool is_qcow2 = strcmp(v->format, "qcow2") == 0;
    if (qemu && is_qcow2 && !v->lazy)
        qemu_check(vf, point, seed, "");
    char why[1024];
    struct cu_check chk;
    vd_image *img = cu_open_checked(vf->crash_path, v->format, VD_OPEN_NO_FLUSH, why, sizeof why, &chk);
    if (!img) {
        report(vf, point, seed, "%s", why);
        return npending;
    }
    vf->leaky += chk.leaks != 0;
    for (unsigned k = 0; k < N_KNOWN; k++)
        if (chk.known & (1u << k) && vf->known[k]++ == 0)
            note_known(vf, point, seed, k);
    size_t first, end;
    pending_ops(vf, point, &first, &end);
    uint64_t size;
    vt_ok(vd_get_size(img, &size));
    uint8_t *got = malloc(size ? (size_t)size : 1);
    ck_assert_ptr_nonnull(got);
    int rc = size ? vd_read(img, 0, got, (size_t)size, 0) : 0;
    if (rc < 0) {
        report(vf, point, seed, "reading the image fails: %s", vd_errmsg());
    } else if (!size_allowed(vf, first, end, size)) {
        report(vf, point, seed, "virtual size %" PRIu64 " (flushed: %" PRIu64 ")", size, vf->size);
    } else {
        long long bad = unexplained_byte(vf, first, end, got, size);
        if (bad >= 0)
            report(vf, point, seed, "guest byte %lld reads 0x%02x; flushed model has 0x%02x and no "
                   "later operation explains it", bad, got[bad], vf->model[bad]);
    }
    free(got);
    /* snapshot contents cost a read each: every 4th point, and whenever a snapshot op is pending */
    bool contents = point % 4 == 0 || snapshot_op_pending(vf, first, end);
    if (rc == 0 && is_qcow2 && v->snapshots)
        check_snapshots(vf, point, seed, &img, first, end, contents);
    if (img)
        vd_close(img);
    if (qemu && is_qcow2 && v->lazy)
        qemu_check(vf, point, seed, " after the repairing open");
    return npending;
}

/* Check the crash points of a finished workload; returns the failures. */
static unsigned verify_run(struct run *r, const char *crash_path)
{
    const struct variant *v = r->v;
    unsigned scale = cu_scale(), slow = cu_slowdown();
    struct verifier vf;
    verifier_init(&vf, r, crash_path);
    uint64_t npoints = r->writes + 2;
    uint64_t budget = (uint64_t)v->points / slow;
    uint64_t stride = npoints > budget ? (npoints + budget - 1) / budget : 1;
    uint64_t qemu_every = 10 * (uint64_t)slow;
    uint64_t tested = 0;
    for (uint64_t point = 0; point < npoints; point += stride) {
        advance_to(&vf, point);
        for (unsigned s = 0; s < (scale < 4 ? scale : 4); s++) {
            uint64_t seed = point * 7919 + s;
            uint64_t npending = check_point(&vf, point, seed, tested % qemu_every == 0);
            tested++;
            if (npending == 0)
                break;
        }
    }
    /* the end: everything issued and synced must be exactly the final model */
    advance_to(&vf, npoints - 1);
    check_point(&vf, npoints - 1, 0, true);
    fprintf(stderr, "crash %s: workload seed %" PRIu64 ": %zu ops, %" PRIu64 " writes, %" PRIu64
            " syncs; %u crash images checked (stride %" PRIu64 "), %" PRIu64 " with leaks, "
            "%u qemu-img checks, %u failures, %u with benign OFLAG_COPIED mismatches\n", v->name,
            r->seed, r->nops, r->writes, crash_sync_count(), vf.images, stride, vf.leaky,
            vf.qemu_checks, vf.failures, vf.known[0]);
    free(vf.model);
    free(vf.all);
    return vf.failures;
}

static void free_run(struct run *r)
{
    for (size_t i = 0; i < r->nops; i++)
        free(r->ops[i].after);
    free(r->ops);
    for (int i = 0; i < r->nsnaps; i++)
        free(r->snaps[i].content);
    free(r->initial);
}

#define RECRASH_IMAGES 4

/*
 * Crash again while a crash image is being recovered: take a few images the
 * first workload's crashes left (dirty, for lazy refcounts), and run a short
 * second workload on each (its open repairs the image), checking every crash
 * point of that too. Snapshots left by the first workload are not modelled.
 */
static unsigned recrash(struct run *first, const char *crash_path)
{
    const struct variant *v = first->v;
    char *paths[RECRASH_IMAGES];
    for (int k = 0; k < RECRASH_IMAGES; k++) {
        char name[32];
        snprintf(name, sizeof name, "recrash%d", k);
        paths[k] = strdup(vt_path(name));
        uint64_t point = first->writes * (uint64_t)(2 * k + 1) / (2 * RECRASH_IMAGES);
        crash_materialize(point, point * 31 + 1, paths[k]);
    }
    crash_reset();
    unsigned failures = 0;
    for (int k = 0; k < RECRASH_IMAGES; k++) {
        vd_image *img;
        vd_open_opts o = VD_OPEN_OPTS_INIT;
        o.format = "qcow2";
        o.flags = VD_OPEN_NO_LOCK; /* read-only: no repair yet */
        vt_ok(vd_open_ext(&img, paths[k], &o));
        struct variant second = *v;
        second.snapshots = false;
        second.nops = 40;
        second.name = "recrash";
        uint64_t size;
        uint8_t *content = cu_read_image(img, &size);
        vd_close(img);
        second.size = size;
        struct run r = { .v = &second, .seed = first->seed * 1000 + (uint64_t)k,
                         .base_path = first->base_path };
        r.initial = calloc(1, (size_t)second.max_size);
        ck_assert_ptr_nonnull(r.initial);
        memcpy(r.initial, content, (size_t)size);
        free(content);
        run_workload(&r, paths[k]);
        failures += verify_run(&r, crash_path);
        free_run(&r);
        crash_reset();
        free(paths[k]);
    }
    return failures;
}

static void run_variant(const struct variant *v)
{
    uint64_t base_seed = cu_seed(1);
    unsigned workloads = cu_scale();
    unsigned total_failures = 0;
    for (unsigned w = 0; w < workloads; w++) {
        struct run r = { .v = v, .seed = base_seed + w };
        run_workload(&r, vt_path("image"));
        const char *crash_path = vt_path("crash");
        total_failures += verify_run(&r, crash_path);
        if (v->recrash)
            total_failures += recrash(&r, crash_path);
        free_run(&r);
        crash_reset();
    }
    ck_assert_msg(total_failures == 0, "%s: %u crash images failed their checks (details on stderr)",
                  v->name, total_failures);
}

/* ------------------------------------------------------------- repair */

/*
 * A crash at any point of `check -r all` leaves an image no worse than
 * before: it opens read-write, vd_check finds no more problems than before
 * the repair, and the guest disk and its snapshot read as before. When the
 * repair completed, the image is clean, for vd_check and qemu-img check.
 */
struct repair_case {
    const char *name;
    bool rebuild;           /* damage the refcount structures so that they need a rebuild */
};

struct repair_image {
    uint8_t *disk, *snapshot;  /* the guest disk and snapshot "s0" before the repair */
    uint64_t size, problems;   /* the virtual size; what vd_check finds before the repair */
};

static uint8_t *read_view(const char *path, const char *snapshot, uint64_t *size)
{
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.format = "qcow2";
    o.flags = VD_OPEN_NO_LOCK;
    o.snapshot = snapshot;
    vd_image *img;
    vt_ok(vd_open_ext(&img, path, &o));
    uint8_t *content = cu_read_image(img, size);
    vd_close(img);
    return content;
}

static void prepare_damaged(const struct repair_case *rc, const char *path, struct repair_image *before)
{
    vt_ok(vd_create(path, "qcow2", 2 * MB, "cluster_size=4096", 0));
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    for (uint64_t i = 0; i < 6; i++)
        vt_image_write_pattern(img, i * 300 * 1024 + 777, 20 * 1024, 40 + i);
    vt_ok(vd_snapshot_create(img, "s0", 0));
    vt_image_write_pattern(img, 4096, 64 * 1024, 50); /* copies of shared clusters */
    cu_leak_clusters(img, 5);
    vt_close(img);
    if (rc->rebuild)
        cu_drop_first_refblock(path);
    img = vt_open(path, "qcow2", VD_OPEN_NO_LOCK);
    vd_check_result res = VD_CHECK_RESULT_INIT;
    vt_ok(vd_check(img, 0, &res, NULL, NULL));
    vd_close(img);
    before->problems = cu_check_problems(&res);
    ck_assert_uint_ne(before->problems, 0);
    before->disk = read_view(path, NULL, &before->size);
    uint64_t snap_size;
    before->snapshot = read_view(path, "s0", &snap_size);
    ck_assert_uint_eq(snap_size, before->size);
}

/*
 * One crash image of the run just tracked, at crash point (last: the point
 * past every write): the failures examine found, reported on stderr.
 */
typedef uint64_t (*crash_examine_fn)(void *ctx, const char *crash_path, uint64_t point, uint64_t seed,
                                     bool last);

/*
 * Examine the crash images of the run just tracked: at each crash point
 * (every write, and two past them) up to seeds images, each with other
 * pending writes applied (one where none was pending), until MAX_REPORTS
 * failures. Returns the failures; *images counts the images examined.
 */
static uint64_t examine_crash_images(const char *crash_path, uint64_t seeds, crash_examine_fn examine,
                                     void *ctx, uint64_t *images)
{
    uint64_t npoints = crash_write_count() + 2, failures = 0;
    *images = 0;
    for (uint64_t point = 0; point < npoints && failures < MAX_REPORTS; point++) {
        for (uint64_t seed = 0; seed < seeds; seed++, (*images)++) {
            uint64_t pending = crash_materialize(point, point * 7919 + seed, crash_path);
            failures += examine(ctx, crash_path, point, seed, point == npoints - 1);
            if (!pending)
                break;
        }
    }
    return failures;
}

/* qemu-img check of one crash image: 0, or 1 with why on stderr after "label CRASH FAILURE". */
static uint64_t qemu_check_failures(const char *label, const char *crash_path, uint64_t point)
{
    char why[512] = "";
    bool benign;
    if (cu_qemu_check_ok(crash_path, 4096, &benign, why, sizeof why))
        return 0;
    fprintf(stderr, "%s CRASH FAILURE [crash point %" PRIu64 "]: %s\n", label, point, why);
    return 1;
}

/* One crash image: the failures found (reported on stderr). */
static unsigned check_repair_point(const struct repair_case *rc, const struct repair_image *before,
                                   const char *path, uint64_t point, bool complete)
{
    char why[512] = "";
    vd_image *img = NULL;
    vd_check_result res = VD_CHECK_RESULT_INIT;
    int err = vd_open(&img, path, "qcow2", VD_OPEN_RDWR | VD_OPEN_NO_FLUSH);
    if (err == 0)
        err = vd_check(img, 0, &res, NULL, NULL);
    vd_close(img);
    uint64_t problems = cu_check_problems(&res), size;
    if (err < 0)
        snprintf(why, sizeof why, "open or check fails: %s: %s", vd_errname(err), vd_errmsg());
    else if (problems > (complete ? 0 : before->problems))
        snprintf(why, sizeof why, "vd_check finds corruptions=%llu leaks=%llu check_errors=%llu (before "
                 "the repair: %llu problems)", (unsigned long long)res.corruptions,
                 (unsigned long long)res.leaks, (unsigned long long)res.check_errors,
                 (unsigned long long)before->problems);
    if (!*why) {
        uint8_t *disk = read_view(path, NULL, &size), *snapshot = read_view(path, "s0", &size);
        if (size != before->size || memcmp(disk, before->disk, (size_t)size) != 0)
            snprintf(why, sizeof why, "the guest disk does not read as before the repair");
        else if (memcmp(snapshot, before->snapshot, (size_t)size) != 0)
            snprintf(why, sizeof why, "snapshot s0 does not read as before the repair");
        free(disk);
        free(snapshot);
    }
    bool benign;
    if (!*why && complete && !cu_qemu_check_ok(path, 4096, &benign, why, sizeof why))
        strcat(why, " (qemu-img check)");
    if (!*why)
        return 0;
    char keep[512];
    snprintf(keep, sizeof keep, "%s/vdcrash-%s-p%" PRIu64, cu_keep_dir(), rc->name, point);
    cu_copy_file(path, keep);
    fprintf(stderr, "REPAIR CRASH FAILURE [%s, crash point %" PRIu64 ", kept as %s]: %s\n", rc->name,
            point, keep, why);
    return 1;
}

struct repair_sweep {
    const struct repair_case *rc;
    const struct repair_image *before;
};

static uint64_t examine_repair(void *ctx, const char *crash_path, uint64_t point, uint64_t seed,
                               bool last)
{
    const struct repair_sweep *r = ctx;
    (void)seed;
    return check_repair_point(r->rc, r->before, crash_path, point, last);
}

static const struct repair_case repair_cases[] = {
    { "qcow2-repair-leaks", false },
    { "qcow2-repair-rebuild", true },
};

START_TEST(test_crash_repair)
{
    const struct repair_case *rc = &repair_cases[_i];
    const char *path = vt_path("image"), *crash_path = vt_path("crash");
    struct repair_image before;
    prepare_damaged(rc, path, &before);
    crash_track(path);
    crash_install();
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    vd_check_result res = VD_CHECK_RESULT_INIT;
    vt_ok(vd_check(img, VD_CHECK_REPAIR_ALL, &res, NULL, NULL));
    ck_assert_uint_eq(cu_check_problems(&res), 0);
    vt_close(img);
    crash_uninstall();
    struct repair_sweep sweep = { rc, &before };
    uint64_t images;
    uint64_t failures = examine_crash_images(crash_path, 4 * cu_scale(), examine_repair, &sweep, &images);
    fprintf(stderr, "crash %s: %" PRIu64 " writes, %" PRIu64 " syncs; %" PRIu64
            " crash images checked, %" PRIu64 " failures\n", rc->name, crash_write_count(),
            crash_sync_count(), images, failures);
    crash_reset();
    free(before.disk);
    free(before.snapshot);
    ck_assert_msg(failures == 0, "%s: crash images of the repair failed their checks (details on stderr)",
                  rc->name);
}
END_TEST

/* ---------------------------------------------- apply with wrong COPIED */

/*
 * Set OFLAG_COPIED on every data cluster entry of the L2 tables of snapshot
 * "s0": meaningless in a snapshot's own tables, and QEMU writes it there
 * (its compat downgrade expands zero clusters into such tables with the
 * flag). Applying the snapshot must not rely on the flag being clear.
 */
static void set_copied_in_snapshot(const char *path)
{
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_NO_LOCK);
    struct qcow2 *q = qcow2_of(img);
    ck_assert_uint_eq(q->nb_snapshots, 1);
    uint64_t l1_offset = q->snapshots[0].l1_offset, cs = q->cluster_size;
    uint32_t l1_size = q->snapshots[0].l1_size;
    vd_close(img);
    uint64_t *table = malloc((size_t)cs);
    ck_assert_ptr_nonnull(table);
    unsigned flagged = 0;
    for (uint32_t i = 0; i < l1_size; i++) {
        uint8_t entry[8];
        vt_pread_file(path, l1_offset + i * 8ull, entry, sizeof entry);
        uint64_t l2 = vd_be64(entry) & QCOW2_OFFSET_MASK;
        if (!l2)
            continue;
        vt_pread_file(path, l2, table, (size_t)cs);
        for (uint64_t j = 0; j < cs / 8; j++) {
            uint64_t word = vd_be64(&table[j]);
            if ((word & QCOW2_OFFSET_MASK) && !(word & QCOW2_OFLAG_COMPRESSED) && !(word & QCOW2_OFLAG_COPIED)) {
                vd_put_be64(&table[j], word | QCOW2_OFLAG_COPIED);
                flagged++;
            }
        }
        vt_pwrite_file(path, l2, table, (size_t)cs);
    }
    free(table);
    ck_assert_uint_gt(flagged, 0);
}

static uint64_t examine_apply(void *ctx, const char *crash_path, uint64_t point, uint64_t seed,
                              bool last)
{
    (void)ctx, (void)seed, (void)last;
    return qemu_check_failures("APPLY", crash_path, point);
}

/*
 * Snapshot "s0" of a 2 MiB image whose snapshot-only L2 tables carry COPIED
 * on clusters the active state shares: a crash anywhere in applying it must
 * never leave an active entry with COPIED on a cluster with two references
 * (the next write would change the snapshot's data in place).
 */
START_TEST(test_crash_apply_wrong_copied)
{
    const char *path = vt_path("image"), *crash_path = vt_path("crash");
    vt_ok(vd_create(path, "qcow2", 2 * MB, "cluster_size=4096", 0));
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 0, 2 * MB, 60);
    vt_ok(vd_snapshot_create(img, "s0", 0));
    /* one cluster of each L2 table rewritten: the tables are copied, the other clusters shared */
    vt_image_write_pattern(img, 0, 4096, 61);
    vt_image_write_pattern(img, MB, 4096, 62);
    vt_close(img);
    set_copied_in_snapshot(path);
    uint64_t size;
    uint8_t *snapshot = read_view(path, "s0", &size);
    crash_track(path);
    crash_install();
    img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    vt_ok(vd_snapshot_apply(img, "s0", 0));
    vt_close(img);
    crash_uninstall();
    uint64_t images;
    uint64_t failures = examine_crash_images(crash_path, 2 * cu_scale(), examine_apply, NULL, &images);
    fprintf(stderr, "crash qcow2-apply-copied: %" PRIu64 " writes; %" PRIu64 " crash images checked, %"
            PRIu64 " failures\n", crash_write_count(), images, failures);
    crash_reset();
    /* applied: the disk reads as the snapshot, and a write leaves the snapshot as it was */
    img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    vt_assert_image_equals(img, snapshot, size);
    vt_image_write_pattern(img, 4096, 64 * 1024, 63);
    vt_close(img);
    uint8_t *after = read_view(path, "s0", &size);
    ck_assert_msg(memcmp(after, snapshot, (size_t)size) == 0, "a write after the apply changed snapshot s0");
    bool benign;
    char why[512] = "";
    ck_assert_msg(cu_qemu_check_ok(path, 4096, &benign, why, sizeof why) && !benign, "%s", why);
    free(after);
    free(snapshot);
    ck_assert_msg(failures == 0, "crash images of the apply failed qemu-img check (details on stderr)");
}
END_TEST

/* ------------------------------------------- dirty bitmaps across a crash */

#define BITMAP_GRANULE (64 * 1024)

struct granules {
    bool *dirty;
    uint64_t count;
};

static int note_dirty(void *ctx, uint64_t offset, uint64_t length, int dirty)
{
    struct granules *g = ctx;
    for (uint64_t at = offset; dirty && at < offset + length; at += BITMAP_GRANULE)
        if (at / BITMAP_GRANULE < g->count)
            g->dirty[at / BITMAP_GRANULE] = true;
    return 0;
}

struct session_sweep {
    uint64_t size;
    const uint8_t *before; /* the disk before the session */
    struct granules *g;
    uint64_t trusted;      /* images in which b0 was stored (not in use) */
};

static uint64_t examine_session(void *ctx, const char *crash_path, uint64_t point, uint64_t seed,
                                bool last)
{
    struct session_sweep *sw = ctx;
    struct granules *g = sw->g;
    (void)last;
    uint64_t failures = qemu_check_failures("BITMAP", crash_path, point), got_size;
    vd_image *c = vt_open(crash_path, "qcow2", VD_OPEN_NO_LOCK);
    vd_bitmap_info b = VD_BITMAP_INFO_INIT;
    size_t n = 0;
    vt_ok(vd_bitmap_count(c, &n));
    bool found = false;
    for (size_t i = 0; i < n && !found; i++)
        found = vd_bitmap_get(c, i, &b) == 0 && strcmp(b.name, "b0") == 0;
    if (!found) {
        fprintf(stderr, "BITMAP CRASH FAILURE [crash point %" PRIu64 "]: bitmap b0 is gone\n", point);
        failures++;
    } else if (!(b.flags & VD_BITMAP_IN_USE)) {
        sw->trusted++;
        memset(g->dirty, 0, (size_t)g->count * sizeof(bool));
        vt_ok(vd_bitmap_extents(c, "b0", 0, sw->size, note_dirty, g, 0));
        uint8_t *after = cu_read_image(c, &got_size);
        for (uint64_t k = 0; k < g->count; k++) {
            if (g->dirty[k] || memcmp(after + k * BITMAP_GRANULE, sw->before + k * BITMAP_GRANULE,
                                      BITMAP_GRANULE) == 0)
                continue;
            fprintf(stderr, "BITMAP CRASH FAILURE [crash point %" PRIu64 ", seed %" PRIu64
                    "]: b0 is not in use, yet granule %" PRIu64 " changed and is clean\n",
                    point, seed, k);
            failures++;
            break;
        }
        free(after);
    }
    vd_close(c);
    return failures;
}

/*
 * The promise of a persistent bitmap to incremental backup: after a crash,
 * a bitmap that does not say "in use" marks every granule whose guest data
 * changed since it was stored. One that says so may be stale (backup then
 * copies everything); it must never look valid and miss a change, whatever
 * subset of the session's writes reached the disk. qemu-img check must find
 * no corruption (leaks are benign), and the bitmap is never lost.
 */
START_TEST(test_crash_bitmap_session)
{
    const char *path = vt_path("image"), *crash_path = vt_path("crash");
    const uint64_t size = 2 * MB;
    vt_ok(vd_create(path, "qcow2", size, "cluster_size=4096", 0));
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 0, 512 * 1024, 70); /* allocated before b0: clean in it */
    vt_ok(vd_bitmap_add(img, "b0", BITMAP_GRANULE, 0));
    vt_image_write_pattern(img, 0, 4096, 74);
    vt_close(img);
    uint64_t got_size;
    img = vt_open(path, "qcow2", VD_OPEN_NO_LOCK);
    uint8_t *before = cu_read_image(img, &got_size);
    vt_close(img);

    crash_track(path);
    crash_install();
    img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 320 * 1024, 8192, 71);      /* in place: visible at once */
    vt_image_write_pattern(img, 1 * MB, 4096, 72);          /* allocating */
    vt_ok(vd_flush(img, 0));
    vt_ok(vd_bitmap_add(img, "b1", 0, 0));
    vt_ok(vd_write_zeroes(img, 128 * 1024, 64 * 1024, VD_ZERO_MAY_UNMAP));
    vt_image_write_pattern(img, size - 4096, 4096, 73);
    vt_close(img);                                          /* stores the bitmaps */
    crash_uninstall();

    struct granules g = { calloc(size / BITMAP_GRANULE, sizeof(bool)), size / BITMAP_GRANULE };
    ck_assert_ptr_nonnull(g.dirty);
    struct session_sweep sweep = { size, before, &g, 0 };
    uint64_t images;
    uint64_t failures = examine_crash_images(crash_path, 4 * cu_scale(), examine_session, &sweep, &images);
    uint64_t trusted = sweep.trusted;
    fprintf(stderr, "crash qcow2-bitmap-session: %" PRIu64 " writes; %" PRIu64 " crash images checked (%"
            PRIu64 " with b0 trusted), %" PRIu64 " failures\n", crash_write_count(), images, trusted,
            failures);
    crash_reset();
    /* the session completed: b0 is stored, clean of use, and marks exactly what changed */
    img = vt_open(path, "qcow2", VD_OPEN_NO_LOCK);
    vd_bitmap_info b = VD_BITMAP_INFO_INIT;
    vt_ok(vd_bitmap_get(img, 0, &b));
    ck_assert_str_eq(b.name, "b0");
    ck_assert_uint_eq(b.flags & VD_BITMAP_IN_USE, 0);
    memset(g.dirty, 0, (size_t)g.count * sizeof(bool));
    vt_ok(vd_bitmap_extents(img, "b0", 0, size, note_dirty, &g, 0));
    ck_assert(g.dirty[0] && g.dirty[2] && g.dirty[5] && g.dirty[1 * MB / BITMAP_GRANULE]);
    ck_assert(g.dirty[g.count - 1] && !g.dirty[1] && !g.dirty[3] && !g.dirty[4] && !g.dirty[g.count - 2]);
    vt_close(img);
    free(g.dirty);
    free(before);
    ck_assert_msg(failures == 0, "crash images of the bitmap session failed (details on stderr)");
    ck_assert_msg(trusted > 0, "no crash image had b0 stored: the test checked nothing");
}
END_TEST

/* ------------------------------------------------------------- variants */

/* A metadata cache this small (4 tables, the minimum) evicts all the time. */
#define TINY_CACHE 2048


static const struct variant variants[] = {
    { .name = "qcow2-64k", .format = "qcow2", .size = 2 * MB, .max_size = 4 * MB, .snapshots = true,
      .nops = 160, .points = 1500 },
    { .name = "qcow2-4k", .format = "qcow2", .options = "cluster_size=4096", .size = 2 * MB,
      .max_size = 5 * MB, .snapshots = true, .recrash = true, .nops = 160, .points = 1500 },
    { .name = "qcow2-512-rc64", .format = "qcow2", .options = "cluster_size=512,refcount_bits=64",
      .size = 256 * 1024, .max_size = 1 * MB, .snapshots = true, .nops = 140, .points = 1500 },
    { .name = "qcow2-512-tinycache", .format = "qcow2", .options = "cluster_size=512",
      .size = 512 * 1024, .max_size = 1 * MB, .snapshots = true, .cache_bytes = TINY_CACHE,
      .nops = 160, .points = 1500 },
    { .name = "qcow2-lazy-512-tinycache", .format = "qcow2",
      .options = "cluster_size=512,lazy_refcounts=on", .size = 512 * 1024, .max_size = 1 * MB,
      .lazy = true, .snapshots = true, .cache_bytes = TINY_CACHE, .recrash = true, .nops = 160,
      .points = 1500 },
    { .name = "qcow2-extl2-16k", .format = "qcow2", .options = "extended_l2=on,cluster_size=16384",
      .size = 2 * MB, .max_size = 4 * MB, .snapshots = true, .nops = 160, .points = 1500 },
    { .name = "qcow2-lazy-4k", .format = "qcow2", .options = "lazy_refcounts=on,cluster_size=4096",
      .size = 2 * MB, .max_size = 4 * MB, .lazy = true, .snapshots = true, .recrash = true,
      .nops = 160, .points = 1500 },
    { .name = "qcow2-v2-4k", .format = "qcow2", .options = "compat=0.10,cluster_size=4096",
      .size = 2 * MB, .max_size = 4 * MB, .snapshots = true, .nops = 160, .points = 1500 },
    { .name = "qcow2-overlay-4k", .format = "qcow2", .options = "cluster_size=4096", .size = 2 * MB,
      .max_size = 4 * MB, .snapshots = true, .backing = true, .nops = 160, .points = 1500 },
    { .name = "qcow2-overlay-v2-16k", .format = "qcow2", .options = "compat=0.10,cluster_size=16384",
      .size = 2 * MB, .max_size = 4 * MB, .snapshots = true, .backing = true, .nops = 160,
      .points = 1500 },
    { .name = "qcow2-overlay-grow-4k", .format = "qcow2", .options = "cluster_size=4096",
      .size = 1 * MB, .max_size = 4 * MB, .snapshots = true, .backing = true, .backing_size = 4 * MB,
      .nops = 160, .points = 1500 },
    /* amend ops between the guest ops; .lazy: a crash image may be dirty */
    { .name = "qcow2-amend-4k", .format = "qcow2", .options = "lazy_refcounts=on,cluster_size=4096",
      .size = 2 * MB, .max_size = 4 * MB, .lazy = true, .snapshots = true, .amend = true,
      .nops = 160, .points = 1500 },
    { .name = "qcow2-overlay-amend-v2-16k", .format = "qcow2",
      .options = "compat=0.10,cluster_size=16384", .size = 2 * MB, .max_size = 4 * MB,
      .lazy = true, .snapshots = true, .backing = true, .amend = true, .nops = 160,
      .points = 1500 },
    /* compressed whole-cluster writes among the others: byte-packed host clusters */
    { .name = "qcow2-compressed-4k", .format = "qcow2", .options = "cluster_size=4096",
      .size = 2 * MB, .max_size = 4 * MB, .snapshots = true, .compress = true, .nops = 160,
      .points = 1500 },
    { .name = "qcow2-compressed-zstd-512", .format = "qcow2",
      .options = "cluster_size=512,compression_type=zstd", .size = 512 * 1024, .max_size = 1 * MB,
      .snapshots = true, .compress = true, .cache_bytes = TINY_CACHE, .nops = 160, .points = 1500 },
    { .name = "raw", .format = "raw", .size = 2 * MB, .max_size = 4 * MB, .nops = 200, .points = 1500 },
    /* the other writable sparse formats: no resize (max_size = size), no snapshots */
    { .name = "vmdk-sparse", .format = "vmdk", .size = 2 * MB, .max_size = 2 * MB, .nops = 160,
      .points = 1500 },
    { .name = "qcow", .format = "qcow", .size = 2 * MB, .max_size = 2 * MB, .nops = 160,
      .points = 1500 },
};

#define N_VARIANTS (sizeof variants / sizeof variants[0])

START_TEST(test_crash_variant)
{
    run_variant(&variants[_i]);
}
END_TEST

/*
 * The crash layer itself: pwrite A (2 sectors) at 0, sync, pwrite B (2
 * sectors) at 512, through a file opened by libvdisk's opener.
 */
START_TEST(test_crashio_semantics)
{
    const char *path = vt_path("f"), *out = vt_path("out");
    vt_write_file(path, "", 0);
    crash_track(path);
    crash_install();
    vd_file *f;
    vt_ok(vd_file_open(&f, path, VD_FILE_RDWR));
    uint8_t a[1024], b[1024], got[1536];
    memset(a, 'A', sizeof a);
    memset(b, 'B', sizeof b);
    vt_ok(vd_file_pwrite(f, a, sizeof a, 0));
    vt_ok(vd_file_sync(f));
    vt_ok(vd_file_pwrite(f, b, sizeof b, 512));
    vd_file_close(f);
    crash_uninstall();
    ck_assert_uint_eq(crash_write_count(), 2);
    ck_assert_uint_eq(crash_sync_count(), 1);

    ck_assert_uint_eq(crash_materialize(0, 1, out), 0); /* nothing issued yet */
    ck_assert_uint_eq(vt_file_size(out), 0);
    bool empty = false, whole_a = false;
    for (uint64_t seed = 0; seed < 64; seed++) { /* A in flight: any sector of it, or none */
        ck_assert_uint_eq(crash_materialize(1, seed, out), 1);
        uint64_t size = vt_file_size(out);
        empty |= size == 0;
        whole_a |= size == 1024;
    }
    ck_assert(empty && whole_a);
    bool old = false, new = false, torn = false;
    for (uint64_t seed = 0; seed < 64; seed++) { /* A durable; B maybe, maybe one sector only */
        ck_assert_uint_eq(crash_materialize(2, seed, out), 1);
        uint64_t size = vt_file_size(out);
        ck_assert(size == 1024 || size == 1536);
        vt_pread_file(out, 0, got, (size_t)size);
        ck_assert(memcmp(got, a, 512) == 0);
        bool s1 = got[512] == 'B', s2 = size == 1536 && got[1024] == 'B';
        old |= !s1 && !s2;
        new |= s1 && s2;
        torn |= s1 != s2;
    }
    ck_assert(old && new && torn);
    crash_reset();
}
END_TEST

/*
 * Bitmap edits stored across a crash: a session removes a bitmap, merges a
 * disabled one into another, flushes (which stores the changed directory),
 * clears a third, zero-writes and applies an internal snapshot (which marks
 * the enabled bitmaps where its mapping differs), then closes. Whatever
 * subset of the writes reached the disk, after the crash:
 * - keep, dst and wiped (enabled) and src (disabled) are never lost; src is
 *   never in use and keeps exactly its bits; gone is there or not;
 * - an enabled bitmap that is not in use is either as stored before the
 *   session (the guest disk then reads as before it), or marks every
 *   granule that changed since its last clear (since the session began for
 *   keep and dst, since the clear for wiped); dst then also holds src's bits.
 */
#define EDIT_GRANULES (2 * MB / BITMAP_GRANULE)

struct bitmap_state {
    bool present, in_use;
    bool dirty[EDIT_GRANULES];
};

static struct bitmap_state read_bitmap(vd_image *img, const char *name)
{
    struct bitmap_state st = { 0 };
    size_t n = 0;
    vt_ok(vd_bitmap_count(img, &n));
    for (size_t i = 0; i < n && !st.present; i++) {
        vd_bitmap_info b = VD_BITMAP_INFO_INIT;
        st.present = vd_bitmap_get(img, i, &b) == 0 && strcmp(b.name, name) == 0;
        st.in_use = st.present && (b.flags & VD_BITMAP_IN_USE);
    }
    if (st.present && !st.in_use) {
        struct granules g = { st.dirty, EDIT_GRANULES };
        vt_ok(vd_bitmap_extents(img, name, 0, 2 * MB, note_dirty, &g, 0));
    }
    return st;
}

static bool same_granule(const uint8_t *a, const uint8_t *b, uint64_t k)
{
    return memcmp(a + k * BITMAP_GRANULE, b + k * BITMAP_GRANULE, BITMAP_GRANULE) == 0;
}

/* Why an enabled bitmap that is not in use breaks the promise, or NULL. */
static const char *untrusted_because(const struct bitmap_state *st, const struct bitmap_state *stored,
                                     const uint8_t *now, const uint8_t *before, const uint8_t *since,
                                     uint64_t *granule)
{
    bool as_stored = memcmp(st->dirty, stored->dirty, sizeof st->dirty) == 0, unchanged = true;
    for (uint64_t k = 0; k < EDIT_GRANULES; k++)
        unchanged &= same_granule(now, before, k);
    if (as_stored && unchanged)
        return NULL;
    for (uint64_t k = 0; k < EDIT_GRANULES; k++)
        if (!st->dirty[k] && !same_granule(now, since, k)) {
            *granule = k;
            return "granule changed and is clean";
        }
    return NULL;
}

static const char *const edit_enabled[] = { "keep", "gone", "wiped", "dst" };

struct edits_sweep {
    const struct bitmap_state *stored, *src; /* keep and src before the session */
    const uint8_t *before, *mid;             /* the disk before the session, and at its flush */
    uint64_t trusted;                        /* enabled bitmaps found stored (not in use) */
};

static uint64_t examine_edits(void *ctx, const char *crash_path, uint64_t point, uint64_t seed,
                              bool last)
{
    struct edits_sweep *sw = ctx;
    (void)last;
    uint64_t failures = qemu_check_failures("BITMAP EDIT", crash_path, point), got_size;
    vd_image *c = vt_open(crash_path, "qcow2", VD_OPEN_NO_LOCK);
    uint8_t *now = cu_read_image(c, &got_size);
    struct bitmap_state st = read_bitmap(c, "src");
    if (!st.present || st.in_use || memcmp(st.dirty, sw->src->dirty, sizeof st.dirty) != 0) {
        fprintf(stderr, "BITMAP EDIT CRASH FAILURE [crash point %" PRIu64 ", seed %" PRIu64
                "]: the disabled bitmap src is %s\n", point, seed,
                !st.present ? "gone" : st.in_use ? "in use" : "changed");
        failures++;
    }
    for (size_t i = 0; i < 4; i++) {
        st = read_bitmap(c, edit_enabled[i]);
        const char *bad = NULL;
        uint64_t granule = 0;
        if (!st.present && strcmp(edit_enabled[i], "gone") != 0)
            bad = "lost";
        else if (st.present && !st.in_use) {
            sw->trusted++;
            bad = untrusted_because(&st, sw->stored, now, sw->before,
                                    strcmp(edit_enabled[i], "wiped") == 0 ? sw->mid : sw->before,
                                    &granule);
            bool as_stored = memcmp(st.dirty, sw->stored->dirty, sizeof st.dirty) == 0;
            if (!bad && strcmp(edit_enabled[i], "dst") == 0 && !as_stored && !(st.dirty[7] && st.dirty[9]))
                bad = "not stored as before, yet without src's bits";
        }
        if (bad) {
            fprintf(stderr, "BITMAP EDIT CRASH FAILURE [crash point %" PRIu64 ", seed %" PRIu64
                    "]: %s: %s (granule %" PRIu64 ")\n", point, seed, edit_enabled[i], bad, granule);
            failures++;
        }
    }
    free(now);
    vd_close(c);
    return failures;
}

START_TEST(test_crash_bitmap_edits)
{
    const char *path = vt_path("image"), *crash_path = vt_path("crash");
    const uint64_t size = 2 * MB;
    vt_ok(vd_create(path, "qcow2", size, "cluster_size=4096", 0));
    vd_image *img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 0, 512 * 1024, 80);
    vt_ok(vd_snapshot_create(img, "s", 0));
    vt_image_write_pattern(img, 1 * MB, 128 * 1024, 81);    /* the snapshot has zeroes there */
    vt_ok(vd_bitmap_add(img, "src", BITMAP_GRANULE, 0));
    vt_image_write_pattern(img, 7 * BITMAP_GRANULE, 4096, 82);
    vt_image_write_pattern(img, 9 * BITMAP_GRANULE, 4096, 83);
    vt_ok(vd_bitmap_disable(img, "src", 0));
    for (size_t i = 0; i < 4; i++)
        vt_ok(vd_bitmap_add(img, edit_enabled[i], BITMAP_GRANULE, 0));
    vt_image_write_pattern(img, 31 * BITMAP_GRANULE, 4096, 84); /* dirty in all four */
    vt_close(img);
    uint64_t got_size;
    img = vt_open(path, "qcow2", VD_OPEN_NO_LOCK);
    uint8_t *before = cu_read_image(img, &got_size);
    struct bitmap_state stored = read_bitmap(img, "keep"), src = read_bitmap(img, "src");
    vt_close(img);
    ck_assert(stored.dirty[31] && src.dirty[7] && src.dirty[9] && !src.dirty[31]);

    crash_track(path);
    crash_install();
    img = vt_open(path, "qcow2", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 320 * 1024, 8192, 85);      /* in place */
    vt_ok(vd_bitmap_remove(img, "gone", 0));
    vt_ok(vd_bitmap_merge(img, "dst", img, "src", 0));
    vt_ok(vd_flush(img, 0));                                /* stores the changed directory */
    uint8_t *mid = cu_read_image(img, &got_size);
    vt_ok(vd_bitmap_clear(img, "wiped", 0));
    vt_ok(vd_write_zeroes(img, 128 * 1024, 64 * 1024, VD_ZERO_MAY_UNMAP));
    vt_ok(vd_snapshot_apply(img, "s", 0));                  /* marks what it changes */
    vt_image_write_pattern(img, size - 4096, 4096, 86);
    vt_close(img);
    crash_uninstall();

    struct edits_sweep sweep = { &stored, &src, before, mid, 0 };
    uint64_t images;
    uint64_t failures = examine_crash_images(crash_path, 4 * cu_scale(), examine_edits, &sweep, &images);
    uint64_t trusted = sweep.trusted;
    fprintf(stderr, "crash qcow2-bitmap-edits: %" PRIu64 " writes; %" PRIu64 " crash images checked (%"
            PRIu64 " bitmaps trusted), %" PRIu64 " failures\n", crash_write_count(), images, trusted,
            failures);
    crash_reset();
    /* the session completed: every change is stored, nothing is in use */
    img = vt_open(path, "qcow2", VD_OPEN_NO_LOCK);
    uint8_t *after = cu_read_image(img, &got_size);
    struct bitmap_state keep = read_bitmap(img, "keep"), wiped = read_bitmap(img, "wiped"),
                        dst = read_bitmap(img, "dst"), gone = read_bitmap(img, "gone");
    vt_close(img);
    ck_assert(keep.present && !keep.in_use && wiped.present && !wiped.in_use && dst.present &&
              !dst.in_use && !gone.present);
    for (uint64_t k = 0; k < EDIT_GRANULES; k++) {
        ck_assert_msg(keep.dirty[k] || same_granule(after, before, k), "keep misses granule %d", (int)k);
        ck_assert_msg(wiped.dirty[k] || same_granule(after, mid, k), "wiped misses granule %d", (int)k);
    }
    /* the snapshot's revert of the 1 MiB run and granule 7 are marked; granule 20 nobody touched */
    ck_assert(wiped.dirty[16] && wiped.dirty[17] && wiped.dirty[7] && wiped.dirty[31] && !wiped.dirty[20]);
    ck_assert(dst.dirty[7] && dst.dirty[9] && dst.dirty[31] && !dst.dirty[20]);
    free(after);
    free(mid);
    free(before);
    ck_assert_msg(failures == 0, "crash images of the bitmap edits failed (details on stderr)");
    ck_assert_msg(trusted > 0, "no crash image had a bitmap stored: the test checked nothing");
}
END_TEST

/* One test case per variant: meson runs each on its own (CK_RUN_CASE=name). */
static Suite *crash_suite(void)
{
    Suite *s = suite_create("crash");
    tcase_add_test(vt_tcase(s, "crashio"), test_crashio_semantics);
    for (size_t i = 0; i < N_VARIANTS; i++) {
        TCase *tc = vt_tcase(s, variants[i].name);
        tcase_set_timeout(tc, 900);
        tcase_add_loop_test(tc, test_crash_variant, (int)i, (int)i + 1);
    }
    TCase *bitmaps = vt_tcase(s, "qcow2-bitmap-session");
    tcase_set_timeout(bitmaps, 600);
    tcase_add_test(bitmaps, test_crash_bitmap_session);
    TCase *edits = vt_tcase(s, "qcow2-bitmap-edits");
    tcase_set_timeout(edits, 600);
    tcase_add_test(edits, test_crash_bitmap_edits);
    TCase *apply = vt_tcase(s, "qcow2-apply-copied");
    tcase_set_timeout(apply, 600);
    tcase_add_test(apply, test_crash_apply_wrong_copied);
    for (size_t i = 0; i < sizeof repair_cases / sizeof repair_cases[0]; i++) {
        TCase *tc = vt_tcase(s, repair_cases[i].name);
        tcase_set_timeout(tc, 600);
        tcase_add_loop_test(tc, test_crash_repair, (int)i, (int)i + 1);
    }
    return s;
}

int main(void)
{
    return vt_run_suite(crash_suite());
}
