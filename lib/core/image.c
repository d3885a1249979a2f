/* The front door for handles: open, create, close, probe and getters. */
#include "core/internal.h"
#include "core/bitmap.h"

#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define OPEN_FLAGS_KNOWN (VD_OPEN_RDWR | VD_OPEN_NO_BACKING | VD_OPEN_NO_LOCK | \
                          VD_OPEN_CONFINED | VD_OPEN_UNSAFE_RAW | VD_OPEN_REPAIR | \
                          VD_OPEN_NO_FLUSH | VD_OPEN_SAFE | VD_OPEN_DIRECT | \
                          VD_OPEN_WRITETHROUGH | VD_OPEN_DIRECT_FALLBACK)

/* Read the first bytes of a file (fewer if it is short; the rest zeroed). */
static int read_head(vd_file *file, uint8_t *head, uint64_t *file_size)
{
    int rc = vd_file_get_size(file, file_size);
    if (rc < 0)
        return rc;
    memset(head, 0, VD_PROBE_BYTES);
    size_t n = *file_size < VD_PROBE_BYTES ? (size_t)*file_size : VD_PROBE_BYTES;
    return n ? vd_file_pread(file, head, n, 0) : 0;
}

static int probe_file(vd_file *file, const struct vd_backend **out)
{
    uint8_t head[VD_PROBE_BYTES];
    uint64_t size;
    int rc = read_head(file, head, &size);
    if (rc < 0)
        return rc;
    const struct vd_backend *be = vd_backend_probe_head(head, sizeof head, size);
    const char *unsupported = be ? NULL : vd_recognize_unsupported(head, sizeof head, size);
    if (unsupported) /* never raw: the guest would see (and could overwrite) its metadata */
        return vd_err(VD_EUNSUPPORTED, "%s: this looks like a %s image, a format libvdisk "
                      "does not support", file->path, unsupported);
    *out = be ? be : &vd_backend_raw;
    return 0;
}

int vd_probe(const char *path, const char **format)
{
    if (!path || !format)
        return vd_err(VD_EINVAL, "vd_probe: path and format must not be NULL");
    vd_file *file;
    int rc = vd_file_open(&file, path, 0);
    if (rc < 0)
        return rc;
    const struct vd_backend *be;
    rc = probe_file(file, &be);
    vd_file_close(file);
    if (rc == 0)
        *format = be->name;
    return rc;
}

/*
 * Every image open in this process, each image of every chain, so that
 * vd_create() does not overwrite one in use (vd_claim_for_create).
 */
static pthread_mutex_t open_images_lock = PTHREAD_MUTEX_INITIALIZER;
static vd_image *open_images;

static void list_open_image(vd_image *img)
{
    pthread_mutex_lock(&open_images_lock);
    img->open_prev = NULL;
    img->open_next = open_images;
    if (open_images)
        open_images->open_prev = img;
    open_images = img;
    img->listed_open = true;
    pthread_mutex_unlock(&open_images_lock);
}

static void unlist_open_image(vd_image *img)
{
    if (!img->listed_open)
        return;
    pthread_mutex_lock(&open_images_lock);
    if (img->open_prev)
        img->open_prev->open_next = img->open_next;
    else
        open_images = img->open_next;
    if (img->open_next)
        img->open_next->open_prev = img->open_prev;
    img->listed_open = false;
    pthread_mutex_unlock(&open_images_lock);
}

static bool is_file(vd_file *f, const struct stat *st)
{
    struct stat other;
    return f && vd_file_stat_id(f, &other) == 0 && other.st_dev == st->st_dev &&
           other.st_ino == st->st_ino;
}

/* Refuse a file (identity st) that an image open in this process uses. */
static int refuse_open_here(const char *path, const struct stat *st)
{
    int rc = 0;
    pthread_mutex_lock(&open_images_lock);
    for (vd_image *img = open_images; img && rc == 0; img = img->open_next) {
        if (is_file(img->file, st))
            rc = vd_err(VD_EBUSY, "%s: the file is in use: this process has it open as image "
                        "'%s'; refusing to overwrite it", path, img->filename);
        else if (is_file(img->data_file, st))
            rc = vd_err(VD_EBUSY, "%s: the file is in use: this process has it open as the "
                        "external data file of image '%s'; refusing to overwrite it", path,
                        img->filename);
    }
    pthread_mutex_unlock(&open_images_lock);
    return rc;
}

