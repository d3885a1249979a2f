/*
 * The raw backend: create, data round trips, probing and the probe guard,
 * sparse-aware block status, discard, write-zeroes, preallocation, resize
 * and image information.
 */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>

/* Slack for file-system metadata when comparing allocated sizes. */
#define ALLOC_SLACK (256 * KiB)

/* -------------------------------------------------------------------- create */

/* True if the temp folder's file system keeps holes in sparse files. */
static bool have_holes(void)
{
    const char *path = vt_path("sparse-probe");
    vt_make_sparse(path, 4 * MiB);
    if (vt_file_allocated(path) == 0)
        return true;
    fprintf(stderr, "note: %s is not sparse on this file system; skipping checks\n", vt_tmpdir());
    return false;
}

/* Create a raw image of size bytes and check it from both sides. */
static void check_created_size(uint64_t size)
{
    char name[64];
    snprintf(name, sizeof name, "size-%llu.raw", (unsigned long long)size);
    const char *path = vt_path(name);
    vt_create_raw(path, size);
    /* like qemu-img, creation rounds up to whole 512-byte sectors */
    ck_assert_uint_eq(vt_file_size(path), vt_sectors(size));
    vd_image *img = vt_open(path, "raw", 0);
    uint64_t got = UINT64_MAX;
    vt_ok(vd_get_size(img, &got));
    ck_assert_uint_eq(got, vt_sectors(size));
    vt_assert_image_zero(img, 0, got);
    vt_ok(vd_read(img, got, NULL, 0, 0));
    vt_close(img);
}

START_TEST(create_small_and_odd_sizes)
{
    static const uint64_t sizes[] = { 0, 1, 511, 512, 513, 4097, 1000001, 3 * MiB + 7 };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        check_created_size(sizes[i]);
}
END_TEST

START_TEST(create_one_gib_is_sparse)
{
    const char *path = vt_path("big.raw");
    bool sparse = have_holes();
    vt_create_raw(path, GiB);
    ck_assert_uint_eq(vt_file_size(path), GiB);
    if (sparse)
        ck_assert_uint_lt(vt_file_allocated(path), MiB);

    vd_image *img = vt_open(path, "raw", VD_OPEN_RDWR);
    vt_assert_image_zero(img, 0, 64 * KiB);
    vt_assert_image_zero(img, GiB / 2 - 4 * KiB, 8 * KiB);
    vt_assert_image_zero(img, GiB - 64 * KiB, 64 * KiB);
    uint8_t last = 0xa5;
    vt_ok(vd_write(img, GiB - 1, &last, 1, 0));
    uint8_t back = 0;
    vt_ok(vd_read(img, GiB - 1, &back, 1, 0));
    ck_assert_int_eq(back, 0xa5);
    vt_close(img);
    ck_assert_uint_eq(vt_file_size(path), GiB);
    if (sparse)
        ck_assert_uint_lt(vt_file_allocated(path), MiB);
}
END_TEST

/* ---------------------------------------------------------------- round trips */

struct span {
    uint64_t off, len;
};

/* Write the pattern (seed) over a span both to the image and to the model. */
static void write_span(vd_image *img, uint8_t *model, struct span s, uint64_t seed)
{
    vt_pattern_fill(model + s.off, (size_t)s.len, seed, s.off);
    vt_ok(vd_write(img, s.off, model + s.off, (size_t)s.len, 0));
}

START_TEST(unaligned_round_trips_persist)
{
    const uint64_t size = vt_sectors(3 * MiB + 7);
    const char *path = vt_path("rt.raw");
    vt_create_raw(path, size);
    uint8_t *model = calloc(1, size);
    ck_assert_ptr_nonnull(model);

    static const struct span fixed[] = {
        { 0, 1 }, { 1, 3 }, { 511, 2 }, { 513, 4097 }, { 4095, 1 }, { 65537, 200000 },
        { MiB - 3, 6 }, { 2 * MiB - 1000, 70001 }, { 3 * MiB + 6, 1 }, { 3 * MiB - 4096, 4103 },
    };
    uint64_t seed = 100;
    vd_image *img = vt_open(path, "raw", VD_OPEN_RDWR);
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        write_span(img, model, fixed[i], seed++);
    uint64_t rng = 42;
    for (int i = 0; i < 200; i++) {
        struct span s;
        s.len = 1 + vt_rand_below(&rng, 70000);
        s.off = vt_rand_below(&rng, size - s.len + 1);
        write_span(img, model, s, seed++);
    }
    vt_assert_image_equals(img, model, size);
    /* reads at unaligned offsets see the same bytes */
    uint8_t small[777];
    vt_ok(vd_read(img, 12345, small, sizeof small, 0));
    ck_assert_mem_eq(small, model + 12345, sizeof small);
    vt_close(img);

    /* the raw file is the disk itself */
    uint8_t *file = malloc(size);
    ck_assert_ptr_nonnull(file);
    ck_assert_uint_eq(vt_file_size(path), size);
    vt_pread_file(path, 0, file, size);
    ck_assert_mem_eq(file, model, size);
    free(file);

    /* and it persists through close and a probing read-only reopen */
    img = vt_open(path, NULL, 0);
    ck_assert_str_eq(vd_get_format(img), "raw");
    vt_assert_image_equals(img, model, size);
    vt_close(img);
    free(model);
}
END_TEST

