/*
 * The copy runs as a two-stage pipeline so that reading the source overlaps
 * writing the destination: a reader thread walks the source's allocation
 * map and fills buffers with its data runs; the calling thread drops the
 * blocks the destination reads already from each buffer (all-zero blocks,
 * or for an overlay the blocks its backing image holds too) and writes the
 * rest. Zero and unallocated source runs are never read at all.
 */
#include "copy.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUFFER_SIZE (2u << 20) /* per read, as qemu-img convert */
#define SLOT_COUNT 4           /* buffers in flight between the two threads */
#define BUFFER_ALIGN 4096      /* page aligned, ready for O_DIRECT backends */

enum slot_kind {
    SLOT_DATA,  /* buf holds the source bytes at offset */
    SLOT_ZERO,  /* the source reads as zeroes here (queued with sparse_block 0 or a base) */
    SLOT_END,   /* no more slots: the reader finished or failed */
};

struct slot {
    enum slot_kind kind;
    uint64_t offset;
    uint64_t length;
    unsigned char *buf;
};

/*
 * A ring of slots. The reader fills slot (filled % SLOT_COUNT) once fewer
 * than SLOT_COUNT are outstanding; the writer consumes them in order.
 */
struct pipeline {
    const struct copy_params *params;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    struct slot slots[SLOT_COUNT];
    unsigned filled, consumed;
    bool cancelled;              /* the writer failed: the reader stops */
    int read_rc;                 /* the reader's failure, reported after SLOT_END */
    struct copy_error read_error;
    uint64_t base_size;          /* of params->base */
    unsigned char *base_buf;     /* the writer's: what base holds at a slot */
};

static void record_error(struct copy_error *err, const char *action, uint64_t offset, int rc)
{
    const char *why = vd_errmsg();
    err->action = action;
    err->offset = offset;
    snprintf(err->message, sizeof err->message, "%s", why && *why ? why : vd_strerror(rc));
}

/* ----------------------------------------------------------------- reader */

/* Wait for a free slot; NULL when the writer has given up. */
static struct slot *claim_slot(struct pipeline *p)
{
    pthread_mutex_lock(&p->lock);
    while (!p->cancelled && p->filled - p->consumed == SLOT_COUNT)
        pthread_cond_wait(&p->changed, &p->lock);
    struct slot *slot = p->cancelled ? NULL : &p->slots[p->filled % SLOT_COUNT];
    pthread_mutex_unlock(&p->lock);
    return slot;
}

static void publish_slot(struct pipeline *p)
{
    pthread_mutex_lock(&p->lock);
    p->filled++;
    pthread_cond_signal(&p->changed);
    pthread_mutex_unlock(&p->lock);
}

/* Queue one run; a data run is read into the slot's buffer first. */
static int queue_run(struct pipeline *p, enum slot_kind kind, uint64_t offset, uint64_t length)
{
    struct slot *slot = claim_slot(p);
    if (!slot)
        return VD_EINVAL; /* cancelled; the writer's error is the one reported */
    *slot = (struct slot){ kind, offset, length, slot->buf };
    if (kind == SLOT_DATA) {
        int rc = vd_read(p->params->src, offset, slot->buf, (size_t)length, 0);
        if (rc < 0) {
            record_error(&p->read_error, "reading", offset, rc);
            return rc;
        }
    }
    publish_slot(p);
    return 0;
}

static int queue_data(struct pipeline *p, uint64_t offset, uint64_t length)
{
    int rc = 0;
    for (uint64_t done = 0; done < length && rc == 0; done += BUFFER_SIZE) {
        uint64_t n = length - done < BUFFER_SIZE ? length - done : BUFFER_SIZE;
        rc = queue_run(p, SLOT_DATA, offset + done, n);
    }
    return rc;
}

