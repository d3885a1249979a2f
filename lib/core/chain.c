/*
 * Backing chains: resolving and opening backing files (relative to the
 * overlay, with the recorded format, confined on request), checking the
 * backing file of a new overlay, and rebase and commit.
 */
#include "core/internal.h"
#include "core/bitmap.h"
#include "cow/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* backing_name resolved as QEMU does: relative names are relative to the overlay's directory. */
char *vd_chain_resolve(const char *overlay, const char *backing_name)
{
    char *resolved;
    if (backing_name[0] == '/' || !strchr(overlay, '/'))
        return strdup(backing_name);
    int dir_len = (int)(strrchr(overlay, '/') - overlay);
    return asprintf(&resolved, "%.*s/%s", dir_len, overlay, backing_name) < 0 ? NULL : resolved;
}

void vd_named_file_release(struct vd_named_file *f)
{
    vd_file_close(f->file);
    free(f->path);
    if (f->dir_fd >= 0)
        close(f->dir_fd);
    *f = (struct vd_named_file){ NULL, NULL, -1 };
}

int vd_chain_open_file(struct vd_named_file *out, const struct vd_chain_where *where,
                       uint32_t file_flags)
{
    *out = (struct vd_named_file){ NULL, NULL, -1 };
    out->path = where->referrer ? vd_chain_resolve(where->referrer, where->name)
                                : strdup(where->name);
    if (!out->path)
        return vd_err(VD_ENOMEM, "%s: out of memory", where->name);
    const char *leaf;
    int rc = where->anchor < 0
                 ? vd_file_open(&out->file, out->path, file_flags)
                 : vd_dir_open_beneath(where->anchor, where->name, out->path, &out->dir_fd, &leaf);
    if (rc == 0 && where->anchor >= 0)
        rc = vd_file_open_at(&out->file, out->dir_fd, leaf, out->path, file_flags);
    if (rc < 0)
        vd_named_file_release(out);
    return rc;
}

int vd_image_anchor(vd_image *img, int *anchor)
{
    int rc = 0;
    if ((img->open_flags & VD_OPEN_CONFINED) && img->dir_fd < 0)
        rc = vd_dir_open_of(img->filename, &img->dir_fd);
    *anchor = (img->open_flags & VD_OPEN_CONFINED) ? img->dir_fd : -1;
    return rc;
}

/* Where img's recorded name (a backing file) is: confined as img is. */
static int named_by(vd_image *img, const char *name, struct vd_chain_where *where)
{
    *where = (struct vd_chain_where){ img->filename, -1, name };
    return vd_image_anchor(img, &where->anchor);
}

/* The cause's code stands (VD_ENOENT, VD_ELOCKED, VD_EPERM, ...); the message names both files. */
static int backing_failure(const char *overlay, const char *name, int rc)
{
    char msg[768];
    snprintf(msg, sizeof msg, "%s", vd_errmsg());
    return vd_err(rc, "%s: could not open backing file '%s': %s", overlay, name, msg);
}

int vd_chain_refuse_repeat(const struct vd_chain_link *links, const struct stat *st,
                           const char *path, const char *data_file_of)
{
    const struct vd_chain_link *l = links;
    while (l && (l->dev != st->st_dev || l->ino != st->st_ino))
        l = l->next;
    if (!l)
        return 0;
    if (!data_file_of && !l->data_file)
        return vd_err(VD_EBACKING, "%s: backing chain loops back to this file", path);
    if (!data_file_of)
        return vd_err(VD_EBACKING, "%s: the file is also the external data file of image '%s'",
                      path, l->image);
    if (!l->data_file)
        return vd_err(VD_EBACKING, "%s: the external data file '%s' is the same file as image "
                      "'%s': guest writes would overwrite the image", data_file_of, path, l->image);
    return vd_err(VD_EBACKING, "%s: the external data file '%s' is also the external data file "
                  "of image '%s'", data_file_of, path, l->image);
}

/*
 * The chain links of an open image (its file, then its data file), for
 * opening a backing chain below it; NULL where its file has no identity.
 */
static const struct vd_chain_link *links_of(vd_image *img, struct vd_chain_link links[2])
{
    struct stat st;
    if (vd_file_stat_id(img->file, &st) < 0)
        return NULL;
    links[0] = (struct vd_chain_link){ st.st_dev, st.st_ino, img->filename, false, NULL };
    if (!img->data_file || vd_file_stat_id(img->data_file, &st) < 0)
        return &links[0];
    links[1] = (struct vd_chain_link){ st.st_dev, st.st_ino, img->filename, true, &links[0] };
    return &links[1];
}

