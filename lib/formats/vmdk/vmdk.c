/*
 * The VMDK backend: open (a sparse extent with its embedded descriptor, or
 * a text descriptor naming extent files), close, flush, info, and its
 * vd_backend table. Guest I/O goes through the copy-on-write engine over
 * the extents seen as one host address space (extents.c).
 *
 * Extent files are named relative to the descriptor's directory and are
 * opened through vd_chain_open_file(), confined beneath it when the image
 * is opened with VD_OPEN_CONFINED (or VD_OPEN_SAFE).
 */
#include "formats/vmdk/vmdk.h"
#include "codec/codec.h"
#include "core/endian.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>

static int v_probe(const uint8_t *h, size_t len, uint64_t file_size)
{
    (void)file_size;
    if (len >= 4 && (memcmp(h, "KDMV", 4) == 0 || memcmp(h, "COWD", 4) == 0))
        return 100;
    /* a text descriptor: comments and blank lines, then "version=N" */
    const char *p = (const char *)h, *end = p + len;
    while (p < end) {
        if (*p == '#') {
            while (p < end && *p != '\n')
                p++;
            p++;
            continue;
        }
        while (p < end && (*p == ' ' || *p == '\r'))
            p++;
        if (p < end && *p == '\n') {
            p++;
            continue;
        }
        return end - p >= 10 && memcmp(p, "version=", 8) == 0 && p[8] >= '1' && p[8] <= '3' &&
               (p[9] == '\n' || p[9] == '\r') ? 100 : 0;
    }
    return 0;
}

/* Read a descriptor of at most VMDK_MAX_DESCRIPTOR bytes at off, and parse it. */
static int read_descriptor(vd_file *f, uint64_t off, uint64_t len, struct vmdk_desc *d)
{
    if (len > VMDK_MAX_DESCRIPTOR)
        return vd_err(VD_ETOOBIG, "%s: the VMDK descriptor is larger than %u bytes", f->path,
                      VMDK_MAX_DESCRIPTOR);
    uint64_t file_size;
    int rc = vd_file_get_size(f, &file_size);
    if (rc == 0 && (off > file_size || len > file_size - off))
        rc = vd_err(VD_ECORRUPT, "%s: the VMDK descriptor lies past the end of the file", f->path);
    char *text = rc == 0 ? malloc((size_t)len + 1) : NULL;
    if (rc == 0 && !text)
        rc = vd_err(VD_ENOMEM, "%s: out of memory", f->path);
    if (rc == 0)
        rc = vd_file_pread(f, text, (size_t)len, off);
    if (rc == 0)
        rc = vmdk_desc_parse(text, (size_t)len, d, f->path);
    free(text);
    return rc;
}

static int add_extent(struct vmdk *v, const struct vmdk_extent_line *line, const char *name)
{
    if (v->next >= VMDK_MAX_EXTENTS)
        return vd_err(VD_ECORRUPT, "%s: more than %u extents", name, VMDK_MAX_EXTENTS);
    struct vmdk_extent *grown = realloc(v->ext, (v->next + 1) * sizeof *grown);
    if (!grown)
        return vd_err(VD_ENOMEM, "%s: out of memory", name);
    v->ext = grown;
    struct vmdk_extent *e = &v->ext[v->next++];
    *e = (struct vmdk_extent){ .line = *line };
    e->line.file = NULL; /* the descriptor owns the name */
    return 0;
}

/* A file of the image must not be the descriptor itself (or a device when confined). */
static int check_extent_file(vd_image *img, vd_file *f)
{
    struct stat mine, st;
    if (vd_file_stat_id(f, &st) < 0)
        return 0;
    if (vd_file_stat_id(img->file, &mine) == 0 && mine.st_dev == st.st_dev &&
        mine.st_ino == st.st_ino)
        return vd_err(VD_ECORRUPT, "%s: a VMDK extent names the descriptor file itself",
                      img->filename);
    if ((img->open_flags & VD_OPEN_CONFINED) && !S_ISREG(st.st_mode))
        return vd_err(VD_EPERM, "%s: the VMDK extent '%s' is not a regular file", img->filename,
                      f->path);
    return 0;
}