static int queue_image(struct pipeline *p)
{
    const struct copy_params *params = p->params;
    vd_extent ext;
    for (uint64_t offset = 0; offset < params->size; offset += ext.length) {
        int rc = vd_block_status(params->src, offset, params->size - offset, &ext, 0);
        if (rc < 0) {
            record_error(&p->read_error, "reading block status", offset, rc);
            return rc;
        }
        /* a destination without base reads as zeroes already, unless asked to allocate it */
        if (ext.flags & VD_EXTENT_ZERO)
            rc = params->sparse_block && !params->base
                     ? 0 : queue_run(p, SLOT_ZERO, offset, ext.length);
        else
            rc = queue_data(p, offset, ext.length);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static void *reader_main(void *arg)
{
    struct pipeline *p = arg;
    p->read_rc = queue_image(p); /* read by the writer after pthread_join() */
    /* an END slot needs a free slot too, but no buffer: wait unless cancelled */
    if (claim_slot(p)) {
        p->slots[p->filled % SLOT_COUNT].kind = SLOT_END;
        publish_slot(p);
    }
    return NULL;
}

/* ----------------------------------------------------------------- writer */

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

enum block_kind {
    BLOCK_SAME, /* the destination reads this already: leave it unallocated */
    BLOCK_ZERO, /* write zeroes over what base shows */
    BLOCK_DATA,
};

/* A block of the source against what the destination reads: base, or else zeroes. */
static enum block_kind classify(const unsigned char *src, const unsigned char *base, size_t len)
{
    if (!base)
        return is_zero(src, len) ? BLOCK_SAME : BLOCK_DATA;
    if (memcmp(src, base, len) == 0)
        return BLOCK_SAME;
    return is_zero(src, len) ? BLOCK_ZERO : BLOCK_DATA;
}

static int write_run(vd_image *dst, enum block_kind kind, uint64_t offset,
                     const unsigned char *buf, uint64_t len, struct copy_error *err)
{
    int rc = kind == BLOCK_DATA ? vd_write(dst, offset, buf, (size_t)len, 0)
             : kind == BLOCK_ZERO ? vd_write_zeroes(dst, offset, len, 0) : 0;
    if (rc < 0)
        record_error(err, "writing", offset, rc);
    return rc;
}

/*
 * Write a buffer block by block, leaving out the blocks the destination
 * reads already (base: what it shows there, or NULL for zeroes); each run
 * of blocks of one kind is one call.
 */
static int write_blocks(vd_image *dst, uint64_t offset, const unsigned char *buf,
                        const unsigned char *base, size_t len, size_t block,
                        struct copy_error *err)
{
    uint64_t end = offset + len;
    size_t run = 0, pos = 0;
    enum block_kind run_kind = BLOCK_SAME;
    while (pos < len) {
        size_t n = block_length(offset + pos, end, block);
        enum block_kind kind = classify(buf + pos, base ? base + pos : NULL, n);
        if (kind != run_kind && pos > run) {
            int rc = write_run(dst, run_kind, offset + run, buf + run, pos - run, err);
            if (rc < 0)
                return rc;
            run = pos;
        }
        run_kind = kind;
        pos += n;
    }
    return write_run(dst, run_kind, offset + run, buf + run, len - run, err);
}

/* What base holds at [offset, offset + len): zeroes where it reads as zeroes and past its end. */
static int read_base(struct pipeline *p, uint64_t offset, size_t len, struct copy_error *err)
{
    vd_image *base = p->params->base;
    size_t inside = offset >= p->base_size ? 0
                    : (size_t)(p->base_size - offset < len ? p->base_size - offset : len);
    memset(p->base_buf + inside, 0, len - inside);
    vd_extent ext;
    for (size_t pos = 0; pos < inside; pos += (size_t)ext.length) {
        int rc = vd_block_status(base, offset + pos, inside - pos, &ext, 0);
        if (rc == 0 && (ext.flags & VD_EXTENT_ZERO))
            memset(p->base_buf + pos, 0, (size_t)ext.length);
        else if (rc == 0)
            rc = vd_read(base, offset + pos, p->base_buf + pos, (size_t)ext.length, 0);
        if (rc < 0) {
            record_error(err, "reading the backing file", offset + pos, rc);
            return rc;
        }
    }
    return 0;
}

/* Zeroes over each block of [offset, offset + len) where base_buf (base there) is not zero. */
static int zero_base_data(struct pipeline *p, uint64_t offset, size_t len, struct copy_error *err)
{
    uint64_t end = offset + len;
    size_t run = 0, pos = 0; /* [run, pos): blocks to zero */
    while (pos < len) {
        size_t n = block_length(offset + pos, end, p->params->compare_block);
        if (is_zero(p->base_buf + pos, n)) {
            int rc = pos > run ? write_run(p->params->dst, BLOCK_ZERO, offset + run, NULL,
                                           pos - run, err) : 0;
            if (rc < 0)
                return rc;
            run = pos + n;
        }
        pos += n;
    }
    return len > run ? write_run(p->params->dst, BLOCK_ZERO, offset + run, NULL, len - run, err)
                     : 0;
}

/* A zero run of the source over a base: zeroes wherever base does not read as zeroes. */
static int write_zeroes_over_base(struct pipeline *p, const struct slot *slot,
                                  struct copy_error *err)
{
    uint64_t end = slot->offset + slot->length;
    if (end > p->base_size)
        end = p->base_size;
    vd_extent ext;
    for (uint64_t offset = slot->offset; offset < end; offset += ext.length) {
        int rc = vd_block_status(p->params->base, offset, end - offset, &ext, 0);
        if (rc < 0) {
            record_error(err, "reading block status of the backing file", offset, rc);
            return rc;
        }
        if (ext.flags & VD_EXTENT_ZERO)
            continue;
        for (uint64_t done = 0; done < ext.length && rc == 0; done += BUFFER_SIZE) {
            size_t n = (size_t)(ext.length - done < BUFFER_SIZE ? ext.length - done : BUFFER_SIZE);
            rc = read_base(p, offset + done, n, err);
            if (rc == 0)
                rc = zero_base_data(p, offset + done, n, err);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int write_slot(struct pipeline *p, const struct slot *slot, struct copy_error *err)
{
    const struct copy_params *params = p->params;
    if (params->base) {
        if (slot->kind == SLOT_ZERO)
            return write_zeroes_over_base(p, slot, err);
        int rc = read_base(p, slot->offset, (size_t)slot->length, err);
        return rc < 0 ? rc : write_blocks(params->dst, slot->offset, slot->buf, p->base_buf,
                                          (size_t)slot->length, params->compare_block, err);
    }
    if (slot->kind == SLOT_ZERO)
        return write_run(params->dst, BLOCK_ZERO, slot->offset, NULL, slot->length, err);
    if (params->sparse_block == 0)
        return write_run(params->dst, BLOCK_DATA, slot->offset, slot->buf, slot->length, err);
    return write_blocks(params->dst, slot->offset, slot->buf, NULL, (size_t)slot->length,
                        params->sparse_block, err);
}

static struct slot *next_filled_slot(struct pipeline *p)
{
    pthread_mutex_lock(&p->lock);
    while (p->filled == p->consumed)
        pthread_cond_wait(&p->changed, &p->lock);
    struct slot *slot = &p->slots[p->consumed % SLOT_COUNT];
    pthread_mutex_unlock(&p->lock);
    return slot;
}

static void release_slot(struct pipeline *p, bool cancel)
{
    pthread_mutex_lock(&p->lock);
    p->consumed++;
    p->cancelled |= cancel;
    pthread_cond_signal(&p->changed);
    pthread_mutex_unlock(&p->lock);
}

/* Write the queued slots until END or an error. */
static int drain(struct pipeline *p, struct copy_error *err)
{
    const struct copy_params *params = p->params;
    for (;;) {
        struct slot *slot = next_filled_slot(p);
        if (slot->kind == SLOT_END) {
            release_slot(p, false);
            return 0;
        }
        int rc = write_slot(p, slot, err);
        uint64_t done = slot->offset + slot->length;
        release_slot(p, rc < 0);
        if (rc < 0)
            return rc;
        progress_update(params->progress, done, params->size);
    }
}

/* ------------------------------------------------------------------ setup */

/* A buffer per slot, and one more for the base's data when there is a base. */
static int alloc_buffers(struct pipeline *p, struct copy_error *err)
{
    void *mem;
    size_t count = SLOT_COUNT + (p->params->base != NULL);
    if (posix_memalign(&mem, BUFFER_ALIGN, count * BUFFER_SIZE) != 0) {
        *err = (struct copy_error){ .action = "allocating buffers" };
        snprintf(err->message, sizeof err->message, "%s", vd_strerror(VD_ENOMEM));
        return VD_ENOMEM;
    }
    for (int i = 0; i < SLOT_COUNT; i++)
        p->slots[i].buf = (unsigned char *)mem + (size_t)i * BUFFER_SIZE;
    if (p->params->base)
        p->base_buf = (unsigned char *)mem + (size_t)SLOT_COUNT * BUFFER_SIZE;
    return 0;
}

int copy_image(const struct copy_params *params, struct copy_error *err)
{
    struct pipeline p = { .params = params };
    int rc = params->base ? vd_get_size(params->base, &p.base_size) : 0;
    if (rc < 0) {
        record_error(err, "reading the size of the backing file", 0, rc);
        return rc;
    }
    if ((rc = alloc_buffers(&p, err)) < 0)
        return rc;
    pthread_mutex_init(&p.lock, NULL);
    pthread_cond_init(&p.changed, NULL);
    pthread_t reader;
    if (pthread_create(&reader, NULL, reader_main, &p) != 0) {
        *err = (struct copy_error){ .action = "starting the reader thread" };
        snprintf(err->message, sizeof err->message, "%s", vd_strerror(VD_ENOMEM));
        rc = VD_ENOMEM;
    } else {
        rc = drain(&p, err);
        pthread_join(reader, NULL);
        if (rc == 0 && p.read_rc < 0) {
            *err = p.read_error;
            rc = p.read_rc;
        }
    }
    pthread_cond_destroy(&p.changed);
    pthread_mutex_destroy(&p.lock);
    free(p.slots[0].buf);
    return rc;
}
