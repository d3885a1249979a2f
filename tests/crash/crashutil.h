/* Helpers shared by the crash, fault and kill tests. */
#ifndef VD_TESTS_CRASHUTIL_H
#define VD_TESTS_CRASHUTIL_H

#include "common.h"

/*
 * VD_CRASH_SCALE (default 1): multiplies how much every test does (workload
 * seeds, crash points, seeds per point, kill rounds). Sanitizer builds divide
 * the default work by 3 so that the suite keeps its time budget.
 */
unsigned cu_scale(void);
/* 1 normally, 3 under ASan: divide sampled work by it. */
unsigned cu_slowdown(void);
/* VD_CRASH_SEED (default: def): the base seed of the random workloads. */
uint64_t cu_seed(uint64_t def);

/*
 * `qemu-img check -f fmt path`: its exit status, or -1 if qemu-img is
 * missing. With output, *output receives what it printed (free it).
 */
int cu_qemu_check(const char *path, const char *fmt, char **output);

/*
 * What a check's messages (vd_check's report lines or qemu-img check's
 * output, one per line) say. An OFLAG_COPIED mismatch is benign when the
 * flag is clear (a needless copy-on-write at worst) or when it is set but
 * the cluster really has one reference (its refcount only leaked); it is
 * dangerous when the flag is set on a cluster that really has more than one
 * reference: the next write would change the shared cluster in place.
 */
struct cu_verdict {
    unsigned errors;         /* ERROR lines */
    unsigned copied_benign;
    unsigned copied_dangerous;
    char first_other[256];   /* the first ERROR line that is not a benign COPIED one */
};
void cu_classify(const char *log, uint64_t cluster_size, struct cu_verdict *v);

/*
 * Run qemu-img check on a qcow2 image: true when it exits 0 or 3, or 2 for
 * nothing but benign OFLAG_COPIED mismatches (unless VD_CRASH_STRICT=1;
 * *benign is then set). Otherwise why[] says what is wrong. True if
 * qemu-img is missing.
 */
bool cu_qemu_check_ok(const char *path, uint64_t cluster_size, bool *benign, char *why, size_t whylen);

/* Read the whole image into a new buffer (*size gets the virtual size). */
uint8_t *cu_read_image(vd_image *img, uint64_t *size);

/*
 * Known library problems (see README.md) that cu_open_checked() tolerates
 * unless VD_CRASH_STRICT=1; it reports which it met.
 */
enum cu_known {
    /* the first check finds only benign OFLAG_COPIED mismatches (snapshot create/delete windows) */
    CU_KNOWN_COPIED_AFTER_CRASH = 1u << 0,
};
bool cu_strict(void);

struct cu_check {
    uint64_t leaks;          /* leaks the first check found */
    uint64_t corruptions;    /* corruptions the first check found */
    unsigned known;          /* enum cu_known bits met */
};

/*
 * Open path read-write (repairing a lazy-refcount image) and, for qcow2,
 * vd_check it: no corruptions or check errors; leaks are repaired with
 * VD_CHECK_REPAIR_LEAKS and a second check must then be clean. Returns the
 * open handle, or NULL with why[] filled in when something is wrong.
 * open_flags are added to VD_OPEN_RDWR.
 */
vd_image *cu_open_checked(const char *path, const char *fmt, uint32_t open_flags, char *why,
                          size_t whylen, struct cu_check *out);

/*
 * Damage a qcow2 image (closed) so that its refcounts need a rebuild: clear
 * the first refcount table entry, which leaves the clusters of the first
 * refcount block without refcounts and that block's own cluster leaked.
 */
void cu_drop_first_refblock(const char *path);

/* Leak count clusters of an open qcow2 image (allocated, referenced by nothing, in the
   file); flushed. */
void cu_leak_clusters(vd_image *img, uint64_t count);

/* A check's problems: corruptions, leaks and check errors together. */
uint64_t cu_check_problems(const vd_check_result *res);

/* Copy a file (to keep a failing image for later study). */
void cu_copy_file(const char *from, const char *to);
/* Where to keep failing images: $VD_CRASH_KEEP or /tmp. */
const char *cu_keep_dir(void);

#endif