/* Open the backing chain below img, as its header records it. */
int vd_chain_open_backing(vd_image *img, const vd_open_opts *o, unsigned depth,
                          const struct vd_chain_link *self)
{
    vd_info info = VD_INFO_INIT;
    if (img->backend->get_info)
        img->backend->get_info(img, &info);
    if (!info.backing_file || (o->flags & VD_OPEN_NO_BACKING))
        return 0;
    if (depth + 1 >= VD_MAX_CHAIN_DEPTH)
        return vd_err(VD_EBACKING, "%s: backing chain is deeper than %d images", img->filename,
                      VD_MAX_CHAIN_DEPTH);
    if ((o->flags & VD_OPEN_SAFE) && !info.backing_format)
        return vd_err(VD_EPERM, "%s: the backing file '%s' has no recorded format, and "
                      "VD_OPEN_SAFE does not probe backing files (its content would choose "
                      "how it is read)", img->filename, info.backing_file);
    struct vd_chain_where where;
    int rc = named_by(img, info.backing_file, &where);
    if (rc < 0)
        return rc;
    vd_open_opts below = *o;
    below.flags = o->flags & VD_OPEN_INHERITED; /* backing files are read-only */
    below.format = info.backing_format;
    below.snapshot = NULL;
    rc = vd_open_image(&img->backing, &where, &below, depth + 1, self);
    return rc < 0 ? backing_failure(img->filename, info.backing_file, rc) : 0;
}

/*
 * Open the backing file an overlay is to name, read-only with its chain, to
 * check it before the header records it: where the overlay will find it, in
 * format (NULL: probed, but a file that probes as raw must be confirmed).
 */
static int open_backing_to_be(vd_image **out, const struct vd_chain_where *where,
                              const char *format, const vd_open_opts *o,
                              const struct vd_chain_link *above)
{
    vd_open_opts with_format = *o;
    with_format.format = format;
    int rc = vd_open_image(out, where, &with_format, 1, above);
    if (rc < 0)
        return backing_failure(where->referrer, where->name, rc);
    if (!format && strcmp((*out)->backend->name, "raw") == 0) {
        vd_image_close_chain(*out);
        *out = NULL;
        return vd_err(VD_EINVAL, "%s: backing file '%s' probes as raw; give backing_fmt=raw "
                      "to confirm (a probed raw backing file is refused)", where->referrer,
                      where->name);
    }
    return 0;
}

/*
 * Check the backing file an overlay will name: it must open (inside the
 * overlay's directory with VD_CREATE_CONFINED), its format is recorded
 * (probed if not given, but never a probed raw), and a size of 0 becomes its
 * size.
 */
int vd_chain_prepare_create(const char *path, struct vd_kv *kv, uint64_t *size, uint32_t flags,
                            vd_image **backing_out)
{
    if (backing_out)
        *backing_out = NULL;
    const char *name = vd_kv_get(kv, "backing_file"), *fmt = vd_kv_get(kv, "backing_fmt");
    if (!name)
        return fmt ? vd_err(VD_EINVAL, "%s: backing_fmt given without backing_file", path) : 0;
    if (flags & VD_CREATE_UNSAFE_BACKING) {
        if (!fmt || !*size)
            return vd_err(VD_EINVAL, "%s: without checking the backing file, both its format "
                          "(backing_fmt) and the image size must be given", path);
        return 0;
    }
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.flags = VD_OPEN_NO_LOCK | ((flags & VD_CREATE_CONFINED) ? VD_OPEN_CONFINED : 0);
    struct vd_chain_where where = { path, -1, name };
    int rc = (flags & VD_CREATE_CONFINED) ? vd_dir_open_of(path, &where.anchor) : 0;
    vd_image *backing = NULL;
    if (rc == 0)
        rc = open_backing_to_be(&backing, &where, fmt, &o, NULL);
    if (where.anchor >= 0)
        close(where.anchor);
    if (rc == 0 && !fmt)
        rc = vd_kv_set(kv, "backing_fmt", backing->backend->name);
    if (rc == 0 && !*size)
        *size = backing->size;
    if (rc == 0 && backing_out)
        *backing_out = backing;
    else
        vd_image_close_chain(backing);
    return rc;
}


/* ---------------------------------------------------------- rebase, commit */

enum { COPY_CHUNK = 2 << 20 };

/* The options of the images opened below img: what it was opened with and they inherit. */
static vd_open_opts inherited_opts(const vd_image *img)
{
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.flags = img->open_flags & VD_OPEN_INHERITED;
    o.formats = img->allowed_formats;
    return o;
}

