/* The qcow2 internal snapshot table. */
#include "formats/qcow2/qcow2.h"

#include "core/bitmap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SNAPSHOT_HEADER_BYTES 40
#define MAX_EXTRA_BYTES       1024
#define MAX_TABLE_BYTES       (64u << 20)

void qcow2_free_snapshots(struct qcow2 *q)
{
    for (uint32_t i = 0; q->snapshots && i < q->nb_snapshots; i++) {
        free(q->snapshots[i].id);
        free(q->snapshots[i].name);
        free(q->snapshots[i].extra);
    }
    free(q->snapshots);
    q->snapshots = NULL;
}

static int bad_table(vd_image *img, uint32_t i, const char *what)
{
    return vd_err(VD_ECORRUPT, "%s: qcow2 snapshot %u: %s", img->filename, i, what);
}

static char *copy_string(const uint8_t *p, size_t len)
{
    char *s = malloc(len + 1);
    if (s) {
        memcpy(s, p, len);
        s[len] = '\0';
    }
    return s;
}

bool qcow2_snapshot_l1_valid(const struct qcow2 *q, const struct qcow2_snapshot *sn)
{
    return !(sn->l1_offset & (q->cluster_size - 1)) && (uint64_t)sn->l1_size * 8 <= QCOW2_MAX_L1_BYTES;
}

/* How an open reads a damaged snapshot table. */
struct table_reading {
    /* accept entries whose L1 table is misaligned or too large (check reports them) */
    bool lenient;
    /* a repairing open: cut extra data to what QEMU allows, drop overhanging entries */
    bool repairing;
    uint64_t kept_bytes;   /* the table's length as QEMU's repair keeps it */
};

/*
 * Read and parse the entry at table offset *pos. 1 when a repairing open
 * drops it and the entries after it: the table would pass QEMU's limit.
 */
static int read_entry(vd_image *img, const struct qcow2 *q, struct table_reading *how, uint64_t *pos,
                      uint32_t i, struct qcow2_snapshot *sn)
{
    uint8_t e[SNAPSHOT_HEADER_BYTES];
    *pos = (*pos + 7) & ~7ull; /* entries start 8-byte aligned; the table ends with the last one */
    if (*pos > MAX_TABLE_BYTES || MAX_TABLE_BYTES - *pos < SNAPSHOT_HEADER_BYTES)
        return how->repairing ? 1 : bad_table(img, i, "entry is past the end of the table");
    int rc = qcow2_pread_table(img, e, sizeof e, q->snapshots_offset + *pos, "snapshot table");
    if (rc < 0)
        return rc;
    sn->l1_offset = vd_be64(e);
    sn->l1_size = vd_be32(e + 8);
    uint16_t id_len = vd_be16(e + 12), name_len = vd_be16(e + 14);
    sn->date_sec = vd_be32(e + 16);
    sn->date_nsec = vd_be32(e + 20);
    sn->vm_clock_ns = vd_be64(e + 24);
    sn->vm_state_size = vd_be32(e + 32);
    uint32_t extra_on_disk = vd_be32(e + 36);
    sn->extra_size = extra_on_disk;
    if (sn->extra_size > MAX_EXTRA_BYTES) {
        if (!how->repairing)
            return bad_table(img, i, "too much extra data");
        sn->extra_size = MAX_EXTRA_BYTES; /* QEMU's repair keeps the first bytes */
        sn->extra_cut = true;
    }
    uint64_t strings = (uint64_t)id_len + name_len, rest = (uint64_t)extra_on_disk + strings;
    how->kept_bytes += SNAPSHOT_HEADER_BYTES + sn->extra_size + strings;
    if (how->repairing ? how->kept_bytes > MAX_TABLE_BYTES || *pos + SNAPSHOT_HEADER_BYTES + rest > INT32_MAX
                       : MAX_TABLE_BYTES - *pos - SNAPSHOT_HEADER_BYTES < rest)
        return how->repairing ? 1 : bad_table(img, i, "entry is past the end of the table");
    if (!how->lenient && !qcow2_snapshot_l1_valid(q, sn))
        return bad_table(img, i, (sn->l1_offset & (q->cluster_size - 1)) ? "L1 table is not cluster aligned"
                                                                         : "L1 table is too large");
    uint64_t at = q->snapshots_offset + *pos + sizeof e;
    uint8_t *var = malloc((size_t)(sn->extra_size + strings) + 1);
    if (!var)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    rc = qcow2_pread_table(img, var, sn->extra_size, at, "snapshot table");
    if (rc == 0)
        rc = qcow2_pread_table(img, var + sn->extra_size, strings, at + extra_on_disk, "snapshot table");
    if (rc == 0) {
        if (sn->extra_size >= 8)
            sn->vm_state_size = vd_be64(var);
        sn->disk_size = sn->extra_size >= 16 ? vd_be64(var + 8) : img->size;
        sn->extra = malloc(sn->extra_size ? sn->extra_size : 1);
        sn->id = copy_string(var + sn->extra_size, id_len);
        sn->name = copy_string(var + sn->extra_size + id_len, name_len);
        if (!sn->extra || !sn->id || !sn->name)
            rc = vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
        else
            memcpy(sn->extra, var, sn->extra_size);
    }
    free(var);
    *pos += SNAPSHOT_HEADER_BYTES + rest;
    return rc;
}

