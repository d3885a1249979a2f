/*
 * The copy runs as a two-stage pipeline so that reading the source overlaps
 * writing the destination: a reader thread walks the source's allocation
 * map and fills buffers with its data runs; the calling thread drops the
 * all-zero blocks from each buffer and writes the rest. Zero and
 * unallocated source runs are never read at all.
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
    SLOT_ZERO,  /* the source reads as zeroes here: write zeroes (only with sparse_block 0) */
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
        /* the destination reads as zeroes already, unless asked to allocate it */
        if (ext.flags & VD_EXTENT_ZERO)
            rc = params->sparse_block ? 0 : queue_run(p, SLOT_ZERO, offset, ext.length);
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

/* Write a buffer, leaving out its all-zero blocks so the destination keeps holes. */
static int write_sparse(vd_image *dst, uint64_t offset, const unsigned char *buf, size_t len,
                        size_t block, struct copy_error *err)
{
    uint64_t end = offset + len;
    size_t pos = 0, n = 0;
    while (pos < len) {
        while (pos < len && is_zero(buf + pos, n = block_length(offset + pos, end, block)))
            pos += n;
        size_t run = pos;
        while (pos < len && !is_zero(buf + pos, n = block_length(offset + pos, end, block)))
            pos += n;
        int rc = pos > run ? vd_write(dst, offset + run, buf + run, pos - run, 0) : 0;
        if (rc < 0) {
            record_error(err, "writing", offset + run, rc);
            return rc;
        }
    }
    return 0;
}

static int write_slot(const struct copy_params *params, const struct slot *slot,
                      struct copy_error *err)
{
    int rc;
    if (slot->kind == SLOT_ZERO)
        rc = vd_write_zeroes(params->dst, slot->offset, slot->length, 0);
    else if (params->sparse_block == 0)
        rc = vd_write(params->dst, slot->offset, slot->buf, (size_t)slot->length, 0);
    else
        return write_sparse(params->dst, slot->offset, slot->buf, (size_t)slot->length,
                            params->sparse_block, err);
    if (rc < 0)
        record_error(err, "writing", slot->offset, rc);
    return rc;
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
        int rc = write_slot(params, slot, err);
        uint64_t done = slot->offset + slot->length;
        release_slot(p, rc < 0);
        if (rc < 0)
            return rc;
        progress_update(params->progress, done, params->size);
    }
}

/* ------------------------------------------------------------------ setup */

static int alloc_buffers(struct pipeline *p, struct copy_error *err)
{
    void *mem;
    if (posix_memalign(&mem, BUFFER_ALIGN, (size_t)SLOT_COUNT * BUFFER_SIZE) != 0) {
        *err = (struct copy_error){ .action = "allocating buffers" };
        snprintf(err->message, sizeof err->message, "%s", vd_strerror(VD_ENOMEM));
        return VD_ENOMEM;
    }
    for (int i = 0; i < SLOT_COUNT; i++)
        p->slots[i].buf = (unsigned char *)mem + (size_t)i * BUFFER_SIZE;
    return 0;
}

int copy_image(const struct copy_params *params, struct copy_error *err)
{
    struct pipeline p = { .params = params };
    int rc = alloc_buffers(&p, err);
    if (rc < 0)
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
