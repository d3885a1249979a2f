#!/usr/bin/python3
"""Write a qcow2 v3 image with single-cluster writes scattered over it,
directly (qemu-io needs minutes per few thousand such writes): every
cluster laid out as qemu would after that many writes in that order, an L2
table allocated on first touch, each cluster's data after it, refcounts
16-bit and exact. Clusters of 512 bytes unless CLUSTER_BITS says otherwise
(16: 64 KiB).

    make_scattered_qcow2.py PATH VIRTUAL_GIB WRITES [SEED [CLUSTER_BITS]]
"""
import random
import struct
import sys

COPIED = 1 << 63


def main(path, gib, writes, seed=7, cluster_bits=9):
    cs = 1 << cluster_bits
    l2_entries = cs // 8
    rb_entries = cs * 8 // 16  # 16-bit refcounts

    def clusters_for(nbytes):
        return -(-nbytes // cs)

    size = gib << 30
    l1_entries = clusters_for(size) // l2_entries
    l1_clusters = clusters_for(l1_entries * 8)
    rng = random.Random(seed)
    guest = rng.sample(range(size // cs), writes)  # distinct clusters, in write order

    l2_of = {}  # L1 index -> rank of first touch
    for g in guest:
        l2_of.setdefault(g // l2_entries, len(l2_of))
    used = l1_clusters + len(l2_of) + writes  # without the header and refcount structures
    blocks = table = 1
    while True:  # the refcount structures describe themselves too
        total = 1 + table + blocks + used
        need_blocks = -(-total // rb_entries)
        need_table = clusters_for(need_blocks * 8)
        if (need_blocks, need_table) == (blocks, table):
            break
        blocks, table = need_blocks, need_table

    rt_at, rb_at, l1_at = 1, 1 + table, 1 + table + blocks
    next_cluster = l1_at + l1_clusters
    l1 = bytearray(l1_clusters * cs)
    tables = {}  # L1 index -> (cluster, bytearray)
    body = bytearray()  # everything from next_cluster on, in allocation order
    for g in guest:
        index = g // l2_entries
        if index not in tables:
            tables[index] = (next_cluster, bytearray(cs))
            struct.pack_into(">Q", l1, index * 8, COPIED | next_cluster * cs)
            body += bytes(cs)  # filled in below
            next_cluster += 1
        struct.pack_into(">Q", tables[index][1], (g % l2_entries) * 8, COPIED | next_cluster * cs)
        body += b"\x5a" * cs
        next_cluster += 1
    first_body = l1_at + l1_clusters
    for cluster, table_bytes in tables.values():
        at = (cluster - first_body) * cs
        body[at:at + cs] = table_bytes

    refcounts = bytearray(blocks * cs)
    struct.pack_into(">%dH" % next_cluster, refcounts, 0, *([1] * next_cluster))
    reftable = bytearray(table * cs)
    for b in range(blocks):
        struct.pack_into(">Q", reftable, b * 8, (rb_at + b) * cs)

    header = bytearray(cs)
    struct.pack_into(">IIQIIQIIQQIIQQQQII", header, 0,
                     0x514649FB, 3, 0, 0, cluster_bits, size, 0, l1_entries, l1_at * cs,
                     rt_at * cs, table, 0, 0, 0, 0, 0, 4, 104)
    with open(path, "wb") as f:
        for part in (header, reftable, refcounts, l1, body):
            f.write(part)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *map(int, sys.argv[4:6]))