/* An extent file opened for an earlier extent, shared by several extent lines. */
static vd_file *already_open(struct vmdk *v, vd_file *f)
{
    struct stat st, other;
    if (vd_file_stat_id(f, &st) < 0)
        return NULL;
    for (size_t i = 0; i + 1 < v->next; i++)
        if (v->ext[i].own_file && vd_file_stat_id(v->ext[i].file, &other) == 0 &&
            other.st_dev == st.st_dev && other.st_ino == st.st_ino)
            return v->ext[i].file;
    return NULL;
}

/*
 * Open the file of extent e (the last one added). A writable image opens
 * every extent file for writing, so that extent lines may share a file;
 * RDONLY and NOACCESS extents refuse writes in the cluster map.
 */
static int open_extent_file(vd_image *img, struct vmdk *v, struct vmdk_extent *e,
                            const char *name)
{
    struct vd_chain_where where = { img->filename, -1, name };
    struct vd_named_file found = { NULL, NULL, -1 };
    int rc = vd_image_anchor(img, &where.anchor);
    if (rc == 0)
        rc = vd_chain_open_file(&found, &where, img->read_only ? 0 : VD_FILE_RDWR);
    vd_file *shared = rc == 0 ? already_open(v, found.file) : NULL;
    e->file = shared ? shared : found.file;
    e->own_file = !shared;
    if (!shared)
        found.file = NULL;
    vd_named_file_release(&found);
    if (rc == 0 && !shared)
        rc = check_extent_file(img, e->file);
    if (rc == 0 && !shared && !(img->open_flags & VD_OPEN_NO_LOCK))
        rc = vd_file_lock(e->file, !img->read_only);
    if (rc < 0) {
        char msg[768];
        snprintf(msg, sizeof msg, "%s", vd_errmsg());
        rc = vd_err(rc, "%s: could not open VMDK extent '%s': %s", img->filename, name, msg);
    }
    return rc;
}

static bool create_type_is(const struct vmdk_desc *d, const char *const *names)
{
    for (; *names; names++)
        if (strcmp(d->create_type, *names) == 0)
            return true;
    return false;
}

/* The extents a text descriptor lists, opened in order. */
static int open_descriptor_extents(vd_image *img, struct vmdk *v)
{
    static const char *const supported[] = {
        "monolithicFlat", "vmfs", "vmfsSparse", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
        "monolithicSparse", "streamOptimized", "custom", "seSparse", NULL,
    };
    if (!create_type_is(&v->desc, supported))
        return vd_err(VD_EUNSUPPORTED, "%s: unsupported VMDK image type '%s'", img->filename,
                      v->desc.create_type);
    if (!v->desc.nlines)
        return vd_err(VD_ECORRUPT, "%s: the VMDK descriptor lists no extents", img->filename);
    int rc = 0;
    for (size_t i = 0; i < v->desc.nlines && rc == 0; i++) {
        const struct vmdk_extent_line *line = &v->desc.lines[i];
        if ((rc = add_extent(v, line, img->filename)) < 0)
            break;
        struct vmdk_extent *e = &v->ext[v->next - 1];
        if (vd_mul_overflows(line->sectors, VMDK_SECTOR, &e->length))
            return vd_err(VD_ECORRUPT, "%s: VMDK extent size too large", img->filename);
        if (line->type == VMDK_ZERO)
            continue;
        if ((rc = open_extent_file(img, v, e, line->file)) < 0)
            break;
        if (line->type == VMDK_SPARSE || line->type == VMDK_VMFSSPARSE ||
            line->type == VMDK_SESPARSE)
            rc = vmdk_sparse_open(img, e, v->next - 1);
        else if (line->offset > (VMDK_HOST_MASK >> 9) ||
                 e->length > VMDK_HOST_MASK - line->offset * VMDK_SECTOR)
            rc = vd_err(VD_ECORRUPT, "%s: VMDK flat extent offset too large", img->filename);
    }
    return rc;
}

