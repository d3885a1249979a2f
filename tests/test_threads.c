/*
 * One image handle shared by several threads: writers on disjoint regions
 * checked against a model (with flushes running beside them), writers and
 * readers on overlapping blocks checked for torn blocks and half-seen writes,
 * and readers verifying known content while a writer rewrites it with the
 * same bytes; and separate handles used at once. Each test runs on raw and on
 * every other writable format listed in formats[]. Workers record their
 * first failure; the main thread asserts (Check asserts belong to one thread).
 * Data races the checks cannot see are TSan's job (scripts/run test).
 */
#include "common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

enum {
    THREADS = 8,
    REGION = 1 << 20,            /* each thread's disjoint region */
    IMAGE_SIZE = THREADS * REGION,
    BLOCK = 4096,                /* unit of the overlapping phase */
    SHARED_BLOCKS = 64,
    MAX_SPAN = 16 * 1024,
};

struct worker {
    int id;
    vd_image *img;
    uint64_t rng;
    char error[512];             /* the first failure, or "" */
    void *state;                 /* phase-specific */
};

static bool worker_failed(const struct worker *w)
{
    return w->error[0] != '\0';
}

__attribute__((format(printf, 2, 3)))
static void worker_fail(struct worker *w, const char *fmt, ...)
{
    if (worker_failed(w))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->error, sizeof w->error, fmt, ap);
    va_end(ap);
}

/* Record a failed libvdisk call; true if rc is an error. */
static bool call_failed(struct worker *w, int rc, const char *what, uint64_t off)
{
    if (rc == 0)
        return false;
    worker_fail(w, "thread %d: %s at %llu: %s (%s)", w->id, what, (unsigned long long)off,
                vd_errname(rc), vd_errmsg());
    return true;
}

