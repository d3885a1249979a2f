/* The crash-simulating file layer (see crashio.h). */
#include "crashio.h"

#include "core/internal.h"

#include <check.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SECTOR 512u

enum change_kind { CH_WRITE, CH_TRUNCATE, CH_PUNCH, CH_ZERO, CH_ALLOCATE };

struct change {
    enum change_kind kind;
    uint64_t off, len;   /* TRUNCATE: off is the new size */
    size_t data;         /* WRITE: offset of the bytes in the arena */
};

/* A growable byte image of the file. */
struct content {
    uint8_t *p;
    uint64_t size, cap;
};

static struct {
    pthread_mutex_t lock;
    char *path;              /* the tracked file, or NULL */
    struct content base;     /* its content when tracking began */
    struct change *changes;
    uint64_t nchanges, cap_changes;
    uint64_t *syncs;         /* per sync: the number of changes issued before it */
    uint64_t nsyncs, cap_syncs;
    uint8_t *arena;          /* bytes of every recorded pwrite */
    size_t arena_len, arena_cap;
    /* materialize cache: base + changes [0, cache_upto), all applied in order */
    struct content cache;
    uint64_t cache_upto;
    bool cache_valid;
} T = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    ck_assert_msg(q != NULL, "crashio: out of memory (%zu bytes)", n);
    return q;
}

/* ----------------------------------------------------------------- content */

static void content_reserve(struct content *c, uint64_t size)
{
    if (size <= c->cap)
        return;
    uint64_t cap = c->cap ? c->cap : 1 << 20;
    while (cap < size)
        cap *= 2;
    c->p = xrealloc(c->p, (size_t)cap);
    c->cap = cap;
}

static void content_resize(struct content *c, uint64_t size)
{
    content_reserve(c, size);
    if (size > c->size)
        memset(c->p + c->size, 0, (size_t)(size - c->size));
    c->size = size;
}

static void content_copy(struct content *dst, const struct content *src)
{
    content_reserve(dst, src->size);
    if (src->size)
        memcpy(dst->p, src->p, (size_t)src->size);
    dst->size = src->size;
}

static void content_free(struct content *c)
{
    free(c->p);
    *c = (struct content){ 0 };
}

/* Bytes [off, off+len) of src land at off (growing the file as pwrite does). */
static void content_write(struct content *c, uint64_t off, const uint8_t *src, uint64_t len)
{
    if (!len)
        return;
    if (off + len > c->size)
        content_resize(c, off + len);
    memcpy(c->p + off, src, (size_t)len);
}

static void content_zero(struct content *c, uint64_t off, uint64_t len, bool keep_size)
{
    if (!keep_size && off + len > c->size)
        content_resize(c, off + len);
    if (off >= c->size)
        return;
    if (off + len > c->size)
        len = c->size - off;
    memset(c->p + off, 0, (size_t)len);
}

