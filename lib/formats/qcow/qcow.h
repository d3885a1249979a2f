/*
 * qcow (version 1), QEMU's first copy-on-write format: the on-disk
 * constants and the backend's private state, shared by
 *   qcow.c  header, probe, open, create, flush, info and the backend table
 *   map.c   the L1/L2 cluster map: the copy-on-write engine's hooks
 * Every number on disk is big-endian. There are no refcounts: new L2 tables
 * and clusters go at the end of the file, and what a cluster held before it
 * was remapped (a compressed cluster rewritten) is leaked, as QEMU leaks it.
 */
#ifndef VD_FORMATS_QCOW_H
#define VD_FORMATS_QCOW_H

#include "core/internal.h"
#include "cow/engine.h"
#include "cow/cache.h"
#include "crypto/crypto.h"

#define QCOW_MAGIC 0x514649fbu /* "QFI\xfb" */
#define QCOW_VERSION 1
#define QCOW_HEADER_BYTES 48
#define QCOW_CRYPT_NONE 0
#define QCOW_CRYPT_AES 1
/* An L2 entry with this bit names compressed bytes (their length above the offset). */
#define QCOW_OFLAG_COMPRESSED (UINT64_C(1) << 63)
/* QEMU's longest backing file name. */
#define QCOW_MAX_BACKING_NAME 1023

struct qcow {
    uint32_t cluster_bits;
    uint32_t l2_bits;            /* entries per L2 table, log2 */
    uint32_t crypt_method;
    uint64_t l1_offset;
    uint32_t l1_size;            /* entries */
    uint64_t *l1;                /* host order; changed under the metadata lock alone */
    bool l1_dirty;               /* entries not yet written (flush writes them) */
    uint64_t meta_end;           /* end of header, backing name and L1: no cluster lies below */
    uint64_t alloc_end;          /* where the next table or cluster goes (rounded up first) */
    /*
     * The file's size at open. Tables and clusters made since lie past it, so an
     * entry the image came with must name bytes below it: one naming bytes past
     * it would alias what this session allocates there.
     */
    uint64_t open_end;
    /*
     * Per L1 entry: its L2 table was made this session, or vetted (every entry
     * below open_end) before this session first changed it; only then may its
     * entries name bytes past open_end.
     */
    uint8_t *l1_fresh;
    struct vd_cache *l2s;
    char *backing_file;          /* NULL: none */
    /* crypt_method AES: the key (NULL: opened without a passphrase), and the image's
       copy of qcow_cow_ops with the engine's encrypt/decrypt ops set */
    struct vd_crypto *crypto;
    struct vd_cow_ops cow_ops;
};

/* VD_EKEY naming the file when the image is encrypted and was opened without a passphrase. */
int qcow_need_key(vd_image *img);

static inline struct qcow *qcow_of(vd_image *img)
{
    return img->priv;
}

static inline uint64_t qcow_l2_bytes(const struct qcow *s)
{
    return (uint64_t)8 << s->l2_bits;
}

extern const struct vd_cow_ops qcow_cow_ops;

#endif