/* The image file is itself a sparse extent; its embedded descriptor describes it. */
static int open_sparse_file(vd_image *img, struct vmdk *v)
{
    struct vmdk_sparse s;
    int rc = vmdk_sparse_read_header(img->file, img->filename, &s);
    if (rc < 0)
        return rc;
    v->desc_at = s.desc_offset && s.desc_size ? s.desc_offset : UINT64_MAX;
    v->desc_room = s.desc_size;
    if (s.capacity == 0 && s.desc_offset) { /* a descriptor wrapped in a sparse header */
        rc = read_descriptor(img->file, s.desc_offset, s.desc_size, &v->desc);
        return rc < 0 ? rc : open_descriptor_extents(img, v);
    }
    if (s.desc_offset && s.desc_size)
        rc = read_descriptor(img->file, s.desc_offset, s.desc_size, &v->desc);
    else
        v->desc = (struct vmdk_desc){ .parent_cid = UINT32_MAX };
    v->embedded = true;
    free(v->desc.create_type);
    /* as QEMU: what the header says, whatever the embedded descriptor claims */
    v->desc.create_type = strdup(s.cowd ? "vmfsSparse" : s.compressed ? "streamOptimized"
                                                                       : "monolithicSparse");
    struct vmdk_extent_line line = { VMDK_RW, s.capacity, s.cowd ? VMDK_VMFSSPARSE : VMDK_SPARSE,
                                     NULL, 0 };
    if (rc == 0 && !v->desc.create_type)
        rc = vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    if (rc == 0)
        rc = add_extent(v, &line, img->filename);
    if (rc == 0) {
        v->ext[0].file = img->file;
        rc = vmdk_sparse_open(img, &v->ext[0], 0);
    }
    return rc;
}

/*
 * The engine's cluster: the grain of the sparse extents (all alike, every
 * one starting on a grain), or for flat images the largest power of two up
 * to 64 KiB that every extent boundary is a multiple of.
 */
static int choose_cluster_size(vd_image *img, struct vmdk *v)
{
    uint64_t grain = 0, bounds = 0;
    for (size_t i = 0; i < v->next; i++) {
        const struct vmdk_extent *e = &v->ext[i];
        bounds |= e->start | e->length;
        if (!e->sparse)
            continue;
        if (grain && grain != e->sparse->grain)
            return vd_err(VD_EUNSUPPORTED, "%s: VMDK sparse extents of different grain sizes are "
                          "not supported", img->filename);
        grain = e->sparse->grain;
        if (e->start % grain)
            return vd_err(VD_EUNSUPPORTED, "%s: a VMDK sparse extent that starts inside a grain "
                          "is not supported", img->filename);
    }
    if (grain) {
        img->cluster_size = (uint32_t)grain;
        return 0;
    }
    uint64_t cs = 65536;
    while (cs > VMDK_SECTOR && (bounds & (cs - 1)))
        cs /= 2;
    img->cluster_size = (uint32_t)cs;
    return 0;
}

static int lay_out(vd_image *img, struct vmdk *v)
{
    uint64_t pos = 0;
    for (size_t i = 0; i < v->next; i++) {
        v->ext[i].start = pos;
        if (vd_add_overflows(pos, v->ext[i].length, &pos) || pos > INT64_MAX)
            return vd_err(VD_ETOOBIG, "%s: the VMDK image is too large", img->filename);
    }
    if (!pos)
        return vd_err(VD_ECORRUPT, "%s: a VMDK image of size 0", img->filename);
    img->size = pos;
    return choose_cluster_size(img, v);
}

/*
 * qemu-img's vmdk fields: cid, parent-cid, create-type, and the extents, each
 * field of extent N as "extents.N.field" (the CLI prints them as a list).
 */
