/*
 * The copy keeps several chunks in flight, as qemu-img convert does. The
 * source's allocation map is cut into chunks in image order: a data run
 * into pieces of one buffer, a zero run into a single chunk, queued only
 * when the destination must be written there (no sparse detection, a
 * target that may hold data, or an overlay). Zero and unallocated source
 * runs are never read at all.
 *
 * A chunk is prepared in a slot: read, and its blocks sorted (those the
 * destination reads already: all-zero, or for an overlay the same as in
 * its backing image; zeroes; data). Then it is written, by default strictly
 * one chunk at a time and in image order, so that the destination's layout
 * (a qcow2's cluster order) and the error reported never depend on thread
 * timing. Out of order (qemu-img -W), a chunk is written as soon as it is
 * prepared, by as many threads as there are slots.
 *
 * In order, two threads (the caller and one more) share both jobs rather
 * than owning a stage each: a thread writes whenever the next chunk in
 * order is prepared and nobody is writing, and otherwise prepares a new
 * chunk. With a reader stage and a writer stage, a chunk handed over often
 * meant waking a sleeping thread, and on a busy machine a wake-up can take
 * longer than copying the chunk: raw->raw ran at times well below
 * qemu-img's speed. Now the copy goes on as long as either thread runs,
 * and uses both cores when it gets them.
 */
#include "core/internal.h"
#include "convert/copy.h"
#include "codec/codec.h"
#include "cow/engine.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BUFFER_SIZE (2u << 20) /* per read, as qemu-img convert */
#define MAX_SLOTS VD_CONVERT_MAX_PARALLEL
/*
 * In order, one thread writes while the other prepares. Writes are one at
 * a time anyway; a third thread only contends for the locks (measured
 * slower, qcow2 most).
 */
#define ORDERED_THREAD_COUNT 2
#define BUFFER_ALIGN 4096      /* page aligned, ready for O_DIRECT backends */

enum chunk_kind {
    CHUNK_DATA, /* the source has data here: read it */
    CHUNK_ZERO, /* the source reads as zeroes here */
};

struct chunk {
    enum chunk_kind kind;
    uint64_t offset;
    uint64_t length;
    uint64_t turn; /* its place in the write order */
};

enum block_kind {
    BLOCK_SAME, /* the destination reads this already: leave it unallocated */
    BLOCK_ZERO, /* write zeroes over what the destination shows */
    BLOCK_DATA,
};

/* Blocks of one kind, [start, start + length) of a chunk. */
struct run {
    enum block_kind kind;
    size_t start;
    size_t length;
};

#define NOT_COMPRESSED SIZE_MAX

enum slot_state {
    SLOT_FREE,
    SLOT_PREPARING, /* a thread claims a chunk into it and prepares it */
    SLOT_READY,     /* prepared (or failed to be: rc), waiting for its turn */
    SLOT_WRITING,
};

/* Where and why a chunk failed; message is the library's, from the failing thread. */
struct copy_error {
    const char *action;    /* "reading", "writing", ... */
    uint64_t offset;
    char message[512];
};

struct slot {
    enum slot_state state;
    struct chunk chunk;
    unsigned char *buf;       /* the chunk's source data */
    bool buf_filled;          /* read: a raw->raw copy may need no buffer */
    unsigned char *base_buf;  /* what base holds at the chunk, when there is a base */
    struct run *runs;         /* the chunk's blocks, sorted */
    unsigned char *comp;      /* compressing: cluster i of the chunk compressed at i * granule... */
    size_t *comp_len;         /* ...of this length, or NOT_COMPRESSED */
    size_t run_count;
    int rc;                   /* preparing it failed */
    struct copy_error error;  /* recorded by the thread that failed, as vd_errmsg() is its own */
};

/* A walk through the source's allocation map, cut into chunks. */
struct walk {
    uint64_t offset;             /* where the next chunk starts */
    uint64_t extent_end;         /* the end of the extent at offset... */
    uint32_t extent_flags;       /* ...and its VD_EXTENT_* flags */
    uint64_t chunks_cut;
};