/* Run body on THREADS workers sharing img; assert that none failed. */
static void run_workers(vd_image *img, void *(*body)(void *), void *states[THREADS])
{
    struct worker workers[THREADS];
    pthread_t tids[THREADS];
    for (int i = 0; i < THREADS; i++) {
        workers[i] = (struct worker){ .id = i, .img = img, .rng = 1000u + (uint64_t)i,
                                      .state = states ? states[i] : NULL };
        ck_assert_int_eq(pthread_create(&tids[i], NULL, body, &workers[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(tids[i], NULL);
    for (int i = 0; i < THREADS; i++)
        ck_assert_msg(!worker_failed(&workers[i]), "%s", workers[i].error);
}

/* Every test runs on each writable format of this list that the build has. */
static const char *const formats[] = { "raw", "qcow2", "qcow" };
#define N_FORMATS ((int)(sizeof formats / sizeof formats[0]))

/* Is format in this build? If not, say that the test is skipped. */
static bool have_format(const char *format)
{
    for (size_t k = 0; vd_format_name(k); k++)
        if (strcmp(vd_format_name(k), format) == 0)
            return true;
    fprintf(stderr, "note: no %s format in this build; skipped\n", format);
    return false;
}

/* The format of a loop test's iteration, or NULL (with a note) if it is absent. */
static const char *loop_format(int i)
{
    return have_format(formats[i]) ? formats[i] : NULL;
}

static vd_image *open_shared_image(const char *format, uint64_t size)
{
    const char *path = vt_path("shared.img");
    vt_ok(vd_create(path, format, size, NULL, 0));
    return vt_open(path, format, VD_OPEN_RDWR);
}

/* ------------------------------------------------------------ disjoint */

/* Random writes and verifying reads inside the worker's own region. */
static void *disjoint_body(void *arg)
{
    struct worker *w = arg;
    uint8_t *model = w->state; /* this worker's REGION bytes */
    const uint64_t base = (uint64_t)w->id * REGION;
    uint8_t *buf = malloc(MAX_SPAN);
    for (int i = 0; i < 400 && buf && !worker_failed(w); i++) {
        uint64_t len = 1 + vt_rand_below(&w->rng, MAX_SPAN);
        uint64_t rel = vt_rand_below(&w->rng, REGION - len + 1);
        if (vt_rand_below(&w->rng, 10) < 7) {
            uint64_t seed = (uint64_t)w->id * 100000u + (uint64_t)i;
            vt_pattern_fill(model + rel, (size_t)len, seed, base + rel);
            call_failed(w, vd_write(w->img, base + rel, model + rel, (size_t)len, 0), "vd_write",
                        base + rel);
        } else if (!call_failed(w, vd_read(w->img, base + rel, buf, (size_t)len, 0), "vd_read",
                                base + rel) && memcmp(buf, model + rel, (size_t)len) != 0) {
            worker_fail(w, "thread %d: read at %llu differs from what it wrote", w->id,
                        (unsigned long long)(base + rel));
        }
    }
    if (!buf)
        worker_fail(w, "out of memory");
    free(buf);
    return NULL;
}

/*
 * Workers with a model region write and read in it; workers without one
 * (NULL) flush and query the image meanwhile.
 */
static void *write_or_flush_body(void *arg)
{
    struct worker *w = arg;
    if (w->state)
        return disjoint_body(arg);
    vd_info info = VD_INFO_INIT;
    for (int i = 0; i < 30 && !worker_failed(w); i++)
        if (!call_failed(w, vd_flush(w->img, 0), "vd_flush", 0))
            call_failed(w, vd_get_info(w->img, &info), "vd_get_info", 0);
    return NULL;
}

/* Run body on the shared image; check it against the model, then reopened. */
static void run_model_test(const char *format, void *(*body)(void *), bool every_thread_writes)
{
    vd_image *img = open_shared_image(format, IMAGE_SIZE);
    uint8_t *model = calloc(1, IMAGE_SIZE);
    ck_assert_ptr_nonnull(model);
    void *states[THREADS];
    for (int i = 0; i < THREADS; i++)
        states[i] = every_thread_writes || i % 2 == 0 ? model + (size_t)i * REGION : NULL;
    run_workers(img, body, states);
    vt_assert_image_equals(img, model, IMAGE_SIZE);
    vt_close(img);
    img = vt_open(vt_path("shared.img"), format, 0);
    vt_assert_image_equals(img, model, IMAGE_SIZE);
    vt_close(img);
    free(model);
}

START_TEST(disjoint_writers_match_the_model)
{
    const char *format = loop_format(_i);
    if (format)
        run_model_test(format, disjoint_body, true);
}
END_TEST

START_TEST(flushes_run_safely_beside_writes)
{
    const char *format = loop_format(_i);
    if (format)
        run_model_test(format, write_or_flush_body, false);
}
END_TEST

/* ----------------------------------------------------------- overlapping */

/*
 * Every write covers whole blocks. Each block of a write starts with the
 * write's stamp and span and continues with the pattern of seed stamp, so a
 * reader can tell a torn block, and which other blocks the write covered.
 */
struct block_head {
    uint64_t stamp, first, count;
};

static void fill_write(uint8_t *buf, uint64_t stamp, uint64_t first, uint64_t count)
{
    const struct block_head head = { stamp, first, count };
    for (uint64_t b = 0; b < count; b++) {
        uint8_t *block = buf + b * BLOCK;
        memcpy(block, &head, sizeof head);
        vt_pattern_fill(block + sizeof head, BLOCK - sizeof head, stamp,
                        (first + b) * BLOCK + sizeof head);
    }
}

static bool block_is_whole(const uint8_t *block, uint64_t index, struct block_head *head)
{
    memcpy(head, block, sizeof *head);
    if (head->stamp == 0)
        return vt_nonzero_at(block, BLOCK) < 0;
    return head->first <= index && index - head->first < head->count &&
           vt_pattern_mismatch(block + sizeof *head, BLOCK - sizeof *head, head->stamp,
                               index * BLOCK + sizeof *head) < 0;
}

/*
 * Read blocks [first, first+count) and check each is whole. With ordered
 * stamps (one writer, increasing stamps), also check that no write was seen
 * in part: every block a write covered must hold that write or a later one.
 */
static void read_and_check(struct worker *w, uint8_t *buf, uint64_t first, uint64_t count,
                           bool ordered)
{
    struct block_head heads[SHARED_BLOCKS];
    if (call_failed(w, vd_read(w->img, first * BLOCK, buf, (size_t)(count * BLOCK), 0),
                    "vd_read", first * BLOCK))
        return;
    for (uint64_t b = 0; b < count; b++)
        if (!block_is_whole(buf + b * BLOCK, first + b, &heads[b]))
            worker_fail(w, "thread %d: block %llu is torn", w->id, (unsigned long long)(first + b));
    for (uint64_t b = 0; ordered && b < count && !worker_failed(w); b++) {
        const struct block_head *h = &heads[b];
        if (h->stamp == 0)
            continue;
        for (uint64_t i = h->first > first ? h->first - first : 0;
             i < count && first + i < h->first + h->count; i++)
            if (heads[i].stamp < h->stamp)
                worker_fail(w, "thread %d: read at block %llu saw write %llu in part (block %llu "
                            "is older)", w->id, (unsigned long long)first,
                            (unsigned long long)h->stamp, (unsigned long long)(first + i));
    }
}

enum { MAX_WRITE_BLOCKS = 16, MAX_READ_BLOCKS = 16 };

/* A random span of at most max blocks inside the area of blocks [base, base+blocks). */
static void random_span_in(struct worker *w, uint64_t base, uint64_t blocks, uint64_t max,
                           uint64_t *first, uint64_t *count)
{
    *count = 1 + vt_rand_below(&w->rng, max);
    *first = base + vt_rand_below(&w->rng, blocks - *count + 1);
}

/* A random span of at most max blocks inside the shared area. */
static void random_span(struct worker *w, uint64_t max, uint64_t *first, uint64_t *count)
{
    random_span_in(w, 0, SHARED_BLOCKS, max, first, count);
}

/* Each worker logs the stamps it wrote per block. */
struct stamp_log {
    uint64_t stamps[SHARED_BLOCKS][256]; /* 200 writes per worker at most */
    size_t count[SHARED_BLOCKS];
};

static void write_logged(struct worker *w, struct stamp_log *log, uint8_t *buf, uint64_t stamp)
{
    uint64_t first, count;
    random_span(w, MAX_WRITE_BLOCKS, &first, &count);
    fill_write(buf, stamp, first, count);
    for (uint64_t b = first; b < first + count; b++)
        if (log->count[b] < sizeof log->stamps[b] / sizeof log->stamps[b][0])
            log->stamps[b][log->count[b]++] = stamp;
    call_failed(w, vd_write(w->img, first * BLOCK, buf, (size_t)(count * BLOCK), 0), "vd_write",
                first * BLOCK);
}

/* Every worker writes and reads the same blocks. */
static void *overlap_body(void *arg)
{
    struct worker *w = arg;
    uint8_t *buf = malloc(MAX_READ_BLOCKS * BLOCK);
    for (uint64_t i = 1; i <= 200 && buf && !worker_failed(w); i++) {
        if (vt_rand_below(&w->rng, 2) == 0) {
            write_logged(w, w->state, buf, ((uint64_t)w->id + 1) << 32 | i);
        } else {
            uint64_t first, count;
            random_span(w, MAX_READ_BLOCKS, &first, &count);
            read_and_check(w, buf, first, count, false);
        }
    }
    if (!buf)
        worker_fail(w, "out of memory");
    free(buf);
    return NULL;
}

static bool block_was_written(struct stamp_log *logs, uint64_t index)
{
    for (int t = 0; t < THREADS; t++)
        if (logs[t].count[index])
            return true;
    return false;
}

static bool stamp_was_written(struct stamp_log *logs, uint64_t index, uint64_t stamp)
{
    for (int t = 0; t < THREADS; t++)
        for (size_t i = 0; i < logs[t].count[index]; i++)
            if (logs[t].stamps[index][i] == stamp)
                return true;
    return false;
}

START_TEST(overlapping_writers_never_tear_blocks)
{
    const char *format = loop_format(_i);
    if (!format)
        return;
    vd_image *img = open_shared_image(format, SHARED_BLOCKS * BLOCK);
    struct stamp_log *logs = calloc(THREADS, sizeof *logs);
    ck_assert_ptr_nonnull(logs);
    void *states[THREADS];
    for (int i = 0; i < THREADS; i++)
        states[i] = &logs[i];
    run_workers(img, overlap_body, states);

    uint8_t block[BLOCK];
    for (uint64_t b = 0; b < SHARED_BLOCKS; b++) {
        struct block_head head;
        vt_ok(vd_read(img, b * BLOCK, block, BLOCK, 0));
        ck_assert_msg(block_is_whole(block, b, &head), "block %llu is torn at the end",
                      (unsigned long long)b);
        ck_assert_msg(head.stamp == 0 ? !block_was_written(logs, b)
                                      : stamp_was_written(logs, b, head.stamp),
                      "block %llu holds stamp %#llx that nobody wrote there",
                      (unsigned long long)b, (unsigned long long)head.stamp);
    }
    vt_close(img);
    free(logs);
}
END_TEST

/* Worker 0 writes with increasing stamps while the others read. */
static void *one_writer_body(void *arg)
{
    struct worker *w = arg;
    atomic_bool *writer_done = w->state;
    uint8_t *buf = malloc(MAX_READ_BLOCKS * BLOCK);
    if (!buf) {
        worker_fail(w, "out of memory");
    } else if (w->id == 0) {
        struct stamp_log *log = calloc(1, sizeof *log);
        for (uint64_t stamp = 1; stamp <= 200 && log && !worker_failed(w); stamp++)
            write_logged(w, log, buf, stamp);
        free(log);
        atomic_store(writer_done, true);
    } else {
        /* a fixed amount of reading: readers may starve the writer */
        for (int i = 0; i < 150 && !atomic_load(writer_done) && !worker_failed(w); i++) {
            uint64_t first, count;
            random_span(w, MAX_READ_BLOCKS, &first, &count);
            read_and_check(w, buf, first, count, true);
        }
    }
    free(buf);
    return NULL;
}

START_TEST(readers_never_see_part_of_a_write)
{
    const char *format = loop_format(_i);
    if (!format)
        return;
    vd_image *img = open_shared_image(format, SHARED_BLOCKS * BLOCK);
    atomic_bool writer_done = false;
    void *states[THREADS];
    for (int i = 0; i < THREADS; i++)
        states[i] = &writer_done;
    run_workers(img, one_writer_body, states);
    vt_close(img);
}
END_TEST

/* -------------------------------------------------------------- readers */

enum { READ_SEED = 99 };

/* Readers check the pattern; worker 0 rewrites it with identical bytes. */
static void *reader_body(void *arg)
{
    struct worker *w = arg;
    uint8_t *buf = malloc(32 * 1024);
    for (int i = 0; i < 200 && buf && !worker_failed(w); i++) {
        uint64_t len = 1 + vt_rand_below(&w->rng, 32 * 1024);
        uint64_t off = vt_rand_below(&w->rng, IMAGE_SIZE - len + 1);
        if (w->id == 0) {
            vt_pattern_fill(buf, (size_t)len, READ_SEED, off);
            call_failed(w, vd_write(w->img, off, buf, (size_t)len, 0), "vd_write", off);
            continue;
        }
        if (i % 8 == 0) {
            vd_extent e;
            if (!call_failed(w, vd_block_status(w->img, off, len, &e, 0), "vd_block_status", off) &&
                (e.offset != off || e.length == 0 || e.length > len))
                worker_fail(w, "thread %d: bad extent %llu+%llu for %llu+%llu", w->id,
                            (unsigned long long)e.offset, (unsigned long long)e.length,
                            (unsigned long long)off, (unsigned long long)len);
        }
        if (!call_failed(w, vd_read(w->img, off, buf, (size_t)len, 0), "vd_read", off) &&
            vt_pattern_mismatch(buf, (size_t)len, READ_SEED, off) >= 0)
            worker_fail(w, "thread %d: read at %llu+%llu is not the pattern", w->id,
                        (unsigned long long)off, (unsigned long long)len);
    }
    if (!buf)
        worker_fail(w, "out of memory");
    free(buf);
    return NULL;
}

START_TEST(concurrent_readers_see_the_content)
{
    const char *format = loop_format(_i);
    if (!format)
        return;
    vd_image *img = open_shared_image(format, IMAGE_SIZE);
    vt_image_write_pattern(img, 0, IMAGE_SIZE, READ_SEED);
    run_workers(img, reader_body, NULL);
    vt_assert_image_pattern(img, 0, IMAGE_SIZE, READ_SEED);
    vt_close(img);
}
END_TEST

/* ------------------------------------------------------ separate handles */

struct own_image {
    char path[4096];
    const char *format;
};

/* Each worker creates, fills and checks its own image. */
static void *own_handle_body(void *arg)
{
    struct worker *w = arg;
    const struct own_image *own = w->state;
    vd_image *img = NULL;
    if (call_failed(w, vd_create(own->path, own->format, REGION, NULL, 0), "vd_create", 0) ||
        call_failed(w, vd_open(&img, own->path, own->format, VD_OPEN_RDWR), "vd_open", 0))
        return NULL;
    uint8_t *buf = malloc(REGION);
    if (buf) {
        vt_pattern_fill(buf, REGION, (uint64_t)w->id, 0);
        if (!call_failed(w, vd_write(img, 0, buf, REGION, 0), "vd_write", 0) &&
            !call_failed(w, vd_read(img, 0, buf, REGION, 0), "vd_read", 0) &&
            vt_pattern_mismatch(buf, REGION, (uint64_t)w->id, 0) >= 0)
            worker_fail(w, "thread %d: its own image reads back wrong", w->id);
    }
    free(buf);
    call_failed(w, vd_close(img), "vd_close", 0);
    return NULL;
}

START_TEST(separate_handles_are_independent)
{
    const char *format = loop_format(_i);
    if (!format)
        return;
    struct own_image own[THREADS];
    void *states[THREADS];
    for (int i = 0; i < THREADS; i++) {
        char name[32];
        snprintf(name, sizeof name, "own-%d.img", i);
        snprintf(own[i].path, sizeof own[i].path, "%s", vt_path(name));
        own[i].format = format;
        states[i] = &own[i];
    }
    run_workers(NULL, own_handle_body, states);
    for (int i = 0; i < THREADS; i++) {
        vd_image *img = vt_open(own[i].path, format, 0);
        vt_assert_image_pattern(img, 0, REGION, (uint64_t)i);
        vt_close(img);
    }
}
END_TEST

/* ------------------------------------------------------ mixed operations */

/*
 * Every worker mixes reads, writes, write-zeroes (with and without
 * VD_ZERO_MAY_UNMAP), discards and flushes, on blocks of its own and on a
 * shared area, all in whole blocks (writes use fill_write). Each mutation is
 * logged with two tickets from one counter, taken just before the call and
 * just after it returned: the library applied it somewhere in between. So an
 * operation X is certainly overwritten on a block when another one that
 * defines the block (a write or write-zeroes) took its first ticket after X
 * took its last. What a block may finally hold is what any operation on it
 * not certainly overwritten left: a write's stamp, zeroes from write-zeroes,
 * or zeroes or the previous content from a discard (a hint, libvdisk.h). On a
 * worker's own blocks the operations follow each other, so this is exact;
 * on the shared area it is the set of races the library may resolve either
 * way. Reads of own blocks are checked against the model as they happen.
 */
enum {
    OWN_BLOCKS = 32,  /* per worker; the shared area follows the last worker's */
    MIXED_BLOCKS = THREADS * OWN_BLOCKS + SHARED_BLOCKS,
    MAX_OWN_SPAN = 8, /* blocks per operation on the worker's own; shared: MAX_WRITE_BLOCKS */
#ifdef __SANITIZE_THREAD__
    MIXED_OPS = 100,  /* per worker: TSan runs every image about ten times slower */
#else
    MIXED_OPS = 300,  /* per worker */
#endif
};

/* A stamp no worker uses: what a backing file holds before the run. */
#define BACKING_STAMP ((uint64_t)(THREADS + 1) << 32)

struct mixed_op {
    uint64_t stamp;        /* what a write wrote; 0 for zeroes */
    uint64_t first, count; /* blocks */
    uint64_t start, end;   /* tickets from just before the call and just after */
    bool discard;          /* the blocks read as zeroes or as before */
};

/*
 * One worker's mutations, oldest first. ops[0] is the content before the
 * run, with tickets 0: every later operation overwrites it.
 */
struct mixed_log {
    struct mixed_op ops[1 + MIXED_OPS];
    size_t n;
};

struct mixed_worker {
    atomic_uint_least64_t *ticket; /* shared by the workers; starts at 1 */
    struct mixed_log log;
};

static bool op_covers(const struct mixed_op *op, uint64_t block)
{
    return block - op->first < op->count;
}

/* The latest first ticket of an operation that defines block (ignoring discards). */
static uint64_t latest_definition(const struct mixed_log *const logs[], size_t nlogs,
                                  uint64_t block)
{
    uint64_t latest = 0;
    for (size_t t = 0; t < nlogs; t++)
        for (size_t i = 0; i < logs[t]->n; i++) {
            const struct mixed_op *op = &logs[t]->ops[i];
            if (!op->discard && op_covers(op, block) && op->start > latest)
                latest = op->start;
        }
    return latest;
}

/* May block hold stamp (0: zeroes) after the logged operations? */
static bool block_may_hold(const struct mixed_log *const logs[], size_t nlogs, uint64_t block,
                           uint64_t stamp)
{
    uint64_t latest = latest_definition(logs, nlogs, block);
    for (size_t t = 0; t < nlogs; t++)
        for (size_t i = 0; i < logs[t]->n; i++) {
            const struct mixed_op *op = &logs[t]->ops[i];
            bool overwritten = op->end < latest;
            if (op_covers(op, block) && !overwritten &&
                (op->discard ? stamp == 0 : op->stamp == stamp))
                return true;
        }
    return false;
}

static uint64_t block_stamp(const uint8_t *block)
{
    uint64_t stamp;
    memcpy(&stamp, block, sizeof stamp);
    return stamp;
}

enum mixed_kind { MIX_WRITE, MIX_ZERO, MIX_ZERO_UNMAP, MIX_DISCARD };

/* One write in FUA_EVERY flushes what it changed while the others go on. */
#define FUA_EVERY 16

static int mixed_call(struct worker *w, enum mixed_kind kind, uint8_t *buf, uint64_t first,
                      uint64_t count)
{
    switch (kind) {
    case MIX_WRITE:
        return vd_write(w->img, first * BLOCK, buf, (size_t)(count * BLOCK),
                        vt_rand_below(&w->rng, FUA_EVERY) == 0 ? VD_WRITE_FUA : 0);
    case MIX_ZERO:
        return vd_write_zeroes(w->img, first * BLOCK, count * BLOCK, 0);
    case MIX_ZERO_UNMAP:
        return vd_write_zeroes(w->img, first * BLOCK, count * BLOCK, VD_ZERO_MAY_UNMAP);
    case MIX_DISCARD:
        return vd_discard(w->img, first * BLOCK, count * BLOCK, 0);
    }
    return VD_EINVAL;
}

static const char *const mixed_call_names[] = {
    [MIX_WRITE] = "vd_write", [MIX_ZERO] = "vd_write_zeroes",
    [MIX_ZERO_UNMAP] = "vd_write_zeroes(MAY_UNMAP)", [MIX_DISCARD] = "vd_discard",
};

static void mutate_logged(struct worker *w, struct mixed_worker *mw, uint8_t *buf,
                          enum mixed_kind kind, uint64_t first, uint64_t count, uint64_t stamp)
{
    struct mixed_op *op = &mw->log.ops[mw->log.n++];
    *op = (struct mixed_op){ .stamp = kind == MIX_WRITE ? stamp : 0, .first = first,
                             .count = count, .discard = kind == MIX_DISCARD };
    if (kind == MIX_WRITE)
        fill_write(buf, stamp, first, count);
    op->start = atomic_fetch_add(mw->ticket, 1);
    int rc = mixed_call(w, kind, buf, first, count);
    op->end = atomic_fetch_add(mw->ticket, 1);
    call_failed(w, rc, mixed_call_names[kind], first * BLOCK);
}

/* Read whole blocks; on the worker's own blocks they must also match its log. */
static void read_mixed(struct worker *w, const struct mixed_log *own, uint8_t *buf,
                       uint64_t first, uint64_t count)
{
    read_and_check(w, buf, first, count, false);
    for (uint64_t b = 0; own && b < count && !worker_failed(w); b++) {
        uint64_t stamp = block_stamp(buf + b * BLOCK);
        if (!block_may_hold(&own, 1, first + b, stamp))
            worker_fail(w, "thread %d: own block %llu holds stamp %#llx, not what it last wrote",
                        w->id, (unsigned long long)(first + b), (unsigned long long)stamp);
    }
}

static void *mixed_body(void *arg)
{
    struct worker *w = arg;
    struct mixed_worker *mw = w->state;
    uint8_t *buf = malloc(MAX_WRITE_BLOCKS * BLOCK);
    for (uint64_t i = 1; i <= MIXED_OPS && buf && !worker_failed(w); i++) {
        bool own = vt_rand_below(&w->rng, 2) == 0;
        uint64_t first, count;
        if (own)
            random_span_in(w, (uint64_t)w->id * OWN_BLOCKS, OWN_BLOCKS, MAX_OWN_SPAN, &first,
                           &count);
        else
            random_span_in(w, THREADS * OWN_BLOCKS, SHARED_BLOCKS, MAX_WRITE_BLOCKS, &first,
                           &count);
        /* 35% reads, 30% writes, 10% zeroes, 10% zeroes that may unmap, 12% discards, 3% flushes */
        uint64_t dice = vt_rand_below(&w->rng, 100);
        if (dice < 35)
            read_mixed(w, own ? &mw->log : NULL, buf, first, count);
        else if (dice < 65)
            mutate_logged(w, mw, buf, MIX_WRITE, first, count, ((uint64_t)w->id + 1) << 32 | i);
        else if (dice < 75)
            mutate_logged(w, mw, buf, MIX_ZERO, first, count, 0);
        else if (dice < 85)
            mutate_logged(w, mw, buf, MIX_ZERO_UNMAP, first, count, 0);
        else if (dice < 97)
            mutate_logged(w, mw, buf, MIX_DISCARD, first, count, 0);
        else
            call_failed(w, vd_flush(w->img, 0), "vd_flush", 0);
    }
    if (!buf)
        worker_fail(w, "out of memory");
    free(buf);
    return NULL;
}

/* The images of the mixed test. */
struct mixed_image {
    const char *format;
    const char *options;  /* for vd_create */
    bool backing;         /* options name base.img: make it first, full of BACKING_STAMP */
    uint64_t cache_bytes; /* vd_open_opts.cache_bytes */
    bool snapshot;        /* fill the image with BACKING_STAMP and take an internal snapshot:
                             every first write to a cluster copies a shared one */
    bool no_sync;         /* VD_OPEN_NO_FLUSH: flushes and FUA writes write the metadata
                             back as ever, without the fsyncs that would make the
                             suite slow (durability is the crash suite's business) */
};

/*
 * Writes into clusters the image owns run in place beside each other;
 * writes into new or shared clusters allocate beside each other's data I/O.
 * Blocks are 4 KiB: smaller clusters take a write several of them, larger
 * ones take several blocks, so writers of different blocks share clusters
 * (and wait for each other there) and copy-on-write keeps their neighbours.
 */
static const struct mixed_image mixed_images[] = {
    { "raw", NULL, false, 0, false, false },
    { "qcow2", NULL, false, 0, false, false },
    /*
     * 64 L2 entries and 256 refcounts per table: metadata allocates all the
     * time; and 8 of the 40 L2 tables cached: tables are read, written back
     * and evicted all the time (while each thread pins one at most)
     */
    { "qcow2", "cluster_size=512", false, 8 * 512, false, false },
    { "qcow2", "cluster_size=4096", false, 0, false, true },
    /* 4 L2 tables of 4 KiB cached for 3 in use at least: constant eviction at the block size */
    { "qcow2", "cluster_size=4096", false, 4 * 4096, false, true },
    /* the whole image is one cluster: every request waits for the overlapping ones */
    { "qcow2", "cluster_size=2M", false, 0, false, true },
    /* subclusters of 2 KiB: blocks allocate subclusters of clusters others write */
    { "qcow2", "extended_l2=on", false, 0, false, true },
    { "qcow2", "extended_l2=on,cluster_size=16384", false, 0, false, true },
    /* every cluster exists from the start: writes run in place */
    { "qcow2", "preallocation=metadata", false, 0, false, true },
    { "qcow2", "preallocation=full,cluster_size=4096", false, 0, false, true },
    /* partial clusters copy from the backing file; zeroes need zero clusters */
    { "qcow2", "backing_file=base.img,backing_fmt=raw", true, 0, false, false },
    { "qcow2", "backing_file=base.img,backing_fmt=raw,cluster_size=512", true, 8 * 512, false, true },
    { "qcow2", NULL, false, 0, true, true },
    { "qcow2", "cluster_size=4096", false, 0, true, true },
    /* qcow v1: 4 KiB clusters; then 2 of its 4 KiB L2 tables cached (constant eviction) */
    { "qcow", NULL, false, 0, false, false },
    { "qcow", NULL, false, 2 * 4096, false, true },
    /* 512-byte clusters over a backing file: every block write copies from it */
    { "qcow", "backing_file=base.img,backing_fmt=raw", true, 0, false, false },
};
#define N_MIXED_IMAGES ((int)(sizeof mixed_images / sizeof mixed_images[0]))

static void make_backing_file(void)
{
    const char *path = vt_path("base.img");
    vt_create_raw(path, MIXED_BLOCKS * BLOCK);
    uint8_t *blocks = malloc(MIXED_BLOCKS * BLOCK);
    ck_assert_ptr_nonnull(blocks);
    fill_write(blocks, BACKING_STAMP, 0, MIXED_BLOCKS);
    vd_image *img = vt_open(path, "raw", VD_OPEN_RDWR);
    vt_ok(vd_write(img, 0, blocks, MIXED_BLOCKS * BLOCK, 0));
    vt_close(img);
    free(blocks);
}

static vd_image *open_mixed_image(const struct mixed_image *m, const char *path, uint32_t flags)
{
    return vt_open_cached(path, m->format, flags | (m->no_sync ? VD_OPEN_NO_FLUSH : 0),
                          m->cache_bytes);
}

/* Fill the image with BACKING_STAMP blocks and take a snapshot that shares them all. */
static void fill_and_snapshot(const struct mixed_image *m, const char *path)
{
    uint8_t *blocks = malloc(MIXED_BLOCKS * BLOCK);
    ck_assert_ptr_nonnull(blocks);
    fill_write(blocks, BACKING_STAMP, 0, MIXED_BLOCKS);
    vd_image *img = open_mixed_image(m, path, VD_OPEN_RDWR);
    vt_ok(vd_write(img, 0, blocks, MIXED_BLOCKS * BLOCK, 0));
    vt_ok(vd_snapshot_create(img, "before", 0));
    vt_close(img);
    free(blocks);
}

/* QEMU agrees: no corruption, no leak. */
static void assert_qemu_check_clean(const struct mixed_image *m, const char *path)
{
    if (strcmp(m->format, "qcow2") != 0)
        return;
    if (!vt_qemu_img()) {
        fprintf(stderr, "note: no qemu-img; its check of the result is skipped\n");
        return;
    }
    const char *argv[] = { vt_qemu_img(), "check", "-q", "-f", "qcow2", path, NULL };
    ck_assert_msg(vt_run(argv) == 0, "qemu-img check %s (%s) fails", path,
                  m->options ? m->options : "defaults");
}

/* Every block is whole and holds what the logs allow. */
static void assert_mixed_content(vd_image *img, const struct mixed_log *const logs[])
{
    uint8_t block[BLOCK];
    for (uint64_t b = 0; b < MIXED_BLOCKS; b++) {
        struct block_head head;
        vt_ok(vd_read(img, b * BLOCK, block, BLOCK, 0));
        ck_assert_msg(block_is_whole(block, b, &head), "block %llu is torn at the end",
                      (unsigned long long)b);
        ck_assert_msg(block_may_hold(logs, THREADS, b, head.stamp),
                      "block %llu holds stamp %#llx, which no operation left there last",
                      (unsigned long long)b, (unsigned long long)head.stamp);
    }
}

/* qcow2 images must come out of the run without corruption or leaks. */
static void assert_metadata_clean(vd_image *img)
{
    vd_check_result res = VD_CHECK_RESULT_INIT;
    int rc = vd_check(img, 0, &res, NULL, NULL);
    if (rc == VD_EUNSUPPORTED && (strcmp(vd_get_format(img), "raw") == 0 ||
                                  strcmp(vd_get_format(img), "qcow") == 0))
        return; /* raw has no metadata; qcow none that a check could count */
    vt_ok(rc);
    ck_assert_msg(res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0,
                  "check: %llu corruptions, %llu leaks, %llu check errors",
                  (unsigned long long)res.corruptions, (unsigned long long)res.leaks,
                  (unsigned long long)res.check_errors);
}

START_TEST(mixed_operations_match_the_model)
{
    const struct mixed_image *m = &mixed_images[_i];
    if (!have_format(m->format))
        return;
    if (m->backing)
        make_backing_file();
    const char *path = vt_path("shared.img");
    vt_ok(vd_create(path, m->format, MIXED_BLOCKS * BLOCK, m->options, 0));
    if (m->snapshot)
        fill_and_snapshot(m, path);
    vd_image *img = open_mixed_image(m, path, VD_OPEN_RDWR);

    atomic_uint_least64_t ticket = 1;
    struct mixed_worker *mws = calloc(THREADS, sizeof *mws);
    ck_assert_ptr_nonnull(mws);
    void *states[THREADS];
    const struct mixed_log *logs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        mws[i].ticket = &ticket;
        mws[i].log.ops[0] = (struct mixed_op){ .stamp = m->backing || m->snapshot ? BACKING_STAMP : 0,
                                               .count = MIXED_BLOCKS };
        mws[i].log.n = 1;
        states[i] = &mws[i];
        logs[i] = &mws[i].log;
    }
    run_workers(img, mixed_body, states);
    assert_mixed_content(img, logs);
    vt_close(img);

    img = open_mixed_image(m, path, 0);
    assert_mixed_content(img, logs);
    assert_metadata_clean(img);
    vt_close(img);
    assert_qemu_check_clean(m, path);
    free(mws);
}
END_TEST

static Suite *threads_suite(void)
{
    Suite *s = suite_create("threads");
    TCase *tc = vt_tcase(s, "shared handle");
    tcase_add_loop_test(tc, disjoint_writers_match_the_model, 0, N_FORMATS);
    tcase_add_loop_test(tc, flushes_run_safely_beside_writes, 0, N_FORMATS);
    tcase_add_loop_test(tc, overlapping_writers_never_tear_blocks, 0, N_FORMATS);
    tcase_add_loop_test(tc, readers_never_see_part_of_a_write, 0, N_FORMATS);
    tcase_add_loop_test(tc, concurrent_readers_see_the_content, 0, N_FORMATS);
    tcase_add_loop_test(tc, separate_handles_are_independent, 0, N_FORMATS);
    tcase_add_loop_test(tc, mixed_operations_match_the_model, 0, N_MIXED_IMAGES);
    return s;
}

int main(void)
{
    return vt_run_suite(threads_suite());
}
