/* The copy-on-write data path shared by every sparse format. */
#include "cow/engine.h"
#include "codec/codec.h"

#include <stdlib.h>
#include <string.h>

/* Encryption works on sectors of this size; a bounce buffer holds this much at a time. */
#define SECTOR     512u
#define CRYPT_CHUNK (1u << 20)

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static bool encrypted(vd_image *img)
{
    return img->cow->decrypt != NULL;
}

/*
 * The format's cluster-map ops under the metadata lock (the contract in
 * engine.h): lookups share it; allocation, linking and zeroing take it alone.
 */
static int cow_lookup(vd_image *img, uint64_t off, uint64_t len, struct vd_cow_run *run)
{
    pthread_rwlock_rdlock(&img->meta_lock);
    int rc = img->cow->lookup(img, off, len, run);
    pthread_rwlock_unlock(&img->meta_lock);
    return rc;
}

static int cow_allocate(vd_image *img, uint64_t guest_off, uint64_t *host)
{
    pthread_rwlock_wrlock(&img->meta_lock);
    int rc = img->cow->allocate(img, guest_off, host);
    pthread_rwlock_unlock(&img->meta_lock);
    return rc;
}

static int cow_link(vd_image *img, uint64_t guest_off, uint64_t host)
{
    pthread_rwlock_wrlock(&img->meta_lock);
    int rc = img->cow->link(img, guest_off, host);
    pthread_rwlock_unlock(&img->meta_lock);
    return rc;
}

static int cow_zero_clusters(vd_image *img, uint64_t off, uint64_t len, enum vd_cow_zero_mode mode)
{
    if (!img->cow->zero_clusters)
        return VD_EUNSUPPORTED;
    pthread_rwlock_wrlock(&img->meta_lock);
    int rc = img->cow->zero_clusters(img, off, len, mode);
    pthread_rwlock_unlock(&img->meta_lock);
    return rc;
}

/* check_write reads the metadata layout: shared, like a lookup. */
static int cow_check_write(vd_image *img, uint64_t host, uint64_t len)
{
    if (!img->cow->check_write)
        return 0;
    pthread_rwlock_rdlock(&img->meta_lock);
    int rc = img->cow->check_write(img, host, len);
    pthread_rwlock_unlock(&img->meta_lock);
    return rc;
}

static bool cow_data_over_holes(vd_image *img)
{
    if (!img->cow->data_over_holes)
        return false;
    pthread_rwlock_rdlock(&img->meta_lock);
    bool over_holes = img->cow->data_over_holes(img);
    pthread_rwlock_unlock(&img->meta_lock);
    return over_holes;
}

/* Read what lies under an unallocated range: the backing image, or zeroes past its end. */
static int read_below(vd_image *img, uint64_t off, const struct vd_iov *v)
{
    vd_image *b = img->backing;
    size_t from_backing = 0;
    if (b && off < b->size)
        from_backing = (size_t)min_u64(v->len, b->size - off);
    struct vd_iov past = vd_iov_sub(v, from_backing, v->len - from_backing);
    vd_iov_zero(&past);
    struct vd_iov inside = vd_iov_sub(v, 0, from_backing);
    return from_backing ? b->backend->read(b, off, &inside) : 0;
}

static int read_compressed_part(vd_image *img, const struct vd_cow_run *run, uint64_t off,
                                const struct vd_iov *v)
{
    if (!img->cow->read_compressed)
        return vd_err(VD_EUNSUPPORTED, "%s: compressed clusters are not supported", img->filename);
    uint8_t *cluster = vd_io_buf_alloc(img->cluster_size);
    if (!cluster)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    int rc = img->cow->read_compressed(img, run, cluster);
    if (rc == 0)
        vd_iov_from_buf(v, cluster + (off & (img->cluster_size - 1)));
    free(cluster);
    return rc;
}

/* Read whole sectors at host (the guest data at guest) into buf, decrypted. */
static int read_sectors(vd_image *img, uint64_t host, uint64_t guest, uint8_t *buf, size_t len)
{
    int rc = vd_file_pread(vd_image_data(img), buf, len, host);
    return rc < 0 ? rc : img->cow->decrypt(img, host, guest, buf, len);
}

