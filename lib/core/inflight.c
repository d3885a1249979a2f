/* In-flight request tracking (see inflight.h). */
#include "core/inflight.h"

void vd_inflight_init(struct vd_inflight *t)
{
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->done, NULL);
    t->head = t->tail = NULL;
    t->waiters = 0;
}

void vd_inflight_destroy(struct vd_inflight *t)
{
    pthread_cond_destroy(&t->done);
    pthread_mutex_destroy(&t->lock);
}

static bool conflicts(const struct vd_inflight_req *a, const struct vd_inflight_req *b)
{
    return (a->exclusive || b->exclusive) && a->first < b->end && b->first < a->end;
}

/* Whether a request registered before r conflicts with it. Lock held. */
static bool must_wait(const struct vd_inflight *t, const struct vd_inflight_req *r)
{
    for (const struct vd_inflight_req *o = t->head; o != r; o = o->next)
        if (conflicts(o, r))
            return true;
    return false;
}

void vd_inflight_begin(struct vd_inflight *t, struct vd_inflight_req *r, uint64_t off,
                       uint64_t len, uint64_t granule, bool exclusive)
{
    r->first = off & ~(granule - 1);
    /* off + len is at most the image size (checked), so rounding up cannot wrap */
    r->end = (off + len + granule - 1) & ~(granule - 1);
    r->exclusive = exclusive;
    r->next = NULL;
    pthread_mutex_lock(&t->lock);
    r->prev = t->tail;
    if (t->tail)
        t->tail->next = r;
    else
        t->head = r;
    t->tail = r;
    while (must_wait(t, r)) {
        t->waiters++;
        pthread_cond_wait(&t->done, &t->lock);
        t->waiters--;
    }
    pthread_mutex_unlock(&t->lock);
}

void vd_inflight_end(struct vd_inflight *t, struct vd_inflight_req *r)
{
    pthread_mutex_lock(&t->lock);
    if (r->prev)
        r->prev->next = r->next;
    else
        t->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        t->tail = r->prev;
    if (t->waiters)
        pthread_cond_broadcast(&t->done);
    pthread_mutex_unlock(&t->lock);
}
