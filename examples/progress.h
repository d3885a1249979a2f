/*
 * qemu-img's "-p" progress display: "    (12.34/100%)" rewritten in place,
 * on standard output whether it is a terminal or a pipe, as qemu-img does.
 */
#ifndef VDISK_PROGRESS_H
#define VDISK_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

struct progress {
    bool enabled;
    double last_printed; /* percent */
};

/* Enabled when asked for. Prints 0%. */
void progress_start(struct progress *p, bool requested);
/*
 * Report done of total units; prints when more than a whole percent more is
 * done, and at 100%.
 */
void progress_update(struct progress *p, uint64_t done, uint64_t total);
/* Print 100% (on success) and end the line. */
void progress_finish(struct progress *p, bool success);

#endif /* VDISK_PROGRESS_H */
