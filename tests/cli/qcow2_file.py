"""Just enough of the qcow2 layout to damage an image on purpose (16-bit refcounts)."""
import os
import struct

OFLAG_COPIED = 1 << 63
OFFSET_MASK = 0x00fffffffffffe00
INCOMPAT_CORRUPT = 1 << 1
BITMAPS_EXTENSION = 0x23852875
BITMAP_IN_USE = 1 << 0


class Qcow2File:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            header = f.read(104)
        (magic, self.version, _, _, cluster_bits, _, _, _, self.l1_offset, self.rt_offset) = \
            struct.unpack(">IIQIIQIIQQ", header[:56])
        assert magic == 0x514649fb
        self.cluster_size = 1 << cluster_bits
        refcount_order = struct.unpack(">I", header[96:100])[0] if self.version >= 3 else 4
        assert refcount_order == 4, "16-bit refcounts only"

    def _read64(self, offset):
        with open(self.path, "rb") as f:
            f.seek(offset)
            return struct.unpack(">Q", f.read(8))[0]

    def _write(self, offset, data):
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def _l2_entry(self, guest_offset):
        """The file offset of the L2 entry mapping guest_offset."""
        per_table = self.cluster_size // 8
        cluster = guest_offset // self.cluster_size
        l2 = self._read64(self.l1_offset + 8 * (cluster // per_table)) & OFFSET_MASK
        assert l2, "no L2 table there"
        return l2 + 8 * (cluster % per_table)

    def host_cluster(self, guest_offset):
        """The index of the host cluster holding the data at guest_offset."""
        return (self._read64(self._l2_entry(guest_offset)) & OFFSET_MASK) // self.cluster_size

    def set_refcount(self, cluster, value):
        per_block = self.cluster_size // 2
        block = self._read64(self.rt_offset + 8 * (cluster // per_block)) & OFFSET_MASK
        assert block, "no refcount block there"
        self._write(block + 2 * (cluster % per_block), struct.pack(">H", value))

    def clear_copied(self, guest_offset):
        entry = self._l2_entry(guest_offset)
        self._write(entry, struct.pack(">Q", self._read64(entry) & ~OFLAG_COPIED))

    def swap_clusters(self, guest_a, guest_b):
        """Exchange two L2 entries: still consistent, but fragmented (and the data swapped)."""
        a, b = self._l2_entry(guest_a), self._l2_entry(guest_b)
        value_a, value_b = self._read64(a), self._read64(b)
        self._write(a, struct.pack(">Q", value_b))
        self._write(b, struct.pack(">Q", value_a))

    def add_leak(self):
        """Grow the file by a cluster that has a refcount but no reference."""
        cluster = -(-os.path.getsize(self.path) // self.cluster_size)
        with open(self.path, "r+b") as f:
            f.truncate((cluster + 1) * self.cluster_size)
        self.set_refcount(cluster, 1)

    def mark_corrupt(self):
        assert self.version >= 3
        self._write(72, struct.pack(">Q", self._read64(72) | INCOMPAT_CORRUPT))

    def mark_bitmaps_in_use(self, *names):
        """Set the in_use flag of these bitmaps in the directory, as a writer
        that crashed with the image open leaves them (then they are inconsistent)."""
        with open(self.path, "rb") as f:
            header_length = struct.unpack(">I", f.read(104)[100:104])[0]
            f.seek(header_length)
            while True:
                kind, length = struct.unpack(">II", f.read(8))
                assert kind, "no bitmaps extension"
                data = f.read((length + 7) & ~7)
                if kind == BITMAPS_EXTENSION:
                    count, _, _, directory = struct.unpack(">IIQQ", data[:24])
                    break
        left = set(names)
        for _ in range(count):
            with open(self.path, "rb") as f:
                f.seek(directory)
                entry = f.read(24)
                flags, name_size, extra = struct.unpack(">I", entry[12:16])[0], \
                    *struct.unpack(">HI", entry[18:24])
                f.seek(directory + 24 + extra)
                name = f.read(name_size).decode()
            if name in left:
                self._write(directory + 12, struct.pack(">I", flags | BITMAP_IN_USE))
                left.discard(name)
            directory += (24 + extra + name_size + 7) & ~7
        assert not left, f"no bitmaps {left}"