int qcow2_read_snapshots(vd_image *img, struct qcow2 *q)
{
    q->snapshots_bytes = 0;
    q->snapshots_dropped = 0;
    if (!q->nb_snapshots)
        return 0;
    /* a table cut short by the end of the file reads as zeroes there, as for QEMU: a
       truncated copy still lists (incomplete) snapshots, and a check repairs it */
    struct table_reading how = { .lenient = img->read_only || (img->open_flags & VD_OPEN_REPAIR),
                                 .repairing = (img->open_flags & VD_OPEN_REPAIR) != 0 };
    int rc = 0;
    q->snapshots = calloc(q->nb_snapshots, sizeof *q->snapshots);
    if (!q->snapshots)
        return vd_err(VD_ENOMEM, "%s: out of memory for the snapshot table", img->filename);
    uint64_t pos = 0;
    for (uint32_t i = 0; rc == 0 && i < q->nb_snapshots; i++) {
        rc = read_entry(img, q, &how, &pos, i, &q->snapshots[i]);
        if (rc == 1) { /* the table in memory ends here (the entry allocated nothing); -r all rewrites it */
            q->snapshots_dropped = q->nb_snapshots - i;
            q->nb_snapshots = i;
            rc = 0;
        }
    }
    q->snapshots_bytes = pos;
    return rc;
}

/* ------------------------------------------------------- lookup and listing */

/* The snapshot with this id, or else this name (qemu-img's order); -1 if none. */
static long find_snapshot(const struct qcow2 *q, const char *id_or_name)
{
    for (uint32_t i = 0; i < q->nb_snapshots; i++)
        if (strcmp(q->snapshots[i].id, id_or_name) == 0)
            return i;
    for (uint32_t i = 0; i < q->nb_snapshots; i++)
        if (strcmp(q->snapshots[i].name, id_or_name) == 0)
            return i;
    return -1;
}

static int not_found(vd_image *img, const char *id_or_name)
{
    return vd_err(VD_ENOENT, "%s: no snapshot with id or name '%s'", img->filename, id_or_name);
}

size_t qcow2_snapshot_count(vd_image *img)
{
    return qcow2_of(img)->nb_snapshots;
}

void qcow2_snapshot_get(vd_image *img, size_t index, vd_snapshot_info *info)
{
    const struct qcow2_snapshot *sn = &qcow2_of(img)->snapshots[index];
    info->id = sn->id;
    info->name = sn->name;
    info->date_sec = sn->date_sec;
    info->date_nsec = sn->date_nsec;
    info->vm_clock_ns = sn->vm_clock_ns;
    info->vm_state_size = sn->vm_state_size;
    info->disk_size = sn->disk_size;
    info->icount = sn->extra_size >= 24 ? vd_be64(sn->extra + 16) : UINT64_MAX;
}

/* A snapshot's L1 table, host-endian, padded with zeroes to at least min_entries. */
static int load_snapshot_l1(vd_image *img, const struct qcow2_snapshot *sn, uint64_t min_entries,
                            uint64_t **out)
{
    if (!qcow2_snapshot_l1_valid(qcow2_of(img), sn))
        return vd_err(VD_ECORRUPT, "%s: the L1 table of snapshot '%s' is misaligned or too large",
                      img->filename, sn->name);
    uint64_t entries = sn->l1_size > min_entries ? sn->l1_size : min_entries;
    uint64_t *l1 = calloc(entries ? entries : 1, sizeof *l1);
    if (!l1)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    int rc = sn->l1_size ? vd_file_pread(img->file, l1, (size_t)sn->l1_size * 8, sn->l1_offset) : 0;
    for (uint32_t i = 0; rc == 0 && i < sn->l1_size; i++) {
        l1[i] = vd_be64(&l1[i]);
        if ((l1[i] & QCOW2_OFFSET_MASK) & (qcow2_of(img)->cluster_size - 1))
            rc = vd_err(VD_ECORRUPT, "%s: snapshot '%s' has a misaligned L1 entry", img->filename, sn->name);
    }
    if (rc < 0) {
        free(l1);
        return rc;
    }
    *out = l1;
    return 0;
}

/* A snapshot's size must be one an image may have, and its L1 table must cover it. */
static int check_snapshot_size(vd_image *img, const struct qcow2 *q, const struct qcow2_snapshot *sn)
{
    if (sn->disk_size > INT64_MAX)
        return vd_err(VD_ECORRUPT, "%s: snapshot '%s' has a size larger than 2^63", img->filename,
                      sn->name);
    uint64_t clusters = sn->disk_size / q->cluster_size + (sn->disk_size % q->cluster_size != 0);
    if (clusters / q->l2_entries + (clusters % q->l2_entries != 0) > sn->l1_size)
        return vd_err(VD_ECORRUPT, "%s: snapshot '%s' has an L1 table too small for its size",
                      img->filename, sn->name);
    return 0;
}