int vd_claim_for_create(vd_file *file)
{
    struct stat st;
    bool identified = vd_file_stat_id(file, &st) == 0;
    int rc = identified ? refuse_open_here(file->path, &st) : 0;
    if (rc == 0)
        rc = vd_file_lock(file, true);
    /* a block device keeps its size; a regular file is emptied now that it is ours */
    if (rc == 0 && (!identified || S_ISREG(st.st_mode)))
        rc = vd_file_truncate(file, 0);
    return rc;
}

void vd_image_clear_props(vd_image *img)
{
    for (size_t i = 0; i < img->nprops; i++) {
        free(img->props[i].key);
        free(img->props[i].value);
    }
    free(img->props);
    img->props = NULL;
    img->nprops = 0;
}

static void image_free(vd_image *img)
{
    vd_image_clear_props(img);
    vd_file_close(img->file);
    if (img->dir_fd >= 0)
        close(img->dir_fd);
    vd_bitmaps_free(img);
    pthread_mutex_destroy(&img->bitmap_load_lock);
    pthread_rwlock_destroy(&img->lock);
    pthread_rwlock_destroy(&img->meta_lock);
    vd_inflight_destroy(&img->inflight);
    free(img->filename);
    free(img->allowed_formats);
    img->magic = 0;
    free(img);
}


/* A handle on the file found, which it takes over (and releases on failure). */
/*
 * Writers first: a stream of lookups must not hold off an allocation for
 * ever. Nothing takes the metadata lock twice in one thread, as this kind
 * requires.
 */
static void init_meta_lock(pthread_rwlock_t *lock)
{
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(lock, &attr);
    pthread_rwlockattr_destroy(&attr);
}

static int image_alloc(vd_image **out, struct vd_named_file *found, const vd_open_opts *o)
{
    vd_image *img = calloc(1, sizeof *img);
    char *formats = o->formats ? strdup(o->formats) : NULL;
    if (!img || (o->formats && !formats)) {
        int rc = vd_err(VD_ENOMEM, "%s: out of memory", found->path);
        free(img);
        free(formats);
        vd_named_file_release(found);
        return rc;
    }
    pthread_rwlock_init(&img->lock, NULL);
    init_meta_lock(&img->meta_lock);
    vd_inflight_init(&img->inflight);
    pthread_mutex_init(&img->bitmap_load_lock, NULL);
    img->magic = VD_IMAGE_MAGIC;
    img->file = found->file;
    img->filename = found->path;
    img->dir_fd = found->dir_fd;
    *found = (struct vd_named_file){ NULL, NULL, -1 };
    img->allowed_formats = formats;
    img->open_flags = o->flags;
    img->read_only = !(o->flags & VD_OPEN_RDWR);
    *out = img;
    return 0;
}

