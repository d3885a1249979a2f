/*
 * New VMDK images, laid out as QEMU lays them out: a sparse extent is
 * [header][descriptor, 20 sectors][redundant grain directory][its grain
 * tables][grain directory][its grain tables][grains], all grain tables
 * preallocated; split subformats put 2 GiB in each extent file
 * (name-s001.vmdk, name-f001.vmdk), monolithicFlat its data in
 * name-flat.vmdk, and those three keep the descriptor in the named file.
 */
#include "formats/vmdk/vmdk.h"
#include "core/endian.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/random.h>

const struct vd_option_desc vmdk_create_options[] = {
    { "subformat", "VMDK flavour (monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, "
                   "twoGbMaxExtentFlat, streamOptimized)", "monolithicSparse" },
    { "adapter_type", "Virtual adapter type (ide, buslogic, lsilogic, legacyESX)", "ide" },
    { "hwversion", "VMDK hardware version", "4" },
    { "toolsversion", "VMware guest tools version", "2147483647" },
    { "compat6", "VMDK version 6 image (hwversion=6)", "off" },
    { "zeroed_grain", "Enable the zeroed-grain flag (sparse subformats)", "off" },
    { "backing_file", "File name of a base image (a VMDK image)", NULL },
    { "backing_fmt", "Image format of the base image (vmdk)", NULL },
    { NULL, NULL, NULL },
};

enum subformat { MONO_SPARSE, MONO_FLAT, SPLIT_SPARSE, SPLIT_FLAT, STREAM };
static const char *const subformat_names[] = {
    "monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
    "streamOptimized", NULL,
};
static const char *const adapter_names[] = { "ide", "buslogic", "lsilogic", "legacyESX", NULL };

#define SPLIT_SIZE (UINT64_C(2) << 30)
#define NEW_GRAIN_SECTORS 128 /* 64 KiB */
#define DESC_SECTORS 20

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

/* Write one grain directory at sector gd whose tables follow it. */
static int write_directory(vd_file *f, uint64_t gd, uint64_t gd_sectors, uint64_t gt_count,
                           uint64_t gt_sectors)
{
    uint8_t *buf = calloc(gd_sectors ? gd_sectors : 1, VMDK_SECTOR);
    if (!buf)
        return vd_err(VD_ENOMEM, "%s: out of memory", f->path);
    for (uint64_t i = 0; i < gt_count; i++)
        vd_put_le32(buf + i * 4, (uint32_t)(gd + gd_sectors + i * gt_sectors));
    int rc = gd_sectors ? vd_file_pwrite(f, buf, (size_t)(gd_sectors * VMDK_SECTOR),
                                         gd * VMDK_SECTOR) : 0;
    free(buf);
    return rc;
}

int vmdk_write_sparse_extent(vd_file *f, const struct vmdk_new_sparse *n)
{
    uint64_t capacity = n->capacity / VMDK_SECTOR;
    uint64_t grains = div_up(capacity, NEW_GRAIN_SECTORS);
    uint64_t gt_sectors = VMDK4_GTES * 4 / VMDK_SECTOR;
    uint64_t gt_count = div_up(grains, VMDK4_GTES);
    uint64_t gd_sectors = div_up(gt_count * 4, VMDK_SECTOR);
    uint64_t rgd = 1 + DESC_SECTORS, gd = rgd + gd_sectors + gt_sectors * gt_count;
    uint64_t grain_offset = div_up(gd + gd_sectors + gt_sectors * gt_count, NEW_GRAIN_SECTORS) *
                            NEW_GRAIN_SECTORS;
    if (grain_offset + grains * NEW_GRAIN_SECTORS > (UINT64_C(1) << 32))
        return vd_err(VD_ETOOBIG, "%s: a VMDK sparse extent holds at most 2 TiB", f->path);
    uint8_t h[VMDK_SECTOR] = { 0 };
    memcpy(h, "KDMV", 4);
    vd_put_le32(h + 4, n->compressed ? 3 : n->zeroed_grain ? 2 : 1);
    vd_put_le32(h + 8, VMDK4_FLAG_RGD | VMDK4_FLAG_NL_DETECT |
                       (n->compressed ? VMDK4_FLAG_COMPRESS | VMDK4_FLAG_MARKER : 0) |
                       (n->zeroed_grain ? VMDK4_FLAG_ZERO_GRAIN : 0));
    vd_put_le64(h + 12, capacity);
    vd_put_le64(h + 20, NEW_GRAIN_SECTORS);
    vd_put_le64(h + 28, 1);
    vd_put_le64(h + 36, DESC_SECTORS);
    vd_put_le32(h + 44, VMDK4_GTES);
    vd_put_le64(h + 48, rgd);
    vd_put_le64(h + 56, gd);
    vd_put_le64(h + 64, grain_offset);
    memcpy(h + 73, "\n \r\n", 4);
    vd_put_le16(h + 77, n->compressed ? VMDK4_COMPRESS_DEFLATE : 0);
    int rc = vd_file_pwrite(f, h, sizeof h, 0);
    if (rc == 0)
        rc = vd_file_truncate(f, grain_offset * VMDK_SECTOR);
    if (rc == 0 && n->descriptor)
        rc = vd_file_pwrite(f, n->descriptor, strlen(n->descriptor), VMDK_SECTOR);
    if (rc == 0)
        rc = write_directory(f, rgd, gd_sectors, gt_count, gt_sectors);
    if (rc == 0)
        rc = write_directory(f, gd, gd_sectors, gt_count, gt_sectors);
    return rc;
}

