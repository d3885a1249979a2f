/*
 * A crash-simulating file layer for the crash tests.
 *
 * Installed as libvdisk's file opener, it passes every call through to the
 * POSIX layer and, for the one file being tracked, records every change
 * (pwrite, truncate, punch_hole, zero_range, allocate) and every sync in the
 * order they were issued. The changes are numbered from 0 ("write numbers").
 *
 * crash_materialize() then builds the file a power cut could have left:
 *
 *   point p = the crash came after writes [0, p) were issued; the syncs
 *             issued before write p-1 completed, later ones did not.
 *             p ranges over [0, crash_write_count() + 1]; the last value
 *             means "every write issued and every sync completed".
 *   result  = the file as of the last completed sync, plus a random subset
 *             (seeded) of the writes issued after it, applied in a random
 *             order; with tearing on, writes covering several 512-byte
 *             sectors may land only partly, sector by sector.
 *
 * Sector-sized and smaller writes within one sector never tear: a disk
 * writes a sector atomically.
 */
#ifndef VD_TESTS_CRASHIO_H
#define VD_TESTS_CRASHIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Install the crash opener (files opened from now on go through it); uninstall restores POSIX. */
void crash_install(void);
void crash_uninstall(void);

/*
 * Record changes to path from now on, starting from its current content
 * (which counts as durable). Forgets an earlier recording.
 */
void crash_track(const char *path);
/* Forget the recording and free its memory. */
void crash_reset(void);

/* Writes (changes of any kind) recorded so far; syncs recorded so far. */
uint64_t crash_write_count(void);
uint64_t crash_sync_count(void);

struct crash_opts {
    bool tear;            /* tear multi-sector writes */
    bool reorder;         /* apply the surviving writes in a random order */
};

/*
 * Write the file a crash at point could leave to out_path (see above).
 * Returns the number of writes after the last completed sync that were
 * candidates (0: the result is fully determined).
 */
uint64_t crash_materialize(uint64_t point, uint64_t seed, const char *out_path);
uint64_t crash_materialize_opts(uint64_t point, uint64_t seed, const struct crash_opts *opts,
                                const char *out_path);

/* For diagnostics: describe write number w ("#w pwrite off=... len=...") into buf. */
void crash_describe(uint64_t w, char *buf, size_t len);

#endif
