/*
 * fuzz_snapshot_resize: the input is an image file, opened read-write on an
 * in-memory copy as fuzz_write opens it (even-sized inputs are repaired
 * first). Then the operations that rewrite metadata outside the data path,
 * where a hostile table has cost data before:
 *   1. create a snapshot, then write into the first window of the disk;
 *   2. grow the disk by 1 GiB (the L1 table grows, and usually moves) and
 *      write just past the old end, which must read back;
 *   3. apply the snapshot: the disk has the snapshot's size and the window
 *      reads as it did when the snapshot was taken; then delete it;
 *   4. delete the image's own first snapshot, whatever its table says;
 *   5. shrink the disk to half its size.
 * Every error must come from the table and none may be a complaint about
 * valid arguments. While every step succeeds, the window must read as the
 * steps say; after a flush and close the file must still begin with its
 * magic (metadata never lands on the header), reopen with the size and the
 * window it had, and an image that checked clean must still check clean.
 */
#include "fuzz_common.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { WINDOW = 128 << 10, GROWTH = 32 << 20 };
#define GROW_BY (1ull << 30)
#define SNAPSHOT_NAME "fuzz-snapshot"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_init();
    return 0;
}

/* What the steps so far say the disk holds. */
struct state {
    vd_image *img;
    uint64_t size;
    uint8_t *window;  /* the expected bytes of [0, min(size, WINDOW)) */
    bool trusted;     /* every step succeeded, so window and size are known */
    bool alive;       /* the handle still serves requests */
};

static uint64_t window_len(const struct state *s)
{
    return s->size < WINDOW ? s->size : WINDOW;
}

static uint8_t pattern(uint64_t pos)
{
    return (uint8_t)((pos * 2654435761u) >> 11 ^ 0xa5);
}

/* Record a step's result: an error of the table, never one about valid arguments. */
static bool step(struct state *s, int rc, const char *what)
{
    fuzz_check_rc(rc, what);
    fuzz_log("%s: %s %s", what, vd_errname(rc), rc ? vd_errmsg() : "");
    FUZZ_ASSERT(rc != VD_EINVAL && rc != VD_ERANGE && rc != VD_EREADONLY,
                "%s failed with %s: %s", what, vd_errname(rc), vd_errmsg());
    if (rc == VD_EPOISONED || rc == VD_ECORRUPT)
        s->alive = false;
    if (rc < 0)
        s->trusted = false;
    return rc == 0;
}

/* Read [off, off+len) and, while the state is trusted, compare with expect. */
static void expect_bytes(struct state *s, vd_image *img, uint64_t off, const uint8_t *expect,
                         uint64_t len, const char *when)
{
    if (!len || !s->alive)
        return;
    uint8_t *got = malloc((size_t)len);
    FUZZ_ASSERT(got, "out of memory");
    int rc = vd_read(img, off, got, (size_t)len, 0);
    if (step(s, rc, "vd_read") && s->trusted) {
        for (uint64_t i = 0; i < len; i++)
            FUZZ_ASSERT(got[i] == expect[i], "%s: byte %llu reads 0x%02x, expected 0x%02x", when,
                        (unsigned long long)(off + i), got[i], expect[i]);
    }
    free(got);
}

/* Write the pattern over [off, off+len); the window learns what it covers. */
static void write_pattern(struct state *s, uint64_t off, uint64_t len)
{
    uint8_t *buf = malloc((size_t)len);
    FUZZ_ASSERT(buf, "out of memory");
    for (uint64_t i = 0; i < len; i++)
        buf[i] = pattern(off + i);
    if (step(s, vd_write(s->img, off, buf, (size_t)len, 0), "vd_write")) {
        for (uint64_t pos = off; pos < off + len && pos < window_len(s); pos++)
            s->window[pos] = buf[pos - off];
        expect_bytes(s, s->img, off, buf, len, "after writing");
    }
    free(buf);
}

static void resize(struct state *s, uint64_t new_size, uint32_t flags, const char *what)
{
    if (s->alive && step(s, vd_resize(s->img, new_size, flags), what))
        s->size = new_size;
}

/* Steps 1 to 3: a snapshot survives a write and growth, and comes back whole. */
static void snapshot_round_trip(struct state *s)
{
    uint8_t *at_snapshot = malloc(WINDOW);
    FUZZ_ASSERT(at_snapshot, "out of memory");
    memcpy(at_snapshot, s->window, (size_t)window_len(s));
    uint64_t size_at_snapshot = s->size;
    bool taken = step(s, vd_snapshot_create(s->img, SNAPSHOT_NAME, 0), "vd_snapshot_create");

    uint64_t len = window_len(s);
    if (s->alive && len)
        write_pattern(s, len / 4, len / 2);
    uint64_t old_end = s->size;
    if (s->alive && s->size <= INT64_MAX - GROW_BY)
        resize(s, s->size + GROW_BY, 0, "vd_resize (grow)");
    if (s->alive && s->size > old_end)
        write_pattern(s, old_end, 4096);

    if (taken && s->alive &&
        step(s, vd_snapshot_apply(s->img, SNAPSHOT_NAME, 0), "vd_snapshot_apply")) {
        uint64_t size;
        FUZZ_ASSERT(vd_get_size(s->img, &size) == 0, "vd_get_size");
        FUZZ_ASSERT(!s->trusted || size == size_at_snapshot,
                    "after applying the snapshot the size is %llu, not %llu",
                    (unsigned long long)size, (unsigned long long)size_at_snapshot);
        s->size = size;
        memcpy(s->window, at_snapshot, WINDOW);
        expect_bytes(s, s->img, 0, s->window, window_len(s), "after applying the snapshot");
    }
    if (taken && s->alive)
        step(s, vd_snapshot_delete(s->img, SNAPSHOT_NAME, 0), "vd_snapshot_delete");
    free(at_snapshot);
}

