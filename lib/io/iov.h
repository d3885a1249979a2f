/*
 * A view of part of a caller's struct iovec array: the bytes [skip, skip +
 * len) of the concatenated elements. The data path passes views down to the
 * file layer so that a request reaches the host file in the caller's own
 * buffers; copies happen only where a whole cluster must be built (copy-on-
 * write, compressed clusters) or an O_DIRECT request is unaligned.
 */
#ifndef VD_IO_IOV_H
#define VD_IO_IOV_H

#ifndef VD_BUILDING_LIBRARY
#error "lib/io/iov.h is internal to libvdisk"
#endif

#include <stdbool.h>
#include <stddef.h>
#include <sys/uio.h>

struct vd_iov {
    const struct iovec *iov; /* the element holding the first byte (or the array's end) */
    int cnt;                 /* elements from iov on */
    size_t skip;             /* bytes of iov[0] before the view */
    size_t len;              /* bytes in the view */
};

/* A view of one flat buffer; one is the element it uses (it must outlive the view). */
static inline struct vd_iov vd_iov_flat(struct iovec *one, const void *buf, size_t len)
{
    *one = (struct iovec){ (void *)buf, len };
    return (struct vd_iov){ one, 1, 0, len };
}

/* The bytes [off, off + len) of v (off + len <= v->len). */
struct vd_iov vd_iov_sub(const struct vd_iov *v, size_t off, size_t len);

/* The view's bytes as one pointer when they lie in a single element, else NULL. */
void *vd_iov_contiguous(const struct vd_iov *v);

/* Copy the view's bytes to buf, or from buf into the view; zero the view. */
void vd_iov_to_buf(const struct vd_iov *v, void *buf);
void vd_iov_from_buf(const struct vd_iov *v, const void *buf);
void vd_iov_zero(const struct vd_iov *v);
/* Whether every byte of the view is zero. */
bool vd_iov_is_zero(const struct vd_iov *v);

/*
 * Fill out[] with at most max elements describing the view's first bytes,
 * for preadv(2)/pwritev(2); returns the count and sets *bytes to what they
 * cover (all of v when it fits in max elements; zero-length elements are left out).
 */
int vd_iov_export(const struct vd_iov *v, struct iovec *out, int max, size_t *bytes);

/* Whether every element's address and length, within the view, is a multiple of align. */
bool vd_iov_aligned(const struct vd_iov *v, size_t align);

#endif
