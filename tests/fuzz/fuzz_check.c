/*
 * fuzz_check: the input is an image file. Open it read-only and run
 * vd_check() without repairs, twice: a read-only check must not fail on a
 * handle it cannot write, must report self-consistent counts and must give
 * the same answer the second time.
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

static void report(void *ctx, const char *message)
{
    fuzz_report(NULL, message);
    *(size_t *)ctx += strlen(message) + 1;
}

static int check(vd_image *img, vd_check_result *res, size_t *lines)
{
    *res = (vd_check_result)VD_CHECK_RESULT_INIT;
    int rc = vd_check(img, 0, res, report, lines);
    fuzz_check_rc(rc, "vd_check");
    FUZZ_ASSERT(rc != VD_EREADONLY && rc != VD_EINVAL, "a check without repairs failed with %s",
                vd_errname(rc));
    if (rc == 0) {
        FUZZ_ASSERT(res->corruptions_fixed == 0 && res->leaks_fixed == 0,
                    "a check without repairs fixed %llu corruptions and %llu leaks",
                    (unsigned long long)res->corruptions_fixed, (unsigned long long)res->leaks_fixed);
        /* allocated_clusters may exceed total_clusters: like qemu-img check, it counts L2
         * entries past the end of the disk */
        FUZZ_ASSERT(res->fragmented_clusters <= res->allocated_clusters &&
                    res->compressed_clusters <= res->allocated_clusters,
                    "%llu fragmented and %llu compressed of %llu allocated clusters",
                    (unsigned long long)res->fragmented_clusters,
                    (unsigned long long)res->compressed_clusters,
                    (unsigned long long)res->allocated_clusters);
    }
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vd_image *img;
    if (fuzz_open(&img, data, size, FUZZ_OPEN_FORMAT, NULL, 0) < 0) {
        memfile_clear();
        return 0;
    }
    vd_check_result first, second;
    size_t lines1 = 0, lines2 = 0;
    int rc1 = check(img, &first, &lines1);
    if (rc1 != VD_EUNSUPPORTED && rc1 != VD_EPOISONED) {
        int rc2 = check(img, &second, &lines2);
        if (rc1 == 0 && rc2 == 0) {
            FUZZ_ASSERT(memcmp(&first, &second, sizeof first) == 0 && lines1 == lines2,
                        "two read-only checks disagree: corruptions %llu/%llu leaks %llu/%llu "
                        "check_errors %llu/%llu", (unsigned long long)first.corruptions,
                        (unsigned long long)second.corruptions, (unsigned long long)first.leaks,
                        (unsigned long long)second.leaks, (unsigned long long)first.check_errors,
                        (unsigned long long)second.check_errors);
        }
    }
    fuzz_read_sample(img, 16);
    fuzz_close(img);
    return 0;
}