START_TEST(fua_write_and_flush_succeed)
{
    const char *path = vt_path("fua.raw");
    vt_create_raw(path, 64 * KiB);
    vd_image *img = vt_open(path, "raw", VD_OPEN_RDWR);
    uint8_t buf[4096];
    vt_pattern_fill(buf, sizeof buf, 9, 8192);
    vt_ok(vd_write(img, 8192, buf, sizeof buf, VD_WRITE_FUA));
    vt_ok(vd_flush(img, 0));
    vt_close(img);
    uint8_t back[sizeof buf];
    vt_pread_file(path, 8192, back, sizeof back);
    ck_assert_mem_eq(back, buf, sizeof buf);
}
END_TEST

/* ------------------------------------------------------------------- probing */

/* Assert that path probes as raw and opens probed with the given size. */
static void assert_probes_raw(const char *path, uint64_t size)
{
    const char *format = NULL;
    vt_ok(vd_probe(path, &format));
    ck_assert_str_eq(format, "raw");
    vd_image *img = vt_open(path, NULL, 0);
    ck_assert_str_eq(vd_get_format(img), "raw");
    vd_info info = VD_INFO_INIT;
    vt_ok(vd_get_info(img, &info));
    ck_assert_int_eq(info.probed, 1);
    ck_assert_str_eq(info.format, "raw");
    ck_assert_uint_eq(info.virtual_size, vt_sectors(size)); /* a partial sector reads as zeroes */
    vt_close(img);
}

START_TEST(probing_picks_raw_for_arbitrary_content)
{
    uint8_t data[64 * KiB];
    vt_pattern_fill(data, sizeof data, 11, 0);
    vt_write_file(vt_path("random.img"), data, sizeof data);
    assert_probes_raw(vt_path("random.img"), sizeof data);

    vt_write_file(vt_path("short.img"), "QFI", 3);
    assert_probes_raw(vt_path("short.img"), 3);

    /* a qcow2 magic with an impossible version is not qcow2 */
    static const uint8_t bad_version[8] = { 'Q', 'F', 'I', 0xfb, 0, 0, 0, 0 };
    vt_write_file(vt_path("qfi0.img"), bad_version, sizeof bad_version);
    assert_probes_raw(vt_path("qfi0.img"), sizeof bad_version);
}
END_TEST

START_TEST(probing_picks_raw_for_an_empty_file)
{
    vt_write_file(vt_path("empty.img"), "", 0);
    assert_probes_raw(vt_path("empty.img"), 0);
    vt_make_sparse(vt_path("holes.img"), 10 * MiB);
    assert_probes_raw(vt_path("holes.img"), 10 * MiB);
}
END_TEST

START_TEST(a_named_format_is_not_probed)
{
    const char *path = vt_path("named.raw");
    vt_create_raw(path, 4096);
    vd_image *img = vt_open(path, "raw", 0);
    vd_info info = VD_INFO_INIT;
    vt_ok(vd_get_info(img, &info));
    ck_assert_int_eq(info.probed, 0);
    vt_close(img);
}
END_TEST

/* ------------------------------------------------------------- probe guard */

