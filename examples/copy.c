/*
 * The copy keeps several chunks in flight, as qemu-img convert does. The
 * source's allocation map is cut into chunks in image order: a data run
 * into pieces of one buffer, a zero run into a single chunk, queued only
 * when the destination must be written there (no sparse detection, or an
 * overlay). Zero and unallocated source runs are never read at all.
 *
 * A chunk is prepared in a slot: read, and its blocks sorted (those the
 * destination reads already: all-zero, or for an overlay the same as in
 * its backing image; zeroes over the backing image's data; data). Then it
 * is written, strictly one chunk at a time and in image order, so that the
 * destination's layout (a qcow2's cluster order) and the error reported
 * never depend on thread timing.
 *
 * Two threads (the caller and one more) share both jobs rather than owning
 * a stage each: a thread writes whenever the next chunk in order is
 * prepared and nobody is writing, and otherwise prepares a new chunk. With
 * a reader stage and a writer stage, a chunk handed over often meant
 * waking a sleeping thread, and on a busy machine a wake-up can take
 * longer than copying the chunk: raw->raw ran at times well below
 * qemu-img's speed. Now the copy goes on as long as either thread runs,
 * and uses both cores when it gets them.
 */
#include "copy.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUFFER_SIZE (2u << 20) /* per read, as qemu-img convert */
#define SLOT_COUNT 4           /* chunks in flight: a thread seldom finds none free */
/*
 * One thread writes while the other prepares. Writes are one at a time
 * anyway; a third thread only contends for the locks (measured slower,
 * qcow2 most).
 */
#define THREAD_COUNT 2
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
    BLOCK_ZERO, /* write zeroes over what base shows */
    BLOCK_DATA,
};

/* Blocks of one kind, [start, start + length) of a chunk. */
struct run {
    enum block_kind kind;
    size_t start;
    size_t length;
};

enum slot_state {
    SLOT_FREE,
    SLOT_PREPARING, /* a thread claims a chunk into it and prepares it */
    SLOT_READY,     /* prepared (or failed to be: rc), waiting for its turn */
};

struct slot {
    enum slot_state state;
    struct chunk chunk;
    unsigned char *buf;       /* the chunk's source data */
    unsigned char *base_buf;  /* what base holds at the chunk, when there is a base */
    struct run *runs;         /* the chunk's blocks, sorted */
    size_t run_count;
    int rc;                   /* preparing it failed */
    struct copy_error error;  /* recorded by the thread that failed, as vd_errmsg() is its own */
};

struct copy {
    const struct copy_params *params;
    uint64_t base_size;          /* of params->base */
    size_t block;                /* the unit of sorting: compare_block, sparse_block or 0 */
    uint64_t granule;            /* the destination's cluster size (a power of two <= BUFFER_SIZE) */

    /* The walk through the source's allocation map, cut into chunks. */
    pthread_mutex_t walk_lock;
    uint64_t walk_offset;        /* where the next chunk starts */
    uint64_t extent_end;         /* the end of the extent at walk_offset... */
    uint32_t extent_flags;       /* ...and its VD_EXTENT_* flags */
    uint64_t chunks_cut;
    int walk_rc;                 /* the walk failed: no more chunks */
    struct copy_error walk_error;

    /* The slots and the write order. */
    pthread_mutex_t lock;
    pthread_cond_t slot_freed;   /* or the walk ended */
    struct slot slots[SLOT_COUNT];
    bool walk_done;              /* no chunks left to claim */
    bool writing;                /* a thread is writing: the others prepare */
    uint64_t turn;               /* the chunk to write next */
    int rc;                      /* the first chunk that failed, in image order */
    struct copy_error error;
    atomic_bool failed;          /* set with rc: cut no more chunks */
};

static void record_error(struct copy_error *err, const char *action, uint64_t offset, int rc)
{
    const char *why = vd_errmsg();
    err->action = action;
    err->offset = offset;
    snprintf(err->message, sizeof err->message, "%s", why && *why ? why : vd_strerror(rc));
}

/* ------------------------------------------------------------------- walk */

