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
 *
 * Concurrency: the contract every format backend follows.
 *
 *   Who runs beside whom. The data-path callbacks of struct vd_backend
 *   (read, write, write_zeroes, discard, block_status) run concurrently on
 *   one handle, under img->lock held shared. Everything else (flush,
 *   resize, snapshots, check, set_backing, amend, close, and rebase and
 *   commit above them) holds img->lock alone, so nothing else runs.
 *
 *   Overlap. lib/core registers each data-path request's range, rounded out
 *   to img->cluster_size, before calling the backend (core/inflight.h): a
 *   write, write-zeroes or discard excludes every overlapping request, a
 *   read only overlapping writes; block status is not registered (it is a
 *   hint). So two requests never work on one cluster at once, and a cluster
 *   is never remapped or freed while a read of it is in flight. The engine
 *   calls vd_cow_read on the same image for copy-on-write inside the
 *   writer's range; nothing below lib/core registers ranges.
 *
 *   The metadata lock (img->meta_lock). The engine calls the ops below
 *   with it: lookup, check_write and data_over_holes shared; allocate,
 *   link, zero_clusters and store_compressed alone (store_compressed's
 *   data write too: a compressed cluster shares its host cluster with
 *   others, so its bytes are placed and linked in one step). read_compressed runs without it (the
 *   run it reads is held still by the range). Guest data I/O (pread and
 *   pwrite of clusters, including the copy-on-write's whole-cluster write
 *   and fallocate zeroing) runs with no lock but the range. A backend
 *   therefore:
 *     - changes cluster tables, refcounts, allocation hints, header dirty
 *       bits, lazy-refcount marks, and its caches' dirty state only in
 *       allocate, link, zero_clusters or store_compressed (or under img->lock alone);
 *     - keeps lookup free of changes to shared state, except through
 *       structures that lock themselves (the table cache, cow/cache.h;
 *       a layout rebuild behind its own mutex; atomics, as for flags like
 *       img->unsynced, via vd_image_mark_unsynced() after the write, and
 *       img->poisoned, via vd_image_poison());
 *     - never takes img->meta_lock itself inside these ops (the engine
 *       holds it; it is not recursive), but does take it alone around any
 *       metadata work its own data-path callbacks do outside the engine
 *       (qcow2: the flush that bounds the pending frees);
 *     - never frees a host cluster that an in-flight request outside the
 *       current range may still read: a cluster is mapped by one range
 *       (or shared, refcount > 1), so dropping the last reference belongs
 *       to the request whose range maps it, or to a flush.
 *
 *   FUA. A write with VD_WRITE_FUA calls the backend's flush after its data
 *   is written, under img->lock shared and img->meta_lock alone: metadata
 *   holds still while it is written back, other requests' data I/O goes on.
 *   A backend's flush must allow that (qcow2's does); vd_flush() still takes
 *   the handle alone.
 *
 *   Crash ordering with several writers. A writer links a cluster only
 *   after its data write returned, so any table written back (by a flush,
 *   or by an eviction that another writer's lookup caused) names only data
 *   that was written; the L2 cache's before-write hook (refcounts out, then
 *   sync) then makes that data durable first. Keep both: link after the
 *   data, and sync in the hook.
 *
 *   Allocating at the end of the file. Data writes that extend a file run
 *   one at a time in ext4 (its inode lock, taken alone), and so does the
 *   zeroing of a new cluster's unwritten part. A backend that allocates at
 *   the end of its file and takes what lies past its last structure for
 *   free space sets grows_at_end (struct vd_backend): its file then grows
 *   ahead of the writes (io/file.h, vd_file_grow_ahead()), new clusters are
 *   overwrites of reserved space, and their zeroing is skipped. It must
 *   place clusters from its own bookkeeping and vd_file_get_size(), never
 *   from the host file's size, which the reserve makes larger.
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
    /*
     * Compressed clusters (both optional; without them compressed writes are
     * refused): the codec new compressed clusters use (enum vd_codec), or
     * negative when this image cannot store them; and store_compressed, which
     * places len bytes of a compressed whole cluster (allocation, data write,
     * link) and maps the guest cluster at guest_off to them, releasing what
     * it mapped before.
     */
    int (*compression)(vd_image *img);
    int (*store_compressed)(vd_image *img, uint64_t guest_off, const void *data, size_t len);
    /*
     * Whether img stores every cluster compressed, one that grows included
     * (VMDK streamOptimized): convert then compresses on its threads without
     * being asked, and vd_cow_compress_cluster() never answers NO_GAIN for
     * it. Optional: never.
     */
    bool (*compresses_every_cluster)(vd_image *img);
    /*
     * Whether img takes compressed writes that it cannot store compressed,
     * storing them as plain clusters (VMDK's uncompressed extents, as QEMU's
     * vmdk driver does): convert -c then writes plainly instead of refusing.
     * Optional: never.
     */
    bool (*plain_compressed_writes)(vd_image *img);
    /*
     * Encryption (optional; both or neither): encrypt or decrypt in place
     * len bytes (whole 512-byte sectors) of the guest data at guest that
     * lives, or is to live, at host. With them the engine never lets
     * plaintext reach the file: writes go through a bounce buffer (the
     * caller's buffers stay as they were), a write of part of a sector
     * decrypts that sector first, and a partial write to a cluster that
     * reads as zeroes writes the whole cluster (encrypted zeroes around the
     * new bytes) instead of zeroing it in the file. Zero and unallocated
     * clusters read as zeroes without decrypting; compressed writes are the
     * format's to refuse (its compression op). They run without the
     * metadata lock, beside each other.
     */
    int (*encrypt)(vd_image *img, uint64_t host, uint64_t guest, void *buf, size_t len);
    int (*decrypt)(vd_image *img, uint64_t host, uint64_t guest, void *buf, size_t len);
};

/* Data-path callbacks for a sparse format's struct vd_backend. */
int vd_cow_read(vd_image *img, uint64_t off, const struct vd_iov *v);
int vd_cow_write(vd_image *img, uint64_t off, const struct vd_iov *v, uint32_t flags);
int vd_cow_write_zeroes(vd_image *img, uint64_t off, uint64_t len, uint32_t flags);
int vd_cow_discard(vd_image *img, uint64_t off, uint64_t len);
int vd_cow_block_status(vd_image *img, uint64_t off, uint64_t len, vd_extent *ext);

/*
 * Compressed writes, split so that callers with many clusters (convert)
 * compress on several threads and store in order.
 * vd_cow_can_compress says whether img stores compressed clusters at all.
 * vd_cow_compress_cluster compresses one whole cluster (cluster_size bytes)
 * into out (out_cap bytes, at least twice the cluster size where
 * vd_cow_compresses_every_cluster): 0 and *out_len, or VD_CODEC_NO_GAIN when
 * it does not shrink, in which case the cluster is to be written as it is. It touches no image state and
 * runs on any thread. vd_cow_store_cluster stores the cluster at off
 * (cluster aligned): compressed when comp is not NULL, else plain, whose
 * length may stop short of a whole cluster at the end of the image.
 */
bool vd_cow_can_compress(vd_image *img);
bool vd_cow_compresses_every_cluster(vd_image *img);
/* Whether img takes compressed writes at all: it compresses, or stores them plainly. */
bool vd_cow_takes_compressed_writes(vd_image *img);
int vd_cow_compress_cluster(vd_image *img, const void *cluster, void *out, size_t out_cap,
                            size_t *out_len);
int vd_cow_store_cluster(vd_image *img, uint64_t off, const void *comp, size_t comp_len,
                         const void *plain, size_t plain_len);

#endif