/* Whether the comma-separated list names format (a NULL list allows every format). */
static bool format_allowed(const char *list, const char *format)
{
    size_t n = strlen(format);
    for (const char *p = list; p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
        if (strncmp(p, format, n) == 0 && (p[n] == ',' || p[n] == '\0'))
            return true;
    return !list;
}

/* Every name of a formats list must be a format we know: a typo would refuse every image. */
static int check_formats_list(const char *list)
{
    for (const char *p = list;;) {
        const char *end = strchrnul(p, ',');
        char name[32];
        if (end == p || (size_t)(end - p) >= sizeof name)
            return vd_err(VD_EINVAL, "vd_open: the formats list '%s' has an empty or overlong "
                          "name", list);
        memcpy(name, p, (size_t)(end - p));
        name[end - p] = '\0';
        if (!vd_backend_find(name))
            return vd_err(VD_EFORMAT, "vd_open: unknown format '%s' in the formats list '%s'",
                          name, list);
        if (!*end)
            return 0;
        p = end + 1;
    }
}

/*
 * The external data file a backend opened must be a file of its own:
 * guest writes through it would otherwise overwrite the image itself (or
 * another image of the chain). Then it is locked like the image.
 */
static int claim_data_file(vd_image *img, struct vd_chain_link *link)
{
    struct stat st;
    int rc = 0;
    if (vd_file_stat_id(img->data_file, &st) == 0) {
        link->dev = st.st_dev;
        link->ino = st.st_ino;
        rc = vd_chain_refuse_repeat(link->next, &st, img->data_file->path, img->filename);
    }
    if (rc == 0 && !(img->open_flags & VD_OPEN_NO_LOCK))
        rc = vd_file_lock(img->data_file, !img->read_only);
    return rc;
}

int vd_open_image(vd_image **out, const struct vd_chain_where *where, const vd_open_opts *o,
                  unsigned depth, const struct vd_chain_link *above)
{
    const struct vd_backend *be = NULL;
    if (o->format && !(be = vd_backend_find(o->format)))
        return vd_err(VD_EFORMAT, "Unknown format '%s'", o->format);

    struct vd_named_file found;
    int rc = vd_chain_open_file(&found, where, vd_file_flags_for(o->flags));
    vd_image *img = NULL;
    if (rc == 0)
        rc = image_alloc(&img, &found, o);
    if (rc < 0)
        return rc;
    const char *path = img->filename;
    img->depth = depth;
    struct stat st;
    struct vd_chain_link self = { 0, 0, path, false, above };
    if (rc == 0 && vd_file_stat_id(img->file, &st) == 0) {
        self.dev = st.st_dev;
        self.ino = st.st_ino;
        rc = vd_chain_refuse_repeat(above, &st, path, NULL);
    }
    if (rc == 0 && !(o->flags & VD_OPEN_NO_LOCK))
        rc = vd_file_lock(img->file, !img->read_only);
    if (rc == 0 && !be) {
        img->probed = true;
        rc = probe_file(img->file, &be);
    }
    if (rc == 0 && !format_allowed(o->formats, be->name))
        rc = vd_err(VD_EPERM, "%s: the image is %s, which is not among the allowed formats "
                    "(%s)", path, be->name, o->formats);
    if (rc == 0 && o->snapshot && !be->snapshot_count)
        rc = vd_err(VD_EUNSUPPORTED, "%s: format '%s' has no snapshots to open", path, be->name);
    if (rc == 0 && be->grows_at_end && !img->read_only)
        rc = vd_file_grow_ahead(img->file);
    if (rc == 0) {
        img->backend = be;
        rc = be->open(img, o);
        if (rc < 0)
            img->backend = NULL; /* a failed open cleans up after itself */
    }
    struct vd_chain_link data_link = { 0, 0, path, true, &self };
    if (rc == 0 && img->data_file)
        rc = claim_data_file(img, &data_link);
    if (rc == 0) {
        list_open_image(img);
        rc = vd_chain_open_backing(img, o, depth, img->data_file ? &data_link : &self);
    }
    if (rc < 0) {
        vd_image_close_chain(img);
        return rc;
    }
    *out = img;
    return 0;
}

/* The caller's image: path as it is, or as the image o->relative_to would name it. */
static int open_top(vd_image **out, const char *path, const vd_open_opts *o)
{
    struct vd_chain_where where = { o->relative_to, -1, path };
    int rc = o->relative_to && (o->flags & VD_OPEN_CONFINED)
                 ? vd_dir_open_of(o->relative_to, &where.anchor) : 0;
    if (rc == 0)
        rc = vd_open_image(out, &where, o, 0, NULL);
    if (where.anchor >= 0)
        close(where.anchor);
    return rc;
}

int vd_open_ext(vd_image **out, const char *path, const vd_open_opts *opts)
{
    vd_err_clear();
    if (!out || !path)
        return vd_err(VD_EINVAL, "vd_open: out and path must not be NULL");
    *out = NULL;
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    if (opts) {
        if (opts->struct_size < offsetof(vd_open_opts, cache_bytes) ||
            opts->struct_size > sizeof o)
            return vd_err(VD_EINVAL, "vd_open: vd_open_opts has an unknown struct_size %u",
                          opts->struct_size);
        memcpy(&o, opts, opts->struct_size);
        o.struct_size = sizeof o;
    }
    uint32_t cache_flags = 0;
    int rc = o.cache ? vd_cache_mode_flags(o.cache, &cache_flags) : 0;
    if (rc < 0)
        return rc;
    o.flags |= cache_flags;
    o.cache = NULL; /* now in flags, which the chain below inherits from */
    if (o.flags & ~OPEN_FLAGS_KNOWN)
        return vd_err(VD_EINVAL, "vd_open: unknown flags 0x%x", o.flags & ~OPEN_FLAGS_KNOWN);
    if ((o.flags & VD_OPEN_REPAIR) && !(o.flags & VD_OPEN_RDWR))
        return vd_err(VD_EINVAL, "vd_open: VD_OPEN_REPAIR needs VD_OPEN_RDWR");
    if (o.flags & VD_OPEN_SAFE) {
        if (o.flags & VD_OPEN_UNSAFE_RAW)
            return vd_err(VD_EINVAL, "vd_open: VD_OPEN_SAFE refuses VD_OPEN_UNSAFE_RAW");
        o.flags |= VD_OPEN_CONFINED;
        if (o.cache_bytes > VD_SAFE_MAX_CACHE_BYTES)
            o.cache_bytes = VD_SAFE_MAX_CACHE_BYTES;
    }
    rc = o.formats ? check_formats_list(o.formats) : 0;
    return rc < 0 ? rc : open_top(out, path, &o);
}

int vd_cache_mode_flags(const char *mode, uint32_t *flags)
{
    static const struct { const char *name; uint32_t flags; } modes[] = {
        { "writeback", 0 },
        { "writethrough", VD_OPEN_WRITETHROUGH },
        { "none", VD_OPEN_DIRECT },
        { "off", VD_OPEN_DIRECT },
        { "directsync", VD_OPEN_DIRECT | VD_OPEN_WRITETHROUGH },
        { "unsafe", VD_OPEN_NO_FLUSH },
    };
    vd_err_clear();
    if (!mode || !flags)
        return vd_err(VD_EINVAL, "vd_cache_mode_flags: mode and flags must not be NULL");
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        if (strcmp(mode, modes[i].name) == 0) {
            *flags = modes[i].flags;
            return 0;
        }
    return vd_err(VD_EINVAL, "Invalid cache option: %s", mode);
}

int vd_open(vd_image **out, const char *path, const char *format, uint32_t flags)
{
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.format = format;
    o.flags = flags;
    return vd_open_ext(out, path, &o);
}

void vd_image_close_chain(vd_image *img)
{
    while (img) {
        vd_image *below = img->backing;
        unlist_open_image(img);
        if (img->backend && img->backend->close)
            img->backend->close(img);
        image_free(img);
        img = below;
    }
}

int vd_close(vd_image *img)
{
    if (!img)
        return 0;
    if (img->magic != VD_IMAGE_MAGIC)
        return vd_err(VD_EINVAL, "vd_close: not an image handle");
    int rc = 0, stored = 0;
    if (!img->read_only && !vd_image_poisoned(img))
        stored = vd_image_store_bitmaps(img);
    if (!img->read_only && !vd_image_poisoned(img))
        rc = vd_flush(img, 0);
    if (stored < 0)
        rc = stored;
    vd_image_close_chain(img);
    return rc;
}

vd_image *vd_get_backing(vd_image *img)
{
    return img && img->magic == VD_IMAGE_MAGIC ? img->backing : NULL;
}

/* Prefix the current message with the file name. */
static int name_the_file(const char *path, int code)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", vd_errmsg());
    return vd_err(code, "%s: %s", path, msg);
}