int qcow2_view_snapshot(vd_image *img, struct qcow2 *q, const char *id_or_name)
{
    long i = find_snapshot(q, id_or_name);
    if (i < 0)
        return not_found(img, id_or_name);
    const struct qcow2_snapshot *sn = &q->snapshots[i];
    uint64_t *l1;
    int rc = load_snapshot_l1(img, sn, 0, &l1);
    if (rc < 0)
        return rc;
    if ((rc = check_snapshot_size(img, q, sn)) < 0) {
        free(l1);
        return rc;
    }
    free(q->l1);
    q->l1 = l1;
    q->l1_size = sn->l1_size;
    q->l1_offset = sn->l1_offset;
    q->meta_stale = true;
    img->size = sn->disk_size;
    return 0;
}

/* ------------------------------------------------------------ refcount walk */

/*
 * Walk modes: ROOM only checks that every cluster can take one more
 * reference, so that a refcount overflow refuses the operation before
 * anything has changed.
 */
enum walk { WALK_UPDATE, WALK_ROOM };

static int add_or_check(vd_image *img, struct qcow2 *q, uint64_t cluster, int addend, enum walk mode)
{
    if (mode == WALK_UPDATE)
        return qcow2_update_refcount(img, q, cluster, addend);
    uint64_t refcount;
    int rc = qcow2_get_refcount(img, q, cluster, &refcount);
    if (rc == 0 && refcount >= q->refcount_max)
        rc = vd_err(VD_ETOOBIG, "%s: cluster %llu already has the largest refcount %u-bit entries "
                    "hold; this image cannot take another snapshot", img->filename,
                    (unsigned long long)cluster, 1u << q->refcount_order);
    return rc;
}

/* The host clusters [*first, *end) an L2 entry uses (none when equal). */
static void entry_clusters(const struct qcow2 *q, uint64_t word, uint64_t *first, uint64_t *end)
{
    if (word & QCOW2_OFLAG_COMPRESSED) {
        unsigned x = 62 - (q->cluster_bits - 8);
        uint64_t host = word & ((1ull << x) - 1);
        uint64_t bytes = (((word >> x) & ((1ull << (q->cluster_bits - 8)) - 1)) + 1) * 512 - (host & 511);
        *first = host / q->cluster_size;
        *end = (host + bytes - 1) / q->cluster_size + 1;
        return;
    }
    uint64_t host = word & QCOW2_OFFSET_MASK;
    *first = host / q->cluster_size;
    *end = host ? *first + 1 : *first;
}

/* Add addend to the refcount of every host cluster an L2 entry uses. */
static int update_entry_refcounts(vd_image *img, struct qcow2 *q, uint64_t word, int addend,
                                  enum walk mode)
{
    uint64_t first, end;
    entry_clusters(q, word, &first, &end);
    int rc = 0;
    for (uint64_t c = first; c < end && addend && rc == 0; c++)
        rc = add_or_check(img, q, c, addend, mode);
    return rc;
}

/* COPIED must be set exactly when the cluster's refcount is 1. */
static int copied_flag(vd_image *img, struct qcow2 *q, uint64_t host, uint64_t *flag)
{
    uint64_t refcount;
    int rc = qcow2_get_refcount(img, q, host / q->cluster_size, &refcount);
    *flag = refcount == 1 ? QCOW2_OFLAG_COPIED : 0;
    return rc;
}

/*
 * Add addend (+1, -1, or 0) to the refcount of every L2 table and cluster
 * that l1 references. With active, also set the COPIED flags of the active
 * L1 and L2 entries from the resulting refcounts; with addend +1, those of
 * the L2 entries, as QEMU's qcow2_update_snapshot_refcount does: a
 * snapshot's own tables may carry COPIED (QEMU's compat downgrade writes it
 * there), and once applied they are active.
 */
static int walk_tree(vd_image *img, struct qcow2 *q, uint64_t *l1, uint64_t l1_size, int addend,
                     bool active, enum walk mode)
{
    int rc = 0;
    for (uint64_t i = 0; i < l1_size && rc == 0; i++) {
        uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK;
        if (!l2)
            continue;
        uint8_t *table;
        if ((rc = vd_cache_get(q->l2_cache, l2, false, (void **)&table)) < 0)
            break;
        bool changed = false;
        for (uint64_t j = 0; j < q->l2_entries && rc == 0; j++) {
            uint8_t *p = table + j * q->l2_entry_bytes;
            uint64_t word = vd_be64(p), flag;
            rc = update_entry_refcounts(img, q, word, addend, mode);
            if (rc < 0 || !(active || addend > 0) || mode == WALK_ROOM || (word & QCOW2_OFLAG_COMPRESSED) ||
                !(word & QCOW2_OFFSET_MASK))
                continue;
            if ((rc = copied_flag(img, q, word & QCOW2_OFFSET_MASK, &flag)) == 0 &&
                (word & QCOW2_OFLAG_COPIED) != flag) {
                vd_put_be64(p, (word & ~QCOW2_OFLAG_COPIED) | flag);
                changed = true;
            }
        }
        if (changed)
            vd_cache_mark_dirty(q->l2_cache, table);
        vd_cache_put(q->l2_cache, table);
        if (rc == 0 && addend)
            rc = add_or_check(img, q, l2 / q->cluster_size, addend, mode);
        if (mode == WALK_ROOM)
            continue;
        uint64_t refcount = 1;
        if (rc == 0 && addend < 0 && (rc = qcow2_get_refcount(img, q, l2 / q->cluster_size, &refcount)) == 0 &&
            refcount == 0)
            vd_cache_forget(q->l2_cache, l2);
        uint64_t flag;
        if (rc == 0 && active && (rc = copied_flag(img, q, l2, &flag)) == 0 &&
            (l1[i] & QCOW2_OFLAG_COPIED) != flag) {
            l1[i] = (l1[i] & ~QCOW2_OFLAG_COPIED) | flag;
            q->l1_dirty = true;
        }
    }
    return rc;
}

