/* The progress display, printed as qemu's util/qemu-progress.c does. */
#include "progress.h"

#include <stdio.h>

/* Print when the value moved more than this many percent (qemu-img convert's step). */
#define MIN_STEP 1.0

static void print_percent(struct progress *p, double percent)
{
    p->last_printed = percent;
    printf("    (%3.2f/100%%)\r", percent);
    fflush(stdout);
}

void progress_start(struct progress *p, bool requested)
{
    p->enabled = requested;
    if (p->enabled)
        print_percent(p, 0.0);
}

void progress_update(struct progress *p, uint64_t done, uint64_t total)
{
    if (!p->enabled || !total) /* no work at all: only the final 100% */
        return;
    double percent = 100.0 * (double)done / (double)total;
    if (percent > p->last_printed + MIN_STEP || (percent == 100.0 && done))
        print_percent(p, percent);
}

void progress_finish(struct progress *p, bool success)
{
    if (!p->enabled)
        return;
    if (success)
        print_percent(p, 100.0);
    putchar('\n');
    fflush(stdout);
}