/* Whether every piece of the view is whole sectors long (so it decrypts in place). */
static bool whole_sector_pieces(const struct vd_iov *v)
{
    size_t left = v->len, skip = v->skip;
    for (int i = 0; left && i < v->cnt; i++, skip = 0) {
        size_t n = (size_t)min_u64(v->iov[i].iov_len - skip, left);
        if (n % SECTOR)
            return false;
        left -= n;
    }
    return true;
}

/*
 * The next bounce-buffer chunk of an encrypted run of len bytes at guest,
 * done bytes in: the n bytes at guest + done lie skip bytes into the whole
 * sectors [start, start + span) (at most CRYPT_CHUNK bytes).
 */
struct crypt_chunk {
    uint64_t start;
    size_t skip, n, span;
};

static struct crypt_chunk crypt_chunk_at(uint64_t guest, size_t done, size_t len)
{
    const uint64_t mask = SECTOR - 1;
    struct crypt_chunk c;
    c.start = (guest + done) & ~mask;
    c.skip = (size_t)(guest + done - c.start);
    c.n = (size_t)min_u64(len - done, CRYPT_CHUNK - c.skip);
    c.span = (c.skip + c.n + mask) & ~(size_t)mask;
    return c;
}

/*
 * Read the encrypted data run at host (guest data at guest) into v: straight
 * into the caller's buffers and decrypted there piece by piece when the run
 * and every piece are whole sectors, else through a bounce buffer.
 */
static int read_decrypted(vd_image *img, uint64_t guest, uint64_t host, const struct vd_iov *v)
{
    const uint64_t mask = SECTOR - 1;
    if (!(guest & mask) && whole_sector_pieces(v)) {
        int rc = vd_file_preadv(vd_image_data(img), v, host);
        size_t left = v->len, skip = v->skip, done = 0;
        for (int i = 0; rc == 0 && left && i < v->cnt; i++, skip = 0) {
            size_t n = (size_t)min_u64(v->iov[i].iov_len - skip, left);
            if (n)
                rc = img->cow->decrypt(img, host + done, guest + done,
                                       (uint8_t *)v->iov[i].iov_base + skip, n);
            left -= n;
            done += n;
        }
        return rc;
    }
    uint8_t *bounce = vd_io_buf_alloc(CRYPT_CHUNK);
    int rc = bounce ? 0 : vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    for (size_t done = 0; rc == 0 && done < v->len;) {
        struct crypt_chunk c = crypt_chunk_at(guest, done, v->len);
        rc = read_sectors(img, host + done - c.skip, c.start, bounce, c.span);
        if (rc == 0) {
            struct vd_iov part = vd_iov_sub(v, done, c.n);
            vd_iov_from_buf(&part, bounce + c.skip);
        }
        done += c.n;
    }
    free(bounce);
    return rc;
}

int vd_cow_read(vd_image *img, uint64_t off, const struct vd_iov *v)
{
    for (struct vd_iov rest = *v; rest.len;) {
        struct vd_cow_run run;
        int rc = cow_lookup(img, off, rest.len, &run);
        if (rc < 0)
            return rc;
        size_t n = (size_t)min_u64(run.length, rest.len);
        struct vd_iov part = vd_iov_sub(&rest, 0, n);
        switch (run.kind) {
        case VD_COW_DATA: /* straight into the caller's buffers */
            rc = encrypted(img) ? read_decrypted(img, off, run.host, &part)
                                : vd_file_preadv(vd_image_data(img), &part, run.host);
            break;
        case VD_COW_ZERO:
            vd_iov_zero(&part);
            break;
        case VD_COW_UNALLOCATED:
            rc = read_below(img, off, &part);
            break;
        case VD_COW_COMPRESSED:
            rc = read_compressed_part(img, &run, off, &part);
            break;
        }
        if (rc < 0)
            return rc;
        rest = vd_iov_sub(&rest, n, rest.len - n);
        off += n;
    }
    return 0;
}

