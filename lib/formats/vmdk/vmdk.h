/*
 * VMDK: on-disk constants and the backend's private state, shared by the
 * files of this folder:
 *   descriptor.c  the text descriptor: parse, and write new ones
 *   extents.c     the extent files seen as one host address space
 *   sparse.c      sparse extents (hosted "KDMV", vmfsSparse "COWD"): headers,
 *                 grain directory and tables, the engine's cluster-map hooks
 *   sesparse.c    ESXi seSparse extents (read-only): headers, directory and
 *                 table entries, for sparse.c's grain lookup
 *   create.c      new images of every subformat
 *   check.c       check, as qemu-img's for vmdk
 *   vmdk.c        open, close, flush, info and the backend table
 * All numbers on disk are little-endian; sizes and offsets are in 512-byte sectors.
 */
#ifndef VD_FORMATS_VMDK_H
#define VD_FORMATS_VMDK_H

#include "core/internal.h"
#include "cow/engine.h"
#include "cow/cache.h"

#define VMDK_SECTOR 512u

/* Hosted sparse extent header ("KDMV") flags. */
#define VMDK4_FLAG_NL_DETECT (1u << 0)
#define VMDK4_FLAG_RGD       (1u << 1)
#define VMDK4_FLAG_ZERO_GRAIN (1u << 2)
#define VMDK4_FLAG_COMPRESS  (1u << 16)
#define VMDK4_FLAG_MARKER    (1u << 17)
#define VMDK4_COMPRESS_DEFLATE 1
#define VMDK4_GD_AT_END      UINT64_MAX
#define VMDK4_HEADER_BYTES   79   /* magic through compressAlgorithm */

/* A grain table entry meaning "reads as zeroes" (with VMDK4_FLAG_ZERO_GRAIN). */
#define VMDK_GTE_ZEROED 1u

/* streamOptimized markers (the type word of a marker whose size is 0). */
enum { VMDK_MARKER_EOS = 0, VMDK_MARKER_GT = 1, VMDK_MARKER_GD = 2, VMDK_MARKER_FOOTER = 3 };
#define VMDK_MARKER_BYTES 12 /* lba (8), size (4): a grain marker; data follows */

/*
 * Bounds for untrusted images (QEMU's): a descriptor of at most 1 MiB, a
 * grain of at most 1 GiB (2^21 sectors), 512 entries per grain table in a
 * hosted sparse extent (vmfsSparse: 4096), a grain directory of at most 32 Mi
 * entries, an extent of at most 2^32 sectors of grain space.
 */
#define VMDK_MAX_DESCRIPTOR   (1u << 20)
#define VMDK_MAX_GRAIN_SECTORS (1u << 21)
#define VMDK4_GTES            512u
#define VMDK3_GTES            4096u
#define VMDK_MAX_GD_ENTRIES   (32u << 20)
#define VMDK_MAX_EXTENTS      4096u

/* Host addresses the engine sees: extent index in the high bits, file offset below. */
#define VMDK_HOST_SHIFT 48
#define VMDK_HOST_MASK  ((UINT64_C(1) << VMDK_HOST_SHIFT) - 1)

enum vmdk_extent_type {
    VMDK_FLAT, VMDK_ZERO, VMDK_SPARSE, VMDK_VMFS, VMDK_VMFSSPARSE, VMDK_SESPARSE
};
enum vmdk_access { VMDK_RW, VMDK_RDONLY, VMDK_NOACCESS };

/* One extent line of a descriptor. */
struct vmdk_extent_line {
    enum vmdk_access access;
    uint64_t sectors;
    enum vmdk_extent_type type;
    char *file;             /* NULL for ZERO */
    uint64_t offset;        /* FLAT: sectors into the file */
};

/* A parsed descriptor: the keys core and info need, the extent lines. */
struct vmdk_desc {
    unsigned version;
    uint32_t cid, parent_cid;
    char *create_type;
    char *parent_hint;      /* parentFileNameHint, or NULL */
    char *adapter_type, *hw_version, *tools_version;
    uint64_t cylinders, heads, sectors;
    struct vmdk_extent_line *lines;
    size_t nlines;
};

int vmdk_desc_parse(const char *text, size_t len, struct vmdk_desc *d, const char *where);
void vmdk_desc_free(struct vmdk_desc *d);
const char *vmdk_type_name(enum vmdk_extent_type t);

