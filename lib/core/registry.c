/*
 * The format registry: one static array. Adding a format is one line here
 * plus its folder under lib/formats/.
 */
#include "core/internal.h"

#include <string.h>

static const struct vd_backend *const backends[] = {
    &vd_backend_raw, /* keep raw first: it is the fallback of probing */
    &vd_backend_qcow2,
    &vd_backend_luks,
    &vd_backend_vmdk,
    &vd_backend_qcow,
};

#define BACKEND_COUNT (sizeof backends / sizeof backends[0])

const struct vd_backend *vd_backend_find(const char *name)
{
    for (size_t i = 0; i < BACKEND_COUNT; i++)
        if (strcmp(backends[i]->name, name) == 0)
            return backends[i];
    return NULL;
}

const struct vd_backend *vd_backend_probe_head(const uint8_t *head, size_t len, uint64_t file_size)
{
    const struct vd_backend *best = NULL;
    int best_score = 0;
    for (size_t i = 0; i < BACKEND_COUNT; i++) {
        if (backends[i] == &vd_backend_raw || !backends[i]->probe)
            continue;
        int score = backends[i]->probe(head, len, file_size);
        if (score > best_score) {
            best_score = score;
            best = backends[i];
        }
    }
    return best;
}

const char *vd_format_name(size_t index)
{
    return index < BACKEND_COUNT ? backends[index]->name : NULL;
}

/* The index-th create (or amend) option of a format, for the two listing calls. */
static int option_at(const char *call, const char *format, bool amend, size_t index,
                     const char **name, const struct vd_option_desc **out)
{
    if (!format || !name)
        return vd_err(VD_EINVAL, "%s: format and name must not be NULL", call);
    const struct vd_backend *be = vd_backend_find(format);
    if (!be)
        return vd_err(VD_EFORMAT, "Unknown format '%s'", format);
    const struct vd_option_desc *d = amend ? be->amend_options : be->create_options;
    for (size_t i = 0; d && d[i].name; i++) {
        if (i == index) {
            *out = &d[i];
            *name = d[i].name;
            return 0;
        }
    }
    return VD_ENOENT;
}

int vd_format_option(const char *format, size_t index, const char **name,
                     const char **help, const char **default_value)
{
    const struct vd_option_desc *d;
    int rc = option_at("vd_format_option", format, false, index, name, &d);
    if (rc == 0 && help)
        *help = d->help;
    if (rc == 0 && default_value)
        *default_value = d->default_value;
    return rc;
}

int vd_amend_option(const char *format, size_t index, const char **name, const char **help)
{
    const struct vd_option_desc *d;
    int rc = option_at("vd_amend_option", format, true, index, name, &d);
    if (rc == 0 && help)
        *help = d->help;
    return rc;
}