static int update_tree_refcounts(vd_image *img, struct qcow2 *q, uint64_t *l1, uint64_t l1_size,
                                 int addend, bool active)
{
    return walk_tree(img, q, l1, l1_size, addend, active, WALK_UPDATE);
}

/* Can everything l1 references take one more reference? */
static int room_for_reference(vd_image *img, struct qcow2 *q, uint64_t *l1, uint64_t l1_size)
{
    return walk_tree(img, q, l1, l1_size, 1, false, WALK_ROOM);
}

/* ------------------------------------------------------------- table writes */

static uint64_t entry_bytes(const struct qcow2_snapshot *sn)
{
    return (40 + (uint64_t)sn->extra_size + strlen(sn->id) + strlen(sn->name) + 7) & ~7ull;
}

static void serialise(const struct qcow2_snapshot *sn, uint8_t *p)
{
    size_t id_len = strlen(sn->id), name_len = strlen(sn->name);
    memset(p, 0, (size_t)entry_bytes(sn));
    vd_put_be64(p, sn->l1_offset);
    vd_put_be32(p + 8, sn->l1_size);
    vd_put_be16(p + 12, (uint16_t)id_len);
    vd_put_be16(p + 14, (uint16_t)name_len);
    vd_put_be32(p + 16, sn->date_sec);
    vd_put_be32(p + 20, sn->date_nsec);
    vd_put_be64(p + 24, sn->vm_clock_ns);
    vd_put_be32(p + 32, sn->vm_state_size > UINT32_MAX ? 0 : (uint32_t)sn->vm_state_size);
    vd_put_be32(p + 36, sn->extra_size);
    memcpy(p + 40, sn->extra, sn->extra_size);
    memcpy(p + 40 + sn->extra_size, sn->id, id_len);
    memcpy(p + 40 + sn->extra_size + id_len, sn->name, name_len);
}

/*
 * Make snapshots[0..count) the image's table: write it to new clusters,
 * switch the header to it in one sector write, then free the old table.
 * A crash leaves either table, at worst with leaked clusters.
 */
static int publish_table(vd_image *img, struct qcow2 *q, struct qcow2_snapshot *snapshots, uint32_t count)
{
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < count; i++)
        bytes += entry_bytes(&snapshots[i]);
    if (bytes > MAX_TABLE_BYTES)
        return vd_err(VD_ETOOBIG, "%s: the snapshot table would exceed 64 MiB", img->filename);
    uint64_t offset = 0, clusters = (bytes + q->cluster_size - 1) / q->cluster_size, file_size;
    int rc = vd_file_get_size(img->file, &file_size);
    if (rc < 0)
        return rc;
    if (count) {
        uint8_t *buf = calloc(1, (size_t)(clusters * q->cluster_size));
        if (!buf)
            return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
        for (uint32_t i = 0, pos = 0; i < count; pos += (uint32_t)entry_bytes(&snapshots[i]), i++)
            serialise(&snapshots[i], buf + pos);
        if ((rc = qcow2_alloc_metadata(img, q, clusters, &offset)) == 0 &&
            (rc = qcow2_write_meta(img, QCOW2_META_NONE, offset, buf,
                                   (size_t)(clusters * q->cluster_size))) == 0)
            rc = qcow2_refcounts_durable(img);
        free(buf);
        if (rc == 0)
            rc = vd_image_sync(img);
    }
    uint8_t fields[12];
    vd_put_be32(fields, count);
    vd_put_be64(fields + 4, offset);
    if (rc == 0 && (rc = qcow2_write_meta(img, QCOW2_META_HEADER, 60, fields, sizeof fields)) == 0)
        rc = vd_image_sync_now(img);
    if (rc < 0)
        return vd_image_poison(img, rc);
    const uint64_t cs = q->cluster_size;
    uint64_t old = q->snapshots_offset, old_end = old + q->snapshots_bytes;
    uint64_t old_clusters = (q->snapshots_bytes + cs - 1) / cs;
    /* a table a repair rewrites may have reached past the end of the file (a
       garbled length): no cluster there has a refcount to drop; and one that
       reached a cluster or more past it was counted by no check (as by
       qemu-img's), so its refcounts stay as they are, its first cluster leaking */
    uint64_t file_len = (file_size + 511) & ~511ull;
    if (old && old_end > file_len)
        old_clusters = old_end - file_len >= cs || old >= file_len ? 0 : (file_len + cs - 1) / cs - old / cs;
    q->snapshots_offset = offset;
    q->snapshots_bytes = bytes;
    q->nb_snapshots = count;
    q->meta_stale = true;
    for (uint64_t c = 0; c < old_clusters && old && rc == 0; c++)
        rc = qcow2_update_refcount(img, q, old / cs + c, -1);
    return rc;
}

