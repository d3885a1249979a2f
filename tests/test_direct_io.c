/*
 * White-box tests of the pieces under vd_preadv/vd_pwritev and cache=none:
 * iovec views (sub-ranges across empty elements, export, copies), and the
 * POSIX layer's O_DIRECT bounce path with several threads writing
 * unaligned pieces into the same blocks at once (its read-modify-write must
 * lose none of them) beside aligned writes.
 */
#include "common.h"
#include "core/internal.h"

#include <pthread.h>
#include <stdlib.h>

START_TEST(iov_views)
{
    uint8_t a[3] = { 1, 2, 3 }, b[5] = { 4, 5, 6, 7, 8 }, c[2] = { 9, 10 };
    const struct iovec iov[] = { { NULL, 0 }, { a, 3 }, { NULL, 0 }, { b, 5 }, { c, 2 } };
    struct vd_iov all = { iov, 5, 0, 10 };
    uint8_t flat[10];
    vd_iov_to_buf(&all, flat);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(flat[i], i + 1);

    struct vd_iov mid = vd_iov_sub(&all, 3, 6); /* b and c's first byte */
    ck_assert_ptr_eq(mid.iov, &iov[3]);
    ck_assert_uint_eq(mid.skip, 0);
    ck_assert_ptr_eq(vd_iov_contiguous(&mid), NULL);
    struct iovec out[4];
    size_t bytes;
    ck_assert_int_eq(vd_iov_export(&mid, out, 4, &bytes), 2);
    ck_assert_uint_eq(bytes, 6);
    ck_assert_ptr_eq(out[1].iov_base, c);
    ck_assert_uint_eq(out[1].iov_len, 1);
    ck_assert_int_eq(vd_iov_export(&mid, out, 1, &bytes), 1); /* cut at max elements */
    ck_assert_uint_eq(bytes, 5);

    struct vd_iov inner = vd_iov_sub(&mid, 1, 3); /* 5, 6, 7: inside b */
    ck_assert_ptr_eq(vd_iov_contiguous(&inner), b + 1);
    const uint8_t fresh[3] = { 50, 60, 70 };
    vd_iov_from_buf(&inner, fresh);
    ck_assert_int_eq(b[1], 50);
    ck_assert_int_eq(b[3], 70);
    struct vd_iov tail = vd_iov_sub(&all, 8, 2);
    vd_iov_zero(&tail);
    ck_assert_int_eq(c[0] | c[1], 0);
    ck_assert_int_eq(b[4], 8);
    struct vd_iov end = vd_iov_sub(&all, 10, 0);
    ck_assert_uint_eq(end.len, 0);
    ck_assert(vd_iov_aligned(&end, 4096));
    ck_assert(!vd_iov_aligned(&all, 2));
}
END_TEST

#define FILE_BYTES (2 * 1024 * 1024)
/* no multiple of any direct I/O alignment: every piece is a read-modify-write */
#define PIECE 200
#define WRITERS 4

struct writer {
    vd_file *file;
    unsigned id;
    int rc;
};

/*
 * Writer id owns every WRITERS-th 200-byte piece of the first half of the
 * file and writes each once, in ascending order like the others: the
 * writers move through the same 4 KiB blocks at once, so each write is a
 * read-modify-write racing the others' (an update lost to the race stays
 * lost). Writer 0 also writes whole aligned blocks over the second half
 * (the shared side of the lock).
 */
static void *write_pieces(void *arg)
{
    struct writer *w = arg;
    uint8_t buf[4096 + 1]; /* buf + 1: an unaligned buffer too */
    for (uint64_t off = (uint64_t)w->id * PIECE; off + PIECE <= FILE_BYTES / 2 && w->rc == 0;
         off += WRITERS * PIECE) {
        vt_pattern_fill(buf + 1, PIECE, w->id, off);
        w->rc = vd_file_pwrite(w->file, buf + 1, PIECE, off);
        if (w->id == 0 && w->rc == 0) {
            uint64_t block = FILE_BYTES / 2 + off / (WRITERS * PIECE) * 4096 % (FILE_BYTES / 2);
            vt_pattern_fill(buf + 1, 4096, 99, block);
            w->rc = vd_file_pwrite(w->file, buf + 1, 4096, block);
        }
    }
    return NULL;
}

START_TEST(direct_rmw_loses_nothing)
{
    const char *path = vt_path("direct.bin");
    vt_make_sparse(path, FILE_BYTES);
    vd_file *f;
    vt_ok(vd_file_open(&f, path, VD_FILE_RDWR | VD_FILE_DIRECT));
    struct writer w[WRITERS];
    pthread_t tid[WRITERS];
    for (unsigned i = 0; i < WRITERS; i++) {
        w[i] = (struct writer){ f, i, 0 };
        ck_assert_int_eq(pthread_create(&tid[i], NULL, write_pieces, &w[i]), 0);
    }
    for (unsigned i = 0; i < WRITERS; i++) {
        pthread_join(tid[i], NULL);
        vt_ok(w[i].rc);
    }
    uint8_t *back = malloc(FILE_BYTES + 1);
    vt_ok(vd_file_pread(f, back + 1, FILE_BYTES, 0)); /* unaligned buffer: a bounce read */
    vd_file_close(f);
    for (uint64_t off = 0; off + PIECE <= FILE_BYTES / 2; off += PIECE)
        ck_assert_msg(vt_pattern_mismatch(back + 1 + off, PIECE, (off / PIECE) % WRITERS, off) < 0,
                      "the piece at %llu was lost", (unsigned long long)off);
    ck_assert(vt_pattern_mismatch(back + 1 + FILE_BYTES / 2, FILE_BYTES / 2, 99,
                                  FILE_BYTES / 2) < 0);
    ck_assert_uint_eq(vt_file_size(path), FILE_BYTES);
    free(back);
}
END_TEST

/* A write that ends past the file's end, unaligned: the file grows to the write's end only. */
START_TEST(direct_append_keeps_size)
{
    const char *path = vt_path("grow.bin");
    vt_write_file(path, "abc", 3);
    vd_file *f;
    vt_ok(vd_file_open(&f, path, VD_FILE_RDWR | VD_FILE_DIRECT));
    vt_ok(vd_file_pwrite(f, "defgh", 5, 5000));
    uint8_t back[5005];
    vt_ok(vd_file_pread(f, back, sizeof back, 0));
    vt_err(vd_file_pread(f, back, 2, 5004), VD_EIO); /* past the end, even inside a block */
    vd_file_close(f);
    ck_assert_uint_eq(vt_file_size(path), 5005);
    ck_assert(memcmp(back, "abc", 3) == 0 && memcmp(back + 5000, "defgh", 5) == 0);
    ck_assert_int_eq(vt_nonzero_at(back + 3, 4997), -1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("direct_io");
    TCase *tc = vt_tcase(s, "direct_io");
    tcase_add_test(tc, iov_views);
    tcase_add_test(tc, direct_rmw_loses_nothing);
    tcase_add_test(tc, direct_append_keeps_size);
    return vt_run_suite(s);
}
