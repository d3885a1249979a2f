/*
 * The VMDK text descriptor: "key = value" lines (values may be quoted) and
 * extent lines ("RW 4192256 SPARSE "disk-s001.vmdk""). Comments and lines
 * we do not know are skipped, as VMware and QEMU skip them.
 */
#include "formats/vmdk/vmdk.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char *const type_names[] = {
    [VMDK_FLAT] = "FLAT", [VMDK_ZERO] = "ZERO", [VMDK_SPARSE] = "SPARSE",
    [VMDK_VMFS] = "VMFS", [VMDK_VMFSSPARSE] = "VMFSSPARSE", [VMDK_SESPARSE] = "SESPARSE",
};
static const char *const access_names[] = {
    [VMDK_RW] = "RW", [VMDK_RDONLY] = "RDONLY", [VMDK_NOACCESS] = "NOACCESS",
};

const char *vmdk_type_name(enum vmdk_extent_type t)
{
    return type_names[t];
}

static int lookup_name(const char *const *names, size_t n, const char *word, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(names[i]) == len && memcmp(names[i], word, len) == 0)
            return (int)i;
    return -1;
}

/* A line cursor: the next whitespace-separated word, or a quoted string. */
struct cursor {
    const char *p, *end;
};

static void skip_space(struct cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\r'))
        c->p++;
}

static bool next_word(struct cursor *c, const char **word, size_t *len)
{
    skip_space(c);
    *word = c->p;
    while (c->p < c->end && !isspace((unsigned char)*c->p))
        c->p++;
    *len = (size_t)(c->p - *word);
    return *len > 0;
}

static bool parse_u64(const char *word, size_t len, int base, uint64_t *out)
{
    char buf[32];
    if (!len || len >= sizeof buf)
        return false;
    memcpy(buf, word, len);
    buf[len] = 0;
    if (buf[0] == '-' || buf[0] == '+')
        return false;
    char *endp;
    errno = 0;
    unsigned long long v = strtoull(buf, &endp, base);
    if (errno || *endp)
        return false;
    *out = v;
    return true;
}

static int bad_line(const char *where, const char *line, size_t len, const char *why)
{
    return vd_err(VD_ECORRUPT, "%s: invalid VMDK extent line (%s): %.*s", where, why,
                  (int)(len > 200 ? 200 : len), line);
}

static int parse_extent(const char *line, size_t len, struct vmdk_desc *d, const char *where)
{
    struct cursor c = { line, line + len };
    const char *w;
    size_t wl;
    struct vmdk_extent_line e = { 0 };
    next_word(&c, &w, &wl);
    e.access = (enum vmdk_access)lookup_name(access_names, 3, w, wl);
    if (!next_word(&c, &w, &wl) || !parse_u64(w, wl, 10, &e.sectors) || !e.sectors)
        return bad_line(where, line, len, "size");
    size_t ntypes = sizeof type_names / sizeof *type_names;
    int type = next_word(&c, &w, &wl) ? lookup_name(type_names, ntypes, w, wl) : -1;
    if (type < 0)
        return bad_line(where, line, len, "unknown extent type");
    e.type = (enum vmdk_extent_type)type;
    skip_space(&c);
    if (e.type != VMDK_ZERO) {
        if (c.p >= c.end || *c.p != '"')
            return bad_line(where, line, len, "file name");
        const char *name = ++c.p;
        while (c.p < c.end && *c.p != '"')
            c.p++;
        if (c.p >= c.end || c.p == name)
            return bad_line(where, line, len, "file name");
        if (memchr(name, 0, (size_t)(c.p - name)))
            return bad_line(where, line, len, "file name");
        e.file = strndup(name, (size_t)(c.p - name));
        if (!e.file)
            return vd_err(VD_ENOMEM, "%s: out of memory", where);
        c.p++;
    }
    bool has_offset = next_word(&c, &w, &wl);
    if (has_offset && (e.type != VMDK_FLAT || !parse_u64(w, wl, 10, &e.offset))) {
        free(e.file);
        return bad_line(where, line, len, "offset");
    }
    if (e.type == VMDK_FLAT && !has_offset) {
        free(e.file);
        return bad_line(where, line, len, "a FLAT extent needs an offset");
    }
    if (d->nlines >= VMDK_MAX_EXTENTS) {
        free(e.file);
        return vd_err(VD_ECORRUPT, "%s: more than %u extents", where, VMDK_MAX_EXTENTS);
    }
    struct vmdk_extent_line *grown = realloc(d->lines, (d->nlines + 1) * sizeof *grown);
    if (!grown) {
        free(e.file);
        return vd_err(VD_ENOMEM, "%s: out of memory", where);
    }
    d->lines = grown;
    d->lines[d->nlines++] = e;
    return 0;
}