/* vd_cow_read() into one flat buffer. */
static int read_flat(vd_image *img, uint64_t off, void *buf, size_t len)
{
    struct iovec one;
    struct vd_iov v = vd_iov_flat(&one, buf, len);
    return vd_cow_read(img, off, &v);
}

/* The guest content of a whole cluster, zero past the end of the image. */
static int read_cluster(vd_image *img, uint64_t cstart, uint8_t *cluster)
{
    uint64_t inside = cstart < img->size ? min_u64(img->cluster_size, img->size - cstart) : 0;
    memset(cluster + inside, 0, img->cluster_size - (size_t)inside);
    return inside ? read_flat(img, cstart, cluster, (size_t)inside) : 0;
}

struct batch {
    uint64_t guest, host;   /* first cluster */
    uint64_t count;         /* clusters, contiguous in both spaces */
    struct vd_iov data;     /* the source, from the first cluster on (count * cluster_size bytes used) */
};

/*
 * Encrypt v (the guest data at guest) in a bounce buffer and write it at
 * host, a chunk at a time. A sector the write covers only in part is read
 * and decrypted first; the in-flight range keeps other writers off it.
 */
static int write_encrypted(vd_image *img, const struct vd_iov *v, uint64_t guest, uint64_t host)
{
    uint8_t *bounce = vd_io_buf_alloc(CRYPT_CHUNK);
    int rc = bounce ? 0 : vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    for (size_t done = 0; rc == 0 && done < v->len;) {
        struct crypt_chunk c = crypt_chunk_at(guest, done, v->len);
        size_t last = c.span - SECTOR;
        uint64_t h = host + done - c.skip;
        if (c.skip)
            rc = read_sectors(img, h, c.start, bounce, SECTOR);
        if (rc == 0 && ((c.skip + c.n) % SECTOR) && (last || !c.skip))
            rc = read_sectors(img, h + last, c.start + last, bounce + last, SECTOR);
        if (rc == 0) {
            struct vd_iov part = vd_iov_sub(v, done, c.n);
            vd_iov_to_buf(&part, bounce + c.skip);
            rc = img->cow->encrypt(img, h, c.start, bounce, c.span);
        }
        if (rc == 0)
            rc = vd_file_pwrite(vd_image_data(img), bounce, c.span, h);
        done += c.n;
    }
    free(bounce);
    return rc;
}

/* Write guest data (at guest) to the host file, unless the format says metadata lives there. */
static int write_data(vd_image *img, const struct vd_iov *v, uint64_t guest, uint64_t host)
{
    int rc = cow_check_write(img, host, v->len);
    if (rc == 0)
        rc = encrypted(img) ? write_encrypted(img, v, guest, host)
                            : vd_file_pwritev(vd_image_data(img), v, host);
    vd_image_mark_unsynced(img);
    return rc;
}

/* Write a batch of new clusters, then publish them. */
static int commit_batch(vd_image *img, struct batch *b)
{
    if (!b->count)
        return 0;
    uint64_t cs = img->cluster_size;
    struct vd_iov clusters = vd_iov_sub(&b->data, 0, (size_t)(b->count * cs));
    int rc = write_data(img, &clusters, b->guest, b->host);
    for (uint64_t i = 0; i < b->count && rc == 0; i++)
        rc = cow_link(img, b->guest + i * cs, b->host + i * cs);
    b->count = 0;
    return rc;
}

static bool overwritable(const struct vd_cow_run *run, uint32_t cluster_size)
{
    return run->kind == VD_COW_DATA && run->writable && run->length >= cluster_size;
}

/* Does the cluster described by run read as zeroes (so nothing needs copying)? */
static bool reads_as_zeroes(vd_image *img, uint64_t cstart, const struct vd_cow_run *run)
{
    bool nothing_below = !img->backing || cstart >= img->backing->size;
    return run->length >= img->cluster_size &&
           (run->kind == VD_COW_ZERO || (run->kind == VD_COW_UNALLOCATED && nothing_below));
}

/*
 * A partial write to a cluster that reads as zeroes: zero a new cluster
 * cheaply (fallocate where the file system can) and write just the new
 * bytes, as QEMU does, instead of building and writing the whole cluster.
 */