static int set_props(vd_image *img, const struct vmdk *v)
{
    int rc = vd_image_set_prop(img, "cid", VD_PROP_INT, "%u", v->desc.cid);
    if (rc == 0)
        rc = vd_image_set_prop(img, "parent-cid", VD_PROP_INT, "%u", v->desc.parent_cid);
    if (rc == 0)
        rc = vd_image_set_prop(img, "create-type", VD_PROP_STRING, "%s", v->desc.create_type);
    for (size_t i = 0; i < v->next && rc == 0; i++) {
        const struct vmdk_extent *e = &v->ext[i];
        char key[64];
        snprintf(key, sizeof key, "extents.%zu.compressed", i);
        if (e->sparse && e->sparse->compressed)
            rc = vd_image_set_prop(img, key, VD_PROP_BOOL, "true");
        snprintf(key, sizeof key, "extents.%zu.virtual-size", i);
        if (rc == 0)
            rc = vd_image_set_prop(img, key, VD_PROP_INT, "%llu", (unsigned long long)e->length);
        snprintf(key, sizeof key, "extents.%zu.filename", i);
        if (rc == 0)
            rc = vd_image_set_prop(img, key, VD_PROP_STRING, "%s", e->file ? e->file->path : "");
        snprintf(key, sizeof key, "extents.%zu.cluster-size", i);
        if (rc == 0 && e->sparse)
            rc = vd_image_set_prop(img, key, VD_PROP_INT, "%llu",
                                   (unsigned long long)e->sparse->grain);
        snprintf(key, sizeof key, "extents.%zu.format", i);
        if (rc == 0)
            rc = vd_image_set_prop(img, key, VD_PROP_STRING, "%s",
                                   v->embedded ? "" : vmdk_type_name(e->line.type));
    }
    return rc;
}

static void v_close(vd_image *img);
static int store_pending(vd_image *img, struct vmdk *v);

static int v_open(vd_image *img, const vd_open_opts *opts)
{
    (void)opts;
    struct vmdk *v = calloc(1, sizeof *v);
    if (!v)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    img->priv = v;
    pthread_mutex_init(&v->stream_lock, NULL);
    uint8_t magic[4] = { 0 };
    uint64_t file_size;
    int rc = vd_file_get_size(img->file, &file_size);
    if (rc == 0 && file_size < 4)
        rc = vd_err(VD_EFORMAT, "%s: file is too small to be a VMDK image", img->filename);
    if (rc == 0)
        rc = vd_file_pread(img->file, magic, 4, 0);
    if (rc == 0 && (memcmp(magic, "KDMV", 4) == 0 || memcmp(magic, "COWD", 4) == 0))
        rc = open_sparse_file(img, v);
    else if (rc == 0 && (rc = read_descriptor(img->file, 0, file_size, &v->desc)) == 0)
        rc = open_descriptor_extents(img, v);
    if (rc == 0)
        rc = lay_out(img, v);
    if (rc == 0)
        rc = vmdk_host_file_new(v, &v->host, img->filename);
    if (rc == 0) {
        img->data_file = v->host;
        img->cow = &vmdk_cow_ops;
        rc = set_props(img, v);
    }
    if (rc < 0)
        v_close(img);
    return rc;
}

static int v_flush(vd_image *img)
{
    struct vmdk *v = vmdk_of(img);
    pthread_mutex_lock(&v->stream_lock);
    int rc = store_pending(img, v);
    pthread_mutex_unlock(&v->stream_lock);
    for (size_t i = 0; i < v->next && rc == 0; i++)
        if (v->ext[i].sparse)
            rc = vmdk_sparse_flush(img, &v->ext[i]);
    if (rc == 0)
        rc = vd_image_sync(img);
    return rc < 0 ? vd_image_poison(img, rc) : 0;
}

static void v_close(vd_image *img)
{
    struct vmdk *v = vmdk_of(img);
    if (!v)
        return;
    if (!img->read_only && !img->poisoned && img->cow)
        v_flush(img);
    for (size_t i = 0; i < v->next; i++) {
        vmdk_sparse_free(v->ext[i].sparse);
        if (v->ext[i].own_file)
            vd_file_close(v->ext[i].file);
    }
    if (v->host)
        vd_file_close(v->host);
    img->data_file = NULL;
    free(v->ext);
    vmdk_desc_free(&v->desc);
    free(v->pending);
    pthread_mutex_destroy(&v->stream_lock);
    free(v);
    img->priv = NULL;
}