bool qcow2_snapshot_incomplete(const struct qcow2 *q, const struct qcow2_snapshot *sn)
{
    return q->version >= 3 && sn->extra_size < 16;
}

/*
 * Version 3 requires every entry's extra data to hold at least the 64-bit VM
 * state size and the disk size: give the entries that lack them both (as
 * read: the disk size defaulted to the image's) and rewrite the table.
 */
int qcow2_complete_snapshots(vd_image *img, struct qcow2 *q)
{
    for (uint32_t i = 0; i < q->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &q->snapshots[i];
        if (!qcow2_snapshot_incomplete(q, sn))
            continue;
        uint8_t *extra = calloc(1, 16);
        if (!extra)
            return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
        memcpy(extra, sn->extra, sn->extra_size);
        vd_put_be64(extra, sn->vm_state_size);
        vd_put_be64(extra + 8, sn->disk_size);
        free(sn->extra);
        sn->extra = extra;
        sn->extra_size = 16;
    }
    return publish_table(img, q, q->snapshots, q->nb_snapshots);
}

/* ------------------------------------------------------------- operations */

static char *next_id(const struct qcow2 *q)
{
    unsigned long max = 0;
    for (uint32_t i = 0; i < q->nb_snapshots; i++) {
        unsigned long v = strtoul(q->snapshots[i].id, NULL, 10);
        if (v > max)
            max = v;
    }
    char *id;
    return asprintf(&id, "%lu", max + 1) < 0 ? NULL : id;
}

/*
 * Write a copy of the active L1 table to new clusters, at *offset. An empty
 * table (a 0-byte image) takes no cluster and has offset 0, as QEMU records it.
 */
static int copy_active_l1(vd_image *img, struct qcow2 *q, uint64_t *offset)
{
    uint64_t clusters = ((uint64_t)q->l1_size * 8 + q->cluster_size - 1) / q->cluster_size;
    *offset = 0;
    if (!clusters)
        return 0;
    uint8_t *copy = calloc(1, (size_t)(clusters * q->cluster_size));
    if (!copy)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    for (uint32_t i = 0; i < q->l1_size; i++)
        vd_put_be64(copy + i * 8, q->l1[i]);
    int rc = qcow2_alloc_metadata(img, q, clusters, offset);
    if (rc == 0)
        rc = qcow2_write_meta(img, QCOW2_META_NONE, *offset, copy, (size_t)(clusters * q->cluster_size));
    free(copy);
    return rc;
}

/* Fill a new entry for the current state, with a copy of the active L1 at l1_offset. */
static int new_entry(vd_image *img, struct qcow2 *q, const char *name, uint64_t l1_offset,
                     struct qcow2_snapshot *sn)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    *sn = (struct qcow2_snapshot){
        .l1_offset = l1_offset, .l1_size = q->l1_size,
        .date_sec = (uint32_t)now.tv_sec, .date_nsec = (uint32_t)now.tv_nsec,
        .disk_size = img->size, .extra_size = 24,
    };
    sn->id = next_id(q);
    sn->name = strdup(name);
    sn->extra = calloc(1, 24);
    if (!sn->id || !sn->name || !sn->extra)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    vd_put_be64(sn->extra + 8, img->size);   /* disk size; VM state size stays 0 */
    /* instruction count: 0, as qemu-img records it for snapshots of a stopped guest */
    return 0;
}

static void free_entry(struct qcow2_snapshot *sn)
{
    free(sn->id);
    free(sn->name);
    free(sn->extra);
}

