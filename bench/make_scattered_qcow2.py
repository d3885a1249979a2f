#!/usr/bin/python3
"""Write a qcow2 v3 image of 512-byte clusters with single-cluster writes
scattered over it, directly (qemu-io needs minutes per few thousand such
writes): every cluster laid out as qemu would after that many writes in
that order, an L2 table allocated on first touch, each cluster's data
after it, refcounts 16-bit and exact.

    make_scattered_qcow2.py PATH VIRTUAL_GIB WRITES [SEED]
"""
import random
import struct
import sys

CLUSTER_BITS = 9
CS = 1 << CLUSTER_BITS
L2_ENTRIES = CS // 8
RB_ENTRIES = CS * 8 // 16  # 16-bit refcounts
COPIED = 1 << 63


def clusters_for(nbytes):
    return -(-nbytes // CS)


def main(path, gib, writes, seed=7):
    size = gib << 30
    l1_entries = clusters_for(size) // L2_ENTRIES
    l1_clusters = clusters_for(l1_entries * 8)
    rng = random.Random(seed)
    guest = rng.sample(range(size // CS), writes)  # distinct clusters, in write order

    l2_of = {}  # L1 index -> rank of first touch
    for g in guest:
        l2_of.setdefault(g // L2_ENTRIES, len(l2_of))
    used = l1_clusters + len(l2_of) + writes  # without the header and refcount structures
    blocks = table = 1
    while True:  # the refcount structures describe themselves too
        total = 1 + table + blocks + used
        need_blocks = -(-total // RB_ENTRIES)
        need_table = clusters_for(need_blocks * 8)
        if (need_blocks, need_table) == (blocks, table):
            break
        blocks, table = need_blocks, need_table

    rt_at, rb_at, l1_at = 1, 1 + table, 1 + table + blocks
    next_cluster = l1_at + l1_clusters
    l1 = bytearray(l1_clusters * CS)
    tables = {}  # L1 index -> (cluster, bytearray)
    body = bytearray()  # everything from next_cluster on, in allocation order
    for g in guest:
        index = g // L2_ENTRIES
        if index not in tables:
            tables[index] = (next_cluster, bytearray(CS))
            struct.pack_into(">Q", l1, index * 8, COPIED | next_cluster * CS)
            body += bytes(CS)  # filled in below
            next_cluster += 1
        struct.pack_into(">Q", tables[index][1], (g % L2_ENTRIES) * 8, COPIED | next_cluster * CS)
        body += b"\x5a" * CS
        next_cluster += 1
    first_body = l1_at + l1_clusters
    for cluster, table_bytes in tables.values():
        at = (cluster - first_body) * CS
        body[at:at + CS] = table_bytes

    refcounts = bytearray(blocks * CS)
    struct.pack_into(">%dH" % next_cluster, refcounts, 0, *([1] * next_cluster))
    reftable = bytearray(table * CS)
    for b in range(blocks):
        struct.pack_into(">Q", reftable, b * 8, (rb_at + b) * CS)

    header = bytearray(CS)
    struct.pack_into(">IIQIIQIIQQIIQQQQII", header, 0,
                     0x514649FB, 3, 0, 0, CLUSTER_BITS, size, 0, l1_entries, l1_at * CS,
                     rt_at * CS, table, 0, 0, 0, 0, 0, 4, 104)
    with open(path, "wb") as f:
        for part in (header, reftable, refcounts, l1, body):
            f.write(part)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *map(int, sys.argv[4:5]))