/* Compress and store the pending grain (with the stream lock held). */
static int store_pending(vd_image *img, struct vmdk *v)
{
    if (!v->pending)
        return 0;
    const uint64_t gs = img->cluster_size;
    size_t n = (size_t)(img->size - v->pending_off < gs ? img->size - v->pending_off : gs);
    size_t cap = (size_t)gs * 2, out_len = 0;
    uint8_t *out = malloc(cap);
    int rc = out ? vd_codec_compress(VD_CODEC_ZLIB, v->pending, n, out, cap, &out_len)
                 : vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    if (rc == VD_CODEC_NO_GAIN)
        rc = vd_err(VD_EIO, "%s: a grain did not fit its compression buffer", img->filename);
    if (rc == 0)
        rc = vd_cow_store_cluster(img, v->pending_off, out, out_len, NULL, 0);
    free(out);
    free(v->pending);
    v->pending = NULL;
    return rc;
}

/* Start a pending grain at g: only a grain never written may be written (once). */
static int start_pending(vd_image *img, struct vmdk *v, uint64_t g)
{
    struct vd_cow_run run;
    int rc = vmdk_cow_ops.lookup(img, g, img->cluster_size, &run);
    if (rc == 0 && run.kind != VD_COW_UNALLOCATED)
        rc = vd_err(VD_EUNSUPPORTED, "%s: could not write to allocated grain at %llu of a "
                    "streamOptimized image (each grain is written once)",
                    img->filename, (unsigned long long)g);
    if (rc == 0 && !(v->pending = calloc(1, img->cluster_size)))
        rc = vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    v->pending_off = g;
    return rc;
}

/*
 * streamOptimized, as QEMU writes it: every grain compressed and written
 * once; the grain being filled waits in memory until writes move past it.
 */
static int write_stream(vd_image *img, uint64_t off, const struct vd_iov *src)
{
    struct vmdk *v = vmdk_of(img);
    const uint64_t gs = img->cluster_size;
    int rc = 0;
    pthread_mutex_lock(&v->stream_lock);
    for (size_t done = 0, len = src->len; len && rc == 0;) {
        uint64_t g = off / gs * gs;
        size_t in = (size_t)(off - g), n = len < gs - in ? len : (size_t)(gs - in);
        if (v->pending && v->pending_off != g)
            rc = store_pending(img, v);
        if (rc == 0 && !v->pending)
            rc = start_pending(img, v, g);
        if (rc < 0)
            break;
        struct vd_iov part = vd_iov_sub(src, done, n);
        vd_iov_to_buf(&part, v->pending + in);
        if (in + n == gs || off + n == img->size) /* the grain is complete */
            rc = store_pending(img, v);
        off += n;
        done += n;
        len -= n;
    }
    pthread_mutex_unlock(&v->stream_lock);
    return rc;
}

/* text with its "CID=" line's value replaced by cid (NULL: no such line, or no memory). */
static char *with_cid(const char *text, uint32_t cid)
{
    for (const char *line = text; *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : "") {
        if (strncmp(line, "CID=", 4) != 0)
            continue;
        const char *rest = line + 4 + strcspn(line + 4, "\r\n");
        char *out;
        return asprintf(&out, "%.*sCID=%08x%s", (int)(line - text), text, cid, rest) < 0 ? NULL
                                                                                       : out;
    }
    return NULL;
}

/*
 * The first change of an open image gives it a new CID, as QEMU does, so
 * that deltas made on it see that it changed (their parentCID no longer
 * matches). Only descriptors that have a CID line change.
 */
static int update_cid(vd_image *img, struct vmdk *v)
{
    if (v->cid_updated || v->desc_at == UINT64_MAX)
        return 0;
    uint64_t room = v->desc_room, file_size;
    int rc = vd_file_get_size(img->file, &file_size);
    if (rc == 0 && !room)
        room = file_size - v->desc_at;
    if (rc < 0 || !room || room > VMDK_MAX_DESCRIPTOR || v->desc_at + room > file_size)
        return rc;
    char *text = calloc(1, (size_t)room + 1), *updated = NULL;
    uint32_t cid;
    if (!text)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    if (getrandom(&cid, sizeof cid, 0) != sizeof cid)
        cid = v->desc.cid * 2654435761u + 1;
    rc = vd_file_pread(img->file, text, (size_t)room, v->desc_at);
    if (rc == 0)
        updated = with_cid(text, cid);
    size_t n = updated ? strlen(updated) : 0;
    if (updated && (!v->desc_room || n <= room)) {
        memset(text, 0, (size_t)room); /* an embedded descriptor is zero-padded */
        memcpy(text, updated, n);
        rc = vd_file_pwrite(img->file, text, v->desc_room ? (size_t)room : n, v->desc_at);
        if (rc == 0 && !v->desc_room)
            rc = vd_file_truncate(img->file, v->desc_at + n);
        if (rc == 0) {
            v->desc.cid = cid;
            vd_image_mark_unsynced(img);
            rc = vd_image_set_prop(img, "cid", VD_PROP_INT, "%u", cid);
        }
    }
    free(updated);
    free(text);
    if (rc == 0)
        v->cid_updated = true;
    return rc;
}