static int next_extent(struct copy *c)
{
    const struct copy_params *params = c->params;
    vd_extent ext;
    int rc = vd_block_status(params->src, c->walk_offset, params->size - c->walk_offset, &ext, 0);
    if (rc < 0) {
        record_error(&c->walk_error, "reading block status", c->walk_offset, rc);
        return rc;
    }
    c->extent_end = c->walk_offset + ext.length;
    c->extent_flags = ext.flags;
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
 * cluster to the data chunk after it.
 */
static bool cut_chunk(struct copy *c, struct chunk *chunk)
{
    const uint64_t size = c->params->size, g = c->granule;
    bool zero = c->extent_flags & VD_EXTENT_ZERO;
    uint64_t end = c->extent_end == size ? size : round_down(c->extent_end, g);
    if (zero && end <= c->walk_offset)
        zero = false; /* a zero sliver inside one cluster: read it with its neighbours */
    if (!zero) {
        uint64_t cluster_end = round_down(c->extent_end + g - 1, g);
        uint64_t buffer_end = round_down(c->walk_offset, BUFFER_SIZE) + BUFFER_SIZE;
        end = cluster_end < buffer_end ? cluster_end : buffer_end;
        end = end < size ? end : size;
    }
    /* a destination without base reads as zeroes already, unless asked to allocate it */
    if (zero && c->params->sparse_block && !c->params->base) {
        c->walk_offset = end;
        return false;
    }
    *chunk = (struct chunk){ zero ? CHUNK_ZERO : CHUNK_DATA, c->walk_offset,
                             end - c->walk_offset, c->chunks_cut++ };
    c->walk_offset = end;
    return true;
}

/* The next chunk in image order; false at the end, when the walk fails or a chunk failed. */
static bool claim_chunk(struct copy *c, struct chunk *chunk)
{
    bool found = false;
    pthread_mutex_lock(&c->walk_lock);
    while (!found && c->walk_rc == 0 && c->walk_offset < c->params->size &&
           !atomic_load(&c->failed)) {
        if (c->walk_offset >= c->extent_end) /* a data chunk may end past its extent */
            c->walk_rc = next_extent(c);
        else
            found = cut_chunk(c, chunk);
    }
    pthread_mutex_unlock(&c->walk_lock);
    return found;
}

/* ------------------------------------------------------------------ prepare */

static bool is_zero(const unsigned char *buf, size_t len)
{
    /* each byte equals the next and the first is zero: memcmp is vectorised */
    return buf[0] == 0 && memcmp(buf, buf + 1, len - 1) == 0;
}

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

/* A block of the source against what the destination reads: base, or else zeroes. */
static enum block_kind classify(const unsigned char *src, const unsigned char *base, size_t len)
{
    if (!base)
        return is_zero(src, len) ? BLOCK_SAME : BLOCK_DATA;
    if (memcmp(src, base, len) == 0)
        return BLOCK_SAME;
    return is_zero(src, len) ? BLOCK_ZERO : BLOCK_DATA;
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
        add_run(s, classify(s->buf + pos, base ? base + pos : NULL, n), pos, n);
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

/* Read a data chunk (and what base holds there) and sort its blocks; a zero chunk needs nothing. */
static int prepare_chunk(const struct copy *c, struct slot *s)
{
    const struct copy_params *params = c->params;
    const struct chunk *chunk = &s->chunk;
    if (chunk->kind == CHUNK_ZERO)
        return 0;
    int rc = vd_read(params->src, chunk->offset, s->buf, (size_t)chunk->length, 0);
    if (rc < 0) {
        record_error(&s->error, "reading", chunk->offset, rc);
        return rc;
    }
    if (params->base && (rc = read_base(c, s, chunk->offset, (size_t)chunk->length)) < 0)
        return rc;
    sort_blocks(c, s);
    return 0;
}

/* ------------------------------------------------------------------ write */

static int write_run(vd_image *dst, enum block_kind kind, uint64_t offset,
                     const unsigned char *buf, uint64_t len, struct copy_error *err)
{
    int rc = kind == BLOCK_DATA ? vd_write(dst, offset, buf, (size_t)len, 0)
             : kind == BLOCK_ZERO ? vd_write_zeroes(dst, offset, len, 0) : 0;
    if (rc < 0)
        record_error(err, "writing", offset, rc);
    return rc;
}

/* Zeroes over each block of [offset, offset + len) where base_buf (base there) is not zero. */
static int zero_base_data(const struct copy *c, struct slot *s, uint64_t offset, size_t len)
{
    vd_image *dst = c->params->dst;
    uint64_t end = offset + len;
    size_t run = 0, pos = 0; /* [run, pos): blocks to zero */
    while (pos < len) {
        size_t n = block_length(offset + pos, end, c->params->compare_block);
        if (is_zero(s->base_buf + pos, n)) {
            int rc = pos > run
                     ? write_run(dst, BLOCK_ZERO, offset + run, NULL, pos - run, &s->error) : 0;
            if (rc < 0)
                return rc;
            run = pos + n;
        }
        pos += n;
    }
    return len > run ? write_run(dst, BLOCK_ZERO, offset + run, NULL, len - run, &s->error) : 0;
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

static int write_chunk(const struct copy *c, struct slot *s)
{
    const struct copy_params *params = c->params;
    const struct chunk *chunk = &s->chunk;
    if (chunk->kind == CHUNK_ZERO)
        return params->base ? write_zeroes_over_base(c, s)
               : write_run(params->dst, BLOCK_ZERO, chunk->offset, NULL, chunk->length,
                           &s->error);
    int rc = 0;
    for (size_t i = 0; i < s->run_count && rc == 0; i++) {
        const struct run *run = &s->runs[i];
        rc = write_run(params->dst, run->kind, chunk->offset + run->start, s->buf + run->start,
                       run->length, &s->error);
    }
    return rc;
}

/*
 * Write a prepared chunk in its turn (or report why it could not be
 * prepared), unless an earlier one failed. Only the writing thread gets
 * here: c->rc, c->error and the progress are its own.
 */
static void finish_chunk(struct copy *c, struct slot *s)
{
    if (c->rc < 0)
        return;
    int rc = s->rc < 0 ? s->rc : write_chunk(c, s);
    if (rc < 0) {
        c->rc = rc;
        c->error = s->error;
        atomic_store(&c->failed, true);
    } else {
        progress_update(c->params->progress, s->chunk.offset + s->chunk.length, c->params->size);
    }
}

/* ---------------------------------------------------------------- threads */

/* The slot in the given state, and with the chunk whose turn it is when READY; or NULL. */
static struct slot *find_slot(struct copy *c, enum slot_state state)
{
    for (int i = 0; i < SLOT_COUNT; i++) {
        struct slot *s = &c->slots[i];
        if (s->state == state && (state != SLOT_READY || s->chunk.turn == c->turn))
            return s;
    }
    return NULL;
}

/* With the lock held: write the chunks that are ready, in order, releasing the lock meanwhile. */
static void write_ready_chunks(struct copy *c)
{
    struct slot *s;
    c->writing = true;
    while ((s = find_slot(c, SLOT_READY))) {
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
 * Write when the next chunk is ready and nobody writes, else prepare one;
 * wait only when all slots are taken. The thread that makes the next chunk
 * ready, or the one writing meanwhile, writes it: none is left behind.
 */
static void *copy_thread(void *arg)
{
    struct copy *c = arg;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        struct slot *s;
        if (!c->writing && find_slot(c, SLOT_READY))
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
    pthread_t threads[THREAD_COUNT - 1];
    int started = 0;
    while (started < THREAD_COUNT - 1 &&
           pthread_create(&threads[started], NULL, copy_thread, c) == 0)
        started++;
    copy_thread(c);
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
}

/* ------------------------------------------------------------------ setup */

static int out_of_memory(struct copy_error *err)
{
    *err = (struct copy_error){ .action = "allocating buffers" };
    snprintf(err->message, sizeof err->message, "%s", vd_strerror(VD_ENOMEM));
    return VD_ENOMEM;
}

/* Per slot: a data buffer, with a base one for the base's data, and the runs. */
static int alloc_buffers(struct copy *c, struct copy_error *err)
{
    size_t per_slot = c->params->base ? 2 : 1, runs_per_slot = max_runs(c->block);
    void *mem;
    if (posix_memalign(&mem, BUFFER_ALIGN, SLOT_COUNT * per_slot * BUFFER_SIZE) != 0)
        return out_of_memory(err);
    struct run *runs = calloc(SLOT_COUNT * runs_per_slot, sizeof *runs);
    if (!runs) {
        free(mem);
        return out_of_memory(err);
    }
    for (size_t i = 0; i < SLOT_COUNT; i++) {
        struct slot *s = &c->slots[i];
        s->buf = (unsigned char *)mem + i * per_slot * BUFFER_SIZE;
        s->base_buf = c->params->base ? s->buf + BUFFER_SIZE : NULL;
        s->runs = runs + i * runs_per_slot;
    }
    return 0;
}

static void free_buffers(struct copy *c)
{
    free(c->slots[0].buf);
    free(c->slots[0].runs);
}

int copy_image(const struct copy_params *params, struct copy_error *err)
{
    struct copy c = {
        .params = params,
        .block = params->base ? params->compare_block : params->sparse_block,
    };
    atomic_init(&c.failed, false);
    vd_info info = VD_INFO_INIT;
    c.granule = vd_get_info(params->dst, &info) == 0 && info.cluster_size ? info.cluster_size : 512;
    int rc = params->base ? vd_get_size(params->base, &c.base_size) : 0;
    if (rc < 0) {
        record_error(err, "reading the size of the backing file", 0, rc);
        return rc;
    }
    if ((rc = alloc_buffers(&c, err)) < 0)
        return rc;
    pthread_mutex_init(&c.walk_lock, NULL);
    pthread_mutex_init(&c.lock, NULL);
    pthread_cond_init(&c.slot_freed, NULL);
    run_threads(&c);
    /* a chunk that failed comes before the walk's failure, which ended the chunks */
    rc = c.rc < 0 ? c.rc : c.walk_rc;
    if (rc < 0)
        *err = c.rc < 0 ? c.error : c.walk_error;
    pthread_cond_destroy(&c.slot_freed);
    pthread_mutex_destroy(&c.lock);
    pthread_mutex_destroy(&c.walk_lock);
    free_buffers(&c);
    return rc;
}