int vd_create(const char *path, const char *format, uint64_t size,
              const char *options, uint32_t flags)
{
    vd_err_clear();
    if (!path || !format)
        return vd_err(VD_EINVAL, "vd_create: path and format must not be NULL");
    const uint32_t known = VD_CREATE_EXCL | VD_CREATE_UNSAFE_BACKING | VD_CREATE_CONFINED;
    if (flags & ~known)
        return vd_err(VD_EINVAL, "vd_create: unknown flags 0x%x", flags & ~known);
    const struct vd_backend *be = vd_backend_find(format);
    if (!be)
        return vd_err(VD_EFORMAT, "Unknown format '%s'", format);
    if (!be->create)
        return vd_err(VD_EUNSUPPORTED, "Format '%s' does not support image creation", format);
    if (size > INT64_MAX - 511)
        return vd_err(VD_ETOOBIG, "%s: size %llu is too large", path, (unsigned long long)size);
    size = (size + 511) & ~511ull; /* whole sectors, as qemu-img creates them */

    struct vd_kv kv;
    int rc = vd_kv_parse(&kv, options);
    if (rc < 0)
        return rc;
    /* open while the image is created: it is in use, so the new image cannot overwrite it */
    vd_image *backing = NULL;
    rc = vd_kv_check_keys(&kv, be->create_options, format);
    if (rc == 0)
        rc = vd_chain_prepare_create(path, &kv, &size, flags, &backing);
    /* a file that existed before is never deleted on failure; one we made is */
    struct stat st;
    bool existed = stat(path, &st) == 0;
    if (rc == 0 && existed && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        rc = vd_err(VD_EINVAL, "%s: not a regular file or block device", path);
    vd_file *file;
    if (rc == 0 && (rc = vd_file_open(&file, path, VD_FILE_RDWR | VD_FILE_CREATE |
                                      ((flags & VD_CREATE_EXCL) ? VD_FILE_EXCL : 0))) == 0) {
        rc = vd_claim_for_create(file);
        if (rc == 0)
            rc = be->create(file, size, &kv);
        if (rc < 0 && strncmp(vd_errmsg(), path, strlen(path)) != 0)
            rc = name_the_file(path, rc);
        if (rc == 0)
            rc = vd_file_sync(file);
        vd_file_close(file);
        if (rc < 0 && !existed) /* a half-written image is worse than none */
            unlink(path);
    }
    vd_close(backing);
    vd_kv_free(&kv);
    return rc;
}

/* ----------------------------------------------------------------- getters */

int vd_get_size(vd_image *img, uint64_t *size)
{
    if (!img || img->magic != VD_IMAGE_MAGIC || !size)
        return vd_err(VD_EINVAL, "vd_get_size: invalid handle or NULL size");
    pthread_rwlock_rdlock(&img->lock);
    *size = img->size;
    pthread_rwlock_unlock(&img->lock);
    return 0;
}

const char *vd_get_format(vd_image *img)
{
    return img && img->magic == VD_IMAGE_MAGIC ? img->backend->name : NULL;
}

const char *vd_get_filename(vd_image *img)
{
    return img && img->magic == VD_IMAGE_MAGIC ? img->filename : NULL;
}

int vd_get_info(vd_image *img, vd_info *info)
{
    if (!img || img->magic != VD_IMAGE_MAGIC || !info)
        return vd_err(VD_EINVAL, "vd_get_info: invalid handle or NULL info");
    if (info->struct_size < offsetof(vd_info, probed) + sizeof info->probed ||
        info->struct_size > sizeof(vd_info))
        return vd_err(VD_EINVAL, "vd_get_info: vd_info has an unknown struct_size %u",
                      info->struct_size);
    vd_info full = VD_INFO_INIT;
    pthread_rwlock_rdlock(&img->lock);
    full.virtual_size = img->size;
    full.format = img->backend->name;
    full.filename = img->filename;
    full.read_only = img->read_only;
    full.probed = img->probed;
    int rc = vd_file_allocated_bytes(img->file, &full.actual_size);
    if (img->backend->get_info)
        img->backend->get_info(img, &full);
    pthread_rwlock_unlock(&img->lock);
    memcpy(info, &full, info->struct_size);
    return rc;
}

int vd_get_property(vd_image *img, size_t index, const char **key,
                    const char **value, int *type)
{
    if (!img || img->magic != VD_IMAGE_MAGIC || !key || !value)
        return vd_err(VD_EINVAL, "vd_get_property: invalid handle or NULL out-pointer");
    int rc = VD_ENOENT;
    pthread_rwlock_rdlock(&img->lock);
    if (index < img->nprops) {
        *key = img->props[index].key;
        *value = img->props[index].value;
        if (type)
            *type = img->props[index].type;
        rc = 0;
    }
    pthread_rwlock_unlock(&img->lock);
    return rc;
}

int vd_image_set_prop(vd_image *img, const char *key, int type, const char *fmt, ...)
{
    char *value;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&value, fmt, ap);
    va_end(ap);
    if (n < 0)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    for (size_t i = 0; i < img->nprops; i++) {
        if (strcmp(img->props[i].key, key) == 0) {
            free(img->props[i].value);
            img->props[i].value = value;
            img->props[i].type = type;
            return 0;
        }
    }
    struct vd_prop *grown = realloc(img->props, (img->nprops + 1) * sizeof *grown);
    char *key_copy = strdup(key);
    if (!grown || !key_copy) {
        if (grown)
            img->props = grown;
        free(key_copy);
        free(value);
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    }
    img->props = grown;
    img->props[img->nprops++] = (struct vd_prop){ key_copy, value, type };
    return 0;
}