struct copy {
    const struct vd_copy_params *params;
    uint64_t base_size;          /* of params->base */
    size_t block;                /* the unit of sorting: compare_block, sparse_block or 0 */
    uint64_t granule;            /* the destination's cluster size (a power of two <= BUFFER_SIZE) */
    uint32_t zero_flags;         /* for vd_write_zeroes() where the source reads as zeroes */
    atomic_bool copy_range;      /* raw->raw, unsorted: data goes by vd_raw_copy_range() */
    unsigned slot_count;

    pthread_mutex_t walk_lock;
    struct walk walk;
    int walk_rc;                 /* the walk failed: no more chunks */
    struct copy_error walk_error;

    /* The slots and the write order. */
    pthread_mutex_t lock;
    pthread_cond_t slot_freed;   /* or the walk ended */
    struct slot slots[MAX_SLOTS];
    bool walk_done;              /* no chunks left to claim */
    bool writing;                /* in order: a thread is writing, the others prepare */
    uint64_t turn;               /* in order: the chunk to write next */

    /* The outcome: the first chunk that failed (in image order, unless out of order). */
    pthread_mutex_t result_lock;
    int rc;
    struct copy_error error;
    atomic_bool failed;          /* set with rc: cut no more chunks */
    uint64_t bytes_done, bytes_total; /* for the progress callback */
};

static void record_error(struct copy_error *err, const char *action, uint64_t offset, int rc)
{
    const char *why = vd_errmsg();
    err->action = action;
    err->offset = offset;
    snprintf(err->message, sizeof err->message, "%s", why && *why ? why : vd_strerror(rc));
}

/* ------------------------------------------------------------------- walk */

/* walk.extent_flags of a run the bitmap filter leaves alone (not a VD_EXTENT_* bit) */
#define EXTENT_CLEAN (1u << 31)

struct bitmap_run {
    uint64_t length;
    bool dirty;
};

static int first_run(void *ctx, uint64_t offset, uint64_t length, int dirty)
{
    (void)offset;
    *(struct bitmap_run *)ctx = (struct bitmap_run){ length, dirty != 0 };
    return 1; /* the first run is all we need */
}

static int next_extent(const struct copy *c, struct walk *w, struct copy_error *err)
{
    const struct vd_copy_params *params = c->params;
    uint64_t length = params->size - w->offset;
    if (params->bitmap) {
        struct bitmap_run run = { 0 };
        int rc = vd_bitmap_extents(params->src, params->bitmap, w->offset, length, first_run, &run, 0);
        if (rc < 0) {
            record_error(err, "reading the dirty bitmap", w->offset, rc);
            return rc;
        }
        if (!run.dirty) {
            w->extent_end = w->offset + run.length;
            w->extent_flags = EXTENT_CLEAN;
            return 0;
        }
        length = run.length;
    }
    vd_extent ext;
    int rc = vd_block_status(params->src, w->offset, length, &ext, 0);
    if (rc < 0) {
        record_error(err, "reading block status", w->offset, rc);
        return rc;
    }
    w->extent_end = w->offset + ext.length;
    w->extent_flags = ext.flags;
    return 0;
}

static uint64_t round_down(uint64_t x, uint64_t unit)
{
    return x & ~(unit - 1);
}

/*
 * Cut the next chunk off the current extent; false for a zero extent the
 * destination reads already. Chunks begin and end on the destination's
 * cluster boundaries (but at the end of the image) and a data chunk never
 * crosses a multiple of BUFFER_SIZE, so no cluster is written by two chunks:
 * a cluster that reads as zeroes is written as one zero cluster, never
 * allocated by a partial write and then filled with zeroes. A data chunk
 * takes the rest of its last cluster from the next extent (reading zeroes
 * is cheap), and a zero extent that ends inside a cluster leaves that
 * cluster to the data chunk after it. A run the bitmap filter leaves alone
 * is skipped likewise, but for its part in a cluster with dirty data.
 */
