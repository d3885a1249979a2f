/* Shared pieces of the libFuzzer targets (see fuzz_common.h). */
#include "fuzz_common.h"
#include "crypto/crypto.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { CHUNK = 1 << 20, SAMPLE_LEN = 64 << 10 };

void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "\n==FUZZ== %s:%d: contract broken: %s\n==FUZZ== ", file, line, cond);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n==FUZZ== last libvdisk message: %s\n", vd_errmsg());
    abort();
}

void fuzz_check_rc(int rc, const char *call)
{
    FUZZ_ASSERT(rc <= 0, "%s returned %d (positive)", call, rc);
    FUZZ_ASSERT(rc == 0 || strcmp(vd_errname(rc), "VD_E?") != 0,
                "%s returned %d, which is not a libvdisk error code", call, rc);
}

static bool verbose(void)
{
    static int v = -1;
    if (v < 0)
        v = getenv("FUZZ_VERBOSE") && *getenv("FUZZ_VERBOSE") == '1';
    return v;
}

void fuzz_log(const char *fmt, ...)
{
    if (!verbose())
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

void fuzz_report(void *ctx, const char *message)
{
    FUZZ_ASSERT(message != NULL, "vd_check reported a NULL message");
    fuzz_log("check: %s", message);
}

void fuzz_init(void)
{
    static bool done;
    if (!done) {
        memfile_install();
        /* a damaged iteration count must not make one open run for seconds */
        vd_luks_max_iterations = FUZZ_LUKS_MAX_ITERATIONS;
        done = true;
    }
}

static double cpu_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* vd_open_ext within FUZZ_OPEN_CPU_SECONDS; the error code checked. */
static int timed_open(vd_image **img, const vd_open_opts *o)
{
    double start = cpu_seconds();
    int rc = vd_open_ext(img, MEMFILE_IMAGE, o);
    double spent = cpu_seconds() - start;
    fuzz_check_rc(rc, "vd_open_ext");
    FUZZ_ASSERT(spent < FUZZ_OPEN_CPU_SECONDS, "opening took %.2f s of CPU time (flags 0x%x)",
                spent, o->flags);
    return rc;
}

int fuzz_open(vd_image **img, const uint8_t *data, size_t size, const char *format,
              const char *snapshot, uint32_t extra_flags)
{
    fuzz_init();
    size_t open_before = memfile_open_count(), served;
    if (!memfile_content(MEMFILE_IMAGE, &served)) /* a second handle shares the file */
        memfile_add_readonly(MEMFILE_IMAGE, data, size);
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.flags = VD_OPEN_CONFINED | VD_OPEN_NO_LOCK | extra_flags;
    o.format = format;
    o.secret = FUZZ_PASSPHRASE;
    o.snapshot = snapshot;
    *img = NULL;
    int rc = timed_open(img, &o);
    FUZZ_ASSERT((rc == 0) == (*img != NULL), "vd_open_ext returned %d with handle %p", rc,
                (void *)*img);
    /* the layer and VD_OPEN_CONFINED refuse files with VD_EPERM; a chain error may keep it */
    bool maybe_backing = rc == VD_EBACKING || rc == VD_EPERM || rc == VD_ENOENT;
    if (maybe_backing && !(o.flags & VD_OPEN_NO_BACKING)) {
        FUZZ_ASSERT(memfile_open_count() == open_before, "a failed open left %zu file(s) open",
                    memfile_open_count() - open_before);
        o.flags |= VD_OPEN_NO_BACKING;
        rc = timed_open(img, &o);
    }
    if (rc < 0)
        FUZZ_ASSERT(memfile_open_count() == open_before, "a failed open left %zu file(s) open",
                    memfile_open_count() - open_before);
    return rc;
}

int fuzz_open_rw(vd_image **img, const char *format, uint32_t *flags)
{
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.format = format;
    o.secret = FUZZ_PASSPHRASE;
    o.flags = VD_OPEN_RDWR | VD_OPEN_CONFINED | VD_OPEN_NO_LOCK;
    int rc = VD_EINVAL;
    for (int attempt = 0; attempt < 3; attempt++) {
        rc = timed_open(img, &o);
        if ((rc == VD_EBACKING || rc == VD_EPERM || rc == VD_ENOENT) &&
            !(o.flags & VD_OPEN_NO_BACKING))
            o.flags |= VD_OPEN_NO_BACKING;
        else if (rc == VD_ECORRUPT && !(o.flags & VD_OPEN_REPAIR))
            o.flags |= VD_OPEN_REPAIR;
        else
            break;
    }
    *flags = o.flags;
    return rc;
}

bool fuzz_check_clean(vd_image *img, bool repair)
{
    vd_check_result res = VD_CHECK_RESULT_INIT;
    fuzz_log("%s", repair ? "repairing" : "checking");
    int rc = vd_check(img, repair ? VD_CHECK_REPAIR_ALL : 0, &res, fuzz_report, NULL);
    fuzz_log("check: rc %d, %llu corruptions and %llu leaks left, %llu and %llu fixed", rc,
             (unsigned long long)res.corruptions, (unsigned long long)res.leaks,
             (unsigned long long)res.corruptions_fixed, (unsigned long long)res.leaks_fixed);
    fuzz_check_rc(rc, "vd_check");
    if (rc == VD_EUNSUPPORTED) /* raw: nothing to check; it is clean */
        return true;
    if (rc != 0 || res.corruptions || res.leaks || res.check_errors)
        return false;
    if (!repair)
        return true;
    vd_check_result after = VD_CHECK_RESULT_INIT;
    rc = vd_check(img, 0, &after, NULL, NULL);
    fuzz_check_rc(rc, "vd_check");
    FUZZ_ASSERT(rc != 0 || (after.corruptions == 0 && after.leaks == 0),
                "a repair left nothing to fix, but a check then finds %llu corruptions and "
                "%llu leaks", (unsigned long long)after.corruptions,
                (unsigned long long)after.leaks);
    return rc == 0;
}

void fuzz_count_benign(void *ctx, const char *message)
{
    struct fuzz_benign *b = ctx;
    fuzz_report(NULL, message);
    const char *entry = strstr(message, "_entry=");
    unsigned long long cluster;
    if (strncmp(message, "ERROR OFLAG_COPIED", 18) == 0 && strstr(message, " refcount=1") &&
        !(strstr(message, " refcount=1") && strstr(message, " refcount=1")[11]) && entry &&
        !(strtoull(entry + 7, NULL, 16) >> 63))
        b->corruptions++;
    if (sscanf(message, "Leaked cluster %llu ", &cluster) == 1 && cluster >= b->old_end)
        b->leaks++;
}

void fuzz_close(vd_image *img)
{
    int rc = vd_close(img);
    fuzz_check_rc(rc, "vd_close");
    FUZZ_ASSERT(rc == 0, "vd_close of a read-only handle failed: %d", rc);
    memfile_clear(); /* aborts if a vd_file leaked */
}

void fuzz_getters(vd_image *img)
{
    uint64_t size = 0;
    int rc = vd_get_size(img, &size);
    FUZZ_ASSERT(rc == 0, "vd_get_size failed: %d", rc);
    FUZZ_ASSERT(size <= INT64_MAX, "virtual size %llu is beyond 2^63", (unsigned long long)size);

    vd_info info = VD_INFO_INIT;
    rc = vd_get_info(img, &info);
    fuzz_check_rc(rc, "vd_get_info");
    if (rc == 0) {
        FUZZ_ASSERT(info.virtual_size == size, "info size %llu != vd_get_size %llu",
                    (unsigned long long)info.virtual_size, (unsigned long long)size);
        FUZZ_ASSERT(info.format && strcmp(info.format, vd_get_format(img)) == 0, "info format");
        FUZZ_ASSERT(info.read_only, "a read-only open reports a writable handle");
        FUZZ_ASSERT(info.cluster_size == 0 || (info.cluster_size & (info.cluster_size - 1)) == 0,
                    "cluster size %u is not a power of two", info.cluster_size);
        /* strings the image owns must be readable C strings */
        volatile size_t n = 0;
        if (info.backing_file)
            n += strlen(info.backing_file);
        if (info.backing_format)
            n += strlen(info.backing_format);
        n += strlen(info.filename);
        (void)n;
    }

    for (size_t i = 0;; i++) {
        const char *key = NULL, *value = NULL;
        int type = -1;
        rc = vd_get_property(img, i, &key, &value, &type);
        if (rc == VD_ENOENT)
            break;
        FUZZ_ASSERT(rc == 0, "vd_get_property(%zu) failed: %d", i, rc);
        FUZZ_ASSERT(i < 1000, "more than 1000 properties");
        FUZZ_ASSERT(key && value && *key, "property %zu has a NULL or empty key or value", i);
        FUZZ_ASSERT(type == VD_PROP_STRING || type == VD_PROP_INT || type == VD_PROP_BOOL,
                    "property %s has type %d", key, type);
        if (type == VD_PROP_BOOL)
            FUZZ_ASSERT(strcmp(value, "true") == 0 || strcmp(value, "false") == 0,
                        "bool property %s = '%s'", key, value);
        if (type == VD_PROP_INT)
            FUZZ_ASSERT(value[strspn(value, "-0123456789")] == '\0' && *value,
                        "int property %s = '%s'", key, value);
    }
    vd_image *b = vd_get_backing(img);
    for (int depth = 0; b; b = vd_get_backing(b), depth++)
        FUZZ_ASSERT(depth < 100, "backing chain does not end");
}

/* Read one range; false when the handle is poisoned and reading should stop. */
static bool read_range(vd_image *img, uint64_t off, uint8_t *buf, size_t len)
{
    int rc = vd_read(img, off, buf, len, 0);
    fuzz_check_rc(rc, "vd_read");
    FUZZ_ASSERT(rc != VD_ERANGE, "in-range read %llu+%zu failed with VD_ERANGE",
                (unsigned long long)off, len);
    return rc != VD_EPOISONED && rc != VD_ECORRUPT;
}

void fuzz_read_sample(vd_image *img, unsigned max_regions)
{
    uint64_t size;
    if (vd_get_size(img, &size) < 0 || size == 0)
        return;
    uint8_t *buf = malloc(SAMPLE_LEN + 2048); /* regions are up to SAMPLE_LEN + 1025 bytes */
    FUZZ_ASSERT(buf, "out of memory");
    uint64_t step = size / max_regions ? size / max_regions : 1;
    for (unsigned i = 0; i < max_regions; i++) {
        uint64_t off = step * i;
        if (i & 1) /* odd regions start off any alignment */
            off += (i * 7919u) % 4099u;
        if (off >= size)
            break;
        size_t len = SAMPLE_LEN + (i % 3) * 512 + (i & 1);
        if (len > size - off)
            len = (size_t)(size - off);
        if (!read_range(img, off, buf, len))
            break;
    }
    /* the very end, across the last cluster boundary */
    size_t tail = size < 1536 ? (size_t)size : 1536;
    read_range(img, size - tail, buf, tail);
    free(buf);
}

void fuzz_read_disk(vd_image *img)
{
    uint64_t size;
    if (vd_get_size(img, &size) < 0 || size == 0)
        return;
    if (size > FUZZ_FULL_READ_MAX) {
        fuzz_read_sample(img, FUZZ_SAMPLE_REGIONS);
        return;
    }
    uint8_t *buf = malloc(CHUNK);
    FUZZ_ASSERT(buf, "out of memory");
    for (uint64_t off = 0; off < size;) {
        size_t len = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
        if (!read_range(img, off, buf, len))
            break;
        off += len;
    }
    free(buf);
}

static bool all_zero(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return false;
    return true;
}

void fuzz_block_status_walk(vd_image *img, uint64_t zero_check_bytes)
{
    uint64_t size;
    if (vd_get_size(img, &size) < 0 || size == 0)
        return;
    uint8_t *buf = NULL;
    uint64_t off = 0;
    for (unsigned n = 0; n < FUZZ_MAX_EXTENTS && off < size; n++) {
        vd_extent ext;
        memset(&ext, 0xa5, sizeof ext);
        int rc = vd_block_status(img, off, size - off, &ext, 0);
        fuzz_check_rc(rc, "vd_block_status");
        if (rc < 0)
            break;
        FUZZ_ASSERT(ext.offset == off, "extent at %llu reports offset %llu",
                    (unsigned long long)off, (unsigned long long)ext.offset);
        FUZZ_ASSERT(ext.length > 0 && ext.length <= size - off,
                    "extent at %llu has length %llu (at most %llu asked)",
                    (unsigned long long)off, (unsigned long long)ext.length,
                    (unsigned long long)(size - off));
        FUZZ_ASSERT((ext.flags & ~(uint32_t)(VD_EXTENT_DATA | VD_EXTENT_ZERO | VD_EXTENT_ALLOCATED)) == 0,
                    "extent at %llu has unknown flags 0x%x", (unsigned long long)off, ext.flags);
        FUZZ_ASSERT(ext.depth >= 0 && ext.depth < 100, "extent at %llu has depth %d",
                    (unsigned long long)off, ext.depth);
        if ((ext.flags & VD_EXTENT_ZERO) && zero_check_bytes) {
            if (!buf)
                buf = malloc(CHUNK);
            FUZZ_ASSERT(buf, "out of memory");
            uint64_t left = ext.length < zero_check_bytes ? ext.length : zero_check_bytes;
            zero_check_bytes -= left;
            for (uint64_t pos = off; left;) {
                size_t len = left < CHUNK ? (size_t)left : CHUNK;
                rc = vd_read(img, pos, buf, len, 0);
                fuzz_check_rc(rc, "vd_read");
                if (rc < 0)
                    break;
                FUZZ_ASSERT(all_zero(buf, len), "extent %llu+%llu is flagged VD_EXTENT_ZERO but "
                            "%llu+%zu does not read as zeroes", (unsigned long long)off,
                            (unsigned long long)ext.length, (unsigned long long)pos, len);
                pos += len;
                left -= len;
            }
        }
        off += ext.length;
    }
    free(buf);
}
