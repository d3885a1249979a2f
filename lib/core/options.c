/* Parsing of qemu-img style "key=value,..." option strings. */
#include "core/internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <errno.h>

/* Copy the next token up to an unescaped stop character; ",," is a comma. */
static const char *copy_token(const char *p, const char *stops, char **out)
{
    size_t cap = strlen(p) + 1, n = 0;
    char *tok = malloc(cap);
    if (!tok)
        return NULL;
    while (*p) {
        if (*p == ',' && p[1] == ',') {
            tok[n++] = ',';
            p += 2;
            continue;
        }
        if (strchr(stops, *p))
            break;
        tok[n++] = *p++;
    }
    tok[n] = '\0';
    *out = tok;
    return p;
}

static int kv_take(struct vd_kv *kv, char *key, char *value)
{
    for (size_t i = 0; i < kv->count; i++) {
        if (strcmp(kv->pairs[i].key, key) == 0) {
            free(kv->pairs[i].value);
            free(key);
            kv->pairs[i].value = value;
            return 0;
        }
    }
    struct vd_kv_pair *grown = realloc(kv->pairs, (kv->count + 1) * sizeof *grown);
    if (!grown)
        return VD_ENOMEM;
    kv->pairs = grown;
    kv->pairs[kv->count].key = key;
    kv->pairs[kv->count].value = value;
    kv->count++;
    return 0;
}

int vd_kv_parse(struct vd_kv *kv, const char *text)
{
    kv->pairs = NULL;
    kv->count = 0;
    const char *p = text ? text : "";
    while (*p) {
        char *key = NULL, *value = NULL;
        p = copy_token(p, "=,", &key);
        if (!p)
            goto nomem;
        if (*p != '=') {
            int rc = vd_err(VD_EINVAL, "option '%s' has no value (expected key=value)", key);
            free(key);
            vd_kv_free(kv);
            return rc;
        }
        p = copy_token(p + 1, ",", &value);
        if (!p || kv_take(kv, key, value) < 0) {
            free(key);
            free(value);
            goto nomem;
        }
        if (*p == ',')
            p++;
    }
    return 0;
nomem:
    vd_kv_free(kv);
    return vd_err(VD_ENOMEM, "out of memory parsing options");
}

int vd_kv_set(struct vd_kv *kv, const char *key, const char *value)
{
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v || kv_take(kv, k, v) < 0) {
        free(k);
        free(v);
        return vd_err(VD_ENOMEM, "out of memory setting option '%s'", key);
    }
    return 0;
}

void vd_kv_free(struct vd_kv *kv)
{
    for (size_t i = 0; i < kv->count; i++) {
        free(kv->pairs[i].key);
        free(kv->pairs[i].value);
    }
    free(kv->pairs);
    kv->pairs = NULL;
    kv->count = 0;
}

int vd_kv_check_keys(const struct vd_kv *kv, const struct vd_option_desc *allowed,
                     const char *format)
{
    for (size_t i = 0; i < kv->count; i++) {
        bool known = false;
        for (const struct vd_option_desc *d = allowed; d && d->name; d++)
            known |= strcmp(d->name, kv->pairs[i].key) == 0;
        if (!known)
            return vd_err(VD_EINVAL, "Invalid parameter '%s' for format '%s'",
                          kv->pairs[i].key, format);
    }
    return 0;
}

const char *vd_kv_get(const struct vd_kv *kv, const char *key)
{
    for (size_t i = 0; kv && i < kv->count; i++)
        if (strcmp(kv->pairs[i].key, key) == 0)
            return kv->pairs[i].value;
    return NULL;
}

int vd_kv_get_bool(const struct vd_kv *kv, const char *key, bool dflt, bool *out)
{
    static const char *const truths[] = { "on", "yes", "true", "1", NULL };
    static const char *const lies[] = { "off", "no", "false", "0", NULL };
    const char *v = vd_kv_get(kv, key);
    *out = dflt;
    if (!v)
        return 0;
    for (size_t i = 0; truths[i]; i++) {
        if (strcasecmp(v, truths[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(v, lies[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return vd_err(VD_EINVAL, "Parameter '%s' expects 'on' or 'off', not '%s'", key, v);
}

int vd_kv_get_size(const struct vd_kv *kv, const char *key, uint64_t dflt, uint64_t *out)
{
    const char *v = vd_kv_get(kv, key);
    *out = dflt;
    if (!v)
        return 0;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'M': shift = 20; end++; break;
    case 'G': shift = 30; end++; break;
    case 'T': shift = 40; end++; break;
    case '\0': break;
    default: end = NULL;
    }
    if (v[0] == '-' || v[0] == '\0' || !end || *end || errno ||
        (shift && n > (UINT64_MAX >> shift)))
        return vd_err(VD_EINVAL, "Parameter '%s' expects a size, not '%s'", key, v);
    *out = (uint64_t)n << shift;
    return 0;
}

int vd_kv_get_choice(const struct vd_kv *kv, const char *key, const char *const *choices,
                     size_t dflt, size_t *out)
{
    const char *v = vd_kv_get(kv, key);
    *out = dflt;
    if (!v)
        return 0;
    for (size_t i = 0; choices[i]; i++) {
        if (strcmp(v, choices[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    return vd_err(VD_EINVAL, "Parameter '%s' does not accept value '%s'", key, v);
}