int qcow2_snapshot_create(vd_image *img, const char *name)
{
    struct qcow2 *q = qcow2_of(img);
    for (uint32_t i = 0; i < q->nb_snapshots; i++)
        if (strcmp(q->snapshots[i].name, name) == 0)
            return vd_err(VD_EEXIST, "%s: a snapshot named '%s' already exists", img->filename, name);
    if (strlen(name) > UINT16_MAX)
        return vd_err(VD_EINVAL, "%s: snapshot name is too long", img->filename);
    if (q->refcount_max < 2)
        return vd_err(VD_EUNSUPPORTED, "%s: snapshots need refcounts of at least 2 bits", img->filename);
    if (qcow2_has_data_file(q))
        return vd_err(VD_EUNSUPPORTED, "%s: internal snapshots are not possible with an external "
                      "data file", img->filename);
    if (q->nb_snapshots >= QCOW2_MAX_SNAPSHOTS)
        return vd_err(VD_ETOOBIG, "%s: too many snapshots", img->filename);
    int rc = qcow2_flush_metadata(img, q);
    if (rc == 0)
        rc = room_for_reference(img, q, q->l1, q->l1_size);
    if (rc < 0)
        return rc;
    uint64_t l1_offset;
    rc = copy_active_l1(img, q, &l1_offset);
    /* everything the copy references gains a reference; the active COPIED flags drop */
    if (rc == 0)
        rc = update_tree_refcounts(img, q, q->l1, q->l1_size, 1, true);
    if (rc == 0)
        rc = qcow2_flush_metadata(img, q);
    if (rc < 0)
        return vd_image_poison(img, rc);

    struct qcow2_snapshot *grown = realloc(q->snapshots, (q->nb_snapshots + 1) * sizeof *grown);
    if (!grown)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    q->snapshots = grown;
    struct qcow2_snapshot *sn = &q->snapshots[q->nb_snapshots];
    uint32_t count = q->nb_snapshots;
    if ((rc = new_entry(img, q, name, l1_offset, sn)) == 0)
        rc = publish_table(img, q, q->snapshots, q->nb_snapshots + 1);
    if (rc < 0 && q->nb_snapshots != count)
        return vd_image_poison(img, rc);
    if (rc < 0)
        free_entry(sn);
    return rc;
}

/* ------------------------------------------------- dirty bitmaps on apply */

/* Copy the L2 table at host offset l2 (0: none, every entry unallocated) into out. */
static int copy_l2(struct qcow2 *q, uint64_t l2, uint8_t *out)
{
    size_t bytes = (size_t)(q->l2_entries * q->l2_entry_bytes);
    if (!l2) {
        memset(out, 0, bytes);
        return 0;
    }
    uint8_t *table;
    int rc = vd_cache_get(q->l2_cache, l2, false, (void **)&table);
    if (rc < 0)
        return rc;
    memcpy(out, table, bytes);
    vd_cache_put(q->l2_cache, table);
    return 0;
}

/* Whether two L2 entries map their cluster alike (COPIED says who else holds it, not what it holds). */
static bool same_mapping(const struct qcow2 *q, const uint8_t *a, const uint8_t *b)
{
    return ((vd_be64(a) ^ vd_be64(b)) & ~QCOW2_OFLAG_COPIED) == 0 &&
           memcmp(a + 8, b + 8, q->l2_entry_bytes - 8) == 0; /* the subcluster bitmap */
}

/* Mark dirty the clusters of L1 entry i that old_l2 and new_l2 map differently. */
static int mark_changed_in_table(vd_image *img, struct qcow2 *q, uint64_t i, uint64_t old_l2,
                                 uint64_t new_l2, uint8_t *before, uint8_t *after)
{
    int rc = copy_l2(q, old_l2, before);
    if (rc == 0)
        rc = copy_l2(q, new_l2, after);
    for (uint64_t j = 0; j < q->l2_entries && rc == 0; j++)
        if (!same_mapping(q, before + j * q->l2_entry_bytes, after + j * q->l2_entry_bytes))
            vd_image_mark_dirty(img, (i * q->l2_entries + j) * q->cluster_size, q->cluster_size);
    return rc;
}

/*
 * Applying a snapshot changes the guest's content wherever the snapshot maps
 * a cluster differently from the active state it replaces (old, q->l1_size
 * entries, as the new q->l1): every enabled bitmap records that as if it
 * were written there, so that an incremental backup from it copies those
 * clusters. An L1 entry naming the same L2 table maps alike; a grown part
 * is dirty as a whole; a table that cannot be read makes the whole disk
 * dirty. (QEMU 7.2 refuses to apply a snapshot to an image with bitmaps.)
 */
static int mark_changed_clusters(vd_image *img, struct qcow2 *q, const uint64_t *old,
                                 uint64_t old_size)
{
    if (!vd_bitmaps_any_enabled(img))
        return 0;
    int rc = vd_bitmaps_fit_size(img); /* the snapshot may have another size */
    if (rc < 0)
        return rc;
    size_t bytes = (size_t)(q->l2_entries * q->l2_entry_bytes);
    uint8_t *before = malloc(bytes), *after = malloc(bytes);
    bool whole = !before || !after;
    uint64_t span = q->l2_entries * q->cluster_size;
    for (uint64_t i = 0; i < q->l1_size && i * span < img->size && !whole; i++) {
        uint64_t old_l2 = old[i] & QCOW2_OFFSET_MASK, new_l2 = q->l1[i] & QCOW2_OFFSET_MASK;
        if (old_l2 != new_l2)
            whole = mark_changed_in_table(img, q, i, old_l2, new_l2, before, after) < 0;
    }
    free(before);
    free(after);
    if (whole)
        vd_image_mark_dirty(img, 0, img->size);
    else if (img->size > old_size)
        vd_image_mark_dirty(img, old_size, img->size - old_size);
    return 0;
}

