/* The progress bar, printed as qemu's util/qemu-progress.c does. */
#include "progress.h"

#include <stdio.h>
#include <unistd.h>

/* Print when the value moved at least this many percent (qemu-img convert's step). */
#define MIN_STEP 1.0

static void print_percent(struct progress *p, double percent)
{
    p->last_printed = percent;
    printf("    (%3.2f/100%%)\r", percent);
    fflush(stdout);
}

void progress_start(struct progress *p, bool requested)
{
    p->enabled = requested && isatty(STDOUT_FILENO);
    if (p->enabled)
        print_percent(p, 0.0);
}

void progress_update(struct progress *p, uint64_t done, uint64_t total)
{
    if (!p->enabled)
        return;
    double percent = total ? 100.0 * (double)done / (double)total : 100.0;
    if (percent >= p->last_printed + MIN_STEP)
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