/* Step 4: the image's own first snapshot (listed before anything changed). */
static void delete_own_snapshot(struct state *s, const char *id)
{
    if (id && s->alive)
        step(s, vd_snapshot_delete(s->img, id, 0), "vd_snapshot_delete (the image's own)");
}

static void reopen_and_verify(struct state *s, uint32_t open_flags, bool clean, uint64_t old_end)
{
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.format = FUZZ_OPEN_FORMAT;
    o.flags = open_flags & ~(uint32_t)(VD_OPEN_RDWR | VD_OPEN_REPAIR);
    vd_image *again;
    int rc = vd_open_ext(&again, MEMFILE_IMAGE, &o);
    fuzz_check_rc(rc, "vd_open_ext");
    FUZZ_ASSERT(rc == 0, "the image no longer opens after the steps: %s", vd_errmsg());
    uint64_t size;
    FUZZ_ASSERT(vd_get_size(again, &size) == 0, "vd_get_size");
    FUZZ_ASSERT(!s->trusted || size == s->size, "reopened with size %llu, not %llu",
                (unsigned long long)size, (unsigned long long)s->size);
    expect_bytes(s, again, 0, s->window, window_len(s), "after reopening");
    vd_check_result res = VD_CHECK_RESULT_INIT;
    struct fuzz_benign benign = { .old_end = old_end };
    rc = vd_check(again, 0, &res, fuzz_count_benign, &benign);
    fuzz_check_rc(rc, "vd_check");
    FUZZ_ASSERT(!clean || rc != 0 || (res.corruptions <= benign.corruptions &&
                                      res.leaks <= benign.leaks),
                "an image that checked clean has %llu corruptions and %llu leaks after the steps",
                (unsigned long long)(res.corruptions - benign.corruptions),
                (unsigned long long)(res.leaks - benign.leaks));
    vd_close(again);
}

/* The first snapshot's id (or name, where the id is empty), copied; NULL if there is none. */
static char *first_snapshot_id(vd_image *img)
{
    size_t count = 0;
    vd_snapshot_info info = VD_SNAPSHOT_INFO_INIT;
    if (vd_snapshot_count(img, &count) < 0 || !count || vd_snapshot_get(img, 0, &info) < 0)
        return NULL;
    const char *which = *info.id ? info.id : info.name;
    if (!*which) /* nothing names it: an empty name is an invalid argument */
        return NULL;
    char *id = strdup(which);
    FUZZ_ASSERT(id, "out of memory");
    return id;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    memfile_add_copy(MEMFILE_IMAGE, data, size, size + GROWTH);
    struct state s = { .trusted = true, .alive = true };
    uint32_t flags;
    if (fuzz_open_rw(&s.img, FUZZ_OPEN_FORMAT, &flags) < 0) {
        memfile_clear();
        return 0;
    }
    bool repair = size % 2 == 0;
    bool clean = fuzz_check_clean(s.img, repair);
    s.trusted = clean || repair;
    vd_info info = VD_INFO_INIT;
    FUZZ_ASSERT(vd_get_info(s.img, &info) == 0, "vd_get_info");
    uint64_t cs = info.cluster_size, old_end = cs ? size / cs + (size % cs != 0) : 0;
    FUZZ_ASSERT(vd_get_size(s.img, &s.size) == 0, "vd_get_size");
    char *own_snapshot = first_snapshot_id(s.img);
    s.window = calloc(1, WINDOW);
    FUZZ_ASSERT(s.window, "out of memory");
    if (s.size <= INT64_MAX) {
        int rc = vd_read(s.img, 0, s.window, (size_t)window_len(&s), 0);
        step(&s, rc, "vd_read");
        snapshot_round_trip(&s);
        delete_own_snapshot(&s, own_snapshot);
        if (s.alive)
            resize(&s, s.size / 2 & ~511ull, VD_RESIZE_SHRINK, "vd_resize (shrink)");
        expect_bytes(&s, s.img, 0, s.window, window_len(&s), "after the steps");
        if (s.alive)
            step(&s, vd_flush(s.img, 0), "vd_flush");
    }
    int rc = vd_close(s.img);
    fuzz_check_rc(rc, "vd_close");
    s.alive &= rc == 0;

    size_t file_size;
    const uint8_t *file = memfile_content(MEMFILE_IMAGE, &file_size);
    FUZZ_ASSERT(size < 4 || memcmp(data, "QFI\xfb", 4) != 0 ||
                (file_size >= 4 && memcmp(file, data, 4) == 0),
                "the qcow2 header's magic was overwritten");
    if (s.alive)
        reopen_and_verify(&s, flags, clean, old_end);
    free(own_snapshot);
    free(s.window);
    memfile_clear();
    return 0;
}