/* Reopen img->backing as its header now names it; extra_flags: VD_OPEN_NO_LOCK or 0. */
static int reopen_backing(vd_image *img, uint32_t extra_flags)
{
    vd_image_close_chain(img->backing);
    img->backing = NULL;
    vd_open_opts o = inherited_opts(img);
    o.flags |= extra_flags;
    struct vd_chain_link links[2];
    return vd_chain_open_backing(img, &o, 0, links_of(img, links));
}

/* The extent at off as img itself defines it (depth 0), or not. */
static int own_extent(vd_image *img, uint64_t off, vd_extent *ext)
{
    *ext = (vd_extent){ off, img->size - off, VD_EXTENT_DATA | VD_EXTENT_ALLOCATED, 0, VD_NO_HOST_OFFSET };
    return img->backend->block_status ? img->backend->block_status(img, off, img->size - off, ext) : 0;
}

static bool defined_here(const vd_extent *ext)
{
    return (ext->flags & VD_EXTENT_ALLOCATED) && ext->depth == 0;
}

/* Read [off, off+len) of a backing image as the overlay sees it: zeroes past its end. */
static int read_backing(vd_image *b, uint64_t off, uint8_t *buf, size_t len)
{
    size_t inside = !b || off >= b->size ? 0 : (size_t)(b->size - off < len ? b->size - off : len);
    memset(buf + inside, 0, len - inside);
    return inside ? vd_backend_read(b, off, buf, inside) : 0;
}

/*
 * Safe rebase: copy into img every chunk it does not define itself whose
 * content differs between the old chain and the new backing image.
 */
static int copy_differences(vd_image *img, vd_image *new_backing)
{
    uint8_t *old = malloc(COPY_CHUNK), *new = malloc(COPY_CHUNK);
    int rc = old && new ? 0 : vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    for (uint64_t off = 0; off < img->size && rc == 0;) {
        vd_extent ext;
        if ((rc = own_extent(img, off, &ext)) < 0)
            break;
        uint64_t end = off + ext.length;
        while (!defined_here(&ext) && off < end && rc == 0) {
            size_t n = (size_t)(end - off < COPY_CHUNK ? end - off : COPY_CHUNK);
            if ((rc = vd_backend_read(img, off, old, n)) == 0)
                rc = read_backing(new_backing, off, new, n);
            /* copy only the clusters that differ, so the overlay stays small */
            size_t step = img->cluster_size ? img->cluster_size : n;
            for (size_t at = 0; at < n && rc == 0; at += step) {
                size_t piece = n - at < step ? n - at : step;
                if (memcmp(old + at, new + at, piece) != 0 &&
                    (rc = vd_backend_write(img, off + at, old + at, piece, 0)) == 0)
                    vd_image_mark_dirty(img, off + at, piece); /* a guest-visible write, as in QEMU */
            }
            off += n;
        }
        off = end;
    }
    free(old);
    free(new);
    return rc;
}

/*
 * The new backing image of a rebase, opened read-only as img will open it
 * (confined as img is); NULL for none. A chain that contains a file of img
 * itself would loop (or have guest writes overwrite an image): it is refused
 * before the header changes.
 */
static int open_new_backing(vd_image *img, const char *file, const char *format,
                            uint32_t extra_flags, vd_image **out)
{
    *out = NULL;
    if (!file || !*file)
        return 0;
    if ((img->open_flags & VD_OPEN_SAFE) && !format)
        return vd_err(VD_EPERM, "%s: VD_OPEN_SAFE does not probe backing files: give the "
                      "format of '%s'", img->filename, file);
    struct vd_chain_where where;
    int rc = named_by(img, file, &where);
    vd_open_opts o = inherited_opts(img);
    o.flags |= extra_flags;
    struct vd_chain_link links[2];
    return rc < 0 ? rc : open_backing_to_be(out, &where, format, &o, links_of(img, links));
}

