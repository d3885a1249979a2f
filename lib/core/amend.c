/* vd_amend(): the front door of the backends' amend callbacks (qemu-img amend). */
#include "core/internal.h"

#include <string.h>

static bool listed(const struct vd_option_desc *d, const char *key)
{
    for (size_t i = 0; d && d[i].name; i++)
        if (strcmp(d[i].name, key) == 0)
            return true;
    return false;
}

/* Refuse the first key the format cannot amend, in qemu-img's words. */
static int check_amend_keys(const struct vd_backend *be, const struct vd_kv *kv)
{
    for (size_t i = 0; i < kv->count; i++) {
        const char *key = kv->pairs[i].key;
        if (listed(be->amend_options, key))
            continue;
        if (listed(be->create_options, key))
            return vd_err(VD_EINVAL, "Invalid parameter '%s'\n"
                          "This option is only supported for image creation", key);
        return vd_err(VD_EINVAL, "Invalid parameter '%s'", key);
    }
    return 0;
}

int vd_amend(vd_image *img, const char *options, uint32_t flags)
{
    int rc = vd_enter(img, "vd_amend", flags, 0, VD_ACCESS_WRITE);
    if (rc < 0)
        return rc;
    if (!img->backend->amend)
        return vd_leave(img, vd_err(VD_EUNSUPPORTED, "Format driver '%s' does not support "
                                    "option amendment", img->backend->name));
    struct vd_kv kv;
    if ((rc = vd_kv_parse(&kv, options)) < 0)
        return vd_leave(img, rc);
    rc = check_amend_keys(img->backend, &kv);
    if (rc == 0 && kv.count)
        rc = img->backend->amend(img, &kv);
    vd_kv_free(&kv);
    return vd_leave(img, rc);
}
