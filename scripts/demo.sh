#!/usr/bin/env bash
# The main job: the vdisk CLI on real images from ../shared/testdata, with
# qemu-img as the referee. Usage: scripts/demo.sh BUILDDIR
set -euo pipefail

build=$(cd "${1:?usage: demo.sh BUILDDIR}" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
testdata="$root/../shared/testdata"
vdisk="$build/examples/vdisk"
export LD_LIBRARY_PATH="$build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
expect_md5() { # FILE MD5
    local got
    got=$(md5sum < "$1" | cut -d' ' -f1)
    if [ "$got" = "$2" ]; then echo "md5 $got: matches MANIFEST.tsv"; else echo "md5 $got: expected $2" >&2; exit 1; fi
}
manifest_md5() { awk -F'\t' -v f="$1" '$1 == f { print $4 }' "$testdata/MANIFEST.tsv"; }

cd "$work"
run "$vdisk" --version

step "A real qcow2 image (ext2 file system): info, check, map"
bzip2 -dc "$testdata/ext2.qcow2.bz2" > ext2.qcow2
run "$vdisk" info ext2.qcow2
run "$vdisk" check ext2.qcow2 || true
run "$vdisk" map ext2.qcow2 | head -8

step "Convert it to raw and compare with the manifest and with qemu-img"
run "$vdisk" convert -p -f qcow2 -O raw ext2.qcow2 ext2.raw
expect_md5 ext2.raw "$(manifest_md5 ext2.qcow2.bz2)"
run qemu-img compare -f qcow2 -F raw ext2.qcow2 ext2.raw

step "And back to qcow2: qemu-img checks what vdisk wrote"
run "$vdisk" convert -f raw -O qcow2 ext2.raw ext2-copy.qcow2
run qemu-img check ext2-copy.qcow2
run qemu-img compare ext2.qcow2 ext2-copy.qcow2
run "$vdisk" info --output=json ext2-copy.qcow2

step "A 512-byte GRUB boot sector probes as raw"
bzip2 -dc "$testdata/grub_mbr.raw.bz2" > grub_mbr.raw
run "$vdisk" info grub_mbr.raw
expect_md5 grub_mbr.raw "$(manifest_md5 grub_mbr.raw.bz2)"

step "Thin provisioning: a 1 TiB qcow2 image"
run "$vdisk" create -f qcow2 big.qcow2 1T
run du -h big.qcow2
run qemu-img check big.qcow2

echo
echo "demo: all steps passed"
