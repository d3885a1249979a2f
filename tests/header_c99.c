/*
 * The public header compiles alone under strict C99 (-pedantic -Werror),
 * and its initialiser macros and error table are usable from C99 code.
 */
#include <libvdisk/libvdisk.h>

#include <string.h>

#define COUNT_ERROR_(name, value, text) +1
static const int error_count = 0 VD_ERROR_TABLE(COUNT_ERROR_);

int main(void)
{
    vd_open_opts opts = VD_OPEN_OPTS_INIT;
    vd_info info = VD_INFO_INIT;
    vd_extent extent;
    extent.host_offset = VD_NO_HOST_OFFSET;
    if (opts.struct_size != sizeof opts || info.struct_size != sizeof info || error_count < 19)
        return 1;
    if (strcmp(vd_version(), VD_VERSION_STRING) != 0 || vd_version_number() != VD_VERSION_NUMBER)
        return 1;
    return extent.host_offset == UINT64_MAX ? 0 : 1;
}
