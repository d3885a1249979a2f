/*
 * The public header compiles alone as C++11 (-pedantic -Werror): extern "C"
 * linkage, no C-only constructs in its declarations or macros.
 */
#include <libvdisk/libvdisk.h>

#include <cstring>

#define COUNT_ERROR_(name, value, text) +1
static const int error_count = 0 VD_ERROR_TABLE(COUNT_ERROR_);

int main()
{
    vd_open_opts opts = VD_OPEN_OPTS_INIT;
    vd_info info = VD_INFO_INIT;
    vd_error code = VD_EINVAL;
    if (opts.struct_size != sizeof opts || info.struct_size != sizeof info || error_count < 19)
        return 1;
    if (std::strcmp(vd_errname(code), "VD_EINVAL") != 0)
        return 1;
    return std::strcmp(vd_version(), VD_VERSION_STRING) == 0 ? 0 : 1;
}
