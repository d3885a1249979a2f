/* The in-memory file layer of the fuzz targets (see memfile.h). */
#include "memfile.h"

#include "core/internal.h"
#include "io/file.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_FILES = 8 };

struct entry {
    char *path;
    const uint8_t *ro_data;  /* read-only files */
    uint8_t *data;           /* scratch files */
    size_t size, cap;
    size_t alloc;            /* bytes allocated for data (grows geometrically) */
    bool writable;
    unsigned ino;
};

struct mem_file {
    vd_file base;
    struct entry *e;
};

static struct entry files[MAX_FILES];
static size_t nfiles;
static size_t open_handles;
static unsigned next_ino = 1;

static struct entry *entry_of(vd_file *f)
{
    return ((struct mem_file *)f)->e;
}

static const uint8_t *bytes(const struct entry *e)
{
    return e->writable ? e->data : e->ro_data;
}

static int mem_pread(vd_file *f, void *buf, size_t len, uint64_t off)
{
    struct entry *e = entry_of(f);
    if (off > e->size || len > e->size - off)
        return vd_err(VD_EIO, "%s: read at offset %llu is past the end of the file", f->path,
                      (unsigned long long)off);
    if (len)
        memcpy(buf, bytes(e) + off, len);
    return 0;
}

/* Make room for [0, end) in a scratch file, zero-filling what is new. */
static int grow(vd_file *f, uint64_t end)
{
    struct entry *e = entry_of(f);
    if (end > e->cap)
        return vd_err(VD_ENOSPC, "%s: the fuzz file is limited to %zu bytes (wanted %llu)", f->path,
                      e->cap, (unsigned long long)end);
    if (end <= e->size)
        return 0;
    if (end > e->alloc) {
        size_t want = e->alloc ? e->alloc : 65536;
        while (want < end)
            want *= 2;
        if (want > e->cap)
            want = e->cap;
        uint8_t *grown = realloc(e->data, want);
        if (!grown)
            return vd_err(VD_ENOMEM, "%s: out of memory", f->path);
        e->data = grown;
        e->alloc = want;
    }
    memset(e->data + e->size, 0, (size_t)end - e->size);
    e->size = (size_t)end;
    return 0;
}

static int check_writable(vd_file *f, const char *what)
{
    if (!entry_of(f)->writable || !f->writable)
        return vd_err(VD_EREADONLY, "%s: %s on a read-only fuzz file", f->path, what);
    return 0;
}

static int mem_pwrite(vd_file *f, const void *buf, size_t len, uint64_t off)
{
    uint64_t end;
    int rc = check_writable(f, "write");
    if (rc == 0 && vd_add_overflows(off, len, &end))
        rc = vd_err(VD_EINVAL, "%s: write range overflows", f->path);
    if (rc == 0)
        rc = grow(f, end);
    if (rc == 0 && len)
        memcpy(entry_of(f)->data + off, buf, len);
    return rc;
}

static int mem_sync(vd_file *f)
{
    return 0;
}

static int mem_get_size(vd_file *f, uint64_t *size)
{
    *size = entry_of(f)->size;
    return 0;
}

static int mem_truncate(vd_file *f, uint64_t size)
{
    int rc = check_writable(f, "truncate");
    if (rc < 0)
        return rc;
    struct entry *e = entry_of(f);
    if (size <= e->size) {
        e->size = (size_t)size;
        return 0;
    }
    return grow(f, size);
}

/* Zero [off, off+len) of what exists; with extend, grow the file to cover it. */
static int zero(vd_file *f, uint64_t off, uint64_t len, bool extend, const char *what)
{
    uint64_t end;
    int rc = check_writable(f, what);
    if (rc == 0 && vd_add_overflows(off, len, &end))
        rc = vd_err(VD_EINVAL, "%s: %s range overflows", f->path, what);
    if (rc < 0)
        return rc;
    struct entry *e = entry_of(f);
    if (extend && (rc = grow(f, end)) < 0)
        return rc;
    if (off < e->size)
        memset(e->data + off, 0, (size_t)((end < e->size ? end : e->size) - off));
    return 0;
}

static int mem_punch_hole(vd_file *f, uint64_t off, uint64_t len)
{
    return zero(f, off, len, false, "deallocate");
}

static int mem_zero_range(vd_file *f, uint64_t off, uint64_t len)
{
    return zero(f, off, len, true, "zero range");
}

static int mem_allocate(vd_file *f, uint64_t off, uint64_t len)
{
    uint64_t end;
    int rc = check_writable(f, "preallocate");
    if (rc == 0 && vd_add_overflows(off, len, &end))
        rc = vd_err(VD_EINVAL, "%s: preallocation range overflows", f->path);
    return rc < 0 ? rc : grow(f, end);
}

