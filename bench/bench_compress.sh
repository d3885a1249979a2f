#!/bin/sh
# compress: issue 18's compression figures. `convert -c` of the 1 GiB image
# in quarters (random data, text, written zeroes, hole) to qcow2 with zlib and
# with zstd, vdisk against `qemu-img convert -c -W` in the same run: median
# time ratio vdisk / qemu-img (target <= 0.80) and output size ratio (target
# <= 1.02). Both outputs must read as the source (qemu-img compare) and pass
# qemu-img check.
#
# usage: bench_compress.sh VDISK [QEMU_IMG]
# Exit: 0 whether the targets are met or not; 1 when something fails; 77
# (skip) when a tool is missing.
set -u
bench_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$bench_dir/lib.sh"

bench_convert_init compress "${1:?usage: bench_compress.sh VDISK [QEMU_IMG]}" "${2:-qemu-img}"
mib=$(bench_image_mib 1024)
raw=$BENCH_DIR/src.raw
bench_make_quarters_image "$raw" "$mib"
cat "$raw" >/dev/null
echo "compress: vdisk vs $("$BENCH_QEMU_IMG" --version | head -n 1), ${mib} MiB image in quarters" \
     "(random, text, written zeroes, hole), page cache warm, median of $(bench_rounds 5) rounds;" \
     "$(nproc) cores; ratio = vdisk time / qemu-img time; $BENCH_CACHE_NOTE"

for codec in zlib zstd; do
    BENCH_QEMU_EXTRA="-W -c -o compression_type=$codec"
    BENCH_VDISK_EXTRA="-c -o compression_type=$codec"
    side_vdisk() {
        # shellcheck disable=SC2086 # option word lists
        bench_run "$BENCH_VDISK" convert $BENCH_VDISK_CACHE $BENCH_VDISK_EXTRA -f raw -O qcow2 \
            "$raw" "$BENCH_DIR/out-vdisk"
    }
    side_qemu() {
        # shellcheck disable=SC2086
        bench_run "$BENCH_QEMU_IMG" convert $BENCH_QEMU_CACHE $BENCH_QEMU_EXTRA -f raw -O qcow2 \
            "$raw" "$BENCH_DIR/out-qemu"
    }
    side_vdisk || bench_broken "vdisk convert -c failed"
    side_qemu || bench_broken "qemu-img convert -c failed"
    for out in "$BENCH_DIR/out-vdisk" "$BENCH_DIR/out-qemu"; do
        "$BENCH_QEMU_IMG" compare -f raw -F qcow2 "$raw" "$out" >/dev/null ||
            bench_broken "$out differs from the source"
        "$BENCH_QEMU_IMG" check -f qcow2 "$out" >/dev/null || bench_broken "$out fails qemu-img check"
    done
    size_ratio=$(awk -v a="$(stat -c %s "$BENCH_DIR/out-vdisk")" -v b="$(stat -c %s "$BENCH_DIR/out-qemu")" \
                 'BEGIN { printf "%.4f", a / b }')
    echo "convert -c $codec output: identical to the source for both (qemu-img compare, check);" \
         "file size vdisk/qemu-img $size_ratio (target <= 1.02) $(bench_verdict 1.02 "$size_ratio")"
    bench_pair "convert -c $codec raw->qcow2 ${mib}M quarters (qemu-img -W)" 0.80 vdisk qemu
done
exit 0
