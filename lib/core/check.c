/* The front door of check and repair. */
#include "core/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void vd_check_say(vd_check_report_fn report, void *ctx, const char *fmt, ...)
{
    if (!report)
        return;
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    report(ctx, line);
}

int vd_check(vd_image *img, uint32_t flags, vd_check_result *result,
             vd_check_report_fn report, void *report_ctx)
{
    if (!result || result->struct_size < offsetof(vd_check_result, image_end_offset) + 8 ||
        result->struct_size > sizeof(vd_check_result))
        return vd_err(VD_EINVAL, "vd_check: result is NULL or has an unknown struct_size");
    /* repairs need a writable handle; any check runs alone (it flushes first) */
    bool repair = (flags & (VD_CHECK_REPAIR_LEAKS | VD_CHECK_REPAIR_ALL)) != 0;
    int rc = vd_enter(img, "vd_check", flags, VD_CHECK_REPAIR_LEAKS | VD_CHECK_REPAIR_ALL,
                      repair ? VD_ACCESS_WRITE : VD_ACCESS_EXCLUSIVE);
    if (rc < 0)
        return rc;
    vd_check_result full = VD_CHECK_RESULT_INIT;
    if (!img->backend->check)
        rc = vd_err(VD_EUNSUPPORTED, "%s: format '%s' does not support checks", img->filename,
                    img->backend->name);
    else
        rc = img->backend->check(img, flags, &full, report, report_ctx);
    uint32_t size = result->struct_size;
    memcpy(result, &full, size);
    result->struct_size = size;
    return vd_leave(img, rc);
}