static bool cut_chunk(const struct copy *c, struct walk *w, struct chunk *chunk)
{
    const uint64_t size = c->params->size, g = c->granule;
    if (w->extent_flags & EXTENT_CLEAN) {
        uint64_t end = w->extent_end == size ? size : round_down(w->extent_end, g);
        if (end > w->offset) {
            w->offset = end;
            return false;
        }
        /* a clean sliver inside a cluster: copied with the dirty data around it */
    }
    bool zero = w->extent_flags & VD_EXTENT_ZERO;
    uint64_t end = w->extent_end == size ? size : round_down(w->extent_end, g);
    if (zero && end <= w->offset)
        zero = false; /* a zero sliver inside one cluster: read it with its neighbours */
    if (!zero) {
        uint64_t cluster_end = round_down(w->extent_end + g - 1, g);
        uint64_t buffer_end = round_down(w->offset, BUFFER_SIZE) + BUFFER_SIZE;
        end = cluster_end < buffer_end ? cluster_end : buffer_end;
        end = end < size ? end : size;
    }
    const struct vd_copy_params *params = c->params;
    if (zero && params->sparse_block && !params->base && params->dst_reads_zero) {
        w->offset = end;
        return false;
    }
    *chunk = (struct chunk){ zero ? CHUNK_ZERO : CHUNK_DATA, w->offset, end - w->offset,
                             w->chunks_cut++ };
    w->offset = end;
    return true;
}

/* The next chunk of a walk; false at the end or when the walk fails (*rc). */
static bool walk_next(const struct copy *c, struct walk *w, struct chunk *chunk, int *rc,
                      struct copy_error *err)
{
    while (*rc == 0 && w->offset < c->params->size) {
        if (w->offset >= w->extent_end) /* a data chunk may end past its extent */
            *rc = next_extent(c, w, err);
        else if (cut_chunk(c, w, chunk))
            return true;
    }
    return false;
}

/* The next chunk in image order; false at the end, when the walk fails or a chunk failed. */
static bool claim_chunk(struct copy *c, struct chunk *chunk)
{
    pthread_mutex_lock(&c->walk_lock);
    bool found = !atomic_load(&c->failed) &&
                 walk_next(c, &c->walk, chunk, &c->walk_rc, &c->walk_error);
    pthread_mutex_unlock(&c->walk_lock);
    return found;
}

/*
 * The bytes of all the chunks the copy will write, so that progress counts
 * work done rather than guest offsets: one walk of the allocation map ahead
 * of the copy, cut exactly as the copy cuts it.
 */
static int count_work(struct copy *c)
{
    struct walk w = { 0 };
    struct chunk chunk;
    int rc = 0;
    while (walk_next(c, &w, &chunk, &rc, &c->walk_error))
        c->bytes_total += chunk.length;
    return rc;
}

/* ------------------------------------------------------------------ prepare */

/* The sparse block at offset: up to the next multiple of block, at most to end. */
static size_t block_length(uint64_t offset, uint64_t end, size_t block)
{
    uint64_t boundary = (offset / block + 1) * block;
    return (size_t)((boundary < end ? boundary : end) - offset);
}

/* The most runs a chunk can have: a partial block at each end, whole ones between. */
static size_t max_runs(size_t block)
{
    return block ? BUFFER_SIZE / block + 2 : 1;
}

/* A block of the source against what the destination reads: base, zeroes, or unknown data. */
static enum block_kind classify(const struct copy *c, const unsigned char *src,
                                const unsigned char *base, size_t len)
{
    if (base && memcmp(src, base, len) == 0)
        return BLOCK_SAME;
    if (!vd_is_zero(src, len))
        return BLOCK_DATA;
    return base || !c->params->dst_reads_zero ? BLOCK_ZERO : BLOCK_SAME;
}

static void add_run(struct slot *s, enum block_kind kind, size_t start, size_t length)
{
    struct run *last = s->run_count ? &s->runs[s->run_count - 1] : NULL;
    if (last && last->kind == kind)
        last->length += length;
    else
        s->runs[s->run_count++] = (struct run){ kind, start, length };
}

/* Sort the chunk's blocks into runs; without a block size, all of it is data. */
static void sort_blocks(const struct copy *c, struct slot *s)
{
    const struct chunk *chunk = &s->chunk;
    size_t len = (size_t)chunk->length;
    const unsigned char *base = c->params->base ? s->base_buf : NULL;
    s->run_count = 0;
    if (!c->block) {
        add_run(s, BLOCK_DATA, 0, len);
        return;
    }
    for (size_t pos = 0; pos < len;) {
        size_t n = block_length(chunk->offset + pos, chunk->offset + len, c->block);
        add_run(s, classify(c, s->buf + pos, base ? base + pos : NULL, n), pos, n);
        pos += n;
    }
}