/* Before any change of the guest disk. */
static int note_change(vd_image *img)
{
    struct vmdk *v = vmdk_of(img);
    pthread_mutex_lock(&v->stream_lock);
    int rc = update_cid(img, v);
    pthread_mutex_unlock(&v->stream_lock);
    return rc;
}

/* A streamOptimized grain still being filled reads as what was written into it. */
static int v_read(vd_image *img, uint64_t off, const struct vd_iov *dst)
{
    int rc = vd_cow_read(img, off, dst);
    struct vmdk *v = vmdk_of(img);
    if (rc < 0 || !vmdk_stream_optimized(v))
        return rc;
    pthread_mutex_lock(&v->stream_lock);
    const uint64_t gs = img->cluster_size;
    if (v->pending && v->pending_off < off + dst->len && off < v->pending_off + gs) {
        uint64_t from = off > v->pending_off ? off : v->pending_off;
        uint64_t to = off + dst->len < v->pending_off + gs ? off + dst->len : v->pending_off + gs;
        struct vd_iov part = vd_iov_sub(dst, (size_t)(from - off), (size_t)(to - from));
        vd_iov_from_buf(&part, v->pending + (from - v->pending_off));
    }
    pthread_mutex_unlock(&v->stream_lock);
    return 0;
}

/*
 * A ZERO extent has no file to hold data: zeroes written there change
 * nothing, anything else is refused before a byte is written. (QEMU 7.2
 * drops ZERO extent lines, so its disk ends before them and such a write
 * fails there with EIO.)
 */

/* The end of the part of [at, end) that lies in one extent, *e. */
static uint64_t part_end(struct vmdk *v, uint64_t at, uint64_t end, struct vmdk_extent **e)
{
    *e = vmdk_extent_at(v, at);
    return (*e)->start + (*e)->length < end ? (*e)->start + (*e)->length : end;
}

/* Whether [off, off + len) has a ZERO extent in it; an error if it may not change there. */
static int vet_zero_extents(vd_image *img, uint64_t off, uint64_t len, const struct vd_iov *src,
                            bool *touches)
{
    struct vmdk *v = vmdk_of(img);
    *touches = false;
    for (uint64_t at = off, end; at < off + len; at = end) {
        struct vmdk_extent *e;
        end = part_end(v, at, off + len, &e);
        if (e->line.type != VMDK_ZERO)
            continue;
        *touches = true;
        if (e->line.access != VMDK_RW)
            return vd_err(VD_EPERM, "%s: the VMDK extent at guest offset %llu is read-only",
                          img->filename, (unsigned long long)at);
        struct vd_iov part = src ? vd_iov_sub(src, (size_t)(at - off), (size_t)(end - at))
                                 : (struct vd_iov){ 0 };
        if (src && !vd_iov_is_zero(&part))
            return vd_err(VD_EUNSUPPORTED, "%s: guest offset %llu lies in a ZERO extent (extent "
                          "%zu of the descriptor), which has no file to hold data; only zeroes "
                          "can be written there", img->filename, (unsigned long long)at,
                          (size_t)(e - v->ext));
    }
    return 0;
}

