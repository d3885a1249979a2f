#include "core/internal.h"

const char *vd_version(void)
{
    return VD_VERSION_STRING;
}

unsigned vd_version_number(void)
{
    return VD_VERSION_NUMBER;
}
