/*
 * fuzz_open_read: the input is an image file. Open it (probing, or as
 * FUZZ_FORMAT), query everything a reader queries (probe, info, properties),
 * read the whole virtual disk (sampled past 64 MiB) and walk its allocation
 * status, checking that VD_EXTENT_ZERO extents read as zeroes.
 */
#include "fuzz_common.h"

#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vd_image *img;
    if (fuzz_open(&img, data, size, FUZZ_OPEN_FORMAT, NULL, 0) < 0) {
        memfile_clear();
        return 0;
    }
    const char *probed = NULL;
    int rc = vd_probe(MEMFILE_IMAGE, &probed);
    fuzz_check_rc(rc, "vd_probe");
#ifndef FUZZ_FORMAT
    /* probing found the format vd_open used; a forced format may be one probing refuses */
    FUZZ_ASSERT(rc == 0 && probed, "vd_probe failed on an image it opened: %s", vd_errmsg());
    FUZZ_ASSERT(strcmp(probed, vd_get_format(img)) == 0, "vd_probe says %s, vd_open chose %s",
                probed, vd_get_format(img));
#endif
    fuzz_getters(img);
    fuzz_read_disk(img);
    fuzz_block_status_walk(img, 16u << 20);
    fuzz_close(img);
    return 0;
}