struct plan {
    enum subformat sub;
    bool flat, split, zeroed_grain;
    const char *adapter, *hw_version, *tools_version, *backing;
    uint32_t parent_cid;
};

/* The file name of extent idx (1-based) next to path: dir/prefix-s001.vmdk, dir/prefix-flat.vmdk. */
static char *extent_path(const char *path, const struct plan *p, unsigned idx)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    int prefix_len = (int)(dot ? dot - path : (ptrdiff_t)strlen(path));
    const char *postfix = dot ? dot : "";
    char *out;
    int n = p->split ? asprintf(&out, "%.*s-%c%03u%s", prefix_len, path, p->flat ? 'f' : 's', idx,
                                postfix)
                     : asprintf(&out, "%.*s-flat%s", prefix_len, path, postfix);
    return n < 0 ? NULL : out;
}

static const char *basename_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* The parent's CID, which a delta records as its parentCID. */
static int read_parent_cid(vd_file *file, const char *backing, const char *fmt, uint32_t *cid)
{
    if (fmt && strcmp(fmt, "vmdk") != 0)
        return vd_err(VD_EINVAL, "%s: backing_file must be a vmdk image (it is %s)", file->path,
                      fmt);
    char *path = vd_chain_resolve(file->path, backing);
    if (!path)
        return vd_err(VD_ENOMEM, "%s: out of memory", file->path);
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.format = "vmdk";
    o.flags = VD_OPEN_NO_BACKING | VD_OPEN_NO_LOCK;
    vd_image *parent;
    int rc = vd_open_ext(&parent, path, &o);
    free(path);
    if (rc < 0)
        return rc;
    *cid = vmdk_of(parent)->desc.cid;
    vd_close(parent);
    return 0;
}

static int parse_plan(vd_file *file, const struct vd_kv *opts, struct plan *p)
{
    size_t sub, adapter;
    bool compat6;
    int rc;
    if ((rc = vd_kv_get_choice(opts, "subformat", subformat_names, MONO_SPARSE, &sub)) < 0 ||
        (rc = vd_kv_get_choice(opts, "adapter_type", adapter_names, 0, &adapter)) < 0 ||
        (rc = vd_kv_get_bool(opts, "compat6", false, &compat6)) < 0 ||
        (rc = vd_kv_get_bool(opts, "zeroed_grain", false, &p->zeroed_grain)) < 0)
        return rc;
    p->sub = (enum subformat)sub;
    p->flat = sub == MONO_FLAT || sub == SPLIT_FLAT;
    p->split = sub == SPLIT_SPARSE || sub == SPLIT_FLAT;
    p->adapter = adapter_names[adapter];
    p->hw_version = vd_kv_get(opts, "hwversion");
    if (compat6 && p->hw_version)
        return vd_err(VD_EINVAL, "%s: compat6 cannot be enabled with hwversion set", file->path);
    if (!p->hw_version || strcmp(p->hw_version, "undefined") == 0)
        p->hw_version = compat6 ? "6" : "4";
    p->tools_version = vd_kv_get(opts, "toolsversion");
    if (!p->tools_version)
        p->tools_version = "2147483647";
    if (strpbrk(p->hw_version, "\"\n") || strpbrk(p->tools_version, "\"\n"))
        return vd_err(VD_EINVAL, "%s: quotes and newlines are not allowed in VMDK options",
                      file->path);
    p->backing = vd_kv_get(opts, "backing_file");
    p->parent_cid = UINT32_MAX;
    if (p->flat && p->backing)
        return vd_err(VD_EUNSUPPORTED, "%s: a flat VMDK image cannot have a backing file",
                      file->path);
    if (p->flat && p->zeroed_grain)
        return vd_err(VD_EUNSUPPORTED, "%s: a flat VMDK image cannot enable zeroed grains",
                      file->path);
    if (p->backing && (strchr(p->backing, '"') || strchr(p->backing, '\n')))
        return vd_err(VD_EINVAL, "%s: the backing file name cannot hold quotes or newlines",
                      file->path);
    if (p->backing)
        rc = read_parent_cid(file, p->backing, vd_kv_get(opts, "backing_fmt"), &p->parent_cid);
    return rc;
}

