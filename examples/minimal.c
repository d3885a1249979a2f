/*
 * The libvdisk C API in a nutshell: create a 4 MiB raw image, write a
 * sector, read it back and print the allocation map.
 * Usage: minimal [path]   (default: minimal.img)
 */
#include <libvdisk/libvdisk.h>

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int fail(const char *call)
{
    fprintf(stderr, "minimal: %s: %s\n", call, vd_errmsg());
    return 1;
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "minimal.img";
    char out[512] = "hello, libvdisk", in[512];
    vd_image *img;

    if (vd_create(path, "raw", 4 << 20, NULL, 0) < 0)
        return fail("vd_create");
    if (vd_open(&img, path, "raw", VD_OPEN_RDWR) < 0)
        return fail("vd_open");
    if (vd_write(img, 1 << 20, out, sizeof out, 0) < 0 ||
        vd_read(img, 1 << 20, in, sizeof in, 0) < 0) {
        int status = fail("vd_write/vd_read"); /* before vd_close() resets the message */
        vd_close(img);
        return status;
    }
    printf("read back: \"%s\" (%s)\n", in, memcmp(in, out, sizeof in) ? "MISMATCH" : "ok");

    int status = 0;
    uint64_t size = 0;
    vd_extent ext;
    vd_get_size(img, &size);
    for (uint64_t off = 0; off < size; off += ext.length) {
        if (vd_block_status(img, off, size - off, &ext, 0) < 0) {
            status = fail("vd_block_status");
            break;
        }
        printf("%10" PRIu64 " +%-10" PRIu64 " %s\n", ext.offset, ext.length,
               (ext.flags & VD_EXTENT_DATA) ? "data" : "zero");
    }
    if (vd_close(img) < 0)
        status = fail("vd_close");
    return status;
}
