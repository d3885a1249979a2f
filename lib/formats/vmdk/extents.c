/*
 * The extent files of an image as one host address space, so that the
 * copy-on-write engine, which reads and writes one data file, serves every
 * subformat: a host address carries the extent's index above
 * VMDK_HOST_SHIFT and the offset in its file below. Every run the cluster
 * map describes lies inside one extent, so no transfer crosses files.
 */
#include "formats/vmdk/vmdk.h"

#include <stdlib.h>
#include <string.h>

struct host_file {
    vd_file base;
    struct vmdk *v;
};

static int resolve(vd_file *f, uint64_t off, uint64_t len, vd_file **file, uint64_t *at)
{
    struct vmdk *v = ((struct host_file *)f)->v;
    uint64_t i = off >> VMDK_HOST_SHIFT;
    *at = off & VMDK_HOST_MASK;
    if (i >= v->next || !v->ext[i].file || len > VMDK_HOST_MASK - *at)
        return vd_err(VD_EIO, "%s: internal error: host address 0x%llx names no extent file",
                      f->path, (unsigned long long)off);
    *file = v->ext[i].file;
    return 0;
}

static int h_pread(vd_file *f, void *buf, size_t len, uint64_t off)
{
    vd_file *file = NULL;
    uint64_t at = 0;
    int rc = resolve(f, off, len, &file, &at);
    return rc < 0 ? rc : vd_file_pread(file, buf, len, at);
}

static int h_pwrite(vd_file *f, const void *buf, size_t len, uint64_t off)
{
    vd_file *file = NULL;
    uint64_t at = 0;
    int rc = resolve(f, off, len, &file, &at);
    return rc < 0 ? rc : vd_file_pwrite(file, buf, len, at);
}

static int h_preadv(vd_file *f, const struct vd_iov *v, uint64_t off)
{
    vd_file *file = NULL;
    uint64_t at = 0;
    int rc = resolve(f, off, v->len, &file, &at);
    return rc < 0 ? rc : vd_file_preadv(file, v, at);
}

static int h_pwritev(vd_file *f, const struct vd_iov *v, uint64_t off)
{
    vd_file *file = NULL;
    uint64_t at = 0;
    int rc = resolve(f, off, v->len, &file, &at);
    return rc < 0 ? rc : vd_file_pwritev(file, v, at);
}

static int h_zero_range(vd_file *f, uint64_t off, uint64_t len)
{
    vd_file *file = NULL;
    uint64_t at = 0;
    int rc = resolve(f, off, len, &file, &at);
    return rc < 0 ? rc : vd_file_write_zeroes(file, at, len, false);
}

static int h_extent(vd_file *f, uint64_t off, bool *is_data, uint64_t *end)
{
    vd_file *file = NULL;
    uint64_t at = 0;
    int rc = resolve(f, off, 0, &file, &at);
    if (rc == 0)
        rc = vd_file_extent(file, at, is_data, end);
    if (rc == 0)
        *end += off - at;
    return rc;
}

/* The files the extents own (img->file is synced by core). */
static int h_sync(vd_file *f)
{
    struct vmdk *v = ((struct host_file *)f)->v;
    int rc = 0;
    for (size_t i = 0; i < v->next && rc == 0; i++)
        if (v->ext[i].own_file && v->ext[i].file->writable)
            rc = vd_file_sync(v->ext[i].file);
    return rc;
}

static int h_get_size(vd_file *f, uint64_t *size)
{
    *size = UINT64_MAX;
    return 0;
}

static int h_truncate(vd_file *f, uint64_t size)
{
    return vd_err(VD_EUNSUPPORTED, "%s: extents cannot be truncated as one file", f->path);
}

static void h_close(vd_file *f)
{
    free(f->path);
    free(f);
}

static const struct vd_file_ops host_ops = {
    .pread = h_pread,
    .pwrite = h_pwrite,
    .preadv = h_preadv,
    .pwritev = h_pwritev,
    .sync = h_sync,
    .get_size = h_get_size,
    .truncate = h_truncate,
    .zero_range = h_zero_range,
    .extent = h_extent,
    .close = h_close,
};

int vmdk_host_file_new(struct vmdk *v, vd_file **out, const char *name)
{
    struct host_file *h = calloc(1, sizeof *h);
    char *path = strdup(name);
    if (!h || !path) {
        free(h);
        free(path);
        return vd_err(VD_ENOMEM, "%s: out of memory", name);
    }
    h->base = (vd_file){ .ops = &host_ops, .path = path, .writable = true };
    h->v = v;
    *out = &h->base;
    return 0;
}
