#!/bin/sh
# Raw interop with QEMU: an image written through libvdisk is identical (for
# qemu-img compare) to the same writes done with plain pwrite; qemu-img info
# agrees on its format and size; an image qemu-img wrote reads back
# identically through libvdisk.
#
#   interop_raw.sh WRITE_PATTERN QEMU_IMG
set -eu

helper=$1 qemu_img=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
fail() { echo "FAIL: $*" >&2; status=1; }

# a whole number of 512-byte sectors: QEMU rounds raw sizes up to one
size=$((24 * 1024 * 1024 + 25 * 512))
seed=7

"$helper" vdisk "$tmp/vdisk.raw" $size $seed
"$helper" pwrite "$tmp/pwrite.raw" $size $seed

# 1. byte-identical guest content
if ! "$qemu_img" compare -q -f raw -F raw "$tmp/vdisk.raw" "$tmp/pwrite.raw"; then
    fail "qemu-img compare: the libvdisk-written image differs from the pwrite one"
fi
# the comparison can fail: one flipped byte must be noticed
cp "$tmp/pwrite.raw" "$tmp/flipped.raw"
printf '\377' | dd of="$tmp/flipped.raw" bs=1 seek=$((size / 2)) conv=notrunc status=none
cmp -s "$tmp/pwrite.raw" "$tmp/flipped.raw" && printf '\376' |
    dd of="$tmp/flipped.raw" bs=1 seek=$((size / 2)) conv=notrunc status=none
rc=0
"$qemu_img" compare -q -f raw -F raw "$tmp/vdisk.raw" "$tmp/flipped.raw" || rc=$?
[ $rc -eq 1 ] || fail "qemu-img compare returned $rc for images that differ in one byte"

# 2. qemu-img info agrees on format and virtual size (qemu probes the format)
info=$("$qemu_img" info --output=json "$tmp/vdisk.raw")
vsize=$(printf '%s\n' "$info" | sed -n 's/.*"virtual-size": *\([0-9]*\).*/\1/p' | head -n 1)
format=$(printf '%s\n' "$info" | sed -n 's/.*"format": *"\([^"]*\)".*/\1/p' | head -n 1)
[ "$vsize" = "$size" ] || fail "qemu-img info virtual-size is '$vsize', expected $size"
[ "$format" = raw ] || fail "qemu-img info format is '$format', expected raw"

# 3. the other direction: qemu-img writes (sparse-aware convert), libvdisk reads
"$qemu_img" convert -f raw -O raw "$tmp/pwrite.raw" "$tmp/qemu.raw"
"$helper" verify "$tmp/qemu.raw" $size $seed ||
    fail "libvdisk reads the qemu-written image differently"

[ $status -eq 0 ] && echo "ok: raw interop ($size bytes)"
exit $status