static int fill_zero_cluster(vd_image *img, uint64_t cstart, size_t in, const struct vd_iov *src)
{
    struct batch one = { .guest = cstart };
    int rc = cow_allocate(img, cstart, &one.host);
    if (rc == 0)
        rc = cow_check_write(img, one.host, img->cluster_size);
    if (rc == 0)
        rc = vd_file_write_zeroes(vd_image_data(img), one.host, img->cluster_size, false);
    if (rc == 0)
        rc = write_data(img, src, cstart + in, one.host + in);
    return rc == 0 ? cow_link(img, cstart, one.host) : rc;
}

/*
 * Copy-on-write of one partially written cluster: build it whole (old
 * content plus the new bytes), write it to a new cluster, then link.
 */
static int cow_partial(vd_image *img, uint64_t cstart, size_t in, const struct vd_iov *src,
                       uint8_t *scratch)
{
    int rc = read_cluster(img, cstart, scratch);
    if (rc < 0)
        return rc;
    vd_iov_to_buf(src, scratch + in);
    struct iovec whole;
    struct batch one = { cstart, 0, 1, vd_iov_flat(&whole, scratch, img->cluster_size) };
    rc = cow_allocate(img, cstart, &one.host);
    return rc < 0 ? rc : commit_batch(img, &one);
}

static int write_compressed(vd_image *img, uint64_t off, const struct vd_iov *v);

int vd_cow_write(vd_image *img, uint64_t off, const struct vd_iov *v, uint32_t flags)
{
    if (flags & VD_WRITE_COMPRESSED)
        return write_compressed(img, off, v);
    const uint64_t cs = img->cluster_size;
    struct vd_iov rest = *v; /* the source from off on */
    uint8_t *scratch = NULL;
    struct batch batch = { 0 };
    int rc = 0;

    while (rest.len && rc == 0) {
        uint64_t cstart = off & ~(cs - 1);
        size_t in = (size_t)(off - cstart);
        size_t n = (size_t)min_u64(rest.len, cs - in);
        struct vd_iov src = vd_iov_sub(&rest, 0, n);
        struct vd_cow_run run;
        /* the whole clusters the request touches, so that an in-place write covers every
           owned cluster of its run (a format may clamp the run to what is asked) */
        rc = cow_lookup(img, cstart, (in + rest.len + cs - 1) & ~(cs - 1), &run);
        if (rc < 0)
            break;
        if (overwritable(&run, img->cluster_size)) {
            /* in place, in one transfer, up to the last whole cluster of the run */
            n = (size_t)min_u64(rest.len, run.length / cs * cs - in);
            src = vd_iov_sub(&rest, 0, n);
            rc = commit_batch(img, &batch);
            if (rc == 0)
                rc = write_data(img, &src, off, run.host + in);
        } else if (n == cs) {
            /* whole new cluster: extend the batch when the host space is contiguous */
            uint64_t host;
            rc = cow_allocate(img, cstart, &host);
            if (rc == 0 && batch.count && host != batch.host + batch.count * cs)
                rc = commit_batch(img, &batch);
            if (rc == 0 && batch.count == 0)
                batch = (struct batch){ cstart, host, 0, rest };
            batch.count++;
        } else {
            rc = commit_batch(img, &batch);
            /* an encrypted cluster is written whole: zeroes in the file are no encrypted zeroes */
            if (rc == 0 && reads_as_zeroes(img, cstart, &run) && !encrypted(img)) {
                rc = fill_zero_cluster(img, cstart, in, &src);
            } else {
                if (rc == 0 && !scratch && !(scratch = vd_io_buf_alloc(cs)))
                    rc = vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
                if (rc == 0)
                    rc = cow_partial(img, cstart, in, &src, scratch);
            }
        }
        rest = vd_iov_sub(&rest, n, rest.len - n);
        off += n;
    }
    if (rc == 0)
        rc = commit_batch(img, &batch);
    free(scratch);
    return rc;
}