/* Everything below the size is data, as on a file system without holes. */
static int mem_extent(vd_file *f, uint64_t off, bool *is_data, uint64_t *end)
{
    uint64_t size = entry_of(f)->size;
    *is_data = off < size;
    *end = off < size ? size : off;
    return 0;
}

static int mem_allocated_bytes(vd_file *f, uint64_t *allocated)
{
    *allocated = entry_of(f)->size;
    return 0;
}

static int mem_stat_id(vd_file *f, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_dev = 0xf022;
    st->st_ino = entry_of(f)->ino;
    return 0;
}

static void mem_close(vd_file *f)
{
    open_handles--;
    free(f->path);
    free(f);
}

static const struct vd_file_ops mem_ops = {
    .pread = mem_pread,
    .pwrite = mem_pwrite,
    .sync = mem_sync,
    .get_size = mem_get_size,
    .truncate = mem_truncate,
    .punch_hole = mem_punch_hole,
    .zero_range = mem_zero_range,
    .allocate = mem_allocate,
    .extent = mem_extent,
    .allocated_bytes = mem_allocated_bytes,
    .stat_id = mem_stat_id,
    .close = mem_close,
};

static struct entry *find(const char *path)
{
    for (size_t i = 0; i < nfiles; i++)
        if (strcmp(files[i].path, path) == 0)
            return &files[i];
    return NULL;
}

static int mem_open(vd_file **out, const struct vd_file_name *name, uint32_t flags)
{
    const char *path = name->path;
    struct entry *e = find(path);
    if (!e)
        return vd_err(VD_EPERM, "Could not open '%s': the fuzz harness serves no such file", path);
    bool rdwr = (flags & VD_FILE_RDWR) != 0;
    if ((rdwr || (flags & VD_FILE_CREATE)) && !e->writable)
        return vd_err(VD_EPERM, "Could not open '%s' for writing: it is a read-only fuzz file", path);
    if ((flags & VD_FILE_CREATE) && (flags & VD_FILE_EXCL) && e->size)
        return vd_err(VD_EEXIST, "Could not create '%s': it exists", path);
    struct mem_file *mf = calloc(1, sizeof *mf);
    char *copy = strdup(path);
    if (!mf || !copy) {
        free(mf);
        free(copy);
        return vd_err(VD_ENOMEM, "%s: out of memory", path);
    }
    mf->base.ops = &mem_ops;
    mf->base.path = copy;
    mf->base.writable = rdwr;
    mf->e = e;
    open_handles++;
    *out = &mf->base;
    return 0;
}

void memfile_install(void)
{
    vd_file_set_opener(mem_open);
}

void memfile_uninstall(void)
{
    vd_file_set_opener(NULL);
}

static struct entry *add(const char *path)
{
    if (nfiles == MAX_FILES || find(path)) {
        fprintf(stderr, "memfile: cannot register '%s' (table full or duplicate)\n", path);
        abort();
    }
    struct entry *e = &files[nfiles];
    *e = (struct entry){ .path = strdup(path), .ino = next_ino++ };
    if (!e->path)
        abort();
    nfiles++;
    return e;
}

int memfile_add_readonly(const char *path, const uint8_t *data, size_t size)
{
    struct entry *e = add(path);
    e->ro_data = data;
    e->size = size;
    return 0;
}

int memfile_add_scratch(const char *path, size_t cap)
{
    struct entry *e = add(path);
    e->writable = true;
    e->cap = cap;
    return 0;
}

int memfile_add_copy(const char *path, const uint8_t *data, size_t size, size_t cap)
{
    struct entry *e = add(path);
    e->writable = true;
    e->cap = cap > size ? cap : size;
    e->data = malloc(size ? size : 1);
    if (!e->data)
        abort();
    memcpy(e->data, data, size);
    e->size = e->alloc = size;
    return 0;
}

const uint8_t *memfile_content(const char *path, size_t *size)
{
    struct entry *e = find(path);
    if (!e)
        return NULL;
    *size = e->size;
    return bytes(e) ? bytes(e) : (const uint8_t *)"";
}

size_t memfile_open_count(void)
{
    return open_handles;
}

void memfile_clear(void)
{
    if (open_handles) {
        fprintf(stderr, "memfile: %zu file handle(s) still open: libvdisk leaked a vd_file\n",
                open_handles);
        abort();
    }
    for (size_t i = 0; i < nfiles; i++) {
        free(files[i].path);
        free(files[i].data);
    }
    memset(files, 0, sizeof files);
    nfiles = 0;
}