int vd_image_poison(vd_image *img, int code)
{
    int none = 0;
    __atomic_compare_exchange_n(&img->poisoned, &none, code, false, __ATOMIC_ACQ_REL,
                                __ATOMIC_ACQUIRE);
    return code;
}

int vd_image_corrupt(vd_image *img, const char *kind, const char *fmt, ...)
{
    vd_image_poison(img, VD_ECORRUPT);
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return vd_err(VD_ECORRUPT, "%s: %s image is corrupt: %s", img->filename, kind, what);
}

int vd_image_sync(vd_image *img)
{
    if (img->open_flags & VD_OPEN_NO_FLUSH)
        return 0;
    /* cleared before the sync: a write that another thread finishes meanwhile sets it
       again, so the next sync covers what this one may miss */
    if (!__atomic_exchange_n(&img->unsynced, false, __ATOMIC_ACQ_REL))
        return 0;
    int rc = img->data_file ? vd_file_sync(img->data_file) : 0; /* data before the metadata naming it */
    if (rc == 0)
        rc = vd_file_sync(img->file);
    if (rc < 0)
        vd_image_mark_unsynced(img);
    /* after a failed sync the kernel may have dropped the pages: nothing can be trusted */
    return rc < 0 ? vd_image_poison(img, rc) : 0;
}
