#!/bin/sh
# check-qcow2: `vdisk check` against `qemu-img check` on a 128 GiB qcow2 image
# of 512-byte clusters with 120000 single-cluster writes scattered over it
# (almost every one in its own L2 table: some 120000 L2 tables of 64 entries
# under a 32 MiB L1 table). Check cost is then metadata-cache misses, which
# is what this figure watches. make_scattered_qcow2.py writes the image
# (qemu-io needs minutes per few thousand such writes); both tools must find
# it clean. Page cache warm. Prints the time ratio (qemu-img / vdisk) and the
# peak memory of both.
#
# usage: bench_check_qcow2.sh VDISK [QEMU_IMG [PYTHON]]
# Exit: 0 whether the target is met or not; 1 when a check fails or the
# verdicts differ; 77 (skip) when a tool is missing.
set -u
bench_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$bench_dir/lib.sh"

BENCH_NAME=check-qcow2
vdisk=${1:?usage: bench_check_qcow2.sh VDISK [QEMU_IMG [PYTHON]]}
qemu_img=${2:-qemu-img}
python=${3:-/usr/bin/python3}
writes=${VDISK_BENCH_CHECK_WRITES:-120000}
for tool in "$vdisk" "$qemu_img" "$python"; do
    command -v "$tool" >/dev/null || bench_skip "no $tool"
done
bench_workdir
image=$BENCH_DIR/scattered.qcow2

"$python" "$bench_dir/make_scattered_qcow2.py" "$image" 128 "$writes" || bench_broken "cannot write the image"
sync "$image"
cat "$image" >/dev/null

# the untimed run: both must find the image clean
bench_run "$vdisk" check "$image" || bench_broken "vdisk check fails on a clean image"
bench_run "$qemu_img" check "$image" || bench_broken "qemu-img check fails on a clean image"
echo "check-qcow2: vdisk vs $("$qemu_img" --version | head -n 1), 128 GiB image of 512-byte clusters," \
     "$writes scattered clusters written ($(bench_mib "$(bench_allocated "$image")") file)," \
     "page cache warm, median of $(bench_rounds 5) rounds; both find it clean"

rm -f "$BENCH_DIR/vdisk.sec" "$BENCH_DIR/qemu.sec" "$BENCH_DIR/vdisk.rss" "$BENCH_DIR/qemu.rss"
# timed: record TOOL CMD...
record() {
    _tool=$1
    shift
    bench_run "$@" check "$image" || bench_broken "$_tool check failed"
    echo "$BENCH_SECONDS" >>"$BENCH_DIR/$_tool.sec"
    echo "$BENCH_KIB" >>"$BENCH_DIR/$_tool.rss"
}
round=1
while [ "$round" -le "$(bench_rounds 5)" ]; do
    if [ $((round % 2)) -eq 1 ]; then
        record vdisk "$vdisk"
        record qemu "$qemu_img"
    else
        record qemu "$qemu_img"
        record vdisk "$vdisk"
    fi
    round=$((round + 1))
done

ratio=$(paste "$BENCH_DIR/qemu.sec" "$BENCH_DIR/vdisk.sec" | awk '{ print $1 / $2 }' | bench_median)
echo "check 128G 512-byte clusters, $writes scattered:" \
     "vdisk $(bench_fmt %.3f "$(bench_median <"$BENCH_DIR/vdisk.sec")") s," \
     "qemu-img $(bench_fmt %.3f "$(bench_median <"$BENCH_DIR/qemu.sec")") s," \
     "ratio $(bench_ratio "$ratio" 1) (target >= 1.00) $(bench_verdict "$ratio" 1)"
if bench_have_time; then
    echo "check peak RSS: vdisk $(bench_mib "$(bench_median <"$BENCH_DIR/vdisk.rss")" 1024)," \
         "qemu-img $(bench_mib "$(bench_median <"$BENCH_DIR/qemu.rss")" 1024) (information)"
fi
exit 0