/* vd_cow_write() of one flat buffer. */
static int write_flat(vd_image *img, uint64_t off, const void *buf, size_t len)
{
    struct iovec one;
    struct vd_iov v = vd_iov_flat(&one, buf, len);
    return vd_cow_write(img, off, &v, 0);
}

bool vd_cow_can_compress(vd_image *img)
{
    return img->cow && img->cow->store_compressed && img->cow->compression &&
           img->cow->compression(img) >= 0;
}

bool vd_cow_compresses_every_cluster(vd_image *img)
{
    return img->cow && img->cow->compresses_every_cluster && img->cow->compresses_every_cluster(img);
}

bool vd_cow_takes_compressed_writes(vd_image *img)
{
    return vd_cow_can_compress(img) ||
           (img->cow && img->cow->plain_compressed_writes && img->cow->plain_compressed_writes(img));
}

int vd_cow_compress_cluster(vd_image *img, const void *cluster, void *out, size_t out_cap,
                            size_t *out_len)
{
    int codec = img->cow->compression ? img->cow->compression(img) : -1;
    if (codec < 0)
        return vd_err(VD_EUNSUPPORTED, "%s: this %s image cannot store compressed clusters",
                      img->filename, img->backend->name);
    /* as QEMU: a cluster is stored compressed only if that saves at least a byte, unless the
       format stores nothing else */
    if (!vd_cow_compresses_every_cluster(img) && out_cap > img->cluster_size - 1)
        out_cap = img->cluster_size - 1;
    return vd_codec_compress((enum vd_codec)codec, cluster, img->cluster_size, out, out_cap,
                             out_len);
}

int vd_cow_store_cluster(vd_image *img, uint64_t off, const void *comp, size_t comp_len,
                         const void *plain, size_t plain_len)
{
    if (!comp)
        return write_flat(img, off, plain, plain_len);
    pthread_rwlock_wrlock(&img->meta_lock);
    int rc = img->cow->store_compressed(img, off, comp, comp_len);
    pthread_rwlock_unlock(&img->meta_lock);
    return rc;
}

/*
 * Whole clusters, each compressed (the last one of an image whose size is
 * not a multiple of the cluster size padded with zeroes, as QEMU pads it),
 * or written as they are where compression gains nothing.
 */
static int write_compressed(vd_image *img, uint64_t off, const struct vd_iov *v)
{
    const uint64_t cs = img->cluster_size;
    size_t len = v->len;
    if ((off & (cs - 1)) || ((len & (cs - 1)) && off + len != img->size))
        return vd_err(VD_EINVAL, "%s: a compressed write must cover whole clusters of %llu bytes "
                      "(offset %llu, length %zu)", img->filename, (unsigned long long)cs,
                      (unsigned long long)off, len);
    uint8_t *cluster = malloc(3 * cs), *out = cluster + cs;
    if (!cluster)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    int rc = 0;
    for (size_t done = 0; done < len && rc == 0; done += (size_t)cs) {
        size_t n = (size_t)min_u64(cs, len - done);
        struct vd_iov part = vd_iov_sub(v, done, n);
        vd_iov_to_buf(&part, cluster);
        memset(cluster + n, 0, (size_t)cs - n);
        size_t out_len = 0;
        rc = vd_cow_compress_cluster(img, cluster, out, 2 * cs, &out_len);
        if (rc >= 0)
            rc = vd_cow_store_cluster(img, off + done, rc == 0 ? out : NULL, out_len, cluster, n);
    }
    free(cluster);
    return rc;
}

/* Zero bytes inside one cluster through the normal write path. */
static int write_zero_bytes(vd_image *img, uint64_t off, uint64_t len)
{
    uint8_t *zeroes = calloc(1, (size_t)len);
    if (!zeroes)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    int rc = write_flat(img, off, zeroes, (size_t)len);
    free(zeroes);
    return rc;
}

static int zero_writer(void *ctx, const void *buf, size_t len, uint64_t off)
{
    return write_flat(ctx, off, buf, len);
}

/*
 * Apply mode to the whole clusters of [off, off+len); the partial clusters at
 * either end get zero bytes written (unless discarding, which is a hint).
 */
