/* QEMU-compatible image locks (see lock.c). */
#ifndef VD_IO_LOCK_H
#define VD_IO_LOCK_H

#include <stdbool.h>

/* Lock fd as a reader or writer of path; VD_ELOCKED on a conflict. */
int vd_lock_qemu_style(int fd, const char *path, bool writer);

#endif
