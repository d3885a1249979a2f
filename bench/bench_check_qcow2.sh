#!/bin/sh
# check-qcow2: `vdisk check` against `qemu-img check` on a 128 GiB qcow2 image
# of 512-byte clusters with 120000 single-cluster writes scattered over it
# (almost every one in its own L2 table: some 120000 L2 tables of 64 entries
# under a 32 MiB L1 table). Check cost is then metadata-cache misses, which
# is what this figure watches. make_scattered_qcow2.py writes the image
# (qemu-io needs minutes per few thousand such writes); both tools must find
# it clean. Page cache warm. Prints the time ratio (vdisk / qemu-img) and the
# peak memory of both (bench_pair).
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

echo "check-qcow2: vdisk vs $("$qemu_img" --version | head -n 1), 128 GiB image of 512-byte clusters," \
     "$writes scattered clusters written ($(bench_mib "$(bench_allocated "$image")") file)," \
     "page cache warm, median of $(bench_rounds 5) rounds; both must find it clean"

side_vdisk() { bench_run "$vdisk" check "$image"; }
side_qemu() { bench_run "$qemu_img" check "$image"; }
bench_pair "check 128G 512-byte clusters, $writes scattered" 1 vdisk qemu
