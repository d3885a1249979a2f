/*
 * A fault-injecting file layer for the crash tests.
 *
 * Installed as libvdisk's file opener, it wraps every file opened from then
 * on around the POSIX layer and, once armed, fails the nth call of the chosen
 * kinds (and, if persistent, every later one) with the VD_E* code the POSIX
 * layer gives for errnum (EIO -> VD_EIO, ENOSPC -> VD_ENOSPC). Syncs that do
 * not fail return at once without reaching the disk (the tests look at what
 * the library wrote, not at durability, and fdatasync is slow).
 */
#ifndef VD_TESTS_FAULTIO_H
#define VD_TESTS_FAULTIO_H

#include <stdbool.h>
#include <stdint.h>

enum fault_kind {
    FAULT_PREAD  = 1u << 0,
    FAULT_PWRITE = 1u << 1,
    FAULT_SYNC   = 1u << 2,
    FAULT_OTHER  = 1u << 3, /* truncate, punch_hole, zero_range, allocate */
    FAULT_LOCK   = 1u << 4, /* taking, releasing or testing one lock byte: fails with -errnum */
    FAULT_ANY    = 0xfu,    /* every kind but FAULT_LOCK, which the I/O fault tests leave alone */
};

void fault_install(void);
void fault_uninstall(void);

struct fault_plan {
    unsigned kinds;      /* enum fault_kind bits: which calls count */
    uint64_t nth;        /* 1-based: the call that fails */
    int errnum;          /* EIO, ENOSPC, ... */
    bool persistent;     /* every later counted call fails too */
    bool partial;        /* a failing pwrite first writes its leading half (whole sectors) */
};

/* Start counting from zero under plan. */
void fault_arm(const struct fault_plan *plan);
/* Stop failing (the counters stay readable). */
void fault_disarm(void);
/* Did the armed fault fire? How many counted calls were made since arming? */
bool fault_fired(void);
uint64_t fault_calls(void);
const char *fault_kind_name(unsigned kinds);

#endif
