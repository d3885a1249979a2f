/* The qcow2 internal snapshot table. */
#include "formats/qcow2/qcow2.h"

#include <stdlib.h>
#include <string.h>

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

/* Read and parse the entry at table offset *pos (the table may not pass limit). */
static int read_entry(vd_image *img, const struct qcow2 *q, uint64_t limit, uint64_t *pos,
                      uint32_t i, struct qcow2_snapshot *sn)
{
    uint8_t e[SNAPSHOT_HEADER_BYTES];
    if (*pos > limit || limit - *pos < SNAPSHOT_HEADER_BYTES)
        return bad_table(img, i, "entry is past the end of the table");
    int rc = vd_file_pread(img->file, e, sizeof e, q->snapshots_offset + *pos);
    if (rc < 0)
        return rc;
    sn->l1_offset = vd_be64(e);
    sn->l1_size = vd_be32(e + 8);
    uint16_t id_len = vd_be16(e + 12), name_len = vd_be16(e + 14);
    sn->date_sec = vd_be32(e + 16);
    sn->date_nsec = vd_be32(e + 20);
    sn->vm_clock_ns = vd_be64(e + 24);
    sn->vm_state_size = vd_be32(e + 32);
    sn->extra_size = vd_be32(e + 36);
    if (sn->extra_size > MAX_EXTRA_BYTES)
        return bad_table(img, i, "too much extra data");
    uint64_t rest = (uint64_t)sn->extra_size + id_len + name_len;
    if (limit - *pos - SNAPSHOT_HEADER_BYTES < rest)
        return bad_table(img, i, "entry is past the end of the table");
    if (sn->l1_offset & (q->cluster_size - 1))
        return bad_table(img, i, "L1 table is not cluster aligned");
    if ((uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES)
        return bad_table(img, i, "L1 table is too large");
    uint8_t *var = malloc((size_t)rest + 1);
    if (!var)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    rc = vd_file_pread(img->file, var, (size_t)rest, q->snapshots_offset + *pos + sizeof e);
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
    *pos += (SNAPSHOT_HEADER_BYTES + rest + 7) & ~7ull;
    return rc;
}

int qcow2_read_snapshots(vd_image *img, struct qcow2 *q)
{
    q->snapshots_bytes = 0;
    if (!q->nb_snapshots)
        return 0;
    uint64_t file_size;
    int rc = vd_file_get_size(img->file, &file_size);
    if (rc < 0)
        return rc;
    if (q->snapshots_offset >= file_size)
        return vd_err(VD_ECORRUPT, "%s: the qcow2 snapshot table is past the end of the file",
                      img->filename);
    uint64_t limit = file_size - q->snapshots_offset;
    if (limit > MAX_TABLE_BYTES)
        limit = MAX_TABLE_BYTES;
    q->snapshots = calloc(q->nb_snapshots, sizeof *q->snapshots);
    if (!q->snapshots)
        return vd_err(VD_ENOMEM, "%s: out of memory for the snapshot table", img->filename);
    uint64_t pos = 0;
    for (uint32_t i = 0; rc == 0 && i < q->nb_snapshots; i++)
        rc = read_entry(img, q, limit, &pos, i, &q->snapshots[i]);
    q->snapshots_bytes = pos;
    return rc;
}
