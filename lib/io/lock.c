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

/* Has another opener locked the byte? Errors count as no, as before. */
static bool byte_taken(vd_file *f, uint64_t byte)
{
    bool taken = false;
    return f->ops->byte_locked_elsewhere(f, byte, &taken) == 0 && taken;
}

int vd_file_lock(vd_file *f, bool writer)
{
    if (!f->ops->lock_byte)
        return 0;
    unsigned held = 1u << PERM_CONSISTENT_READ;
    unsigned unshared = (1u << PERM_WRITE) | (1u << PERM_RESIZE);
    if (writer)
        held |= (1u << PERM_WRITE) | (1u << PERM_RESIZE);
    for (enum perm p = 0; p < PERM_COUNT; p++) {
        int r = 0;
        if (held & (1u << p))
            r = f->ops->lock_byte(f, PERM_BASE + p, true);
        if (r == 0 && (unshared & (1u << p)))
            r = f->ops->lock_byte(f, SHARED_BASE + p, true);
        if (r == -EAGAIN || r == -EACCES)
            return conflict(f, !(held & (1u << p)), p);
        if (r == -ENOLCK || r == -EOPNOTSUPP || r == -EINVAL)
            return 0; /* a file system without locks: nothing to coordinate with */
        if (r < 0)
            return vd_err(VD_EIO, "%s: cannot take a lock: %s", f->path, strerror(-r));
    }
    for (enum perm p = 0; p < PERM_COUNT; p++) {
        /* a permission we hold must not be unshared by another opener... */
        if ((held & (1u << p)) && byte_taken(f, SHARED_BASE + p))
            return conflict(f, false, p);
        /* ...and one we refuse to share must not be held by another */
        if ((unshared & (1u << p)) && byte_taken(f, PERM_BASE + p))
            return conflict(f, true, p);
    }
    return 0;
}
