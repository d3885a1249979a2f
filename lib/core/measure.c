/* vd_measure(): the front door of the backends' measure callbacks. */
#include "core/internal.h"

#include <string.h>

int vd_measure(vd_measure_result *result, const char *format, const char *options,
               vd_image *source, uint64_t size, uint32_t flags)
{
    vd_err_clear();
    if (!result || !format)
        return vd_err(VD_EINVAL, "vd_measure: result and format must not be NULL");
    if (result->struct_size < sizeof(vd_measure_result))
        return vd_err(VD_EINVAL, "vd_measure: result.struct_size is too small");
    if (flags)
        return vd_err(VD_EINVAL, "vd_measure: unknown flags 0x%x", flags);
    if (source && size)
        return vd_err(VD_EINVAL, "vd_measure: give a source or a size, not both");
    const struct vd_backend *be = vd_backend_find(format);
    if (!be)
        return vd_err(VD_EFORMAT, "Unknown file format '%s'", format);
    if (!be->measure)
        return vd_err(VD_EUNSUPPORTED, "Block driver '%s' does not support size measurement",
                      format);
    int rc;
    if (source && (rc = vd_get_size(source, &size)) < 0)
        return rc;
    struct vd_kv kv;
    if ((rc = vd_kv_parse(&kv, options)) < 0)
        return rc;
    vd_measure_result r = { .struct_size = result->struct_size };
    rc = vd_kv_check_keys(&kv, be->create_options, format);
    if (rc == 0)
        rc = be->measure(&kv, size, source, &r);
    vd_kv_free(&kv);
    if (rc == 0)
        memcpy(result, &r, sizeof r);
    return rc;
}
