#!/bin/sh
# issue15: issue 15's performance figures, libvdisk (the vdisk CLI) against
# qemu-img in the same run, page cache warm, each figure a median time ratio
# vdisk / qemu-img (target <= 0.80) and both peak RSS (target vdisk <=
# qemu-img):
#   * on a 1 GiB image in quarters (random data, text, written zeroes, hole;
#     convert-mixed's image): convert raw->qcow2, qcow2->raw, raw->raw, an
#     8-level overlay chain flattened to qcow2 (qemu-img with -W), compare of
#     the raw and the qcow2 copy, measure of the qcow2 copy;
#   * map of a 64 GiB qcow2 with 2048 scattered 64 KiB clusters;
#   * info, map, measure and check of a 16 TiB qcow2 with 300 scattered 64 KiB
#     clusters; and vdisk on it against a 1 TiB image with the same writes
#     (about 1 when the time follows the metadata, 16 if the virtual size).
# Converted images must match their source (qemu-img compare; qcow2 ones
# pass qemu-img check); compare, map and measure must print the same as
# qemu-img.
#
# usage: bench_issue15.sh VDISK [QEMU_IMG [PYTHON]]
# Exit: 0 whether the targets are met or not; 1 when something fails or an
# output differs; 77 (skip) when a tool is missing.
set -u
bench_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$bench_dir/lib.sh"

python=${3:-/usr/bin/python3}
bench_convert_init issue15 "${1:?usage: bench_issue15.sh VDISK [QEMU_IMG [PYTHON]]}" "${2:-qemu-img}"
vdisk=$BENCH_VDISK
qemu_img=$BENCH_QEMU_IMG
# qemu-io writes the overlays; it comes with qemu-img (Debian's qemu-utils)
qemu_io=$(dirname "$(command -v "$qemu_img")")/qemu-io
for tool in "$python" "$qemu_io"; do
    command -v "$tool" >/dev/null || bench_skip "no $tool"
done
mib=$(bench_image_mib 1024)
raw=$BENCH_DIR/src.raw
qcow2=$BENCH_DIR/src.qcow2
bench_make_quarters_image "$raw" "$mib"
"$qemu_img" convert -f raw -O qcow2 "$raw" "$qcow2" || bench_broken "cannot make the qcow2 source"

# the chain: $qcow2 at the bottom, 7 overlays each writing 8 MiB of its own
below=$qcow2
level=2
while [ "$level" -le 8 ]; do
    top=$BENCH_DIR/level$level.qcow2
    "$qemu_img" create -q -f qcow2 -b "$below" -F qcow2 "$top" &&
        "$qemu_io" -f qcow2 -c "write -P $level $(((level - 1) * mib / 8))M 8M" "$top" >/dev/null ||
        bench_broken "cannot make the overlay chain"
    below=$top
    level=$((level + 1))
done
chain_top=$top
python_image() { # PATH GIB WRITES: make_scattered_qcow2.py, 64 KiB clusters
    "$python" "$bench_dir/make_scattered_qcow2.py" "$1" "$2" "$3" 7 16 ||
        bench_broken "cannot write $1"
}
map64g=$BENCH_DIR/map64g.qcow2
python_image "$map64g" 64 2048
big=$BENCH_DIR/16t.qcow2
python_image "$big" 16384 300
small=$BENCH_DIR/1t.qcow2
python_image "$small" 1024 300
sync "$BENCH_DIR"/*
cat "$BENCH_DIR"/*.qcow2 >/dev/null
echo "issue15: vdisk vs $("$qemu_img" --version | head -n 1), ${mib} MiB image in quarters" \
     "(random, text, written zeroes, hole) in $BENCH_DIR, page cache warm," \
     "median of $(bench_rounds 5) rounds; ratio = vdisk time / qemu-img time; $BENCH_CACHE_NOTE"

# convert_figure TITLE SRC SRC_FMT DST_FMT: the output of both tools must read
# as SRC (and pass qemu-img check as qcow2), then the timed figure
convert_figure() {
    _bench_convert_check vdisk "$2" "$3" "$4" "$2" "$3" >/dev/null || exit 1
    _bench_convert_check qemu "$2" "$3" "$4" "$2" "$3" >/dev/null || exit 1
    conv_src=$2 conv_sfmt=$3 conv_dfmt=$4
    bench_pair "$1 (qemu-img -W)" 0.80 vdisk qemu
}
side_convert() { # TOOL
    _bench_convert "$1" "$conv_src" "$conv_sfmt" "$conv_dfmt" "$BENCH_DIR/out" &&
        rm -f "$BENCH_DIR/out"
}
BENCH_QEMU_EXTRA=-W
side_vdisk() { side_convert vdisk; }
side_qemu() { side_convert qemu; }
convert_figure "convert raw->qcow2 ${mib}M quarters" "$raw" raw qcow2
convert_figure "convert qcow2->raw ${mib}M quarters" "$qcow2" qcow2 raw
convert_figure "convert raw->raw ${mib}M quarters" "$raw" raw raw
convert_figure "convert 8-level qcow2 chain flattened to qcow2" "$chain_top" qcow2 qcow2
echo "converted images: identical to their source for vdisk and qemu-img (qemu-img compare; qcow2: qemu-img check)"

# command_figure TITLE ARGS...: the same command line for both tools, which
# must print the same thing; then the timed figure
command_figure() {
    _title=$1
    shift
    cmd_args=$*
    bench_same_output "$_title" "$vdisk $cmd_args" "$qemu_img $cmd_args"
    bench_pair "$_title" 0.80 vdisk qemu
}
# shellcheck disable=SC2086 # cmd_args is a word list
side_vdisk() { bench_run "$vdisk" $cmd_args; }
# shellcheck disable=SC2086
side_qemu() { bench_run "$qemu_img" $cmd_args; }
command_figure "compare ${mib}M quarters, raw vs its qcow2 copy" compare -f raw -F qcow2 "$raw" "$qcow2"
command_figure "measure ${mib}M quarters qcow2" measure -f qcow2 -O qcow2 "$qcow2"
command_figure "map 64G qcow2, 2048 scattered 64K clusters" map -f qcow2 --output=json "$map64g"
command_figure "map 16T qcow2, 300 scattered 64K clusters" map -f qcow2 --output=json "$big"
command_figure "measure 16T qcow2, 300 scattered 64K clusters" measure -f qcow2 -O qcow2 "$big"
echo "compare, measure, map: vdisk prints what qemu-img prints"

# info and check print the same figures but not always the same text: timed only
timed_figure() {
    _title=$1
    shift
    cmd_args=$*
    bench_pair "$_title" 0.80 vdisk qemu
}
timed_figure "info 16T qcow2, 300 scattered 64K clusters" info -f qcow2 "$big"
timed_figure "check 16T qcow2, 300 scattered 64K clusters" check -f qcow2 "$big"

# vdisk on 16 TiB against 1 TiB, the same 300 writes: time follows the metadata
# shellcheck disable=SC2086
side_16T() { bench_run "$vdisk" $cmd_args -f qcow2 "$big"; }
# shellcheck disable=SC2086
side_1T() { bench_run "$vdisk" $cmd_args -f qcow2 "$small"; }
for cmd_args in info check "map --output=json" "measure -O qcow2"; do
    bench_pair "vdisk ${cmd_args%% *} 16T vs 1T, 300 scattered 64K clusters each" - 16T 1T
done
exit 0
