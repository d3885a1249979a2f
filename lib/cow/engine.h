/*
 * The copy-on-write allocation engine. A sparse format describes its cluster
 * map through struct vd_cow_ops; the engine implements the data path on top:
 * reads that fall through to zeroes or the backing image, in-place writes to
 * clusters the image owns alone, and copy-on-write (read-modify-write of the
 * whole cluster into a newly allocated one) for everything else.
 *
 * Write ordering: the engine writes a cluster's data before it asks the
 * format to link it. The format's caches make sure refcount increases and
 * data are on disk before the L2 entry (see cow/cache.h).
 */
#ifndef VD_COW_ENGINE_H
#define VD_COW_ENGINE_H

#include "core/internal.h"

enum vd_cow_kind {
    VD_COW_UNALLOCATED, /* falls through to the backing image, or reads zeroes */
    VD_COW_ZERO,        /* reads zeroes */
    VD_COW_DATA,        /* data at a host offset */
    VD_COW_COMPRESSED,  /* a compressed cluster */
};

struct vd_cow_run {
    enum vd_cow_kind kind;
    uint64_t length;      /* guest bytes from the queried offset in this state */
    uint64_t host;        /* DATA (and has_host): host offset of the queried byte; COMPRESSED: of the compressed bytes */
    bool has_host;        /* ZERO, UNALLOCATED: the granule keeps a host cluster (a zero cluster
                             written without unmapping; unallocated subclusters of an allocated
                             cluster), at host; block status reports it as qemu-img map does */
    uint64_t comp_bytes;  /* COMPRESSED: upper bound of the compressed length */
    bool writable;        /* DATA: the host cluster belongs to this image alone */
};

enum vd_cow_zero_mode {
    VD_COW_ZERO_KEEP,   /* read as zeroes; keep host clusters allocated if convenient */
    VD_COW_ZERO_UNMAP,  /* read as zeroes; free host clusters */
    VD_COW_DISCARD,     /* free host clusters; reads give zeroes (never stale data) */
    VD_COW_DEALLOCATE,  /* free host clusters; their content no longer matters (past the end) */
};

struct vd_cow_ops {
    /* Describe the run starting at off, at most len bytes (same kind; contiguous host). */
    int (*lookup)(vd_image *img, uint64_t off, uint64_t len, struct vd_cow_run *run);
    /* A new host cluster for the guest cluster at guest_off (accounted, not yet linked). */
    int (*allocate)(vd_image *img, uint64_t guest_off, uint64_t *host);
    /* Map the guest cluster at guest_off to host; release what it mapped before. */
    int (*link)(vd_image *img, uint64_t guest_off, uint64_t host);
    /*
     * Change whole clusters [off, off+len) per mode. Optional; VD_EUNSUPPORTED
     * makes the engine write zeroes instead (or ignore a discard).
     */
    int (*zero_clusters)(vd_image *img, uint64_t off, uint64_t len, enum vd_cow_zero_mode mode);
    /* Refuse (and report corruption) if data written at [host, host+len) would hit metadata. Optional. */
    int (*check_write)(vd_image *img, uint64_t host, uint64_t len);
    /* Decompress the cluster a COMPRESSED run describes. Optional. */
    int (*read_compressed)(vd_image *img, const struct vd_cow_run *run, void *cluster);
    /*
     * Whether data clusters may lie over holes of the host file (metadata
     * preallocated without data): only then does block status ask the file
     * whether a data run reads as zeroes, as QEMU does. Optional: never.
     */
    bool (*data_over_holes)(vd_image *img);
};

/* Data-path callbacks for a sparse format's struct vd_backend. */
int vd_cow_read(vd_image *img, uint64_t off, const struct vd_iov *v);
int vd_cow_write(vd_image *img, uint64_t off, const struct vd_iov *v, uint32_t flags);
int vd_cow_write_zeroes(vd_image *img, uint64_t off, uint64_t len, uint32_t flags);
int vd_cow_discard(vd_image *img, uint64_t off, uint64_t len);
int vd_cow_block_status(vd_image *img, uint64_t off, uint64_t len, vd_extent *ext);

#endif
