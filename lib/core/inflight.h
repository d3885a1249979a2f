/*
 * In-flight request tracking: the per-handle list of data-path requests
 * running now, so that a request waits only for the overlapping ones
 * (QEMU's in-flight allocation tracking is the model).
 *
 * Each request registers its byte range rounded out to a granule (the
 * format's cluster), shared (reads) or exclusive (writes, zeroes,
 * discards). A request waits for every conflicting request registered
 * before it: two ranges conflict when they overlap and one is exclusive.
 * Waiting only for earlier requests makes the order first come, first
 * served: no deadlock (a request registers one range at a time and never
 * nests), and a writer is not starved by a stream of readers.
 *
 * The list costs no allocation: the caller's node lives on its stack.
 */
#ifndef VD_CORE_INFLIGHT_H
#define VD_CORE_INFLIGHT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct vd_inflight_req {
    uint64_t first, end;      /* [first, end), rounded out to the granule */
    bool exclusive;
    struct vd_inflight_req *prev, *next;
};

struct vd_inflight {
    pthread_mutex_t lock;
    pthread_cond_t done;      /* some request ended */
    struct vd_inflight_req *head, *tail; /* in order of registration */
    unsigned waiters;         /* requests sleeping on done */
};

void vd_inflight_init(struct vd_inflight *t);
void vd_inflight_destroy(struct vd_inflight *t);
/* Register r for [off, off+len) rounded out to granule (a power of two), and wait
   until no earlier conflicting request remains. */
void vd_inflight_begin(struct vd_inflight *t, struct vd_inflight_req *r, uint64_t off,
                       uint64_t len, uint64_t granule, bool exclusive);
void vd_inflight_end(struct vd_inflight *t, struct vd_inflight_req *r);

#endif