static int zero_range(vd_image *img, uint64_t off, uint64_t len, enum vd_cow_zero_mode mode)
{
    const uint64_t cs = img->cluster_size;
    uint64_t end = off + len;
    uint64_t first = (off + cs - 1) & ~(cs - 1);
    uint64_t last = end & ~(cs - 1);
    /* the tail cluster of an unaligned image counts as whole when the range reaches the end */
    if (end == img->size && last < end)
        last = (end + cs - 1) & ~(cs - 1);
    bool discard = mode == VD_COW_DISCARD;
    int rc = 0;
    if (first >= last) /* no whole cluster inside */
        return discard ? 0 : write_zero_bytes(img, off, len);
    if (off < first && !discard)
        rc = write_zero_bytes(img, off, first - off);
    if (rc == 0) {
        uint64_t whole = min_u64(last, end) - first;
        rc = cow_zero_clusters(img, first, last - first, mode);
        if (rc == VD_EUNSUPPORTED)
            rc = discard ? 0 : vd_write_zero_chunks(zero_writer, img, first, whole);
    }
    if (rc == 0 && last < end && !discard)
        rc = write_zero_bytes(img, last, end - last);
    return rc;
}

int vd_cow_write_zeroes(vd_image *img, uint64_t off, uint64_t len, uint32_t flags)
{
    return zero_range(img, off, len,
                      (flags & VD_ZERO_MAY_UNMAP) ? VD_COW_ZERO_UNMAP : VD_COW_ZERO_KEEP);
}

int vd_cow_discard(vd_image *img, uint64_t off, uint64_t len)
{
    return zero_range(img, off, len, VD_COW_DISCARD);
}

/*
 * An allocated cluster over a hole in the host file (preallocation=metadata,
 * or a discard punched through) holds data that reads as zeroes: say both, as
 * QEMU does, so copies can skip it. The extent is cut where the host file
 * changes between hole and data.
 */
static int mark_host_holes(vd_image *img, vd_extent *ext)
{
    bool is_data;
    uint64_t end;
    int rc = vd_file_extent(vd_image_data(img), ext->host_offset, &is_data, &end);
    if (rc < 0 || end <= ext->host_offset) /* past the end of the file: reads will say so */
        return rc < 0 ? rc : 0;
    ext->length = min_u64(ext->length, end - ext->host_offset);
    if (!is_data)
        ext->flags |= VD_EXTENT_ZERO;
    return 0;
}

int vd_cow_block_status(vd_image *img, uint64_t off, uint64_t len, vd_extent *ext)
{
    struct vd_cow_run run;
    int rc = cow_lookup(img, off, len, &run);
    if (rc < 0)
        return rc;
    ext->length = min_u64(run.length, len);
    ext->depth = 0;
    ext->host_offset = VD_NO_HOST_OFFSET;
    switch (run.kind) {
    case VD_COW_DATA:
        ext->flags = VD_EXTENT_DATA | VD_EXTENT_ALLOCATED;
        if (encrypted(img)) /* its bytes are no guest data: no offset, as QEMU reports it */
            return 0;
        ext->host_offset = run.host;
        return cow_data_over_holes(img) ? mark_host_holes(img, ext) : 0;
    case VD_COW_COMPRESSED:
        ext->flags = VD_EXTENT_DATA | VD_EXTENT_ALLOCATED;
        return 0;
    case VD_COW_ZERO:
        ext->flags = VD_EXTENT_ZERO | VD_EXTENT_ALLOCATED;
        if (run.has_host)
            ext->host_offset = run.host;
        return 0;
    case VD_COW_UNALLOCATED:
        break;
    }
    vd_image *b = img->backing;
    if (b && off < b->size) {
        ext->length = min_u64(ext->length, b->size - off);
        ext->flags = VD_EXTENT_DATA | VD_EXTENT_ALLOCATED;
        if (b->backend->block_status)
            rc = b->backend->block_status(b, off, ext->length, ext);
        ext->depth++;
        return rc;
    }
    ext->flags = VD_EXTENT_ZERO; /* nothing below covers it: qemu reports this image's depth */
    if (run.has_host)
        ext->host_offset = run.host;
    return 0;
}
