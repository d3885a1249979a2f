#!/bin/sh
# convert-qcow2: `vdisk convert` against `qemu-img convert`, raw->qcow2 and
# qcow2->raw, on the half-sparse image of mixed content of convert-raw (and
# its qcow2 copy made by qemu-img), page cache warm, both writing to the same
# file system. Prints, per direction, the time ratio (qemu-img / vdisk), the
# allocated size and the peak memory of both.
#
# usage: bench_convert_qcow2.sh VDISK [QEMU_IMG]
# Exit: 0 whether the targets are met or not; 1 when a conversion fails, its
# output differs from the source (qemu-img compare) or a qcow2 output fails
# qemu-img check; 77 (skip) when a tool is missing.
set -u
bench_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$bench_dir/lib.sh"

bench_convert_init convert-qcow2 "${1:?usage: bench_convert_qcow2.sh VDISK [QEMU_IMG]}" "${2:-qemu-img}"
mib=$(bench_image_mib 1024)
raw=$BENCH_DIR/src.raw
qcow2=$BENCH_DIR/src.qcow2
bench_make_mixed_image "$raw" "$mib"
"$BENCH_QEMU_IMG" convert -f raw -O qcow2 "$raw" "$qcow2" || bench_broken "cannot make the qcow2 source"
sync "$qcow2"
cat "$qcow2" >/dev/null
echo "convert-qcow2: vdisk vs $("$BENCH_QEMU_IMG" --version | head -n 1), ${mib} MiB half-sparse image" \
     "($(bench_mib "$(bench_allocated "$raw")") allocated; as qcow2, by qemu-img:" \
     "$(bench_mib "$(bench_allocated "$qcow2")")) in $BENCH_DIR, page cache warm," \
     "median of $(bench_rounds 5) rounds; $BENCH_CACHE_NOTE"

bench_convert_figure "$raw" raw qcow2 "$raw" raw 1
bench_convert_figure "$qcow2" qcow2 raw "$raw" raw 1
exit 0