int vd_rebase(vd_image *img, const char *backing_file, const char *backing_format, uint32_t flags)
{
    int rc = vd_enter(img, "vd_rebase", flags, VD_REBASE_UNSAFE | VD_REBASE_NO_LOCK,
                      VD_ACCESS_WRITE);
    if (rc < 0)
        return rc;
    if (!img->backend->set_backing) {
        rc = vd_err(VD_EUNSUPPORTED, "%s: format '%s' has no backing files", img->filename,
                    img->backend->name);
        return vd_leave(img, rc);
    }
    bool none = !backing_file || !*backing_file;
    if (!none && (flags & VD_REBASE_UNSAFE) && !backing_format)
        return vd_leave(img, vd_err(VD_EINVAL, "%s: an unsafe rebase needs the backing format "
                                    "(it cannot be probed without opening the file)", img->filename));
    uint32_t new_chain_flags = (flags & VD_REBASE_NO_LOCK) ? VD_OPEN_NO_LOCK : 0;
    vd_image *new_backing = NULL;
    if (!(flags & VD_REBASE_UNSAFE)) {
        rc = open_new_backing(img, backing_file, backing_format, new_chain_flags, &new_backing);
        if (rc == 0)
            rc = copy_differences(img, new_backing);
        if (rc == 0)
            rc = img->backend->flush ? img->backend->flush(img) : 0;
        if (rc == 0 && !none && !backing_format)
            backing_format = new_backing->backend->name;
    }
    if (rc == 0)
        rc = img->backend->set_backing(img, none ? NULL : backing_file, none ? NULL : backing_format);
    vd_image_close_chain(new_backing);
    if (rc == 0) {
        int reopened = reopen_backing(img, new_chain_flags);
        /* an unsafe rebase may name a file that is not there (yet): the header stands */
        if (reopened < 0 && !(flags & VD_REBASE_UNSAFE))
            rc = reopened;
    }
    return vd_leave(img, rc);
}

/* Copy what img defines itself into the writable backing image b. */
static int copy_into_backing(vd_image *img, vd_image *b)
{
    uint8_t *buf = malloc(COPY_CHUNK);
    int rc = buf ? 0 : vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    for (uint64_t off = 0; off < img->size && rc == 0;) {
        vd_extent ext;
        if ((rc = own_extent(img, off, &ext)) < 0)
            break;
        uint64_t end = off + ext.length;
        if (defined_here(&ext) && (ext.flags & VD_EXTENT_ZERO)) {
            rc = vd_write_zeroes(b, off, ext.length, VD_ZERO_MAY_UNMAP);
            off = end;
        }
        while (defined_here(&ext) && off < end && rc == 0) {
            size_t n = (size_t)(end - off < COPY_CHUNK ? end - off : COPY_CHUNK);
            if ((rc = vd_backend_read(img, off, buf, n)) == 0)
                rc = vd_write(b, off, buf, n, 0);
            off += n;
        }
        off = end;
    }
    free(buf);
    return rc;
}

/* img's backing file, opened read-write by the name img records, confined as img is. */
static int open_backing_rw(vd_image *img, const char *format, vd_image **out)
{
    vd_info info = VD_INFO_INIT;
    img->backend->get_info(img, &info);
    struct vd_chain_where where;
    int rc = named_by(img, info.backing_file, &where);
    vd_open_opts o = inherited_opts(img);
    o.flags |= VD_OPEN_RDWR;
    o.format = format;
    return rc < 0 ? rc : vd_open_image(out, &where, &o, 0, NULL);
}

int vd_commit(vd_image *img, uint32_t flags)
{
    int rc = vd_enter(img, "vd_commit", flags, VD_COMMIT_EMPTY, VD_ACCESS_WRITE);
    if (rc < 0)
        return rc;
    if (!img->backing)
        return vd_leave(img, vd_err(VD_EINVAL, "%s: image has no backing file to commit into",
                                    img->filename));
    if ((flags & VD_COMMIT_EMPTY) && (!img->cow || !img->cow->zero_clusters))
        return vd_leave(img, vd_err(VD_EUNSUPPORTED, "%s: format '%s' cannot be emptied",
                                    img->filename, img->backend->name));
    /* our read-only handle on the backing file goes first: it would be stale */
    char *format = strdup(img->backing->backend->name);
    vd_image_close_chain(img->backing);
    img->backing = NULL;
    vd_image *b = NULL;
    if (!format)
        rc = vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    if (rc == 0)
        rc = open_backing_rw(img, format, &b);
    if (rc == 0 && b->size < img->size)
        rc = vd_resize(b, img->size, 0);
    if (rc == 0)
        rc = copy_into_backing(img, b);
    if (b) {
        int closed = vd_close(b); /* flushes: the backing file is durable before img empties */
        rc = rc ? rc : closed;
    }
    if (rc == 0 && (flags & VD_COMMIT_EMPTY)) {
        uint64_t end = (img->size + img->cluster_size - 1) & ~(uint64_t)(img->cluster_size - 1);
        rc = img->cow->zero_clusters(img, 0, end, VD_COW_DEALLOCATE);
        if (rc == 0 && img->backend->flush)
            rc = img->backend->flush(img);
    }
    int reopened = reopen_backing(img, 0);
    free(format);
    return vd_leave(img, rc ? rc : reopened);
}
