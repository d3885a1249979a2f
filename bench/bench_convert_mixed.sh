#!/bin/sh
# convert-mixed: `vdisk convert` against `qemu-img convert -W` (out-of-order
# writes, its faster mode) on a 1 GiB image in quarters: random data,
# text-like data, zeroes written as data, and a hole. raw->qcow2,
# qcow2->raw (the qcow2 source made by qemu-img) and raw->raw, page cache
# warm, both writing to the same file system. Prints, per direction, the
# time ratio (qemu-img / vdisk), the allocated size and the peak memory.
#
# usage: bench_convert_mixed.sh VDISK [QEMU_IMG]
# Exit: 0 whether the targets are met or not; 1 when a conversion fails,
# its output differs from the source (qemu-img compare) or a qcow2 output
# fails qemu-img check; 77 (skip) when a tool is missing.
set -u
bench_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$bench_dir/lib.sh"

bench_convert_init convert-mixed "${1:?usage: bench_convert_mixed.sh VDISK [QEMU_IMG]}" "${2:-qemu-img}"
mib=$(bench_image_mib 1024)
raw=$BENCH_DIR/src.raw
qcow2=$BENCH_DIR/src.qcow2
bench_make_quarters_image "$raw" "$mib"
"$BENCH_QEMU_IMG" convert -f raw -O qcow2 "$raw" "$qcow2" || bench_broken "cannot make the qcow2 source"
sync "$qcow2"
cat "$qcow2" >/dev/null
echo "convert-mixed: vdisk vs $("$BENCH_QEMU_IMG" --version | head -n 1) -W, ${mib} MiB image" \
     "in quarters (random, text, written zeroes, hole) in $BENCH_DIR, page cache warm," \
     "median of $(bench_rounds 5) rounds; $BENCH_CACHE_NOTE"

BENCH_QEMU_EXTRA=-W
BENCH_IMAGE_KIND=quarters
bench_convert_figure "$raw" raw qcow2 "$raw" raw 1
bench_convert_figure "$qcow2" qcow2 raw "$raw" raw 1
bench_convert_figure "$raw" raw raw "$raw" raw 0
exit 0