int qcow2_snapshot_apply(vd_image *img, const char *id_or_name)
{
    struct qcow2 *q = qcow2_of(img);
    long i = find_snapshot(q, id_or_name);
    if (i < 0)
        return not_found(img, id_or_name);
    const struct qcow2_snapshot *sn = &q->snapshots[i];
    uint64_t old_size = img->size;
    int rc = check_snapshot_size(img, q, sn);
    if (rc == 0)
        rc = qcow2_flush_metadata(img, q);
    if (rc == 0)
        rc = qcow2_grow_l1(img, q, sn->l1_size);
    uint64_t *target = NULL;
    if (rc == 0)
        rc = load_snapshot_l1(img, sn, q->l1_size, &target);
    if (rc == 0)
        rc = room_for_reference(img, q, target, sn->l1_size);
    if (rc < 0) {
        free(target);
        return rc;
    }
    /* the snapshot's clusters gain the active state's reference before it switches,
       and its L2 tables lose every COPIED flag (written before the L1 table names them) */
    rc = update_tree_refcounts(img, q, target, sn->l1_size, 1, false);
    if (rc == 0)
        rc = qcow2_flush_metadata(img, q);
    uint64_t *old = q->l1;
    if (rc == 0) {
        /* every table the target names is shared with the snapshot now: no COPIED on disk */
        for (uint32_t j = 0; j < q->l1_size; j++)
            target[j] &= ~QCOW2_OFLAG_COPIED;
        q->l1 = target;
        q->meta_stale = true;
        /* a smaller size first, a larger one last: a crash between never shows more than either state */
        bool shrink = sn->disk_size < img->size;
        if (shrink && (rc = qcow2_write_size(img, sn->disk_size)) == 0)
            img->size = sn->disk_size;
        if (rc == 0)
            rc = qcow2_write_l1(img, q);
        if (rc == 0)
            rc = vd_image_sync_now(img);
        if (rc == 0 && !shrink && sn->disk_size != img->size && (rc = qcow2_write_size(img, sn->disk_size)) == 0)
            img->size = sn->disk_size;
    } else {
        free(target);
        return vd_image_poison(img, rc);
    }
    /* while the old active state's tables still hold their reference */
    if (rc == 0)
        rc = mark_changed_clusters(img, q, old, old_size);
    /* the old active state loses its reference; then COPIED flags follow the refcounts */
    if (rc == 0)
        rc = update_tree_refcounts(img, q, old, q->l1_size, -1, false);
    if (rc == 0)
        rc = update_tree_refcounts(img, q, q->l1, q->l1_size, 0, true);
    if (rc == 0)
        rc = qcow2_flush_metadata(img, q);
    free(old);
    return rc < 0 ? vd_image_poison(img, rc) : 0;
}

/* ------------------------------------------------------- delete validation */

static uint64_t l1_clusters(const struct qcow2 *q, const struct qcow2_snapshot *sn)
{
    return ((uint64_t)sn->l1_size * 8 + q->cluster_size - 1) / q->cluster_size;
}

/* A snapshot's L1 table lies inside the file, in clusters with a refcount. */
static int check_l1_clusters(vd_image *img, struct qcow2 *q, const struct qcow2_snapshot *sn,
                             uint64_t file_size)
{
    uint64_t bytes = (uint64_t)sn->l1_size * 8;
    if (bytes && (sn->l1_offset > file_size || bytes > file_size - sn->l1_offset))
        return qcow2_signal_corruption(img, "the L1 table of snapshot '%s' is past the end of the file",
                                       sn->name);
    int rc = 0;
    for (uint64_t c = 0; c < l1_clusters(q, sn) && rc == 0; c++) {
        uint64_t cluster = sn->l1_offset / q->cluster_size + c, refcount;
        if ((rc = qcow2_get_refcount(img, q, cluster, &refcount)) == 0 && refcount == 0)
            rc = qcow2_signal_corruption(img, "the L1 table of snapshot '%s' is in host cluster %llu, "
                                         "whose refcount is 0", sn->name, (unsigned long long)cluster);
    }
    return rc;
}

/* Fail (reporting corruption) if what an entry names at [host, host+len) holds metadata not in shared. */
static int refuse_metadata_target(vd_image *img, uint64_t host, uint64_t len, unsigned shared,
                                  const char *what)
{
    int kind = qcow2_metadata_at(img, host, len, shared);
    if (kind > 0)
        return qcow2_signal_corruption(img, "%s at host offset %llu is also the %s", what,
                                       (unsigned long long)host, qcow2_meta_name(kind));
    return kind;
}

/* An L2 table of the active state or of a snapshot: neither it nor its clusters hold metadata. */
static int check_l2_targets(vd_image *img, struct qcow2 *q, uint64_t l2)
{
    /* snapshots share L2 tables with the active state: those are the only overlap allowed */
    int rc = refuse_metadata_target(img, l2, q->cluster_size, QCOW2_META_ACTIVE_L2, "an L2 table");
    uint8_t *table;
    if (rc < 0 || (rc = vd_cache_get(q->l2_cache, l2, false, (void **)&table)) < 0)
        return rc;
    /* with an external data file, entries name offsets in that file */
    for (uint64_t j = 0; j < q->l2_entries && rc == 0 && !qcow2_has_data_file(q); j++) {
        uint64_t first, end;
        entry_clusters(q, vd_be64(table + j * q->l2_entry_bytes), &first, &end);
        if (first < end)
            rc = refuse_metadata_target(img, first * q->cluster_size, (end - first) * q->cluster_size,
                                        QCOW2_META_NONE, "a data cluster");
    }
    vd_cache_put(q->l2_cache, table);
    return rc;
}