/* Write (src) or zero (src NULL) the parts of the range outside ZERO extents. */
static int change_around_zero_extents(vd_image *img, uint64_t off, uint64_t len,
                                      const struct vd_iov *src, uint32_t flags)
{
    struct vmdk *v = vmdk_of(img);
    int rc = 0;
    for (uint64_t at = off, end; at < off + len && rc == 0; at = end) {
        struct vmdk_extent *e;
        end = part_end(v, at, off + len, &e);
        if (e->line.type == VMDK_ZERO)
            continue;
        struct vd_iov part = src ? vd_iov_sub(src, (size_t)(at - off), (size_t)(end - at))
                                 : (struct vd_iov){ 0 };
        rc = src ? vd_cow_write(img, at, &part, flags)
                 : vd_cow_write_zeroes(img, at, end - at, flags);
    }
    return rc;
}

static int v_write(vd_image *img, uint64_t off, const struct vd_iov *src, uint32_t flags)
{
    bool zero_extents;
    int rc = vet_zero_extents(img, off, src->len, src, &zero_extents);
    if (rc == 0)
        rc = note_change(img);
    if (rc < 0)
        return rc;
    if (vmdk_stream_optimized(vmdk_of(img)))
        return write_stream(img, off, src);
    flags &= ~VD_WRITE_COMPRESSED;
    return zero_extents ? change_around_zero_extents(img, off, src->len, src, flags)
                        : vd_cow_write(img, off, src, flags);
}

static int v_write_zeroes(vd_image *img, uint64_t off, uint64_t len, uint32_t flags)
{
    bool zero_extents;
    int rc = vet_zero_extents(img, off, len, NULL, &zero_extents);
    if (rc == 0)
        rc = note_change(img);
    if (rc < 0)
        return rc;
    if (vmdk_stream_optimized(vmdk_of(img)))
        return vd_err(VD_EUNSUPPORTED, "%s: a streamOptimized image cannot write zeroes",
                      img->filename);
    return zero_extents ? change_around_zero_extents(img, off, len, NULL, flags)
                        : vd_cow_write_zeroes(img, off, len, flags);
}

static int v_discard(vd_image *img, uint64_t off, uint64_t len)
{
    return vmdk_stream_optimized(vmdk_of(img)) ? 0 : vd_cow_discard(img, off, len);
}

/* Host offsets as offsets in the extent's file, not the engine's address space. */
static int v_block_status(vd_image *img, uint64_t off, uint64_t len, vd_extent *ext)
{
    int rc = vd_cow_block_status(img, off, len, ext);
    if (rc == 0 && ext->host_offset != VD_NO_HOST_OFFSET)
        ext->host_offset &= VMDK_HOST_MASK;
    return rc;
}

static void v_get_info(vd_image *img, vd_info *info)
{
    struct vmdk *v = vmdk_of(img);
    /* qemu-img shows a cluster size only when every extent has the same grain */
    bool sparse = v->next && v->ext[0].sparse;
    for (size_t i = 0; i < v->next; i++)
        sparse = sparse && v->ext[i].sparse;
    info->cluster_size = sparse ? img->cluster_size : 0;
    info->backing_file = v->desc.parent_hint;
    info->backing_format = v->desc.parent_hint ? "vmdk" : NULL;
    for (size_t i = 0; i < v->next; i++) { /* the extent files count, as qemu-img counts them */
        uint64_t bytes;
        if (v->ext[i].own_file && vd_file_allocated_bytes(v->ext[i].file, &bytes) == 0)
            info->actual_size += bytes;
    }
}

static void v_for_each_extra_file(vd_image *img, void (*fn)(void *ctx, const char *path), void *ctx)
{
    struct vmdk *v = img->priv;
    for (size_t i = 0; i < v->next; i++)
        if (v->ext[i].own_file && v->ext[i].file)
            fn(ctx, v->ext[i].file->path);
}

const struct vd_backend vd_backend_vmdk = {
    .name = "vmdk",
    .create_options = vmdk_create_options,
    .probe = v_probe,
    .create = vmdk_create,
    .open = v_open,
    .close = v_close,
    .read = v_read,
    .write = v_write,
    .write_zeroes = v_write_zeroes,
    .discard = v_discard,
    .flush = v_flush,
    .block_status = v_block_status,
    .get_info = v_get_info,
    .check = vmdk_check,
    .for_each_extra_file = v_for_each_extra_file,
};