/* What base holds at [offset, offset + len): zeroes where it reads as zeroes and past its end. */
static int read_base(const struct copy *c, struct slot *s, uint64_t offset, size_t len)
{
    vd_image *base = c->params->base;
    size_t inside = offset >= c->base_size
                    ? 0 : (size_t)(c->base_size - offset < len ? c->base_size - offset : len);
    memset(s->base_buf + inside, 0, len - inside);
    vd_extent ext;
    for (size_t pos = 0; pos < inside; pos += (size_t)ext.length) {
        int rc = vd_block_status(base, offset + pos, inside - pos, &ext, 0);
        if (rc == 0 && (ext.flags & VD_EXTENT_ZERO))
            memset(s->base_buf + pos, 0, (size_t)ext.length);
        else if (rc == 0)
            rc = vd_read(base, offset + pos, s->base_buf + pos, (size_t)ext.length, 0);
        if (rc < 0) {
            record_error(&s->error, "reading the backing file", offset + pos, rc);
            return rc;
        }
    }
    return 0;
}

static int read_source(const struct copy *c, struct slot *s)
{
    int rc = vd_read(c->params->src, s->chunk.offset, s->buf, (size_t)s->chunk.length, 0);
    if (rc < 0)
        record_error(&s->error, "reading", s->chunk.offset, rc);
    s->buf_filled = rc == 0;
    return rc;
}

/*
 * Compress the chunk's data clusters (the last one of the image padded with
 * zeroes: the buffer has room, as a chunk ends within its BUFFER_SIZE span).
 */
static int compress_data(const struct copy *c, struct slot *s)
{
    const size_t g = (size_t)c->granule;
    for (size_t i = 0; i < s->run_count; i++) {
        const struct run *run = &s->runs[i];
        if (run->kind != BLOCK_DATA)
            continue;
        for (size_t pos = run->start; pos < run->start + run->length; pos += g) {
            size_t n = run->start + run->length - pos < g ? run->start + run->length - pos : g;
            memset(s->buf + pos + n, 0, g - n);
            size_t *len = &s->comp_len[pos / g];
            int rc = vd_cow_compress_cluster(c->params->dst, s->buf + pos, s->comp + 2 * pos, 2 * g,
                                             len);
            if (rc == VD_CODEC_NO_GAIN)
                *len = NOT_COMPRESSED;
            else if (rc < 0) {
                record_error(&s->error, "compressing", s->chunk.offset + pos, rc);
                return rc;
            }
        }
    }
    return 0;
}

/*
 * Read a data chunk (and what base holds there) and sort its blocks. A zero
 * chunk needs nothing, and neither does a data chunk that goes from file to
 * file.
 */
static int prepare_chunk(const struct copy *c, struct slot *s)
{
    const struct chunk *chunk = &s->chunk;
    s->buf_filled = false;
    if (chunk->kind == CHUNK_ZERO)
        return 0;
    int rc = atomic_load(&c->copy_range) ? 0 : read_source(c, s);
    if (rc == 0 && c->params->base)
        rc = read_base(c, s, chunk->offset, (size_t)chunk->length);
    if (rc == 0)
        sort_blocks(c, s);
    if (rc == 0 && c->params->compress)
        rc = compress_data(c, s);
    return rc;
}

/* ------------------------------------------------------------------ write */

static int write_zeroes(const struct copy *c, struct slot *s, uint64_t offset, uint64_t len,
                        uint32_t flags)
{
    int rc = vd_write_zeroes(c->params->dst, offset, len, flags);
    if (rc < 0)
        record_error(&s->error, "writing", offset, rc);
    return rc;
}

/* The compressed clusters of [start, start + len) of the slot's chunk, each stored in order. */
static int write_compressed(struct copy *c, struct slot *s, size_t start, size_t len)
{
    const size_t g = (size_t)c->granule;
    int rc = 0;
    for (size_t pos = start; pos < start + len && rc == 0; pos += g) {
        size_t n = start + len - pos < g ? start + len - pos : g;
        size_t comp_len = s->comp_len[pos / g];
        bool compressed = comp_len != NOT_COMPRESSED;
        rc = vd_store_cluster(c->params->dst, s->chunk.offset + pos, compressed ? s->comp + 2 * pos : NULL,
                              comp_len, s->buf + pos, n);
    }
    return rc;
}

/*
 * Data at [start, start + len) of the slot's chunk: raw->raw from file to
 * file where the file system can (a reflink, or a copy in the kernel), else
 * from the buffer, read now if it was left unread.
 */
