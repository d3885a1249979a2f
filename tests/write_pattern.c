/*
 * Interop helper: the same deterministic set of writes and zeroings at
 * scattered offsets, applied three ways.
 *
 *   write_pattern vdisk  PATH SIZE SEED   vd_create + vd_write/vd_write_zeroes
 *   write_pattern pwrite PATH SIZE SEED   a plain file, ftruncate + pwrite
 *   write_pattern verify PATH SIZE SEED   read PATH through libvdisk (probing)
 *                                         and compare with the expected bytes
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

struct sink {
    int (*write)(struct sink *s, uint64_t off, const uint8_t *data, size_t len);
    int (*zero)(struct sink *s, uint64_t off, size_t len);
    vd_image *img;
    int fd;
    uint8_t *model;
};

enum { MAX_LEN = 256 * 1024, OPS = 96 };

/* Apply the writes for (size, seed) to a sink: the single source of truth. */
static int apply_ops(struct sink *s, uint64_t size, uint64_t seed)
{
    uint8_t *buf = malloc(MAX_LEN);
    if (!buf)
        return -1;
    uint64_t rng = seed;
    int rc = 0;
    for (int i = 0; i < OPS && rc == 0; i++) {
        size_t len = (size_t)(1 + vt_rand_below(&rng, size < MAX_LEN ? size : MAX_LEN));
        uint64_t off = i == 0 ? 0 : i == 1 ? size - len : vt_rand_below(&rng, size - len + 1);
        if (i > 1 && vt_rand_below(&rng, 5) == 0) {
            rc = s->zero(s, off, len);
        } else {
            vt_pattern_fill(buf, len, seed + (uint64_t)i, off);
            rc = s->write(s, off, buf, len);
        }
    }
    free(buf);
    return rc;
}

static int vdisk_write(struct sink *s, uint64_t off, const uint8_t *data, size_t len)
{
    return vd_write(s->img, off, data, len, 0);
}

static int vdisk_zero(struct sink *s, uint64_t off, size_t len)
{
    return vd_write_zeroes(s->img, off, len, off % 2 ? 0 : VD_ZERO_MAY_UNMAP);
}

static int fd_write(struct sink *s, uint64_t off, const uint8_t *data, size_t len)
{
    while (len) {
        ssize_t n = pwrite(s->fd, data, len, (off_t)off);
        if (n <= 0)
            return -1;
        data += n, off += (uint64_t)n, len -= (size_t)n;
    }
    return 0;
}

static int fd_zero(struct sink *s, uint64_t off, size_t len)
{
    uint8_t *zeroes = calloc(1, len);
    int rc = zeroes ? fd_write(s, off, zeroes, len) : -1;
    free(zeroes);
    return rc;
}

static int model_write(struct sink *s, uint64_t off, const uint8_t *data, size_t len)
{
    memcpy(s->model + off, data, len);
    return 0;
}

static int model_zero(struct sink *s, uint64_t off, size_t len)
{
    memset(s->model + off, 0, len);
    return 0;
}

static int die_vd(const char *what, int rc)
{
    fprintf(stderr, "write_pattern: %s: %s: %s\n", what, vd_errname(rc), vd_errmsg());
    return 1;
}

static int with_vdisk(const char *path, uint64_t size, uint64_t seed)
{
    int rc = vd_create(path, "raw", size, NULL, 0);
    if (rc < 0)
        return die_vd("vd_create", rc);
    struct sink s = { vdisk_write, vdisk_zero, NULL, -1, NULL };
    if ((rc = vd_open(&s.img, path, "raw", VD_OPEN_RDWR)) < 0)
        return die_vd("vd_open", rc);
    rc = apply_ops(&s, size, seed);
    int close_rc = vd_close(s.img);
    if (rc < 0 || close_rc < 0)
        return die_vd("writing", rc < 0 ? rc : close_rc);
    return 0;
}

static int with_pwrite(const char *path, uint64_t size, uint64_t seed)
{
    struct sink s = { fd_write, fd_zero, NULL, -1, NULL };
    s.fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (s.fd < 0 || ftruncate(s.fd, (off_t)size) < 0 || apply_ops(&s, size, seed) < 0 ||
        close(s.fd) < 0) {
        fprintf(stderr, "write_pattern: %s: %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

static int verify(const char *path, uint64_t size, uint64_t seed)
{
    struct sink s = { model_write, model_zero, NULL, -1, calloc(1, size ? size : 1) };
    uint8_t *back = malloc(size ? size : 1);
    if (!s.model || !back || apply_ops(&s, size, seed) < 0)
        return 1;
    vd_image *img;
    int rc = vd_open(&img, path, NULL, 0);
    if (rc < 0)
        return die_vd("vd_open", rc);
    uint64_t got;
    if ((rc = vd_get_size(img, &got)) < 0 || (rc = vd_read(img, 0, back, size, 0)) < 0)
        return die_vd("reading", rc);
    vd_close(img);
    if (got != size) {
        fprintf(stderr, "write_pattern: %s: size %llu, expected %llu\n", path,
                (unsigned long long)got, (unsigned long long)size);
        return 1;
    }
    for (uint64_t i = 0; i < size; i++) {
        if (back[i] != s.model[i]) {
            fprintf(stderr, "write_pattern: %s: byte %llu is 0x%02x, expected 0x%02x\n", path,
                    (unsigned long long)i, back[i], s.model[i]);
            return 1;
        }
    }
    free(back);
    free(s.model);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: write_pattern vdisk|pwrite|verify PATH SIZE SEED\n");
        return 2;
    }
    uint64_t size = strtoull(argv[3], NULL, 0), seed = strtoull(argv[4], NULL, 0);
    if (size == 0) {
        fprintf(stderr, "write_pattern: SIZE must be positive\n");
        return 2;
    }
    if (strcmp(argv[1], "vdisk") == 0)
        return with_vdisk(argv[2], size, seed);
    if (strcmp(argv[1], "pwrite") == 0)
        return with_pwrite(argv[2], size, seed);
    if (strcmp(argv[1], "verify") == 0)
        return verify(argv[2], size, seed);
    fprintf(stderr, "write_pattern: unknown mode '%s'\n", argv[1]);
    return 2;
}
