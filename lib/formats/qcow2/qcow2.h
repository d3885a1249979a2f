/*
 * qcow2: on-disk constants and the backend's private state, shared by the
 * files of this folder:
 *   header.c    header and header extensions: parse, validate, write
 *   map.c       L1/L2 cluster map: lookup, link, zero/discard (engine hooks)
 *   refcount.c  refcount table and blocks, cluster allocation and freeing
 *   bitmap.c    the bitmap directory: validation at open
 *   create.c    new images
 *   check.c     consistency check and repair
 *   amend.c     changing options of an existing image (compat, refcount width, ...)
 *   snapshot.c  internal snapshots
 *   resize.c    resize, L1 table growth
 *   overlap.c   the metadata layout: overlap checks, and the one metadata writer
 *   qcow2.c     open, close, flush, info and the backend table
 * All numbers on disk are big-endian.
 */
#ifndef VD_FORMATS_QCOW2_H
#define VD_FORMATS_QCOW2_H

#include "core/internal.h"
#include "core/endian.h"
#include "cow/cache.h"
#include "cow/engine.h"
#include "crypto/crypto.h"

#define QCOW2_MAGIC            0x514649fbu /* "QFI\xfb" */
#define QCOW2_V2_HEADER_LEN    72
#define QCOW2_V3_HEADER_LEN    104         /* without the optional compression type */
#define QCOW2_HEADER_LEN_MAX   112         /* with compression type and padding */

/* Limits from QEMU, applied to every image we open. */
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MAX_L1_BYTES     (32u << 20)
#define QCOW2_MAX_RT_BYTES     (8u << 20)
#define QCOW2_MAX_SNAPSHOTS    65536
#define QCOW2_MAX_BACKING_NAME 1023

