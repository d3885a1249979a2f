/*
 * fuzz_snapshots: the input is an image file (qcow2 is the format with
 * internal snapshots). List its snapshots, then open each of the first ones
 * read-only through vd_open_opts.snapshot (by id, and one by name) and read a
 * sample of it; a name that is not there must fail cleanly.
 */
#include "fuzz_common.h"

#include <stdlib.h>
#include <string.h>

enum { MAX_LISTED = 256, MAX_VIEWED = 8 };

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_init();
    return 0;
}

static void view(const uint8_t *data, size_t size, const char *which, uint64_t disk_size)
{
    vd_image *snap;
    int rc = fuzz_open(&snap, data, size, FUZZ_OPEN_FORMAT, which, 0);
    if (rc == 0) {
        uint64_t vsize;
        FUZZ_ASSERT(vd_get_size(snap, &vsize) == 0, "vd_get_size");
        FUZZ_ASSERT(vsize <= INT64_MAX, "snapshot '%s' opens with size %llu, beyond 2^63", which,
                    (unsigned long long)vsize);
        FUZZ_ASSERT(disk_size == UINT64_MAX || vsize == disk_size,
                    "snapshot '%s' lists disk size %llu but opens with %llu", which,
                    (unsigned long long)disk_size, (unsigned long long)vsize);
        fuzz_getters(snap);
        fuzz_read_sample(snap, 32);
        fuzz_block_status_walk(snap, 1u << 20);
        rc = vd_close(snap);
        FUZZ_ASSERT(rc == 0, "vd_close of a snapshot view failed: %d", rc);
    }
    FUZZ_ASSERT(memfile_open_count() == 1, "%zu files open after closing a snapshot view",
                memfile_open_count());
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vd_image *img;
    if (fuzz_open(&img, data, size, FUZZ_OPEN_FORMAT, NULL, 0) < 0) {
        memfile_clear();
        return 0;
    }
    size_t count = 0;
    int rc = vd_snapshot_count(img, &count);
    FUZZ_ASSERT(rc == 0, "vd_snapshot_count failed: %d", rc);
    char *ids[MAX_VIEWED] = { 0 }, *names[MAX_VIEWED] = { 0 };
    uint64_t sizes[MAX_VIEWED];
    size_t listed = count < MAX_LISTED ? count : MAX_LISTED;
    for (size_t i = 0; i < listed; i++) {
        vd_snapshot_info info = VD_SNAPSHOT_INFO_INIT;
        rc = vd_snapshot_get(img, i, &info);
        FUZZ_ASSERT(rc == 0, "vd_snapshot_get(%zu) of %zu failed: %d", i, count, rc);
        FUZZ_ASSERT(info.id && info.name, "snapshot %zu has a NULL id or name", i);
        if (i < MAX_VIEWED) {
            ids[i] = strdup(info.id);
            names[i] = strdup(info.name);
            sizes[i] = info.disk_size;
        }
    }
    vd_snapshot_info past = VD_SNAPSHOT_INFO_INIT;
    rc = vd_snapshot_get(img, count, &past);
    FUZZ_ASSERT(rc == VD_ENOENT, "vd_snapshot_get past the end returned %d", rc);

    /* the views share the in-memory image with img, which stays open */
    for (size_t i = 0; i < listed && i < MAX_VIEWED; i++) {
        /* ids are looked up before names: a view by id is of this snapshot only if no
         * earlier one has the same id */
        bool unique = true;
        for (size_t j = 0; j < i; j++)
            unique &= strcmp(ids[j], ids[i]) != 0;
        view(data, size, ids[i], unique ? sizes[i] : UINT64_MAX);
        if (i == 0 && *names[0] && sizes[0] <= INT64_MAX)
            view(data, size, names[0], UINT64_MAX);
    }
    view(data, size, "\x01no such snapshot", UINT64_MAX);
    for (size_t i = 0; i < MAX_VIEWED; i++) {
        free(ids[i]);
        free(names[i]);
    }
    fuzz_close(img);
    return 0;
}