static int write_data(struct copy *c, struct slot *s, size_t start, size_t len)
{
    const struct vd_copy_params *params = c->params;
    uint64_t offset = s->chunk.offset + start;
    int rc = VD_EUNSUPPORTED;
    if (atomic_load(&c->copy_range)) {
        rc = vd_raw_copy_range(params->dst, params->src, offset, len);
        if (rc == VD_EUNSUPPORTED)
            atomic_store(&c->copy_range, false); /* the file system cannot: stop trying */
    }
    if (rc == VD_EUNSUPPORTED && params->compress) {
        rc = write_compressed(c, s, start, len);
    } else if (rc == VD_EUNSUPPORTED) {
        rc = s->buf_filled ? 0 : read_source(c, s);
        if (rc < 0)
            return rc;
        rc = vd_write(params->dst, offset, s->buf + start, len, 0);
    }
    if (rc < 0)
        record_error(&s->error, "writing", offset, rc);
    return rc;
}

/* Zeroes over each block of [offset, offset + len) where base_buf (base there) is not zero. */
static int zero_base_data(const struct copy *c, struct slot *s, uint64_t offset, size_t len)
{
    uint64_t end = offset + len;
    size_t run = 0, pos = 0; /* [run, pos): blocks to zero */
    while (pos < len) {
        size_t n = block_length(offset + pos, end, c->params->compare_block);
        if (vd_is_zero(s->base_buf + pos, n)) {
            int rc = pos > run ? write_zeroes(c, s, offset + run, pos - run, 0) : 0;
            if (rc < 0)
                return rc;
            run = pos + n;
        }
        pos += n;
    }
    return len > run ? write_zeroes(c, s, offset + run, len - run, 0) : 0;
}

