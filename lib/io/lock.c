/*
 * File locks that QEMU understands (block/file-posix.c): open-file-description
 * read locks on single bytes. Holding permission i locks byte 100 + i;
 * refusing to share permission i locks byte 200 + i. An opener first takes
 * its bytes, then tests the opposite bytes for locks held by anybody else.
 *
 * Like QEMU with qcow2: a reader holds "consistent read" and shares neither
 * "write" nor "resize"; a writer also holds "write" and "resize". So readers
 * coexist, and a writer excludes everybody, in this process or another,
 * libvdisk or QEMU.
 */
#include "core/internal.h"
#include "io/lock.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>

#define PERM_BASE   100
#define SHARED_BASE 200

enum perm { PERM_CONSISTENT_READ, PERM_WRITE, PERM_WRITE_UNCHANGED, PERM_RESIZE, PERM_COUNT };

static const char *const perm_names[PERM_COUNT] = {
    "consistent read", "write", "write unchanged", "resize",
};

static int lock_byte(int fd, off_t byte)
{
    struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
    return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : -errno;
}

/* Is the byte locked through another open file description? */
static int byte_taken(int fd, off_t byte, bool *taken)
{
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return -errno;
    *taken = fl.l_type != F_UNLCK;
    return 0;
}

static int conflict(const char *path, bool shared, enum perm p)
{
    return vd_err(VD_ELOCKED, "%s: failed to get %s\"%s\" lock: is another process using the image?",
                  path, shared ? "shared " : "", perm_names[p]);
}

int vd_lock_qemu_style(int fd, const char *path, bool writer)
{
    unsigned held = 1u << PERM_CONSISTENT_READ;
    unsigned unshared = (1u << PERM_WRITE) | (1u << PERM_RESIZE);
    if (writer)
        held |= (1u << PERM_WRITE) | (1u << PERM_RESIZE);
    for (enum perm p = 0; p < PERM_COUNT; p++) {
        int r = 0;
        if (held & (1u << p))
            r = lock_byte(fd, PERM_BASE + p);
        if (r == 0 && (unshared & (1u << p)))
            r = lock_byte(fd, SHARED_BASE + p);
        if (r == -EAGAIN || r == -EACCES)
            return conflict(path, !(held & (1u << p)), p);
        if (r == -ENOLCK || r == -EOPNOTSUPP || r == -EINVAL)
            return 0; /* a file system without locks: nothing to coordinate with */
        if (r < 0)
            return vd_err(VD_EIO, "%s: cannot take a lock: %s", path, strerror(-r));
    }
    for (enum perm p = 0; p < PERM_COUNT; p++) {
        bool taken = false;
        /* a permission we hold must not be unshared by another opener... */
        if ((held & (1u << p)) && byte_taken(fd, SHARED_BASE + p, &taken) == 0 && taken)
            return conflict(path, false, p);
        /* ...and one we refuse to share must not be held by another */
        if ((unshared & (1u << p)) && byte_taken(fd, PERM_BASE + p, &taken) == 0 && taken)
            return conflict(path, true, p);
    }
    return 0;
}