static void put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put_be64(uint8_t *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

/* A plausible qcow2 header (64 MiB, 64 KiB clusters) of the given version. */
static void make_qcow2_header(uint8_t head[512], uint32_t version)
{
    memset(head, 0, 512);
    memcpy(head, "QFI\xfb", 4);
    put_be32(head + 4, version);
    put_be32(head + 20, 16);                 /* cluster_bits */
    put_be64(head + 24, 64 * MiB);           /* size */
    put_be32(head + 36, 1);                  /* l1_size */
    put_be64(head + 40, 3 * 64 * KiB);       /* l1_table_offset */
    put_be64(head + 48, 64 * KiB);           /* refcount_table_offset */
    put_be32(head + 56, 1);                  /* refcount_table_clusters */
    if (version >= 3) {
        put_be32(head + 96, 4);              /* refcount_order */
        put_be32(head + 100, 104);           /* header_length */
    }
}

/* The first sector of an image qemu-img made; false without qemu-img. */
static bool qemu_qcow2_header(uint8_t head[512])
{
    const char *qemu_img = vt_qemu_img();
    if (!qemu_img)
        return false;
    const char *path = vt_path("qemu-made.qcow2");
    const char *argv[] = { qemu_img, "create", "-q", "-f", "qcow2", path, "64M", NULL };
    ck_assert_int_eq(vt_run(argv), 0);
    vt_pread_file(path, 0, head, 512);
    ck_assert_mem_eq(head, "QFI\xfb", 4);
    return true;
}

/* Each forged header the guard must refuse; returns how many it filled. */
static size_t forged_headers(uint8_t heads[3][512])
{
    make_qcow2_header(heads[0], 2);
    make_qcow2_header(heads[1], 3);
    return qemu_qcow2_header(heads[2]) ? 3 : 2;
}

/* A 1 MiB raw image of zeroes, opened by probing, read-write. */
static vd_image *open_probed_zero_image(const char *name, uint32_t extra_flags)
{
    const char *path = vt_path(name);
    vt_create_raw(path, MiB);
    vd_image *img = vt_open(path, NULL, VD_OPEN_RDWR | extra_flags);
    vd_info info = VD_INFO_INIT;
    vt_ok(vd_get_info(img, &info));
    ck_assert_int_eq(info.probed, 1);
    return img;
}

START_TEST(probe_guard_refuses_a_qcow2_header_write)
{
    uint8_t heads[3][512];
    size_t n = forged_headers(heads);
    vd_image *img = open_probed_zero_image("guarded.raw", 0);
    uint8_t big[4096] = { 0 };
    for (size_t i = 0; i < n; i++) {
        vt_err(vd_write(img, 0, heads[i], 512, 0), VD_EPERM);
        vt_assert_errmsg_has(vt_path("guarded.raw"));
        memcpy(big, heads[i], 512);
        vt_err(vd_write(img, 0, big, sizeof big, 0), VD_EPERM);
        /* the first 104 bytes are all a qcow2 probe looks at */
        vt_err(vd_write(img, 0, heads[i], 104, VD_WRITE_FUA), VD_EPERM);
    }
    vt_assert_image_zero(img, 0, MiB);
    vt_close(img);
}
END_TEST

START_TEST(probe_guard_merges_the_write_with_existing_bytes)
{
    vd_image *img = open_probed_zero_image("merge.raw", 0);
    uint8_t head[512];
    make_qcow2_header(head, 3);
    /* everything but the magic: harmless on its own */
    vt_ok(vd_write(img, 4, head + 4, 508, 0));
    /* the magic alone now completes a qcow2 header */
    vt_err(vd_write(img, 0, head, 4, 0), VD_EPERM);
    uint8_t back[4];
    vt_ok(vd_read(img, 0, back, sizeof back, 0));
    ck_assert_int_eq(vt_nonzero_at(back, sizeof back), -1);
    vt_close(img);
}
END_TEST

START_TEST(probe_guard_allows_harmless_sector_zero_writes)
{
    vd_image *img = open_probed_zero_image("mbr.raw", 0);
    uint8_t mbr[512];
    vt_pattern_fill(mbr, sizeof mbr, 12, 0);
    mbr[510] = 0x55, mbr[511] = 0xaa;
    vt_ok(vd_write(img, 0, mbr, sizeof mbr, 0));
    uint8_t back[512];
    vt_ok(vd_read(img, 0, back, sizeof back, 0));
    ck_assert_mem_eq(back, mbr, sizeof mbr);

    /* a header outside the first sector makes nothing look like qcow2 */
    uint8_t head[512];
    make_qcow2_header(head, 3);
    vt_ok(vd_write(img, 512, head, sizeof head, 0));
    vt_ok(vd_write(img, 64 * KiB, head, sizeof head, 0));
    /* zeroing sector 0 is harmless too */
    vt_ok(vd_write_zeroes(img, 0, 4096, 0));
    vt_assert_image_zero(img, 0, 512);
    vt_close(img);
}
END_TEST

START_TEST(named_raw_and_unsafe_raw_allow_the_header_write)
{
    uint8_t heads[3][512];
    size_t n = forged_headers(heads);
    for (size_t i = 0; i < n; i++) {
        const char *path = vt_path("named.raw");
        vt_create_raw(path, MiB);
        vd_image *img = vt_open(path, "raw", VD_OPEN_RDWR);
        vt_ok(vd_write(img, 0, heads[i], 512, 0));
        vt_close(img);
        uint8_t back[512];
        vt_pread_file(path, 0, back, sizeof back);
        ck_assert_mem_eq(back, heads[i], sizeof back);

        img = open_probed_zero_image("unsafe.raw", VD_OPEN_UNSAFE_RAW);
        vt_ok(vd_write(img, 0, heads[i], 512, 0));
        vt_ok(vd_read(img, 0, back, sizeof back, 0));
        ck_assert_mem_eq(back, heads[i], sizeof back);
        vt_close(img);
    }
}
END_TEST

/* ------------------------------------------------------------- block status */

/* A run of uniform status, adjacent same-status extents merged. */
struct run {
    uint64_t off, end;
    bool data;
};

enum { MAX_RUNS = 64 };

/*
 * Walk vd_block_status over the whole image, checking the raw invariants of
 * every extent, and merge the extents into runs. Returns the run count.
 */
static size_t map_image(vd_image *img, struct run runs[MAX_RUNS])
{
    uint64_t size;
    vt_ok(vd_get_size(img, &size));
    size_t n = 0;
    for (uint64_t off = 0; off < size;) {
        vd_extent e;
        memset(&e, 0xee, sizeof e);
        vt_ok(vd_block_status(img, off, size - off, &e, 0));
        ck_assert_uint_eq(e.offset, off);
        ck_assert_uint_gt(e.length, 0);
        ck_assert_uint_le(e.length, size - off);
        ck_assert_msg(e.flags & VD_EXTENT_ALLOCATED, "raw extent at %llu lacks ALLOCATED",
                      (unsigned long long)off);
        bool data = (e.flags & VD_EXTENT_DATA) != 0;
        ck_assert_msg(data != ((e.flags & VD_EXTENT_ZERO) != 0),
                      "raw extent at %llu has flags 0x%x: want exactly one of DATA and ZERO",
                      (unsigned long long)off, e.flags);
        ck_assert_uint_eq(e.host_offset, off);
        ck_assert_int_eq(e.depth, 0);
        if (n && runs[n - 1].data == data && runs[n - 1].end == off) {
            runs[n - 1].end = off + e.length;
        } else {
            ck_assert_uint_lt(n, MAX_RUNS);
            runs[n++] = (struct run){ off, off + e.length, data };
        }
        off += e.length;
    }
    return n;
}

static const struct run *run_at(const struct run *runs, size_t n, uint64_t pos)
{
    for (size_t i = 0; i < n; i++)
        if (runs[i].off <= pos && pos < runs[i].end)
            return &runs[i];
    ck_abort_msg("no extent covers offset %llu", (unsigned long long)pos);
    return NULL;
}

/* Assert the run at pos has the status and, where given, its exact bounds. */
static void assert_run(const struct run *runs, size_t n, uint64_t pos, bool data,
                       uint64_t want_off, uint64_t want_end)
{
    const struct run *r = run_at(runs, n, pos);
    ck_assert_msg(r->data == data, "offset %llu is %s, expected %s", (unsigned long long)pos,
                  r->data ? "DATA" : "ZERO", data ? "DATA" : "ZERO");
    ck_assert_uint_eq(r->off, want_off);
    if (want_end != UINT64_MAX)
        ck_assert_uint_eq(r->end, want_end);
}

START_TEST(block_status_reports_data_and_holes)
{
    const char *path = vt_path("holes.raw");
    vt_make_sparse(path, 8 * MiB);
    if (!have_holes())
        return;
    uint8_t *chunk = malloc(MiB);
    ck_assert_ptr_nonnull(chunk);
    vt_pattern_fill(chunk, MiB, 13, MiB);
    vt_pwrite_file(path, MiB, chunk, MiB);           /* [1M, 2M) */
    vt_pwrite_file(path, 4 * MiB, "x", 1);           /* one byte at 4M */
    vt_pattern_fill(chunk, MiB, 13, 7 * MiB);
    vt_pwrite_file(path, 7 * MiB, chunk, MiB);       /* [7M, 8M): the tail */
    free(chunk);

    vd_image *img = vt_open(path, "raw", 0);
    struct run runs[MAX_RUNS];
    size_t n = map_image(img, runs);
    assert_run(runs, n, 0, false, 0, MiB);
    assert_run(runs, n, MiB, true, MiB, 2 * MiB);
    assert_run(runs, n, 2 * MiB, false, 2 * MiB, 4 * MiB);
    assert_run(runs, n, 4 * MiB, true, 4 * MiB, UINT64_MAX);
    ck_assert_uint_le(run_at(runs, n, 4 * MiB)->end, 5 * MiB);
    assert_run(runs, n, 6 * MiB, false, run_at(runs, n, 4 * MiB)->end, 7 * MiB);
    assert_run(runs, n, 7 * MiB, true, 7 * MiB, 8 * MiB);

    /* a query inside a run is clipped to the requested length */
    vd_extent e;
    vt_ok(vd_block_status(img, MiB + 100, 1000, &e, 0));
    ck_assert_uint_eq(e.offset, MiB + 100);
    ck_assert_uint_eq(e.length, 1000);
    ck_assert_uint_eq(e.flags & (VD_EXTENT_DATA | VD_EXTENT_ZERO), VD_EXTENT_DATA);
    ck_assert_uint_eq(e.host_offset, MiB + 100);
    /* a query starting in a hole stops where the data starts */
    vt_ok(vd_block_status(img, MiB / 2, MiB, &e, 0));
    ck_assert_uint_eq(e.length, MiB / 2);
    ck_assert_uint_eq(e.flags & (VD_EXTENT_DATA | VD_EXTENT_ZERO), VD_EXTENT_ZERO);

    /* what the map says matches what reads say */
    vt_assert_image_zero(img, 0, MiB);
    vt_assert_image_pattern(img, MiB, MiB, 13);
    vt_assert_image_zero(img, 2 * MiB, 2 * MiB);
    vt_assert_image_zero(img, 4 * MiB + 1, 3 * MiB - 1);
    vt_assert_image_pattern(img, 7 * MiB, MiB, 13);
    vt_close(img);
}
END_TEST

START_TEST(block_status_of_a_fresh_image_is_one_hole)
{
    const char *path = vt_path("fresh.raw");
    vt_create_raw(path, 16 * MiB);
    if (!have_holes())
        return;
    vd_image *img = vt_open(path, NULL, 0);
    struct run runs[MAX_RUNS];
    size_t n = map_image(img, runs);
    ck_assert_uint_eq(n, 1);
    assert_run(runs, n, 0, false, 0, 16 * MiB);
    vt_close(img);
}
END_TEST

/* ------------------------------------------------- discard and write-zeroes */

/* A 4 MiB raw image full of the pattern (seed 7), open read-write. */
static vd_image *open_full_image(const char *path, const char *format)
{
    vt_create_raw(path, 4 * MiB);
    vd_image *img = vt_open(path, "raw", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 0, 4 * MiB, 7);
    vt_ok(vd_flush(img, 0));
    vt_close(img);
    ck_assert_uint_ge(vt_file_allocated(path), 4 * MiB);
    return vt_open(path, format, VD_OPEN_RDWR);
}

/* Assert that the allocation of path dropped by at least freed bytes. */
static void assert_freed(const char *path, uint64_t before, uint64_t freed)
{
    uint64_t after = vt_file_allocated(path);
    ck_assert_msg(after + freed <= before + ALLOC_SLACK,
                  "%s: allocation went from %llu to %llu bytes; expected to free %llu", path,
                  (unsigned long long)before, (unsigned long long)after, (unsigned long long)freed);
}

START_TEST(discard_punches_a_hole)
{
    const char *path = vt_path("discard.raw");
    vd_image *img = open_full_image(path, "raw");
    uint64_t before = vt_file_allocated(path);
    vt_ok(vd_discard(img, MiB, 2 * MiB, 0));
    vt_ok(vd_flush(img, 0));
    assert_freed(path, before, 2 * MiB);
    vt_assert_image_pattern(img, 0, MiB, 7);
    vt_assert_image_zero(img, MiB, 2 * MiB);
    vt_assert_image_pattern(img, 3 * MiB, MiB, 7);

    vd_extent e;
    vt_ok(vd_block_status(img, MiB, 3 * MiB, &e, 0));
    ck_assert_uint_eq(e.flags & (VD_EXTENT_DATA | VD_EXTENT_ZERO), VD_EXTENT_ZERO);
    ck_assert_uint_eq(e.length, 2 * MiB);
    ck_assert_uint_eq(vt_file_size(path), 4 * MiB);
    vt_close(img);
}
END_TEST

START_TEST(unaligned_discard_keeps_the_neighbours)
{
    const char *path = vt_path("discard2.raw");
    vd_image *img = open_full_image(path, "raw");
    const uint64_t off = 1000, len = 9000;
    vt_ok(vd_discard(img, off, len, 0));
    vt_assert_image_pattern(img, 0, off, 7);
    vt_assert_image_pattern(img, off + len, 4 * MiB - off - len, 7);
    /* inside, each byte reads as zero or as before: discard is a hint */
    uint8_t buf[9000];
    vt_ok(vd_read(img, off, buf, sizeof buf, 0));
    for (size_t i = 0; i < sizeof buf; i++)
        ck_assert_msg(buf[i] == 0 || buf[i] == vt_pattern_byte(7, off + i),
                      "discarded byte at %llu reads 0x%02x", (unsigned long long)(off + i), buf[i]);
    vt_close(img);
}
END_TEST

START_TEST(write_zeroes_reads_back_zeroes)
{
    const char *path = vt_path("zeroes.raw");
    vd_image *img = open_full_image(path, "raw");
    vt_ok(vd_write_zeroes(img, 512 * KiB, MiB, 0));
    vt_ok(vd_write_zeroes(img, 3 * MiB + 1, 4097, 0));
    vt_ok(vd_write_zeroes(img, 4 * MiB - 1, 1, 0));
    vt_assert_image_pattern(img, 0, 512 * KiB, 7);
    vt_assert_image_zero(img, 512 * KiB, MiB);
    vt_assert_image_pattern(img, 1536 * KiB, 3 * MiB + 1 - 1536 * KiB, 7);
    vt_assert_image_zero(img, 3 * MiB + 1, 4097);
    vt_assert_image_pattern(img, 3 * MiB + 4098, MiB - 4099, 7);
    vt_assert_image_zero(img, 4 * MiB - 1, 1);
    vt_close(img);
    ck_assert_uint_eq(vt_file_size(path), 4 * MiB);
}
END_TEST

START_TEST(write_zeroes_may_unmap_frees_blocks)
{
    const char *path = vt_path("unmap.raw");
    vd_image *img = open_full_image(path, "raw");
    uint64_t before = vt_file_allocated(path);
    vt_ok(vd_write_zeroes(img, MiB, 2 * MiB, VD_ZERO_MAY_UNMAP));
    vt_ok(vd_write_zeroes(img, 100, 200, VD_ZERO_MAY_UNMAP));
    vt_ok(vd_flush(img, 0));
    assert_freed(path, before, 2 * MiB);
    vt_assert_image_pattern(img, 0, 100, 7);
    vt_assert_image_zero(img, 100, 200);
    vt_assert_image_pattern(img, 300, MiB - 300, 7);
    vt_assert_image_zero(img, MiB, 2 * MiB);
    vt_assert_image_pattern(img, 3 * MiB, MiB, 7);
    vt_close(img);
    ck_assert_uint_eq(vt_file_size(path), 4 * MiB);
}
END_TEST

START_TEST(write_zeroes_on_a_probed_image)
{
    const char *path = vt_path("probed-zero.raw");
    vd_image *img = open_full_image(path, NULL);
    ck_assert_str_eq(vd_get_format(img), "raw");
    vt_ok(vd_write_zeroes(img, 0, 8192, 0));
    vt_ok(vd_write_zeroes(img, 8192, 8192, VD_ZERO_MAY_UNMAP));
    vt_assert_image_zero(img, 0, 16384);
    vt_assert_image_pattern(img, 16384, 4 * MiB - 16384, 7);
    vt_close(img);
}
END_TEST

/* ------------------------------------------------------------ preallocation */

/* Create 8 MiB + 123 bytes with options; check size, zeroes; return allocation. */
static uint64_t create_preallocated(const char *name, const char *options)
{
    const uint64_t size = 8 * MiB + 123;
    const char *path = vt_path(name);
    vt_ok(vd_create(path, "raw", size, options, 0));
    ck_assert_uint_eq(vt_file_size(path), vt_sectors(size));
    vd_image *img = vt_open(path, "raw", 0);
    vt_assert_image_zero(img, 0, size);
    vt_close(img);
    return vt_file_allocated(path);
}

START_TEST(preallocation_modes)
{
    if (!have_holes())
        return;
    ck_assert_uint_lt(create_preallocated("default.raw", NULL), MiB);
    ck_assert_uint_lt(create_preallocated("off.raw", "preallocation=off"), MiB);
    ck_assert_uint_ge(create_preallocated("falloc.raw", "preallocation=falloc"), 8 * MiB + 123);
    ck_assert_uint_ge(create_preallocated("full.raw", "preallocation=full"), 8 * MiB + 123);
}
END_TEST

START_TEST(bad_preallocation_value_is_einval)
{
    const char *path = vt_path("bad.raw");
    vt_err(vd_create(path, "raw", MiB, "preallocation=metadata", 0), VD_EINVAL);
    vt_assert_errmsg_has("preallocation");
    ck_assert(!vt_file_exists(path));
    vt_err(vd_create(path, "raw", MiB, "preallocation=", 0), VD_EINVAL);
    vt_err(vd_create(path, "raw", MiB, "preallocation=FULL", 0), VD_EINVAL);
    ck_assert(!vt_file_exists(path));
}
END_TEST

/* ------------------------------------------------------------------- resize */

static void assert_size(vd_image *img, const char *path, uint64_t size)
{
    uint64_t got;
    vt_ok(vd_get_size(img, &got));
    ck_assert_uint_eq(got, vt_sectors(size)); /* the guest sees whole sectors */
    ck_assert_uint_eq(vt_file_size(path), size); /* the file is cut exactly */
}

START_TEST(resize_grows_with_zeroes)
{
    const char *path = vt_path("grow.raw");
    vt_create_raw(path, MiB);
    vd_image *img = vt_open(path, "raw", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 0, MiB, 21);
    vt_ok(vd_resize(img, 3 * MiB + 5, 0));
    assert_size(img, path, 3 * MiB + 5);
    vt_assert_image_pattern(img, 0, MiB, 21);
    vt_assert_image_zero(img, MiB, 2 * MiB + 5);
    uint8_t last = 0x5a;
    vt_ok(vd_write(img, 3 * MiB + 4, &last, 1, 0));
    vt_ok(vd_resize(img, vt_sectors(3 * MiB + 5), 0)); /* the same virtual size */
    vt_close(img);

    img = vt_open(path, NULL, 0);
    assert_size(img, path, 3 * MiB + 5);
    vt_assert_image_pattern(img, 0, MiB, 21);
    uint8_t back = 0;
    vt_ok(vd_read(img, 3 * MiB + 4, &back, 1, 0));
    ck_assert_int_eq(back, 0x5a);
    vt_close(img);
}
END_TEST

START_TEST(resize_shrinks_only_when_asked)
{
    const char *path = vt_path("shrink.raw");
    vt_create_raw(path, 2 * MiB);
    vd_image *img = vt_open(path, "raw", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 0, 2 * MiB, 22);

    int rc = vd_resize(img, 512 * KiB, 0);
    ck_assert_msg(rc < 0, "shrinking without VD_RESIZE_SHRINK returned %d", rc);
    assert_size(img, path, 2 * MiB);
    vt_assert_image_pattern(img, 0, 2 * MiB, 22);

    vt_ok(vd_resize(img, 512 * KiB + 1, VD_RESIZE_SHRINK));
    assert_size(img, path, 512 * KiB + 1);
    vt_assert_image_pattern(img, 0, 512 * KiB + 1, 22);
    /* the cut file still shows a whole last sector: zeroes past its end */
    vt_assert_image_zero(img, 512 * KiB + 1, 511);
    uint8_t buf[2];
    vt_err(vd_read(img, 512 * KiB + 511, buf, 2, 0), VD_ERANGE);
    vt_err(vd_write(img, 512 * KiB + 512, buf, 1, 0), VD_ERANGE);

    /* growing back does not resurrect the old data */
    vt_ok(vd_resize(img, MiB, 0));
    vt_assert_image_zero(img, 512 * KiB + 1, 512 * KiB - 1);
    vt_ok(vd_resize(img, 0, VD_RESIZE_SHRINK));
    assert_size(img, path, 0);
    vt_close(img);
}
END_TEST

/* --------------------------------------------------------------- information */

START_TEST(get_info_fields)
{
    const char *path = vt_path("info.raw");
    vt_create_raw(path, 2 * MiB);
    vd_image *img = vt_open(path, "raw", VD_OPEN_RDWR);
    vt_image_write_pattern(img, 0, MiB, 23);
    vt_ok(vd_flush(img, 0));

    vd_info info = VD_INFO_INIT;
    vt_ok(vd_get_info(img, &info));
    ck_assert_uint_eq(info.struct_size, sizeof info);
    ck_assert_uint_eq(info.virtual_size, 2 * MiB);
    ck_assert_uint_eq(info.actual_size, vt_file_allocated(path));
    ck_assert_uint_ge(info.actual_size, MiB);
    ck_assert_str_eq(info.format, "raw");
    ck_assert_str_eq(info.filename, path);
    ck_assert_ptr_null(info.backing_file);
    ck_assert_ptr_null(info.backing_format);
    ck_assert_uint_eq(info.cluster_size, 0);
    ck_assert_int_eq(info.dirty, 0);
    ck_assert_int_eq(info.encrypted, 0);
    ck_assert_int_eq(info.read_only, 0);
    ck_assert_int_eq(info.probed, 0);
    vt_close(img);

    img = vt_open(path, NULL, 0);
    vd_info probed = VD_INFO_INIT;
    vt_ok(vd_get_info(img, &probed));
    ck_assert_int_eq(probed.read_only, 1);
    ck_assert_int_eq(probed.probed, 1);
    ck_assert_str_eq(probed.format, "raw");
    ck_assert_uint_eq(probed.virtual_size, 2 * MiB);
    vt_close(img);
}
END_TEST

START_TEST(raw_has_no_properties)
{
    const char *path = vt_path("props.raw");
    vt_create_raw(path, MiB);
    vd_image *img = vt_open(path, NULL, 0);
    const char *key = NULL, *value = NULL;
    int type = -1;
    vt_err(vd_get_property(img, 0, &key, &value, &type), VD_ENOENT);
    vt_err(vd_get_property(img, 1, &key, &value, NULL), VD_ENOENT);
    vt_close(img);
}
END_TEST

static Suite *raw_suite(void)
{
    Suite *s = suite_create("raw");
    TCase *tc = vt_tcase(s, "create");
    tcase_add_test(tc, create_small_and_odd_sizes);
    tcase_add_test(tc, create_one_gib_is_sparse);
    tcase_add_test(tc, unaligned_round_trips_persist);
    tcase_add_test(tc, fua_write_and_flush_succeed);
    tc = vt_tcase(s, "probe");
    tcase_add_test(tc, probing_picks_raw_for_arbitrary_content);
    tcase_add_test(tc, probing_picks_raw_for_an_empty_file);
    tcase_add_test(tc, a_named_format_is_not_probed);
    tcase_add_test(tc, probe_guard_refuses_a_qcow2_header_write);
    tcase_add_test(tc, probe_guard_merges_the_write_with_existing_bytes);
    tcase_add_test(tc, probe_guard_allows_harmless_sector_zero_writes);
    tcase_add_test(tc, named_raw_and_unsafe_raw_allow_the_header_write);
    tc = vt_tcase(s, "sparse");
    tcase_add_test(tc, block_status_reports_data_and_holes);
    tcase_add_test(tc, block_status_of_a_fresh_image_is_one_hole);
    tcase_add_test(tc, discard_punches_a_hole);
    tcase_add_test(tc, unaligned_discard_keeps_the_neighbours);
    tcase_add_test(tc, write_zeroes_reads_back_zeroes);
    tcase_add_test(tc, write_zeroes_may_unmap_frees_blocks);
    tcase_add_test(tc, write_zeroes_on_a_probed_image);
    tcase_add_test(tc, preallocation_modes);
    tcase_add_test(tc, bad_preallocation_value_is_einval);
    tc = vt_tcase(s, "resize");
    tcase_add_test(tc, resize_grows_with_zeroes);
    tcase_add_test(tc, resize_shrinks_only_when_asked);
    tc = vt_tcase(s, "info");
    tcase_add_test(tc, get_info_fields);
    tcase_add_test(tc, raw_has_no_properties);
    return s;
}

int main(void)
{
    return vt_run_suite(raw_suite());
}
