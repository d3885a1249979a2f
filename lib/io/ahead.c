/*
 * Growing a file ahead of its writes (vd_file_grow_ahead() in file.h): the
 * reserve past the end of the data, and the size the file shows its users.
 *
 * data_end only grows between truncations, by compare-and-swap, so that
 * writers past the end need not share a lock; file_end (the host size, as
 * far as we reserved it) grows under the lock, by one thread at a time.
 */
#include "io/ahead.h"
#include "core/internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#define AHEAD_MIN   (1ull << 20)
#define AHEAD_MAX   (128ull << 20)
#define AHEAD_ALIGN (1ull << 20)

struct vd_file_ahead {
    _Atomic uint64_t data_end; /* the size users see: the end of the data written */
    _Atomic uint64_t file_end; /* reserved up to here (the host size, or more once off) */
    _Atomic bool off;          /* the layer could not reserve: writes extend the file */
    pthread_mutex_t lock;      /* one reservation at a time; truncation */
};

int vd_file_grow_ahead(vd_file *f)
{
    uint64_t size;
    int rc = f->ops->get_size(f, &size);
    if (rc < 0)
        return rc;
    struct vd_file_ahead *a = calloc(1, sizeof *a);
    if (!a)
        return vd_err(VD_ENOMEM, "%s: out of memory", f->path);
    atomic_init(&a->data_end, size);
    atomic_init(&a->file_end, size);
    atomic_init(&a->off, !f->ops->zero_range);
    pthread_mutex_init(&a->lock, NULL);
    f->ahead = a;
    return 0;
}

/* Reserve past end under the lock; on failure turn off, the writes then extend the file. */
static void reserve(vd_file *f, struct vd_file_ahead *a, uint64_t end)
{
    pthread_mutex_lock(&a->lock);
    uint64_t have = atomic_load(&a->file_end);
    if (end > have && !atomic_load(&a->off)) {
        uint64_t step = end / 8 < AHEAD_MIN ? AHEAD_MIN : end / 8 > AHEAD_MAX ? AHEAD_MAX : end / 8;
        uint64_t target = (end + step + AHEAD_ALIGN - 1) / AHEAD_ALIGN * AHEAD_ALIGN;
        /* zero_range, not allocate: posix_fallocate() would write where the file system
           cannot allocate, and a reserve is worth having only if it costs no writes */
        if (f->ops->zero_range(f, have, target - have) == 0) {
            atomic_store(&a->file_end, target);
        } else { /* not the caller's error: its write goes on without the reserve */
            atomic_store(&a->off, true);
        }
    }
    pthread_mutex_unlock(&a->lock);
}

void vd_file_ahead_note(vd_file *f, uint64_t end)
{
    struct vd_file_ahead *a = f->ahead;
    uint64_t seen = atomic_load_explicit(&a->data_end, memory_order_relaxed);
    while (end > seen && !atomic_compare_exchange_weak(&a->data_end, &seen, end))
        ;
    if (end > atomic_load_explicit(&a->file_end, memory_order_acquire) && !atomic_load(&a->off))
        reserve(f, a, end);
}

uint64_t vd_file_ahead_zeroes(vd_file *f, uint64_t off, uint64_t len)
{
    struct vd_file_ahead *a = f->ahead;
    uint64_t data = atomic_load(&a->data_end);
    vd_file_ahead_note(f, off + len);
    if (off + len > atomic_load(&a->file_end)) /* past the reserve: the write extends the file */
        return len;
    return data <= off ? 0 : data - off < len ? data - off : len;
}

uint64_t vd_file_ahead_size(const vd_file *f)
{
    return atomic_load(&f->ahead->data_end);
}

uint64_t vd_file_ahead_reserved(const vd_file *f)
{
    uint64_t data = atomic_load(&f->ahead->data_end), file = atomic_load(&f->ahead->file_end);
    return file > data ? file - data : 0;
}

int vd_file_ahead_truncate(vd_file *f, uint64_t size)
{
    struct vd_file_ahead *a = f->ahead;
    pthread_mutex_lock(&a->lock);
    int rc = f->ops->truncate(f, size);
    if (rc == 0) {
        atomic_store(&a->data_end, size);
        atomic_store(&a->file_end, size);
    }
    pthread_mutex_unlock(&a->lock);
    return rc;
}

void vd_file_ahead_end(vd_file *f)
{
    struct vd_file_ahead *a = f->ahead;
    uint64_t host, data = atomic_load(&a->data_end);
    /* the host size, not file_end: a failed reservation may have grown the file part way */
    if (f->writable && f->ops->get_size(f, &host) == 0 && host > data)
        (void)f->ops->truncate(f, data); /* at worst the reserve stays: free space, read as zeroes */
    pthread_mutex_destroy(&a->lock);
    free(a);
    f->ahead = NULL;
}