/* The descriptor text: header keys, extent lines, the disk database. */
static char *descriptor_text(const struct plan *p, uint64_t size, const char *extents)
{
    uint32_t cid;
    if (getrandom(&cid, sizeof cid, 0) != sizeof cid)
        cid = (uint32_t)size ^ 0x5a5a5a5au;
    char parent[1100] = "";
    if (p->backing)
        snprintf(parent, sizeof parent, "parentFileNameHint=\"%s\"\n", p->backing);
    unsigned heads = strcmp(p->adapter, "ide") == 0 ? 16 : 255;
    char *text;
    int n = asprintf(&text,
                     "# Disk DescriptorFile\n"
                     "version=1\n"
                     "CID=%08x\n"
                     "parentCID=%08x\n"
                     "createType=\"%s\"\n"
                     "%s"
                     "\n"
                     "# Extent description\n"
                     "%s"
                     "\n"
                     "# The Disk Data Base\n"
                     "#DDB\n"
                     "\n"
                     "ddb.virtualHWVersion = \"%s\"\n"
                     "ddb.geometry.cylinders = \"%llu\"\n"
                     "ddb.geometry.heads = \"%u\"\n"
                     "ddb.geometry.sectors = \"63\"\n"
                     "ddb.adapterType = \"%s\"\n"
                     "ddb.toolsVersion = \"%s\"\n",
                     cid, p->parent_cid, subformat_names[p->sub], parent, extents, p->hw_version,
                     (unsigned long long)(size / (63ull * heads * VMDK_SECTOR)), heads, p->adapter,
                     p->tools_version);
    return n < 0 ? NULL : text;
}

static int append_line(char **lines, const struct plan *p, uint64_t bytes, const char *name)
{
    char *grown;
    int n = asprintf(&grown, p->flat ? "%sRW %llu FLAT \"%s\" 0\n" : "%sRW %llu SPARSE \"%s\"\n",
                     *lines ? *lines : "", (unsigned long long)(bytes / VMDK_SECTOR), name);
    if (n < 0)
        return vd_err(VD_ENOMEM, "out of memory");
    free(*lines);
    *lines = grown;
    return 0;
}

/* One extent file next to the descriptor: claimed (locked, emptied), then filled. */
static int create_extent_file(const char *path, const struct plan *p, uint64_t bytes)
{
    vd_file *f;
    int rc = vd_file_open(&f, path, VD_FILE_RDWR | VD_FILE_CREATE);
    if (rc < 0)
        return rc;
    rc = vd_claim_for_create(f);
    struct vmdk_new_sparse n = { bytes, false, p->zeroed_grain, NULL };
    if (rc == 0)
        rc = p->flat ? vd_file_truncate(f, bytes) : vmdk_write_sparse_extent(f, &n);
    if (rc == 0)
        rc = vd_file_sync(f);
    vd_file_close(f);
    return rc;
}

/* monolithicFlat and the split subformats: extent files, then the descriptor file. */
static int create_with_extent_files(vd_file *file, const struct plan *p, uint64_t size)
{
    char *lines = NULL;
    int rc = 0;
    unsigned idx = 1, made = 0;
    for (uint64_t done = 0; done < size && rc == 0; idx++) {
        uint64_t bytes = p->split && size - done > SPLIT_SIZE ? SPLIT_SIZE : size - done;
        char *path = extent_path(file->path, p, idx);
        rc = path ? create_extent_file(path, p, bytes) : vd_err(VD_ENOMEM, "out of memory");
        made += rc == 0;
        if (rc == 0)
            rc = append_line(&lines, p, bytes, basename_of(path));
        free(path);
        done += bytes;
    }
    char *text = rc == 0 ? descriptor_text(p, size, lines ? lines : "") : NULL;
    if (rc == 0 && !text)
        rc = vd_err(VD_ENOMEM, "out of memory");
    if (rc == 0)
        rc = vd_file_pwrite(file, text, strlen(text), 0);
    free(text);
    free(lines);
    /* a failed create leaves none of the extent files it made (vd_create() removes the
       descriptor); one it could not claim (in use) is not its own */
    for (unsigned i = 1; rc < 0 && i <= made; i++) {
        char *path = extent_path(file->path, p, i);
        if (path)
            unlink(path);
        free(path);
    }
    return rc;
}

int vmdk_create(vd_file *file, uint64_t size, const struct vd_kv *opts)
{
    struct plan p = { 0 };
    int rc = parse_plan(file, opts, &p);
    if (rc < 0)
        return rc;
    if (!size)
        return vd_err(VD_EINVAL, "%s: a VMDK image needs a size", file->path);
    if (p.flat || p.split)
        return create_with_extent_files(file, &p, size);
    char *lines = NULL, *text = NULL;
    rc = append_line(&lines, &p, size, basename_of(file->path));
    if (rc == 0 && !(text = descriptor_text(&p, size, lines)))
        rc = vd_err(VD_ENOMEM, "out of memory");
    if (rc == 0 && strlen(text) > DESC_SECTORS * VMDK_SECTOR)
        rc = vd_err(VD_EINVAL, "%s: the VMDK descriptor is too long", file->path);
    struct vmdk_new_sparse n = { size, p.sub == STREAM, p.zeroed_grain, text };
    if (rc == 0)
        rc = vmdk_write_sparse_extent(file, &n);
    free(text);
    free(lines);
    return rc;
}
