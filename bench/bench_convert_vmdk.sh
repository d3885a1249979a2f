#!/bin/sh
# convert-vmdk: issue 19's figures. `vdisk convert` against `qemu-img convert
# -W` on the 1 GiB image in quarters (random data, text, written zeroes, a
# hole): raw->vmdk (monolithicSparse), vmdk->qcow2 (the vmdk source made by
# qemu-img) and raw->vmdk streamOptimized. Median time ratio vdisk /
# qemu-img (target <= 0.80); both outputs must read as the source (qemu-img
# compare) and pass qemu-img check.
#
# usage: bench_convert_vmdk.sh VDISK [QEMU_IMG]
# Exit: 0 whether the targets are met or not; 1 when something fails; 77
# (skip) when a tool is missing.
set -u
bench_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$bench_dir/lib.sh"

bench_convert_init convert-vmdk "${1:?usage: bench_convert_vmdk.sh VDISK [QEMU_IMG]}" "${2:-qemu-img}"
mib=$(bench_image_mib 1024)
raw=$BENCH_DIR/src.raw
vmdk=$BENCH_DIR/src.vmdk
bench_make_quarters_image "$raw" "$mib"
"$BENCH_QEMU_IMG" convert -f raw -O vmdk "$raw" "$vmdk" || bench_broken "cannot make the vmdk source"
cat "$raw" "$vmdk" >/dev/null
echo "convert-vmdk: vdisk vs $("$BENCH_QEMU_IMG" --version | head -n 1) -W, ${mib} MiB image in" \
     "quarters (random, text, written zeroes, hole), page cache warm, median of $(bench_rounds 5)" \
     "rounds; ratio = vdisk time / qemu-img time; $BENCH_CACHE_NOTE"

# figure SRC SRC_FMT DST_FMT OPTIONS TITLE
figure() {
    FIG_SRC=$1 FIG_SFMT=$2 FIG_DFMT=$3 FIG_OPTS=$4
    side_vdisk() {
        # shellcheck disable=SC2086 # option word lists
        bench_run "$BENCH_VDISK" convert $BENCH_VDISK_CACHE $FIG_OPTS -f "$FIG_SFMT" -O "$FIG_DFMT" \
            "$FIG_SRC" "$BENCH_DIR/out-vdisk"
    }
    side_qemu() {
        # shellcheck disable=SC2086
        bench_run "$BENCH_QEMU_IMG" convert $BENCH_QEMU_CACHE -W $FIG_OPTS -f "$FIG_SFMT" \
            -O "$FIG_DFMT" "$FIG_SRC" "$BENCH_DIR/out-qemu"
    }
    side_vdisk || bench_broken "$5: vdisk convert failed"
    side_qemu || bench_broken "$5: qemu-img convert failed"
    for out in "$BENCH_DIR/out-vdisk" "$BENCH_DIR/out-qemu"; do
        "$BENCH_QEMU_IMG" compare -f raw -F "$FIG_DFMT" "$raw" "$out" >/dev/null ||
            bench_broken "$5: $out differs from the source"
        "$BENCH_QEMU_IMG" check -f "$FIG_DFMT" "$out" >/dev/null || bench_broken "$5: $out fails qemu-img check"
    done
    echo "$5 output: identical to the source for both (qemu-img compare, check);" \
         "allocated vdisk $(bench_mib "$(bench_allocated "$BENCH_DIR/out-vdisk")")," \
         "qemu-img $(bench_mib "$(bench_allocated "$BENCH_DIR/out-qemu")")"
    bench_pair "$5 ${mib}M quarters (qemu-img -W)" 0.80 vdisk qemu
}

figure "$raw" raw vmdk "" "raw->vmdk convert"
figure "$vmdk" vmdk qcow2 "" "vmdk->qcow2 convert"
figure "$raw" raw vmdk "-o subformat=streamOptimized" "raw->vmdk streamOptimized convert"
exit 0
