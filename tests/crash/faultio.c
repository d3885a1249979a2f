/* The fault-injecting file layer (see faultio.h). */
#include "faultio.h"

#include "core/internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static struct {
    pthread_mutex_t lock;
    bool armed, fired;
    struct fault_plan plan;
    uint64_t calls;
} F = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* Count a call of this kind; true if it must fail. */
static bool should_fail(unsigned kind)
{
    pthread_mutex_lock(&F.lock);
    bool fail = false;
    if (F.armed && (F.plan.kinds & kind)) {
        F.calls++;
        fail = F.calls == F.plan.nth || (F.plan.persistent && F.calls > F.plan.nth);
        if (fail)
            F.fired = true;
    }
    pthread_mutex_unlock(&F.lock);
    return fail;
}

static int injected(vd_file *f, const char *what, uint64_t off)
{
    return vd_file_errno(f, F.plan.errnum, what, off);
}

struct fault_file {
    vd_file base;
    vd_file *inner;
};

static vd_file *inner(vd_file *f)
{
    return ((struct fault_file *)f)->inner;
}

static int f_pread(vd_file *f, void *buf, size_t len, uint64_t off)
{
    if (should_fail(FAULT_PREAD))
        return injected(f, "read (injected)", off);
    return vd_file_pread(inner(f), buf, len, off);
}

static int f_pwrite(vd_file *f, const void *buf, size_t len, uint64_t off)
{
    if (should_fail(FAULT_PWRITE)) {
        size_t half = (len / 2) & ~(size_t)511;
        if (F.plan.partial && half)
            vd_file_pwrite(inner(f), buf, half, off);
        return injected(f, "write (injected)", off);
    }
    return vd_file_pwrite(inner(f), buf, len, off);
}

/* Durability is not what these tests look at: skip the slow fdatasync itself. */
static int f_sync(vd_file *f)
{
    if (should_fail(FAULT_SYNC))
        return injected(f, "flush (injected)", UINT64_MAX);
    return 0;
}

static int f_get_size(vd_file *f, uint64_t *size)
{
    return vd_file_get_size(inner(f), size);
}

static int f_truncate(vd_file *f, uint64_t size)
{
    if (should_fail(FAULT_OTHER))
        return injected(f, "truncate (injected)", size);
    return vd_file_truncate(inner(f), size);
}

static int f_punch_hole(vd_file *f, uint64_t off, uint64_t len)
{
    if (should_fail(FAULT_OTHER))
        return injected(f, "deallocate (injected)", off);
    return inner(f)->ops->punch_hole(inner(f), off, len);
}

static int f_zero_range(vd_file *f, uint64_t off, uint64_t len)
{
    if (should_fail(FAULT_OTHER))
        return injected(f, "zero range (injected)", off);
    return inner(f)->ops->zero_range(inner(f), off, len);
}

static int f_allocate(vd_file *f, uint64_t off, uint64_t len)
{
    if (should_fail(FAULT_OTHER))
        return injected(f, "preallocate (injected)", off);
    return vd_file_allocate(inner(f), off, len);
}

static int f_extent(vd_file *f, uint64_t off, bool *is_data, uint64_t *end)
{
    return vd_file_extent(inner(f), off, is_data, end);
}

static int f_allocated_bytes(vd_file *f, uint64_t *bytes)
{
    return vd_file_allocated_bytes(inner(f), bytes);
}

/* The lock primitives speak errno (see lib/io/file.h): the injected errnum itself. */
static int f_lock_byte(vd_file *f, uint64_t byte, bool take)
{
    if (should_fail(FAULT_LOCK))
        return -F.plan.errnum;
    return inner(f)->ops->lock_byte(inner(f), byte, take);
}

static int f_byte_locked_elsewhere(vd_file *f, uint64_t byte, bool *locked)
{
    if (should_fail(FAULT_LOCK))
        return -F.plan.errnum;
    return inner(f)->ops->byte_locked_elsewhere(inner(f), byte, locked);
}

static int f_stat_id(vd_file *f, struct stat *st)
{
    return vd_file_stat_id(inner(f), st);
}

static void f_close(vd_file *f)
{
    vd_file_close(inner(f));
    free(f->path);
    free(f);
}

static const struct vd_file_ops fault_ops = {
    .pread = f_pread,
    .pwrite = f_pwrite,
    .sync = f_sync,
    .get_size = f_get_size,
    .truncate = f_truncate,
    .punch_hole = f_punch_hole,
    .zero_range = f_zero_range,
    .allocate = f_allocate,
    .extent = f_extent,
    .allocated_bytes = f_allocated_bytes,
    .lock_byte = f_lock_byte,
    .byte_locked_elsewhere = f_byte_locked_elsewhere,
    .stat_id = f_stat_id,
    .close = f_close,
};

static int fault_open(vd_file **out, const struct vd_file_name *name, uint32_t flags)
{
    const char *path = name->path;
    vd_file *in;
    int rc = vd_file_posix_open(&in, name, flags);
    if (rc < 0)
        return rc;
    struct fault_file *ff = calloc(1, sizeof *ff);
    char *copy = strdup(path);
    if (!ff || !copy) {
        free(ff);
        free(copy);
        vd_file_close(in);
        return vd_err(VD_ENOMEM, "faultio: out of memory");
    }
    ff->base.ops = &fault_ops;
    ff->base.path = copy;
    ff->base.writable = in->writable;
    ff->inner = in;
    *out = &ff->base;
    return 0;
}

void fault_install(void)
{
    vd_file_set_opener(fault_open);
}

void fault_uninstall(void)
{
    fault_disarm();
    vd_file_set_opener(NULL);
}

void fault_arm(const struct fault_plan *plan)
{
    pthread_mutex_lock(&F.lock);
    F.plan = *plan;
    F.armed = true;
    F.fired = false;
    F.calls = 0;
    pthread_mutex_unlock(&F.lock);
}

void fault_disarm(void)
{
    pthread_mutex_lock(&F.lock);
    F.armed = false;
    pthread_mutex_unlock(&F.lock);
}

bool fault_fired(void)
{
    pthread_mutex_lock(&F.lock);
    bool fired = F.fired;
    pthread_mutex_unlock(&F.lock);
    return fired;
}

uint64_t fault_calls(void)
{
    pthread_mutex_lock(&F.lock);
    uint64_t n = F.calls;
    pthread_mutex_unlock(&F.lock);
    return n;
}

const char *fault_kind_name(unsigned kinds)
{
    switch (kinds) {
    case FAULT_PREAD: return "pread";
    case FAULT_PWRITE: return "pwrite";
    case FAULT_SYNC: return "sync";
    case FAULT_OTHER: return "truncate/punch/zero/allocate";
    case FAULT_LOCK: return "lock";
    case FAULT_ANY: return "any call";
    default: return "mixed";
    }
}
