/*
 * Confined name resolution (vd_dir_open_beneath() in file.h): resolve a name
 * an image records inside a directory held open, never following a symbolic
 * link and never climbing out, so that the caller opens the file it checked.
 */
#include "core/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifdef SYS_openat2
#include <linux/openat2.h>
#endif

static int refuse_outside(const char *path)
{
    return vd_err(VD_EPERM, "'%s' is outside the image's directory, which a confined open "
                  "refuses", path);
}

static int refuse_symlink(const char *path)
{
    return vd_err(VD_EPERM, "'%s' goes through a symbolic link, which a confined open does not "
                  "follow (it could lead outside the image's directory)", path);
}

/* The posix opener's mapping of open(2) errors. */
static int open_error(const char *path, int e)
{
    int code = e == ENOENT ? VD_ENOENT
             : (e == EACCES || e == EPERM || e == EROFS) ? VD_EPERM : VD_EIO;
    return vd_err(code, "Could not open '%s': %s", path, strerror(e));
}

/*
 * The part of the absolute name below dir_fd: found by the shortest leading
 * part of name that is the directory dir_fd itself (following links, as the
 * image's creator may have spelt it through one); NULL if none is. What this
 * returns is then resolved beneath dir_fd, so a directory swapped meanwhile
 * can make the name fail, never leave the directory.
 */
static const char *below_dir(int dir_fd, const char *name)
{
    struct stat dir, st;
    char *prefix = strdup(name);
    const char *below = NULL;
    if (!prefix || fstat(dir_fd, &dir) < 0) {
        free(prefix);
        return NULL;
    }
    for (char *slash = strchr(prefix + 1, '/'); slash && !below; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        if (stat(prefix, &st) == 0 && st.st_dev == dir.st_dev && st.st_ino == dir.st_ino)
            below = name + (slash - prefix) + 1;
        *slash = '/';
    }
    free(prefix);
    return below;
}

/* openat2 resolves dirs beneath dir_fd in one call: the fd, or -errno (-ENOSYS without it). */
static int open_dirs_openat2(int dir_fd, const char *dirs)
{
#ifdef SYS_openat2
    struct open_how how = {
        .flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    long fd;
    int tries = 0;
    do /* EAGAIN: a rename elsewhere raced the lookup; the kernel asks us to retry */
        fd = syscall(SYS_openat2, dir_fd, dirs, &how, sizeof how);
    while (fd < 0 && (errno == EAGAIN || errno == EINTR) && ++tries < 16);
    return fd < 0 ? -errno : (int)fd;
#else
    (void)dir_fd;
    (void)dirs;
    return -ENOSYS;
#endif
}

static int component_error(int parent, const char *component, const char *path, int e)
{
    struct stat st;
    if (fstatat(parent, component, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
        return refuse_symlink(path);
    return open_error(path, e);
}

/*
 * Without openat2: walk dirs one component at a time with O_NOFOLLOW, keeping
 * the directories passed so that ".." goes back one without a lookup (a
 * lookup of ".." in a directory moved meanwhile could climb out).
 */
static int walk_dirs(int dir_fd, char *dirs, const char *path, int *out)
{
    int *passed = malloc((strlen(dirs) / 2 + 1) * sizeof *passed);
    if (!passed)
        return vd_err(VD_ENOMEM, "%s: out of memory", path);
    size_t depth = 0;
    int rc = 0;
    char *save;
    for (char *c = strtok_r(dirs, "/", &save); c && rc == 0; c = strtok_r(NULL, "/", &save)) {
        if (strcmp(c, ".") == 0)
            continue;
        if (strcmp(c, "..") == 0) {
            if (depth)
                close(passed[--depth]);
            else
                rc = refuse_outside(path);
            continue;
        }
        int parent = depth ? passed[depth - 1] : dir_fd;
        int fd = openat(parent, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            rc = component_error(parent, c, path, errno);
        else
            passed[depth++] = fd;
    }
    if (rc == 0 && depth)
        *out = passed[--depth];
    else if (rc == 0 && (*out = fcntl(dir_fd, F_DUPFD_CLOEXEC, 0)) < 0)
        rc = open_error(path, errno);
    while (depth)
        close(passed[--depth]);
    free(passed);
    return rc;
}

/* Open the directories dirs (relative, may be empty) beneath dir_fd. */
static int open_dirs(int dir_fd, char *dirs, const char *path, int *out)
{
    if (!*dirs) /* the name is an entry of dir_fd itself: the walk hands back a copy of it */
        return walk_dirs(dir_fd, dirs, path, out);
    int fd = open_dirs_openat2(dir_fd, dirs);
    if (fd == -ENOSYS)
        return walk_dirs(dir_fd, dirs, path, out);
    if (fd == -EXDEV)
        return refuse_outside(path);
    if (fd == -ELOOP)
        return refuse_symlink(path);
    if (fd < 0)
        return open_error(path, -fd);
    *out = fd;
    return 0;
}

int vd_dir_open_beneath(int dir_fd, const char *name, const char *path, int *parent_fd,
                        const char **leaf)
{
    const char *relative = name[0] == '/' ? below_dir(dir_fd, name) : name;
    if (!relative)
        return refuse_outside(path);
    const char *slash = strrchr(relative, '/');
    *leaf = slash ? slash + 1 : relative;
    if (!**leaf || strcmp(*leaf, ".") == 0 || strcmp(*leaf, "..") == 0)
        return vd_err(VD_EINVAL, "'%s' does not name a file", path);
    char *dirs = strndup(relative, (size_t)(*leaf - relative));
    if (!dirs)
        return vd_err(VD_ENOMEM, "%s: out of memory", path);
    int rc = open_dirs(dir_fd, dirs, path, parent_fd);
    free(dirs);
    return rc;
}

int vd_dir_open_of(const char *path, int *dir_fd)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir)
        return vd_err(VD_ENOMEM, "%s: out of memory", path);
    *dir_fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    int e = errno;
    int rc = *dir_fd < 0 ? vd_err(e == ENOENT ? VD_ENOENT : VD_EPERM, "%s: could not open its "
                                  "directory '%s' to confine the names it records: %s",
                                  path, dir, strerror(e))
                         : 0;
    free(dir);
    return rc;
}
