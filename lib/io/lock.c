/*
 * File locks that QEMU understands (block/file-posix.c): shared locks on
 * single bytes, taken through the file layer's lock_byte primitive (POSIX:
 * open-file-description locks). Holding permission i locks byte 100 + i;
 * refusing to share permission i locks byte 200 + i. An opener first takes
 * its bytes, then tests the opposite bytes for locks held by anybody else.
 *
 * Like QEMU with qcow2: a reader holds "consistent read" and shares neither
 * "write" nor "resize"; a writer also holds "write" and "resize". So readers
 * coexist, and a writer excludes everybody, in this process or another,
 * libvdisk or QEMU.
 */
#include "core/internal.h"

#include <errno.h>
#include <string.h>

#define PERM_BASE   100
#define SHARED_BASE 200

enum perm { PERM_CONSISTENT_READ, PERM_WRITE, PERM_WRITE_UNCHANGED, PERM_RESIZE, PERM_COUNT };

static const char *const perm_names[PERM_COUNT] = {
    "consistent read", "write", "write unchanged", "resize",
};

static int conflict(const vd_file *f, bool shared, enum perm p)
{
    return vd_err(VD_ELOCKED, "%s: failed to get %s\"%s\" lock: is another process using the image?",
                  f->path, shared ? "shared " : "", perm_names[p]);
}

/*
 * A lock primitive failed with -errnum. A file system that cannot lock
 * fails the open as in QEMU: going on without locks would let two writers
 * share the image. Only the caller can know that nobody else uses it.
 */
static int lock_failed(const vd_file *f, int errnum, uint64_t byte)
{
    if (errnum == ENOLCK || errnum == EOPNOTSUPP || errnum == EINVAL)
        return vd_err(VD_EUNSUPPORTED, "%s: cannot lock byte %llu: %s (the file system cannot lock; "
                      "opening without locks, as VD_OPEN_NO_LOCK and -U do, is safe only if "
                      "nothing else uses the image)", f->path, (unsigned long long)byte,
                      strerror(errnum));
    return vd_err(VD_EIO, "%s: cannot lock byte %llu: %s", f->path, (unsigned long long)byte,
                  strerror(errnum));
}

/* Lock the bytes of the permissions in held and in unshared, listing each one taken in taken[]. */
static int take_bytes(vd_file *f, unsigned held, unsigned unshared, uint64_t taken[], int *ntaken)
{
    for (enum perm p = 0; p < PERM_COUNT; p++) {
        uint64_t bytes[2];
        int n = 0;
        if (held & (1u << p))
            bytes[n++] = PERM_BASE + p;
        if (unshared & (1u << p))
            bytes[n++] = SHARED_BASE + p;
        for (int i = 0; i < n; i++) {
            int r = f->ops->lock_byte(f, bytes[i], true);
            if (r == -EAGAIN || r == -EACCES)
                return conflict(f, !(held & (1u << p)), p);
            if (r < 0)
                return lock_failed(f, -r, bytes[i]);
            taken[(*ntaken)++] = bytes[i];
        }
    }
    return 0;
}

/* Is the byte locked through another open file? */
static int test_byte(vd_file *f, uint64_t byte, bool *locked)
{
    int r = f->ops->byte_locked_elsewhere(f, byte, locked);
    return r < 0 ? lock_failed(f, -r, byte) : 0;
}

/* Does another opener hold or refuse to share what we hold or refuse to share? */
static int find_conflict(vd_file *f, unsigned held, unsigned unshared)
{
    for (enum perm p = 0; p < PERM_COUNT; p++) {
        bool locked = false;
        int rc = 0;
        /* a permission we hold must not be unshared by another opener... */
        if ((held & (1u << p)) && (rc = test_byte(f, SHARED_BASE + p, &locked)) == 0 && locked)
            return conflict(f, false, p);
        /* ...and one we refuse to share must not be held by another */
        if (rc == 0 && (unshared & (1u << p)) && (rc = test_byte(f, PERM_BASE + p, &locked)) == 0 &&
            locked)
            return conflict(f, true, p);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int vd_file_lock(vd_file *f, bool writer)
{
    if (!f->ops->lock_byte)
        return 0;
    unsigned held = 1u << PERM_CONSISTENT_READ;
    unsigned unshared = (1u << PERM_WRITE) | (1u << PERM_RESIZE);
    if (writer)
        held |= (1u << PERM_WRITE) | (1u << PERM_RESIZE);
    uint64_t taken[2 * PERM_COUNT];
    int ntaken = 0;
    int rc = take_bytes(f, held, unshared, taken, &ntaken);
    if (rc == 0)
        rc = find_conflict(f, held, unshared);
    /*
     * A failed lock holds nothing: the bytes would otherwise stay locked as
     * long as the file is open (or a forked child holds it), refusing others.
     */
    for (int i = 0; rc < 0 && i < ntaken; i++)
        f->ops->lock_byte(f, taken[i], false);
    return rc;
}
