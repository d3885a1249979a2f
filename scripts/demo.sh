#!/usr/bin/env bash
# The main job, on images the demo makes itself: an ext2 file system in a raw
# disk goes to qcow2, into an overlay, through a snapshot and a commit, then
# to compressed qcow2, to VMware's vmdk and back, with the vdisk CLI doing the
# work and qemu-img as the referee at every step.
# Needs only the build, qemu-utils and e2fsprogs. Usage: scripts/demo.sh BUILDDIR
set -euo pipefail

build=$(cd "${1:?usage: demo.sh BUILDDIR}" && pwd)
vdisk="$build/examples/vdisk"
export LD_LIBRARY_PATH="$build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$PATH:/usr/sbin:/sbin" # mke2fs and debugfs
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
md5() { md5sum < "$1" | cut -d' ' -f1; }
# expect WHAT GOT WANTED: stop the demo when a result is not the one expected
expect() {
    if [ "$2" = "$3" ]; then echo "ok: $1"; else echo "FAILED: $1: got '$2', expected '$3'" >&2; exit 1; fi
}
# the content of a file inside the ext2 file system of a raw disk
cat_in_fs() { debugfs -R "cat $2" "$1" 2>/dev/null; }

cd "$work"
run "$vdisk" --version

step "A raw disk with an ext2 file system (made by mke2fs)"
mkdir files
echo "hello from libvdisk" > files/hello.txt
head -c 3M /dev/urandom > files/random.bin
run mke2fs -q -t ext2 -L demo -d files disk.raw 64M
run "$vdisk" info disk.raw
raw_md5=$(md5 disk.raw)

step "Convert it to qcow2: qemu-img checks and compares what vdisk wrote"
run "$vdisk" convert -p -f raw -O qcow2 disk.raw disk.qcow2
run qemu-img check disk.qcow2
run qemu-img compare -f raw -F qcow2 disk.raw disk.qcow2
run "$vdisk" info disk.qcow2
run "$vdisk" map disk.qcow2 | head -6
expect "the qcow2 image stores only what the file system uses" \
    "$(( $(stat -c %b disk.qcow2) * 512 < 16 << 20 ))" 1

step "And back to raw: the same bytes"
run "$vdisk" convert -f qcow2 -O raw disk.qcow2 back.raw
expect "md5 of the round trip" "$(md5 back.raw)" "$raw_md5"

step "An overlay: qemu-io writes into it, the base stays as it was"
run "$vdisk" create -f qcow2 -b disk.qcow2 -F qcow2 overlay.qcow2
run qemu-io -f qcow2 -c "write -P 0x5a 32M 1M" overlay.qcow2
run "$vdisk" info --backing-chain overlay.qcow2
run "$vdisk" map overlay.qcow2 | head -6
run "$vdisk" check overlay.qcow2
run qemu-img compare -f raw -F qcow2 disk.raw disk.qcow2
run "$vdisk" convert -O raw overlay.qcow2 flat.raw
run qemu-img compare -f qcow2 -F raw overlay.qcow2 flat.raw
expect "the overlay's data reads through the chain" \
    "$(cat_in_fs flat.raw /hello.txt)" "hello from libvdisk"

step "A snapshot, a change, and back"
run "$vdisk" snapshot -c before-change disk.qcow2
run qemu-io -f qcow2 -c "write -P 0 0 64M" disk.qcow2
run "$vdisk" snapshot -l disk.qcow2
run "$vdisk" snapshot -a before-change disk.qcow2
run qemu-img check disk.qcow2
run qemu-img compare -f raw -F qcow2 disk.raw disk.qcow2
run "$vdisk" snapshot -d before-change disk.qcow2
run qemu-img check disk.qcow2

step "Commit the overlay into its base"
run "$vdisk" commit overlay.qcow2
run qemu-img check disk.qcow2
run qemu-img compare -f raw -F qcow2 flat.raw disk.qcow2

step "Compressed: convert -c with zlib and with zstd, judged by qemu-img"
head -c 8M /dev/zero | tr '\0' 'x' | dd of=disk.raw bs=1M seek=40 conv=notrunc status=none
run "$vdisk" convert -c -O qcow2 disk.raw zlib.qcow2
run "$vdisk" convert -c -O qcow2 -o compression_type=zstd disk.raw zstd.qcow2
for image in zlib.qcow2 zstd.qcow2; do
    run qemu-img check "$image"
    run qemu-img compare -f raw -F qcow2 disk.raw "$image"
done
run "$vdisk" info zstd.qcow2
expect "the compressed image is smaller than the plain one" \
    "$(( $(stat -c %b zlib.qcow2) < $(stat -c %b flat.raw) ))" 1

step "VMware: to vmdk (sparse and streamOptimized) and back, the way users bring them"
run "$vdisk" convert -f raw -O vmdk disk.raw disk.vmdk
run "$vdisk" convert -f raw -O vmdk -o subformat=streamOptimized disk.raw stream.vmdk
run qemu-img check disk.vmdk
for image in disk.vmdk stream.vmdk; do
    run qemu-img compare -f raw -F vmdk disk.raw "$image"
done
run "$vdisk" info stream.vmdk
run "$vdisk" convert -f vmdk -O qcow2 stream.vmdk from-vmdk.qcow2
run "$vdisk" convert -f vmdk -O raw disk.vmdk from-vmdk.raw
run qemu-img check from-vmdk.qcow2
run qemu-img compare -f raw -F qcow2 disk.raw from-vmdk.qcow2
expect "vmdk -> raw gives the same bytes" "$(md5 from-vmdk.raw)" "$(md5 disk.raw)"

step "Thin provisioning: a 1 TiB qcow2 image"
run "$vdisk" create -f qcow2 big.qcow2 1T
run du -h big.qcow2
run qemu-img check big.qcow2
expect "a 1 TiB image takes less than 1 MiB" "$(( $(stat -c %b big.qcow2) * 512 < 1 << 20 ))" 1

step "Bad input gets a clear error and a non-zero exit"
printf 'QFI\xfbtruncated' > broken.qcow2
if "$vdisk" info broken.qcow2; then echo "FAILED: a truncated header was accepted" >&2; exit 1; fi

echo
echo "demo: all steps passed"
