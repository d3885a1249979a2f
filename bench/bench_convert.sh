#!/bin/sh
# convert-raw: `vdisk convert -f raw -O raw` against `qemu-img convert -f raw
# -O raw` on a half-sparse image of mixed content (random, text-like, zeroes
# written as data, patchy, holes), page cache warm, both writing to the same
# file system. Prints the time ratio (qemu-img / vdisk), the allocated size
# of both outputs and, for information, their peak memory.
#
# usage: bench_convert.sh VDISK [QEMU_IMG]
# Exit: 0 whether the targets are met or not; 1 when a conversion fails or
# its output differs from the source (qemu-img compare); 77 (skip) when a
# tool is missing.
set -u
bench_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$bench_dir/lib.sh"

vdisk=${1:?usage: bench_convert.sh VDISK [QEMU_IMG]}
qemu_img=${2:-qemu-img}
src_fmt=raw
dst_fmt=raw
name=convert-$src_fmt
title="$src_fmt->$dst_fmt convert"
rounds=$(bench_rounds 5)
mib=$(bench_image_mib 1024)

skip() {
    echo "$name: SKIP: $*"
    exit 77
}

broken() {
    echo "$name: BROKEN: $*" >&2
    exit 1
}

command -v "$vdisk" >/dev/null || skip "no vdisk CLI at $vdisk"
command -v "$qemu_img" >/dev/null || skip "no qemu-img ($qemu_img)"

# convert TOOL OUT: convert the source with TOOL (vdisk or qemu).
convert() {
    case $1 in
        vdisk) _bin=$vdisk ;;
        qemu) _bin=$qemu_img ;;
    esac
    bench_run "$_bin" convert -f "$src_fmt" -O "$dst_fmt" "$src" "$2" || broken "$1 convert failed"
}

# check TOOL: an untimed conversion (the warm-up) that must read back
# identical to the source; prints the bytes its output occupies, once flushed
# (unflushed delayed-allocation files do not count their extent tree yet).
check() {
    _out=$BENCH_DIR/check-$1
    convert "$1" "$_out"
    if ! "$qemu_img" compare -f "$src_fmt" -F "$dst_fmt" "$src" "$_out" >"$BENCH_DIR/compare" 2>&1; then
        cat "$BENCH_DIR/compare" >&2
        broken "the $1 output differs from the source (qemu-img compare)"
    fi
    sync "$_out"
    bench_allocated "$_out"
    rm -f "$_out"
}

# timed TOOL: one timed conversion, its seconds and peak KiB appended to
# $BENCH_DIR/TOOL.sec and TOOL.rss; the output is deleted.
timed() {
    convert "$1" "$BENCH_DIR/out"
    rm -f "$BENCH_DIR/out"
    echo "$BENCH_SECONDS" >>"$BENCH_DIR/$1.sec"
    echo "$BENCH_KIB" >>"$BENCH_DIR/$1.rss"
}

# median FILE: the median of the numbers in FILE.
median() {
    bench_median <"$1"
}

bench_workdir
src=$BENCH_DIR/src.raw
bench_make_mixed_image "$src" "$mib"
echo "$name: vdisk vs $("$qemu_img" --version | head -n 1), ${mib} MiB half-sparse image" \
     "($(bench_mib "$(bench_allocated "$src")") allocated) in $BENCH_DIR, page cache warm," \
     "median of $rounds rounds"

vdisk_alloc=$(check vdisk) || exit 1
qemu_alloc=$(check qemu) || exit 1
echo "$title output: identical to the source for vdisk and qemu-img (qemu-img compare)"

r=1
while [ "$r" -le "$rounds" ]; do
    if [ $((r % 2)) -eq 1 ]; then
        timed vdisk
        timed qemu
    else
        timed qemu
        timed vdisk
    fi
    r=$((r + 1))
done

ratio=$(paste "$BENCH_DIR/qemu.sec" "$BENCH_DIR/vdisk.sec" | awk '{ print $1 / $2 }' | bench_median)
echo "$title ${mib}M half-sparse:" \
     "vdisk $(bench_fmt %.3f "$(median "$BENCH_DIR/vdisk.sec")") s," \
     "qemu-img $(bench_fmt %.3f "$(median "$BENCH_DIR/qemu.sec")") s," \
     "ratio $(bench_fmt %.2f "$ratio") (target >= 1.00) $(bench_verdict "$ratio" 1)"
echo "$title allocated: vdisk $vdisk_alloc B ($(bench_mib "$vdisk_alloc"))," \
     "qemu-img $qemu_alloc B ($(bench_mib "$qemu_alloc"))" \
     "(target vdisk <= qemu-img) $(bench_verdict "$qemu_alloc" "$vdisk_alloc")"
if bench_have_time; then
    echo "$title peak RSS: vdisk $(bench_mib "$(median "$BENCH_DIR/vdisk.rss")" 1024)," \
         "qemu-img $(bench_mib "$(median "$BENCH_DIR/qemu.rss")" 1024) (information)"
else
    echo "$title peak RSS: n/a (/usr/bin/time is missing: install the Debian package 'time')"
fi
exit 0