/* Feature bits */
#define QCOW2_INCOMPAT_DIRTY       (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT     (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE   (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2       (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN       0x1full
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS    (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_RAW   (1ull << 1)

/* Limits of the bitmaps extension (as QEMU's) */
#define QCOW2_MAX_BITMAPS          65535u
#define QCOW2_MAX_BITMAP_DIR_BYTES (64u << 20)

/* Header extension types */
#define QCOW2_EXT_END          0x00000000u
#define QCOW2_EXT_BACKING_FMT  0xe2792acau
#define QCOW2_EXT_FEATURES     0x6803f857u
#define QCOW2_EXT_BITMAPS      0x23852875u
#define QCOW2_EXT_CRYPTO       0x0537be77u
#define QCOW2_EXT_DATA_FILE    0x44415441u

/* L1 and L2 entries */
#define QCOW2_OFLAG_COPIED     (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO       (1ull << 0)
#define QCOW2_OFFSET_MASK      0x00fffffffffffe00ull /* bits 9..55 */
#define QCOW2_L1_RESERVED      0x7f000000000001ffull
#define QCOW2_L2_RESERVED      0x3f000000000001feull
#define QCOW2_RT_RESERVED      0x1ffull /* refcount table entries: bits 0..8 */

#define QCOW2_SUBCLUSTERS      32

enum qcow2_compression { QCOW2_COMPRESSION_ZLIB = 0, QCOW2_COMPRESSION_ZSTD = 1 };

/* A header extension kept verbatim so that rewriting the header preserves it. */
struct qcow2_ext {
    uint32_t type;
    uint32_t len;
    uint8_t *data;
};

/* One entry of the snapshot table. */
struct qcow2_snapshot {
    uint64_t l1_offset;
    uint32_t l1_size;
    char *id;
    char *name;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_ns;
    uint64_t vm_state_size;
    uint64_t disk_size;
    uint32_t extra_size;    /* bytes of extra data on disk */
    uint8_t *extra;         /* kept verbatim beyond the fields we know */
    bool extra_cut;         /* a repairing open cut too much extra data to QEMU's limit */
    bool l1_overlaps;       /* a repair found its L1 table on other metadata (overlap.c) */
};

/* The bitmap table of one bitmap directory entry (the directory passed QEMU's checks). */
struct qcow2_bitmap_table {
    uint64_t offset;
    uint32_t entries;
};

/* The kinds of metadata structure, as bits (the names of QEMU's overlap checks). */
enum qcow2_meta_kind {
    QCOW2_META_HEADER         = 1u << 0,
    QCOW2_META_ACTIVE_L1      = 1u << 1,
    QCOW2_META_ACTIVE_L2      = 1u << 2,
    QCOW2_META_REFCOUNT_TABLE = 1u << 3,
    QCOW2_META_REFCOUNT_BLOCK = 1u << 4,
    QCOW2_META_SNAPSHOT_TABLE = 1u << 5,
    QCOW2_META_SNAPSHOT_L1    = 1u << 6,
    QCOW2_META_BITMAP_DIRECTORY = 1u << 7,
    QCOW2_META_BITMAP_TABLE   = 1u << 8,
    QCOW2_META_CRYPTO_HEADER  = 1u << 9,
};
/* Sets of kinds a write may overlap: none (new clusters), or all (the corrupt bit only). */
#define QCOW2_META_NONE 0u
#define QCOW2_META_ALL  0x3ffu

/* Host clusters [first, end) holding metadata of one kind. */
struct qcow2_meta_range {
    uint64_t first, end;
    enum qcow2_meta_kind kind;
    bool in_place;            /* an active L2 table whose L1 entry has COPIED set */
};

struct qcow2 {
    /* header */
    uint32_t version;
    uint32_t cluster_bits;
    uint64_t cluster_size;
    uint32_t crypt_method;    /* 0 none, 1 legacy AES, 2 LUKS (crypt.c) */
    uint64_t l1_offset;
    uint32_t l1_size;
    uint64_t rt_offset;
    uint32_t rt_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompat, compat, autoclear;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;
    char *backing_file;
    char *backing_format;
    char *data_file_name;    /* external data file extension, or NULL */
    struct qcow2_ext *exts;  /* every other extension, kept verbatim */
    size_t nexts;

    /* derived */
    uint32_t l2_entry_bytes;  /* 8, or 16 with extended L2 entries */
    uint64_t l2_entries;      /* entries per L2 table */
    uint64_t refcount_max;
    uint64_t rb_entries;      /* refcount entries per refcount block */

    /* the active L1 table and the refcount table, host-endian in memory */
    uint64_t *l1;
    bool l1_dirty;
    uint64_t *rt;
    uint64_t rt_entries;

    struct vd_cache *l2_cache;
    struct vd_cache *rb_cache;

    struct qcow2_snapshot *snapshots; /* nb_snapshots entries */
    uint64_t snapshots_bytes;          /* size of the snapshot table on disk */
    uint32_t snapshots_dropped;        /* entries a repairing open left out: past QEMU's limit */
    bool snapshot_table_overlaps;      /* a repair found the table on other metadata (overlap.c) */

    /* the bitmaps' tables, while the autoclear bit says the bitmaps are consistent */
    struct qcow2_bitmap_table *bitmap_tables;
    uint32_t nbitmap_tables;
    uint8_t *bitmap_dir;       /* the directory as on disk (rewritten in place to mark bitmaps in use) */
    uint64_t bitmap_dir_bytes, bitmap_dir_offset;

    struct qcow2_meta_range *meta; /* host clusters holding metadata, ascending (overlap.c) */
    size_t nmeta;
    bool meta_stale;          /* metadata moved or clusters were freed since the rebuild; set
                                 under the metadata lock held alone, cleared by a rebuild */
    /* one rebuild at a time: lookups (evicting a dirty L2 table) and data writes (their
       overlap check) ask for the layout beside each other, under the shared metadata lock */
    pthread_mutex_t layout_lock;

    bool dirty_by_us;         /* this session set the dirty bit (lazy refcounts) */
    /* the first table found at open to extend past the end of the file (its missing
       part read as zeroes, as QEMU reads it), or NULL; set, the image opens read-write
       only for a repair, which extends the file over the table */
    const char *table_past_eof;

    int metadata_prealloc;    /* qcow2_metadata_preallocated(): -1 not decided yet, 0, 1 (atomic) */
    uint64_t free_hint;       /* no free cluster below this index */
    uint64_t free_byte_offset; /* where the next compressed cluster may start (qcow2_alloc_bytes), or 0 */
    uint64_t alloc_end;       /* no cluster is allocated at or past this index */
    /* [claimed_first, claimed_end): clusters past the end of the file that table
       entries name (found by a check); never handed out, so nothing aliases them */
    uint64_t claimed_first, claimed_end;
    uint64_t *pending_frees;  /* host clusters whose refcount drops at the next flush */
    size_t npending, pending_cap;

    /* encryption (crypt.c) */
    uint64_t crypt_offset, crypt_length; /* LUKS: where its header lives (the extension) */
    struct vd_luks_header luks;          /* LUKS: the parsed header */
    struct vd_crypto *crypto;            /* the data cipher; NULL: opened without a passphrase */
    struct vd_cow_ops cow_ops;           /* encrypted images: qcow2_cow_ops with the cipher ops */
};

static inline struct qcow2 *qcow2_of(vd_image *img)
{
    return img->priv;
}

/* Guest clusters live in an external data file, at their guest offset, without refcounts. */
static inline bool qcow2_has_data_file(const struct qcow2 *q)
{
    return (q->incompat & QCOW2_INCOMPAT_DATA_FILE) != 0;
}

/*
 * Report corruption found in the image: set the message, disable the handle
 * and, on a writable image, set the corrupt bit on disk (as QEMU does) so that
 * nobody writes to it again before a repair. Returns VD_ECORRUPT.
 */
int qcow2_signal_corruption(vd_image *img, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Read len bytes of a table at off; bytes past the end of the file read as
 * zeroes, as QEMU's block layer reads them (a truncated copy). A table that
 * extends past the end of the file and has a name (open passes one) is
 * remembered in q->table_past_eof.
 */
int qcow2_pread_table(vd_image *img, void *buf, uint64_t len, uint64_t off, const char *name);

/* header.c */
int qcow2_probe(const uint8_t *head, size_t len, uint64_t file_size);
int qcow2_read_header(vd_image *img, struct qcow2 *q);
/* Serialise the header cluster (header, extensions, backing name) into buf, cluster_size bytes. */
int qcow2_build_header(const char *path, struct qcow2 *q, uint64_t size, uint8_t *buf);
/* Rewrite the whole first cluster. */
int qcow2_write_header(vd_image *img, struct qcow2 *q);
/* Rewrite the three 64-bit feature fields (incompat/compat/autoclear) in place. */
int qcow2_write_features(vd_image *img, struct qcow2 *q);
/* Set the corrupt bit and write it, whatever else claims the header's cluster. */
int qcow2_write_corrupt_bit(vd_image *img, struct qcow2 *q);
/* Append the feature name table extension (as create writes it). */
int qcow2_add_feature_table(struct qcow2 *q);
/* Keep a copy of an extension, written with the header from then on. */
int qcow2_add_extension(struct qcow2 *q, uint32_t type, const uint8_t *data, uint32_t len);
/* Forget every kept extension of this type. */
void qcow2_drop_extension(struct qcow2 *q, uint32_t type);
void qcow2_free_header(struct qcow2 *q);
/* Fill the derived fields from the header fields. */
void qcow2_derive(struct qcow2 *q);

/* map.c */
extern const struct vd_cow_ops qcow2_cow_ops;
int qcow2_write_l1(vd_image *img, struct qcow2 *q);
/*
 * Room for len bytes (at most a cluster) of a compressed cluster, packed
 * after the last one as QEMU packs them: in the rest of the host cluster it
 * ended in, running on into the next cluster if that is the one allocated
 * next. Every host cluster the bytes touch gains a reference.
 */
int qcow2_alloc_bytes(vd_image *img, struct qcow2 *q, uint64_t len, uint64_t *host);

/* refcount.c */
/* Entry idx of a refcount block of the given order (sub-byte widths count from the low bit). */
uint64_t qcow2_refblock_get(const uint8_t *block, uint64_t idx, uint32_t order);
void qcow2_refblock_set(uint8_t *block, uint64_t idx, uint32_t order, uint64_t value);
int qcow2_load_refcount_table(vd_image *img, struct qcow2 *q);
/* Refcount table entry ti names an offset inside a cluster (corrupt; reads of it refused). */
bool qcow2_refblock_misaligned(const struct qcow2 *q, uint64_t ti);
int qcow2_get_refcount(vd_image *img, struct qcow2 *q, uint64_t cluster, uint64_t *refcount);
/*
 * The first cluster from which on every refcount is zero, and not before the
 * end of the file: allocation takes everything from there as free without
 * reading refcounts. Clusters past the end of a truncated file that still have
 * a refcount stay below it (QEMU too allocates past the last refcount). Reads
 * each distinct refcount block at most once, however often the table names it.
 */
int qcow2_alloc_end_past(vd_image *img, struct qcow2 *q, uint64_t file_size, uint64_t *alloc_end);
/* Where count clusters starting at start would touch the claimed range: past it; else start. */
uint64_t qcow2_skip_claim(const struct qcow2 *q, uint64_t start, uint64_t count);
int qcow2_update_refcount(vd_image *img, struct qcow2 *q, uint64_t cluster, int64_t delta);
/* Set a refcount outright (repairs). */
int qcow2_set_refcount(vd_image *img, struct qcow2 *q, uint64_t cluster, uint64_t value);
/* Allocate count contiguous clusters with refcount 1; *host is the first one's offset. */
int qcow2_alloc_clusters(vd_image *img, struct qcow2 *q, uint64_t count, uint64_t *host);
/* Allocate clusters for metadata (the overlap map learns about them). */
int qcow2_alloc_metadata(vd_image *img, struct qcow2 *q, uint64_t count, uint64_t *host);
/*
 * Whether the refcounts name clearly more clusters than the file stores (a
 * tenth more, and at least two: QEMU's test for metadata preallocation), so
 * that data clusters may lie over holes. Decided once per handle.
 */
bool qcow2_metadata_preallocated(vd_image *img);
/* Drop the refcount of a host cluster at the next flush (after the L2 update is durable). */
int qcow2_free_cluster_later(vd_image *img, struct qcow2 *q, uint64_t host);
int qcow2_apply_pending_frees(vd_image *img, struct qcow2 *q);
/* Before-write hook of the L2 cache: refcount blocks out, then sync. */
int qcow2_refcounts_durable(void *img);

/* snapshot.c */
int qcow2_read_snapshots(vd_image *img, struct qcow2 *q);
void qcow2_free_snapshots(struct qcow2 *q);
/* The snapshot's L1 table is aligned and within QEMU's size limit (read-only and
   repairing opens accept others, for check to report; nothing reads them). */
bool qcow2_snapshot_l1_valid(const struct qcow2 *q, const struct qcow2_snapshot *sn);
/* A version 3 entry without the 16 bytes of extra data the spec requires. */
bool qcow2_snapshot_incomplete(const struct qcow2 *q, const struct qcow2_snapshot *sn);
/* Fill in what incomplete entries lack and rewrite the snapshot table. */
int qcow2_complete_snapshots(vd_image *img, struct qcow2 *q);
/* Replace the active L1 table in memory with a snapshot's, for a read-only view of it. */
int qcow2_view_snapshot(vd_image *img, struct qcow2 *q, const char *id_or_name);
size_t qcow2_snapshot_count(vd_image *img);
void qcow2_snapshot_get(vd_image *img, size_t index, vd_snapshot_info *info);
int qcow2_snapshot_create(vd_image *img, const char *name);
int qcow2_snapshot_apply(vd_image *img, const char *id_or_name);
int qcow2_snapshot_delete(vd_image *img, const char *id_or_name);

/* bitmap.c */
/* The bitmaps extension while the autoclear bit says the bitmaps are consistent, else NULL. */
const struct qcow2_ext *qcow2_bitmaps_ext(const struct qcow2 *q);
/* Read the bitmap directory and refuse it where QEMU does; keep its tables, list the
   bitmaps in img->bitmaps. */
int qcow2_read_bitmap_directory(vd_image *img, struct qcow2 *q);
/* A writable open: load the enabled bitmaps and mark them in use on disk, durably. */
int qcow2_bitmaps_open_rw(vd_image *img, struct qcow2 *q);
/* The backend's bitmap_load and bitmaps_store (see struct vd_backend). */
int qcow2_bitmap_load(vd_image *img, struct vd_bitmap *b);
int qcow2_bitmaps_store(vd_image *img, bool closing);
int qcow2_bitmap_can_add(vd_image *img);

/* qcow2.c */
/* (Re)publish the format-specific properties (qemu-img info's format-specific data). */
int qcow2_update_props(vd_image *img, const struct qcow2 *q);
/* Write all metadata in dependency order and make it durable. */
int qcow2_flush_metadata(vd_image *img, struct qcow2 *q);

/* check.c */
int qcow2_check(vd_image *img, uint32_t flags, vd_check_result *res,
                vd_check_report_fn report, void *ctx);

/* amend.c */
extern const struct vd_option_desc qcow2_amend_options[];
int qcow2_amend(vd_image *img, const struct vd_kv *opts);

/* resize.c */
int qcow2_resize(vd_image *img, uint64_t size, uint32_t flags);
/* Move the active L1 table to new clusters with room for entries (no-op if it has them). */
int qcow2_grow_l1(vd_image *img, struct qcow2 *q, uint64_t entries);
/* Write the virtual size field of the header, durably. */
int qcow2_write_size(vd_image *img, uint64_t size);

/*
 * overlap.c. Every qcow2 metadata write goes through qcow2_write_meta: it
 * refuses (reporting corruption, writing nothing) when [off, off+len) holds
 * metadata of a kind not in may_overlap, the structures the write rewrites in
 * place. A structure written to new clusters, which no structure lists yet,
 * passes QCOW2_META_NONE; the corrupt bit alone passes QCOW2_META_ALL.
 */
int qcow2_write_meta(vd_image *img, unsigned may_overlap, uint64_t off, const void *buf, size_t len);
/* The kind of metadata, other than those in ignore, that holds part of host bytes
   [host, host+len): 0 if none, or an error (a layout whose structures share a cluster). */
int qcow2_metadata_at(vd_image *img, uint64_t host, uint64_t len, unsigned ignore);
/* A kind's name for messages. */
const char *qcow2_meta_name(enum qcow2_meta_kind kind);
/* VD_ECORRUPT (and the image marked corrupt) if data would overwrite metadata. */
int qcow2_check_overlap(vd_image *img, uint64_t host, uint64_t len);
/* Before clusters whose refcount is 0 are handed out: refuse (and report
   corruption) if metadata lives there all the same. */
int qcow2_check_unused(vd_image *img, uint64_t first_cluster, uint64_t count);
/* Before a data cluster that nothing references any more is freed: refuse (and
   report corruption) if it holds metadata, which an L2 entry must never name. */
int qcow2_check_free(vd_image *img, uint64_t host);
/* Fails (and marks the image corrupt) when two metadata structures share a
   cluster; the before-write hook of the table caches. ctx is the vd_image. */
int qcow2_check_layout(void *ctx);

/* crypt.c */
/*
 * At open, after the header: check the encryption method and header
 * extension, read the LUKS header, unlock it (or the AES key) with secret
 * when there is one, and fill q->cow_ops for the engine.
 */
int qcow2_crypt_open(vd_image *img, struct qcow2 *q, const vd_open_opts *opts);
void qcow2_crypt_close(struct qcow2 *q);
/* 0 unless the image is encrypted and was opened without a passphrase (VD_EKEY). */
int qcow2_crypt_need_key(vd_image *img);
/* amend's encrypt.* options: LUKS key slots added or erased (nothing when none is given). */
int qcow2_crypt_amend(vd_image *img, struct qcow2 *q, const struct vd_kv *opts);
/* The "encrypt" block of qemu-img info's format-specific data. */
int qcow2_crypt_describe(vd_image *img, const struct qcow2 *q);
/* The encryption of a new image: a LUKS header built in memory, to go at a cluster. */
struct qcow2_new_crypt {
    uint8_t *header; /* LUKS: header and key material, bytes long; NULL for none or AES */
    size_t bytes;
    uint64_t length; /* LUKS: the extension's length (the header's payload offset) */
};
/* Parse the encrypt.* create options into q->crypt_method and *out (LUKS: the header made). */
int qcow2_crypt_prepare(const struct vd_kv *opts, struct qcow2 *q, struct qcow2_new_crypt *out);
/* The bytes of the LUKS header the encrypt.* create options ask for; 0 for none or AES. */
int qcow2_crypt_header_bytes(const struct vd_kv *opts, uint64_t *bytes);
/* Name the header of c, placed at offset, in q's extensions. */
int qcow2_crypt_add_extension(struct qcow2 *q, const struct qcow2_new_crypt *c, uint64_t offset);
void qcow2_crypt_discard(struct qcow2_new_crypt *c);

/* create.c */
int qcow2_create(vd_file *file, uint64_t size, const struct vd_kv *opts);
enum qcow2_prealloc { PREALLOC_OFF, PREALLOC_METADATA, PREALLOC_FALLOC, PREALLOC_FULL };
/*
 * Parse and check create options into the header fields of q (derived
 * fields included) and *prealloc (an enum qcow2_prealloc). q->data_file_name
 * is malloc'd when given. size is checked against the L1 table limit.
 */
int qcow2_parse_create_options(const struct vd_kv *opts, uint64_t size, struct qcow2 *q,
                               size_t *prealloc);

/* measure.c */
int qcow2_measure(const struct vd_kv *opts, uint64_t size, vd_image *source,
                  vd_measure_result *res);
extern const struct vd_option_desc qcow2_create_options[];

#endif