/* Apply one change whole. */
static void apply_change(struct content *c, const struct change *ch)
{
    switch (ch->kind) {
    case CH_WRITE:
        content_write(c, ch->off, T.arena + ch->data, ch->len);
        break;
    case CH_TRUNCATE:
        content_resize(c, ch->off);
        break;
    case CH_PUNCH:
        content_zero(c, ch->off, ch->len, true);
        break;
    case CH_ZERO:
        content_zero(c, ch->off, ch->len, false);
        break;
    case CH_ALLOCATE:
        if (ch->off + ch->len > c->size)
            content_resize(c, ch->off + ch->len);
        break;
    }
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* Apply a write only in some of the sectors it touches. */
static void apply_torn(struct content *c, const struct change *ch, uint64_t *rng)
{
    uint64_t end = ch->off + ch->len;
    unsigned keep_percent = (unsigned)(rng_next(rng) % 101);
    for (uint64_t pos = ch->off; pos < end;) {
        uint64_t piece_end = (pos / SECTOR + 1) * SECTOR;
        if (piece_end > end)
            piece_end = end;
        if (rng_next(rng) % 100 < keep_percent)
            content_write(c, pos, T.arena + ch->data + (pos - ch->off), piece_end - pos);
        pos = piece_end;
    }
}

/* -------------------------------------------------------------- recording */

static void record(enum change_kind kind, uint64_t off, uint64_t len, const void *data)
{
    pthread_mutex_lock(&T.lock);
    if (T.nchanges == T.cap_changes) {
        T.cap_changes = T.cap_changes ? T.cap_changes * 2 : 1024;
        T.changes = xrealloc(T.changes, (size_t)T.cap_changes * sizeof *T.changes);
    }
    struct change ch = { kind, off, len, 0 };
    if (kind == CH_WRITE) {
        if (T.arena_len + len > T.arena_cap) {
            size_t cap = T.arena_cap ? T.arena_cap : 1 << 20;
            while (cap < T.arena_len + len)
                cap *= 2;
            T.arena = xrealloc(T.arena, cap);
            T.arena_cap = cap;
        }
        memcpy(T.arena + T.arena_len, data, (size_t)len);
        ch.data = T.arena_len;
        T.arena_len += (size_t)len;
    }
    T.changes[T.nchanges++] = ch;
    pthread_mutex_unlock(&T.lock);
}

static void record_sync(void)
{
    pthread_mutex_lock(&T.lock);
    if (T.nsyncs == T.cap_syncs) {
        T.cap_syncs = T.cap_syncs ? T.cap_syncs * 2 : 256;
        T.syncs = xrealloc(T.syncs, (size_t)T.cap_syncs * sizeof *T.syncs);
    }
    T.syncs[T.nsyncs++] = T.nchanges;
    pthread_mutex_unlock(&T.lock);
}

/* ------------------------------------------------------------- the layer */

struct crash_file {
    vd_file base;
    vd_file *inner;
};

static vd_file *inner(vd_file *f)
{
    return ((struct crash_file *)f)->inner;
}

static int c_pread(vd_file *f, void *buf, size_t len, uint64_t off)
{
    return vd_file_pread(inner(f), buf, len, off);
}

static int c_pwrite(vd_file *f, const void *buf, size_t len, uint64_t off)
{
    int rc = vd_file_pwrite(inner(f), buf, len, off);
    if (rc == 0 && len)
        record(CH_WRITE, off, len, buf);
    return rc;
}

/* Durability is simulated: the real fdatasync would only make the tests slow. */
static int c_sync(vd_file *f)
{
    record_sync();
    return 0;
}

static int c_get_size(vd_file *f, uint64_t *size)
{
    return vd_file_get_size(inner(f), size);
}

static int c_truncate(vd_file *f, uint64_t size)
{
    int rc = vd_file_truncate(inner(f), size);
    if (rc == 0)
        record(CH_TRUNCATE, size, 0, NULL);
    return rc;
}

static int c_punch_hole(vd_file *f, uint64_t off, uint64_t len)
{
    int rc = inner(f)->ops->punch_hole(inner(f), off, len);
    if (rc == 0)
        record(CH_PUNCH, off, len, NULL);
    return rc;
}

static int c_zero_range(vd_file *f, uint64_t off, uint64_t len)
{
    int rc = inner(f)->ops->zero_range(inner(f), off, len);
    if (rc == 0)
        record(CH_ZERO, off, len, NULL);
    return rc;
}

static int c_allocate(vd_file *f, uint64_t off, uint64_t len)
{
    int rc = vd_file_allocate(inner(f), off, len);
    if (rc == 0)
        record(CH_ALLOCATE, off, len, NULL);
    return rc;
}

static int c_extent(vd_file *f, uint64_t off, bool *is_data, uint64_t *end)
{
    return vd_file_extent(inner(f), off, is_data, end);
}

static int c_allocated_bytes(vd_file *f, uint64_t *bytes)
{
    return vd_file_allocated_bytes(inner(f), bytes);
}

static int c_lock_byte(vd_file *f, uint64_t byte, bool take)
{
    return inner(f)->ops->lock_byte(inner(f), byte, take);
}

static int c_byte_locked_elsewhere(vd_file *f, uint64_t byte, bool *locked)
{
    return inner(f)->ops->byte_locked_elsewhere(inner(f), byte, locked);
}

static int c_stat_id(vd_file *f, struct stat *st)
{
    return vd_file_stat_id(inner(f), st);
}

static void c_close(vd_file *f)
{
    vd_file_close(inner(f));
    free(f->path);
    free(f);
}

static const struct vd_file_ops crash_ops = {
    .pread = c_pread,
    .pwrite = c_pwrite,
    .sync = c_sync,
    .get_size = c_get_size,
    .truncate = c_truncate,
    .punch_hole = c_punch_hole,
    .zero_range = c_zero_range,
    .allocate = c_allocate,
    .extent = c_extent,
    .allocated_bytes = c_allocated_bytes,
    .lock_byte = c_lock_byte,
    .byte_locked_elsewhere = c_byte_locked_elsewhere,
    .stat_id = c_stat_id,
    .close = c_close,
};

static bool tracked(const char *path)
{
    pthread_mutex_lock(&T.lock);
    bool yes = T.path && strcmp(T.path, path) == 0;
    pthread_mutex_unlock(&T.lock);
    return yes;
}

static int crash_open(vd_file **out, const struct vd_file_name *name, uint32_t flags)
{
    const char *path = name->path;
    vd_file *in;
    int rc = vd_file_posix_open(&in, name, flags);
    if (rc < 0 || !tracked(path)) {
        if (rc == 0)
            *out = in;
        return rc;
    }
    struct crash_file *cf = calloc(1, sizeof *cf);
    char *copy = strdup(path);
    if (!cf || !copy) {
        free(cf);
        free(copy);
        vd_file_close(in);
        return vd_err(VD_ENOMEM, "crashio: out of memory");
    }
    cf->base.ops = &crash_ops;
    cf->base.path = copy;
    cf->base.writable = in->writable;
    cf->inner = in;
    *out = &cf->base;
    return 0;
}

void crash_install(void)
{
    vd_file_set_opener(crash_open);
}

void crash_uninstall(void)
{
    vd_file_set_opener(NULL);
}

void crash_reset(void)
{
    pthread_mutex_lock(&T.lock);
    free(T.path);
    free(T.changes);
    free(T.syncs);
    free(T.arena);
    content_free(&T.base);
    content_free(&T.cache);
    struct content zero = { 0 };
    T.path = NULL;
    T.changes = NULL;
    T.syncs = NULL;
    T.arena = NULL;
    T.base = T.cache = zero;
    T.nchanges = T.cap_changes = T.nsyncs = T.cap_syncs = 0;
    T.arena_len = T.arena_cap = 0;
    T.cache_upto = 0;
    T.cache_valid = false;
    pthread_mutex_unlock(&T.lock);
}

void crash_track(const char *path)
{
    crash_reset();
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ck_assert_msg(fd >= 0, "crashio: cannot open %s", path);
    off_t size = lseek(fd, 0, SEEK_END);
    ck_assert(size >= 0);
    content_resize(&T.base, (uint64_t)size);
    for (uint64_t done = 0; done < (uint64_t)size;) {
        ssize_t n = pread(fd, T.base.p + done, (size_t)((uint64_t)size - done), (off_t)done);
        ck_assert_msg(n > 0, "crashio: cannot read %s", path);
        done += (uint64_t)n;
    }
    close(fd);
    pthread_mutex_lock(&T.lock);
    T.path = strdup(path);
    pthread_mutex_unlock(&T.lock);
}

uint64_t crash_write_count(void)
{
    pthread_mutex_lock(&T.lock);
    uint64_t n = T.nchanges;
    pthread_mutex_unlock(&T.lock);
    return n;
}

uint64_t crash_sync_count(void)
{
    pthread_mutex_lock(&T.lock);
    uint64_t n = T.nsyncs;
    pthread_mutex_unlock(&T.lock);
    return n;
}

void crash_describe(uint64_t w, char *buf, size_t len)
{
    static const char *const names[] = { "pwrite", "truncate", "punch", "zero", "allocate" };
    if (w >= T.nchanges) {
        snprintf(buf, len, "(none)");
        return;
    }
    const struct change *ch = &T.changes[w];
    snprintf(buf, len, "#%llu %s off=%llu len=%llu", (unsigned long long)w, names[ch->kind],
             (unsigned long long)ch->off, (unsigned long long)ch->len);
}

/* ------------------------------------------------------------ materialize */

/* Everything before change `durable` is on disk. */
static uint64_t durable_changes(uint64_t point)
{
    uint64_t durable = 0;
    for (uint64_t s = 0; s < T.nsyncs && T.syncs[s] < point; s++)
        durable = T.syncs[s];
    return durable;
}

static void write_out(const struct content *c, const char *out_path)
{
    /*
     * Overwrite in place, then cut to size: truncating to 0 first is slow
     * (ext4's auto_da_alloc flushes such files on close; discard mounts trim).
     */
    int fd = open(out_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    ck_assert_msg(fd >= 0, "crashio: cannot create %s", out_path);
    for (uint64_t done = 0; done < c->size;) {
        ssize_t n = pwrite(fd, c->p + done, (size_t)(c->size - done), (off_t)done);
        ck_assert_msg(n > 0, "crashio: cannot write %s", out_path);
        done += (uint64_t)n;
    }
    ck_assert(ftruncate(fd, (off_t)c->size) == 0);
    close(fd);
}

uint64_t crash_materialize_opts(uint64_t point, uint64_t seed, const struct crash_opts *opts,
                                const char *out_path)
{
    pthread_mutex_lock(&T.lock);
    uint64_t durable = durable_changes(point);
    if (!T.cache_valid || durable < T.cache_upto) {
        content_copy(&T.cache, &T.base);
        T.cache_upto = 0;
        T.cache_valid = true;
    }
    for (; T.cache_upto < durable; T.cache_upto++)
        apply_change(&T.cache, &T.changes[T.cache_upto]);

    uint64_t issued = point < T.nchanges ? point : T.nchanges;
    uint64_t npending = issued > durable ? issued - durable : 0;
    struct content out = { 0 };
    content_copy(&out, &T.cache);
    if (npending) {
        uint64_t rng = seed * UINT64_C(0x2545f4914f6cdd1d) + point;
        /* how much survives varies from crash to crash: none, some, or all */
        static const unsigned keep_choices[] = { 0, 25, 50, 75, 100, 50 };
        unsigned keep = keep_choices[rng_next(&rng) % 6];
        uint64_t *order = xrealloc(NULL, (size_t)npending * sizeof *order);
        uint64_t n = 0;
        for (uint64_t i = durable; i < issued; i++)
            if (rng_next(&rng) % 100 < keep)
                order[n++] = i;
        if (opts->reorder)
            for (uint64_t i = n; i > 1; i--) {
                uint64_t j = rng_next(&rng) % i, t = order[i - 1];
                order[i - 1] = order[j];
                order[j] = t;
            }
        for (uint64_t i = 0; i < n; i++) {
            const struct change *ch = &T.changes[order[i]];
            bool multi_sector = ch->kind == CH_WRITE &&
                                ch->off / SECTOR != (ch->off + ch->len - 1) / SECTOR;
            if (opts->tear && multi_sector && rng_next(&rng) % 3 == 0)
                apply_torn(&out, ch, &rng);
            else
                apply_change(&out, ch);
        }
        free(order);
    }
    pthread_mutex_unlock(&T.lock);
    write_out(&out, out_path);
    content_free(&out);
    return npending;
}

uint64_t crash_materialize(uint64_t point, uint64_t seed, const char *out_path)
{
    struct crash_opts opts = { .tear = true, .reorder = true };
    return crash_materialize_opts(point, seed, &opts, out_path);
}