/* Replace *slot with a copy of the value (quotes removed). */
static int set_string(char **slot, const char *v, size_t len, const char *where)
{
    free(*slot);
    *slot = strndup(v, len);
    return *slot ? 0 : vd_err(VD_ENOMEM, "%s: out of memory", where);
}

static int parse_key(const char *key, size_t kl, const char *v, size_t vl, struct vmdk_desc *d,
                     const char *where)
{
#define IS(name) (kl == sizeof(name) - 1 && strncasecmp(key, name, kl) == 0)
    uint64_t n;
    if (IS("version"))
        d->version = parse_u64(v, vl, 10, &n) && n <= 3 ? (unsigned)n : 0;
    else if (IS("CID") && parse_u64(v, vl, 16, &n) && n <= UINT32_MAX)
        d->cid = (uint32_t)n;
    else if (IS("parentCID") && parse_u64(v, vl, 16, &n) && n <= UINT32_MAX)
        d->parent_cid = (uint32_t)n;
    else if (IS("createType"))
        return set_string(&d->create_type, v, vl, where);
    else if (IS("parentFileNameHint"))
        return vl ? set_string(&d->parent_hint, v, vl, where) : 0;
    else if (IS("ddb.adapterType"))
        return set_string(&d->adapter_type, v, vl, where);
    else if (IS("ddb.virtualHWVersion"))
        return set_string(&d->hw_version, v, vl, where);
    else if (IS("ddb.toolsVersion"))
        return set_string(&d->tools_version, v, vl, where);
    else if (IS("ddb.geometry.cylinders") && parse_u64(v, vl, 10, &n))
        d->cylinders = n;
    else if (IS("ddb.geometry.heads") && parse_u64(v, vl, 10, &n))
        d->heads = n;
    else if (IS("ddb.geometry.sectors") && parse_u64(v, vl, 10, &n))
        d->sectors = n;
    return 0;
#undef IS
}

static bool is_extent_line(const char *p, size_t len)
{
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(access_names[i]);
        if (len > n && memcmp(p, access_names[i], n) == 0 && (p[n] == ' ' || p[n] == '\t'))
            return true;
    }
    return false;
}

static int parse_line(const char *p, size_t len, struct vmdk_desc *d, const char *where)
{
    while (len && isspace((unsigned char)*p)) {
        p++;
        len--;
    }
    while (len && isspace((unsigned char)p[len - 1]))
        len--;
    if (!len || *p == '#')
        return 0;
    if (is_extent_line(p, len))
        return parse_extent(p, len, d, where);
    const char *eq = memchr(p, '=', len);
    if (!eq)
        return 0;
    size_t kl = (size_t)(eq - p), vl = len - kl - 1;
    const char *v = eq + 1;
    while (kl && isspace((unsigned char)p[kl - 1]))
        kl--;
    while (vl && isspace((unsigned char)*v)) {
        v++;
        vl--;
    }
    if (vl >= 2 && v[0] == '"' && v[vl - 1] == '"') {
        v++;
        vl -= 2;
    }
    return parse_key(p, kl, v, vl, d, where);
}

int vmdk_desc_parse(const char *text, size_t len, struct vmdk_desc *d, const char *where)
{
    *d = (struct vmdk_desc){ .parent_cid = UINT32_MAX };
    const char *nul = memchr(text, 0, len); /* an embedded descriptor is zero-padded */
    if (nul)
        len = (size_t)(nul - text);
    int rc = 0;
    for (const char *p = text, *end = text + len; p < end && rc == 0;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        rc = parse_line(p, (size_t)(stop - p), d, where);
        p = stop + 1;
    }
    if (rc == 0 && !d->create_type)
        rc = vd_err(VD_ECORRUPT, "%s: invalid VMDK descriptor: no createType", where);
    if (rc < 0)
        vmdk_desc_free(d);
    return rc;
}

void vmdk_desc_free(struct vmdk_desc *d)
{
    for (size_t i = 0; i < d->nlines; i++)
        free(d->lines[i].file);
    free(d->lines);
    free(d->create_type);
    free(d->parent_hint);
    free(d->adapter_type);
    free(d->hw_version);
    free(d->tools_version);
    *d = (struct vmdk_desc){ 0 };
}