/* A zero run of the source over a base: zeroes wherever base does not read as zeroes. */
static int write_zeroes_over_base(const struct copy *c, struct slot *s)
{
    uint64_t end = s->chunk.offset + s->chunk.length;
    if (end > c->base_size)
        end = c->base_size;
    vd_extent ext;
    for (uint64_t offset = s->chunk.offset; offset < end; offset += ext.length) {
        int rc = vd_block_status(c->params->base, offset, end - offset, &ext, 0);
        if (rc < 0) {
            record_error(&s->error, "reading block status of the backing file", offset, rc);
            return rc;
        }
        if (ext.flags & VD_EXTENT_ZERO)
            continue;
        for (uint64_t done = 0; done < ext.length && rc == 0; done += BUFFER_SIZE) {
            size_t n = (size_t)(ext.length - done < BUFFER_SIZE ? ext.length - done : BUFFER_SIZE);
            rc = read_base(c, s, offset + done, n);
            if (rc == 0)
                rc = zero_base_data(c, s, offset + done, n);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int write_chunk(struct copy *c, struct slot *s)
{
    const struct chunk *chunk = &s->chunk;
    if (chunk->kind == CHUNK_ZERO)
        return c->params->base ? write_zeroes_over_base(c, s)
               : write_zeroes(c, s, chunk->offset, chunk->length, c->zero_flags);
    int rc = 0;
    for (size_t i = 0; i < s->run_count && rc == 0; i++) {
        const struct run *run = &s->runs[i];
        if (run->kind == BLOCK_DATA)
            rc = write_data(c, s, run->start, run->length);
        else if (run->kind == BLOCK_ZERO)
            rc = write_zeroes(c, s, chunk->offset + run->start, run->length,
                              c->params->base ? 0 : c->zero_flags);
    }
    return rc;
}

/* ---------------------------------------------------------------- outcome */

/* With result_lock held: the first failure stands; the others stop cutting chunks. */
static void fail(struct copy *c, int rc, const struct copy_error *err)
{
    if (c->rc == 0) {
        c->rc = rc;
        c->error = *err;
    }
    atomic_store(&c->failed, true);
}

/* With result_lock held: tell the callback; a non-zero answer cancels the copy. */
static void report_progress(struct copy *c, uint64_t offset)
{
    const struct vd_copy_params *params = c->params;
    if (!params->progress || params->progress(params->progress_ctx, c->bytes_done,
                                              c->bytes_total) == 0)
        return;
    struct copy_error err = { .action = "copying", .offset = offset };
    snprintf(err.message, sizeof err.message, "cancelled by the progress callback");
    fail(c, VD_ECANCELED, &err);
}

/*
 * Write a prepared chunk (or report why it could not be prepared), unless
 * the copy failed already, and count it done.
 */
static void finish_chunk(struct copy *c, struct slot *s)
{
    if (atomic_load(&c->failed))
        return;
    int rc = s->rc < 0 ? s->rc : write_chunk(c, s);
    pthread_mutex_lock(&c->result_lock);
    if (rc < 0) {
        fail(c, rc, &s->error);
    } else if (!atomic_load(&c->failed)) {
        c->bytes_done += s->chunk.length;
        report_progress(c, s->chunk.offset + s->chunk.length);
    }
    pthread_mutex_unlock(&c->result_lock);
}

/* ---------------------------------------------------------------- threads */

/* The slot in the given state; when READY, in order, the one whose turn it is. NULL if none. */
static struct slot *find_slot(struct copy *c, enum slot_state state)
{
    bool in_order = state == SLOT_READY && !c->params->out_of_order;
    for (unsigned i = 0; i < c->slot_count; i++) {
        struct slot *s = &c->slots[i];
        if (s->state == state && (!in_order || s->chunk.turn == c->turn))
            return s;
    }
    return NULL;
}

/* With the lock held: write the chunks that are ready, releasing the lock meanwhile. */
static void write_ready_chunks(struct copy *c)
{
    struct slot *s;
    c->writing = true;
    while ((s = find_slot(c, SLOT_READY))) {
        s->state = SLOT_WRITING;
        pthread_mutex_unlock(&c->lock);
        finish_chunk(c, s);
        pthread_mutex_lock(&c->lock);
        s->state = SLOT_FREE;
        c->turn++;
        pthread_cond_signal(&c->slot_freed);
    }
    c->writing = false;
}

/* With the lock held: claim and prepare a chunk in a free slot, releasing the lock meanwhile. */
static void prepare_in_slot(struct copy *c, struct slot *s)
{
    s->state = SLOT_PREPARING;
    pthread_mutex_unlock(&c->lock);
    bool claimed = claim_chunk(c, &s->chunk);
    if (claimed)
        s->rc = prepare_chunk(c, s);
    pthread_mutex_lock(&c->lock);
    s->state = claimed ? SLOT_READY : SLOT_FREE;
    if (!claimed) {
        c->walk_done = true;
        pthread_cond_broadcast(&c->slot_freed); /* the threads waiting for a slot can stop */
    }
}

/*
 * Write when a chunk is ready to be written (in order: the next one, and
 * nobody writes), else prepare one; wait only when all slots are taken.
 * The thread that makes a chunk ready, or the one writing meanwhile, writes
 * it: none is left behind.
 */
static void *copy_thread(void *arg)
{
    struct copy *c = arg;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        struct slot *s;
        if ((c->params->out_of_order || !c->writing) && find_slot(c, SLOT_READY))
            write_ready_chunks(c);
        else if (c->walk_done)
            break;
        else if ((s = find_slot(c, SLOT_FREE)))
            prepare_in_slot(c, s);
        else
            pthread_cond_wait(&c->slot_freed, &c->lock);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* The calling thread copies too; a thread that cannot be started only means less overlap. */
static void run_threads(struct copy *c)
{
    unsigned in_order = ORDERED_THREAD_COUNT;
    if (c->params->compress) { /* compressing is the work: a thread per core */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        in_order = cores > (long)in_order ? (unsigned)cores : in_order;
    }
    unsigned wanted = c->params->out_of_order || c->slot_count < in_order ? c->slot_count
                                                                         : in_order;
    pthread_t threads[MAX_SLOTS];
    unsigned started = 0;
    while (started + 1 < wanted && pthread_create(&threads[started], NULL, copy_thread, c) == 0)
        started++;
    copy_thread(c);
    for (unsigned i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
}

/* ------------------------------------------------------------------ setup */

/* Per slot: a data buffer, with a base one for the base's data, and the runs. */
static int alloc_buffers(struct copy *c)
{
    bool compress = c->params->compress;
    /* compressed clusters get twice their size: a format that compresses every one may grow it */
    size_t per_slot = 1 + (c->params->base != NULL) + 2 * compress, runs_per_slot = max_runs(c->block);
    size_t lens_per_slot = compress ? BUFFER_SIZE / (size_t)c->granule : 0;
    void *mem;
    if (posix_memalign(&mem, BUFFER_ALIGN, c->slot_count * per_slot * BUFFER_SIZE) != 0)
        return vd_err(VD_ENOMEM, "convert: out of memory for the copy buffers");
    struct run *runs = calloc(c->slot_count * runs_per_slot, sizeof *runs);
    size_t *lens = compress ? calloc(c->slot_count * lens_per_slot, sizeof *lens) : NULL;
    if (!runs || (compress && !lens)) {
        free(mem);
        free(runs);
        return vd_err(VD_ENOMEM, "convert: out of memory for the copy buffers");
    }
    for (size_t i = 0; i < c->slot_count; i++) {
        struct slot *s = &c->slots[i];
        s->buf = (unsigned char *)mem + i * per_slot * BUFFER_SIZE;
        s->base_buf = c->params->base ? s->buf + BUFFER_SIZE : NULL;
        s->comp = compress ? s->buf + (per_slot - 2) * BUFFER_SIZE : NULL;
        s->runs = runs + i * runs_per_slot;
        s->comp_len = compress ? lens + i * lens_per_slot : NULL;
    }
    return 0;
}

static void free_buffers(struct copy *c)
{
    free(c->slots[0].buf);
    free(c->slots[0].runs);
    free(c->slots[0].comp_len);
}

static int report_error(int rc, const struct copy_error *err)
{
    if (rc == VD_ECANCELED)
        return vd_err(rc, "convert %s at byte %llu", err->message,
                      (unsigned long long)err->offset);
    return vd_err(rc, "error while %s at byte %llu: %s", err->action,
                  (unsigned long long)err->offset, err->message);
}

/* Walk, threads and buffers set up: count the work, copy, and report. */
static int run_copy(struct copy *c)
{
    int rc = c->params->progress ? count_work(c) : 0;
    if (rc < 0)
        return report_error(rc, &c->walk_error);
    pthread_mutex_lock(&c->result_lock);
    report_progress(c, 0);
    pthread_mutex_unlock(&c->result_lock);
    if (!atomic_load(&c->failed))
        run_threads(c);
    /* a chunk that failed comes before the walk's failure, which ended the chunks */
    if (c->rc < 0)
        return report_error(c->rc, &c->error);
    return c->walk_rc < 0 ? report_error(c->walk_rc, &c->walk_error) : 0;
}

int vd_copy_image(const struct vd_copy_params *params)
{
    struct copy c = {
        .params = params,
        .block = params->base ? params->compare_block : params->sparse_block,
        /* unmapping keeps a sparse destination sparse; -S 0 asks for it allocated */
        .zero_flags = params->sparse_block ? VD_ZERO_MAY_UNMAP : 0,
        .slot_count = params->parallel,
    };
    atomic_init(&c.failed, false);
    /*
     * Raw to raw, data that need not be read to be sorted goes from file to
     * file. Data read to find its zero blocks is written from that buffer:
     * copy_file_range() after the read measured 30% slower on ext4, which
     * has no reflinks and copies in the kernel.
     */
    atomic_init(&c.copy_range, !c.block && vd_raw_can_copy_range(params->dst, params->src));
    vd_info info = VD_INFO_INIT;
    c.granule = vd_get_info(params->dst, &info) == 0 && info.cluster_size ? info.cluster_size : 512;
    if (params->compress) /* whole clusters: the unit of a compressed write */
        c.block = (size_t)c.granule;
    int rc = params->base ? vd_get_size(params->base, &c.base_size) : 0;
    if (rc < 0)
        return rc;
    if ((rc = alloc_buffers(&c)) < 0)
        return rc;
    pthread_mutex_init(&c.walk_lock, NULL);
    pthread_mutex_init(&c.lock, NULL);
    pthread_mutex_init(&c.result_lock, NULL);
    pthread_cond_init(&c.slot_freed, NULL);
    rc = run_copy(&c);
    pthread_cond_destroy(&c.slot_freed);
    pthread_mutex_destroy(&c.result_lock);
    pthread_mutex_destroy(&c.lock);
    pthread_mutex_destroy(&c.walk_lock);
    free_buffers(&c);
    return rc;
}