/* Offsets of L2 tables, gathered from several L1 tables. */
struct table_list {
    uint64_t *offsets;
    size_t count;
};

static int add_l2_tables(vd_image *img, struct table_list *list, const uint64_t *l1, uint64_t l1_size)
{
    uint64_t *grown = realloc(list->offsets, (list->count + l1_size + 1) * sizeof *grown);
    if (!grown)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    list->offsets = grown;
    for (uint64_t i = 0; i < l1_size; i++)
        if (l1[i] & QCOW2_OFFSET_MASK)
            list->offsets[list->count++] = l1[i] & QCOW2_OFFSET_MASK;
    return 0;
}

static int by_offset(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/*
 * Before a delete frees anything: every snapshot's L1 table must lie in
 * clusters of its own, allocated, holding no other structure (the overlap
 * map, which lists the snapshots' L1 tables too), and used as data or as an
 * L2 table by no entry of the active state or of any snapshot; else a hostile
 * table offset would free a live cluster. The L1 tables are disjoint and
 * inside the file once this holds, and each L2 table is read once however
 * many snapshots share it: the cost is that of the metadata present.
 */
static int check_snapshot_l1_tables(vd_image *img, struct qcow2 *q)
{
    uint64_t file_size;
    int rc = qcow2_check_layout(img);
    if (rc == 0)
        rc = vd_file_get_size(img->file, &file_size);
    for (uint32_t s = 0; s < q->nb_snapshots && rc == 0; s++)
        rc = check_l1_clusters(img, q, &q->snapshots[s], file_size);
    struct table_list tables = { 0 };
    if (rc == 0)
        rc = add_l2_tables(img, &tables, q->l1, q->l1_size);
    for (uint32_t s = 0; s < q->nb_snapshots && rc == 0; s++) {
        uint64_t *l1;
        if ((rc = load_snapshot_l1(img, &q->snapshots[s], 0, &l1)) == 0) {
            rc = add_l2_tables(img, &tables, l1, q->snapshots[s].l1_size);
            free(l1);
        }
    }
    if (rc == 0 && tables.count)
        qsort(tables.offsets, tables.count, sizeof *tables.offsets, by_offset);
    for (size_t i = 0; i < tables.count && rc == 0; i++)
        if (i == 0 || tables.offsets[i] != tables.offsets[i - 1])
            rc = check_l2_targets(img, q, tables.offsets[i]);
    free(tables.offsets);
    return rc;
}

int qcow2_snapshot_delete(vd_image *img, const char *id_or_name)
{
    struct qcow2 *q = qcow2_of(img);
    long i = find_snapshot(q, id_or_name);
    if (i < 0)
        return not_found(img, id_or_name);
    int rc = qcow2_flush_metadata(img, q);
    if (rc == 0)
        rc = check_snapshot_l1_tables(img, q);
    if (rc < 0)
        return rc;
    struct qcow2_snapshot gone = q->snapshots[i];
    uint64_t *l1;
    if ((rc = load_snapshot_l1(img, &gone, 0, &l1)) < 0)
        return rc;
    /* first the table without it (in memory too: the overlap map must not list
       it twice), then its references go */
    memmove(&q->snapshots[i], &q->snapshots[i + 1], (q->nb_snapshots - i - 1) * sizeof *q->snapshots);
    q->nb_snapshots--;
    q->meta_stale = true;
    uint64_t old_table = q->snapshots_offset;
    rc = publish_table(img, q, q->snapshots, q->nb_snapshots);
    if (rc < 0 && q->snapshots_offset != old_table) { /* switched; only freeing failed */
        free(l1);
        free_entry(&gone);
        return vd_image_poison(img, rc);
    }
    if (rc < 0) {
        q->nb_snapshots++;
        memmove(&q->snapshots[i + 1], &q->snapshots[i], (q->nb_snapshots - i - 1) * sizeof *q->snapshots);
        q->snapshots[i] = gone;
        q->meta_stale = true;
        free(l1);
        return rc;
    }
    rc = update_tree_refcounts(img, q, l1, gone.l1_size, -1, false);
    /* exactly the clusters of its L1 table: an empty one has none (QEMU records offset 0) */
    for (uint64_t c = 0; c < l1_clusters(q, &gone) && rc == 0; c++)
        rc = qcow2_update_refcount(img, q, gone.l1_offset / q->cluster_size + c, -1);
    if (rc == 0)
        rc = update_tree_refcounts(img, q, q->l1, q->l1_size, 0, true);
    if (rc == 0)
        rc = qcow2_flush_metadata(img, q);
    free(l1);
    free_entry(&gone);
    return rc < 0 ? vd_image_poison(img, rc) : 0;
}