/* A sparse extent's grain map. */
struct vmdk_sparse {
    bool cowd;              /* vmfsSparse "COWD" header (version 1 layout) */
    bool sesparse;          /* seSparse: 64-bit entries, gd64 instead of gd, read-only */
    uint64_t *gd64;         /* seSparse grain directory, host-endian, decoded at lookup */
    uint64_t se_tables, se_grains; /* seSparse: sectors where grain tables and grains start */
    uint32_t version, flags;
    uint64_t capacity;      /* sectors */
    uint64_t grain;         /* bytes */
    uint32_t gtes;          /* entries per grain table */
    uint32_t gd_entries;
    uint64_t gd_offset, rgd_offset; /* bytes; rgd 0: none */
    uint32_t *gd, *rgd;     /* host-endian copies */
    bool compressed, markers, zero_grain;
    uint64_t desc_offset, desc_size; /* bytes, the embedded descriptor */
    uint64_t alloc_end;     /* bytes: where the next grain or table goes */
    struct vd_cache *gts;   /* grain tables, keyed by file offset */
    bool gd_dirty;
};

/* What one grain table entry names: a kind, and for data the grain's file offset. */
struct vmdk_grain {
    enum vd_cow_kind kind;
    uint64_t host;          /* file offset of the grain (or its marker) */
};

struct vmdk_extent {
    struct vmdk_extent_line line;
    uint64_t start, length; /* guest bytes */
    vd_file *file;          /* NULL for ZERO */
    bool own_file;          /* file is not img->file */
    struct vmdk_sparse *sparse;
};

struct vmdk {
    struct vmdk_desc desc;
    bool embedded;          /* the descriptor lives inside a sparse extent (monolithicSparse, streamOptimized) */
    struct vmdk_extent *ext;
    size_t next;
    vd_file *host;          /* the extents as one address space (extents.c); img->data_file */
    /*
     * streamOptimized: the grain being written, compressed and stored once
     * the writes move past it (or at flush), so that writes in order of any
     * size make whole compressed grains, as convert makes them.
     */
    pthread_mutex_t stream_lock;  /* also serialises the CID update */
    uint64_t desc_at, desc_room;  /* the descriptor text in img->file (UINT64_MAX: none); room 0: to EOF */
    bool cid_updated;             /* this open wrote a new CID already */
    uint8_t *pending;       /* a grain's bytes, or NULL */
    uint64_t pending_off;   /* its guest offset */
};

static inline struct vmdk *vmdk_of(vd_image *img)
{
    return img->priv;
}

/* One compressed sparse extent: streamOptimized, whose grains are all stored deflated, in order. */
static inline bool vmdk_stream_optimized(const struct vmdk *v)
{
    return v->next == 1 && v->ext[0].sparse && v->ext[0].sparse->compressed;
}

/* The extent holding guest offset off (which is below img->size). */
struct vmdk_extent *vmdk_extent_at(struct vmdk *v, uint64_t off);

/* extents.c */
int vmdk_host_file_new(struct vmdk *v, vd_file **out, const char *name);

/* sparse.c */
int vmdk_sparse_open(vd_image *img, struct vmdk_extent *e, size_t index);
void vmdk_sparse_free(struct vmdk_sparse *s);
int vmdk_sparse_flush(vd_image *img, struct vmdk_extent *e);
/* Parse the header of a KDMV extent from its first sector; fills s. */
int vmdk_sparse_read_header(vd_file *f, const char *name, struct vmdk_sparse *s);
extern const struct vd_cow_ops vmdk_cow_ops;

/* sesparse.c: an seSparse extent's headers, its directory and table entries */
int vmdk_sesparse_open(struct vmdk_extent *e, struct vmdk_sparse *s);
/* The file offset of directory slot gdi's grain table (0: none). */
int vmdk_sesparse_table(vd_image *img, const struct vmdk_sparse *s, uint64_t gdi, uint64_t *at);
/* Entry i of an seSparse grain table. */
int vmdk_sesparse_grain(vd_image *img, const struct vmdk_sparse *s, const void *table, uint32_t i,
                        struct vmdk_grain *g);

/* check.c */
int vmdk_check(vd_image *img, uint32_t flags, vd_check_result *res, vd_check_report_fn report,
               void *ctx);

/* create.c */
extern const struct vd_option_desc vmdk_create_options[];
int vmdk_create(vd_file *file, uint64_t size, const struct vd_kv *opts);
/* A new sparse extent in an empty file: header, grain directories and tables. */
struct vmdk_new_sparse {
    uint64_t capacity;      /* bytes */
    bool compressed, zeroed_grain;
    const char *descriptor; /* embedded descriptor, or NULL */
};
int vmdk_write_sparse_extent(vd_file *f, const struct vmdk_new_sparse *n);

#endif
