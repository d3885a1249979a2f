"""Just enough of the qcow2 on-disk format to read and corrupt metadata on purpose."""
import struct

COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO = 1
OFFSET_MASK = 0x00FFFFFFFFFFFE00

# name: (offset, struct format)
HEADER = {
    "magic": (0, ">I"), "version": (4, ">I"), "backing_file_offset": (8, ">Q"),
    "backing_file_size": (16, ">I"), "cluster_bits": (20, ">I"), "size": (24, ">Q"),
    "crypt_method": (32, ">I"), "l1_size": (36, ">I"), "l1_table_offset": (40, ">Q"),
    "refcount_table_offset": (48, ">Q"), "refcount_table_clusters": (56, ">I"),
    "nb_snapshots": (60, ">I"), "snapshots_offset": (64, ">Q"),
    "incompatible_features": (72, ">Q"), "compatible_features": (80, ">Q"),
    "autoclear_features": (88, ">Q"), "refcount_order": (96, ">I"),
    "header_length": (100, ">I"), "compression_type": (104, ">B"),
}


class Qcow2:
    """A qcow2 file opened for inspection and surgery (no caching: every call hits the file)."""

    def __init__(self, path):
        self.path = path
        self.f = open(path, "r+b")
        self.h = {}
        for name, (off, fmt) in HEADER.items():
            if name in ("incompatible_features",) and self.field("version") < 3:
                break
            self.h[name] = self.field(name)
        self.cluster_size = 1 << self.h["cluster_bits"]
        self.refcount_bits = 1 << self.h.get("refcount_order", 4)
        self.extended_l2 = bool(self.h.get("incompatible_features", 0) & (1 << 4))
        self.l2_entry_size = 16 if self.extended_l2 else 8

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # raw access
    def pread(self, off, n):
        self.f.seek(off)
        return self.f.read(n)

    def pwrite(self, off, data):
        self.f.seek(off)
        self.f.write(data)
        self.f.flush()

    def field(self, name):
        off, fmt = HEADER[name]
        return struct.unpack(fmt, self.pread(off, struct.calcsize(fmt)))[0]

    def set_field(self, name, value):
        off, fmt = HEADER[name]
        self.pwrite(off, struct.pack(fmt, value))
        self.h[name] = value

    # L1 / L2
    def l1_entry(self, index):
        return struct.unpack(">Q", self.pread(self.h["l1_table_offset"] + 8 * index, 8))[0]

    def set_l1_entry(self, index, value):
        self.pwrite(self.h["l1_table_offset"] + 8 * index, struct.pack(">Q", value))

    def l2_per_table(self):
        return self.cluster_size // self.l2_entry_size

    def l2_location(self, guest_offset):
        """(L1 index, file offset of the L2 entry) for a guest offset, or (idx, None)."""
        cluster = guest_offset // self.cluster_size
        l1_index, l2_index = divmod(cluster, self.l2_per_table())
        l2 = self.l1_entry(l1_index) & OFFSET_MASK
        return l1_index, (l2 + l2_index * self.l2_entry_size) if l2 else None

    def l2_entry(self, guest_offset):
        _, where = self.l2_location(guest_offset)
        return struct.unpack(">Q", self.pread(where, 8))[0] if where else 0

    def set_l2_entry(self, guest_offset, value):
        _, where = self.l2_location(guest_offset)
        self.pwrite(where, struct.pack(">Q", value))

    def host_cluster(self, guest_offset):
        """The host offset of the data cluster holding a guest offset (0 if none)."""
        return self.l2_entry(guest_offset) & OFFSET_MASK

    # refcounts
    def _refcount_location(self, host_offset):
        cluster = host_offset // self.cluster_size
        per_block = self.cluster_size * 8 // self.refcount_bits
        table_index, block_index = divmod(cluster, per_block)
        block = struct.unpack(">Q", self.pread(self.h["refcount_table_offset"] + 8 * table_index,
                                               8))[0] & ~0x1FF
        assert block, f"no refcount block for host offset {host_offset:#x}"
        return block, block_index

    def refcount(self, host_offset):
        block, index = self._refcount_location(host_offset)
        bits = self.refcount_bits
        if bits >= 8:
            n = bits // 8
            return int.from_bytes(self.pread(block + index * n, n), "big")
        byte = self.pread(block + index * bits // 8, 1)[0]
        return (byte >> (index * bits % 8)) & ((1 << bits) - 1)

    def set_refcount(self, host_offset, value):
        block, index = self._refcount_location(host_offset)
        bits = self.refcount_bits
        if bits >= 8:
            n = bits // 8
            self.pwrite(block + index * n, value.to_bytes(n, "big"))
            return
        where = block + index * bits // 8
        shift, mask = index * bits % 8, (1 << bits) - 1
        byte = self.pread(where, 1)[0]
        byte = (byte & ~(mask << shift)) | ((value & mask) << shift)
        self.pwrite(where, bytes([byte]))

    # snapshot table
    def _snapshot_entry(self, index):
        """The file offset of snapshot table entry index."""
        where = self.h["snapshots_offset"]
        assert index < self.h["nb_snapshots"], f"no snapshot {index}"
        for _ in range(index):
            id_len, name_len = struct.unpack(">HH", self.pread(where + 12, 4))
            extra = struct.unpack(">I", self.pread(where + 36, 4))[0]
            where += (40 + extra + id_len + name_len + 7) // 8 * 8
        return where

    def snapshot_l1(self, index):
        """(l1_table_offset, l1_size) of snapshot index."""
        return struct.unpack(">QI", self.pread(self._snapshot_entry(index), 12))

    def set_snapshot_l1(self, index, offset, size):
        self.pwrite(self._snapshot_entry(index), struct.pack(">QI", offset, size))
