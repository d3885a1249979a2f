/* Views of struct iovec arrays (see iov.h). */
#include "io/iov.h"
#include "core/internal.h"

#include <stdint.h>
#include <string.h>

/* Calls fn(segment, length, ctx) for each non-empty piece of the view in order. */
typedef void (*segment_fn)(uint8_t *p, size_t n, void *ctx);

static void for_each_segment(const struct vd_iov *v, segment_fn fn, void *ctx)
{
    size_t left = v->len, skip = v->skip;
    for (int i = 0; left && i < v->cnt; i++, skip = 0) {
        size_t n = v->iov[i].iov_len - skip;
        if (n > left)
            n = left;
        if (n)
            fn((uint8_t *)v->iov[i].iov_base + skip, n, ctx);
        left -= n;
    }
}

struct vd_iov vd_iov_sub(const struct vd_iov *v, size_t off, size_t len)
{
    struct vd_iov s = { v->iov, v->cnt, v->skip + off, len };
    /* step past whole elements (and empty ones) before the first byte */
    while (s.cnt > 0 && s.skip >= s.iov[0].iov_len) {
        s.skip -= s.iov[0].iov_len;
        s.iov++;
        s.cnt--;
    }
    return s;
}

void *vd_iov_contiguous(const struct vd_iov *v)
{
    if (v->cnt == 0 || v->iov[0].iov_len - v->skip < v->len)
        return NULL;
    return (uint8_t *)v->iov[0].iov_base + v->skip;
}

static void copy_out(uint8_t *p, size_t n, void *ctx)
{
    uint8_t **dst = ctx;
    memcpy(*dst, p, n);
    *dst += n;
}

static void copy_in(uint8_t *p, size_t n, void *ctx)
{
    const uint8_t **src = ctx;
    memcpy(p, *src, n);
    *src += n;
}

static void zero(uint8_t *p, size_t n, void *ctx)
{
    (void)ctx;
    memset(p, 0, n);
}

void vd_iov_to_buf(const struct vd_iov *v, void *buf)
{
    uint8_t *dst = buf;
    for_each_segment(v, copy_out, &dst);
}

void vd_iov_from_buf(const struct vd_iov *v, const void *buf)
{
    const uint8_t *src = buf;
    for_each_segment(v, copy_in, &src);
}

void vd_iov_zero(const struct vd_iov *v)
{
    for_each_segment(v, zero, NULL);
}

static void find_nonzero(uint8_t *p, size_t n, void *ctx)
{
    bool *nonzero = ctx;
    if (!*nonzero)
        *nonzero = !vd_is_zero(p, n);
}

bool vd_iov_is_zero(const struct vd_iov *v)
{
    bool nonzero = false;
    for_each_segment(v, find_nonzero, &nonzero);
    return !nonzero;
}

struct exporter {
    struct iovec *out;
    int max, n;
    size_t bytes;
};

static void export_segment(uint8_t *p, size_t n, void *ctx)
{
    struct exporter *e = ctx;
    if (e->n < e->max) {
        e->out[e->n++] = (struct iovec){ p, n };
        e->bytes += n;
    }
}

int vd_iov_export(const struct vd_iov *v, struct iovec *out, int max, size_t *bytes)
{
    struct exporter e = { out, max, 0, 0 };
    for_each_segment(v, export_segment, &e);
    *bytes = e.bytes;
    return e.n;
}

struct alignment {
    uintptr_t mask;
    bool aligned;
};

static void check_segment(uint8_t *p, size_t n, void *ctx)
{
    struct alignment *a = ctx;
    if (((uintptr_t)p | n) & a->mask)
        a->aligned = false;
}

bool vd_iov_aligned(const struct vd_iov *v, size_t align)
{
    struct alignment a = { align - 1, true };
    for_each_segment(v, check_segment, &a);
    return a.aligned;
}
