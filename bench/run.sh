#!/bin/sh
# Run every benchmark without meson's test runner: bench/run.sh [BUILDDIR]
# (default: build, next to bench/). Builds first. Exits 1 only if a
# benchmark found something functionally broken; PASS/MISS is in the output.
set -u
bench_dir=$(cd "$(dirname "$0")" && pwd)
build=${1:-$bench_dir/../build}

if [ ! -f "$build/build.ninja" ]; then
    echo "$build is not a configured build directory: run 'meson setup $build' first" >&2
    exit 1
fi
ninja -C "$build" >/dev/null || exit 1

status=0
# check RC: a benchmark's exit status; 77 is a skip
check() {
    [ "$1" -eq 0 ] || [ "$1" -eq 77 ] || status=1
}

"$build/bench/bench_raw"
check $?
"$build/bench/bench_threads"
check $?
"$build/bench/bench_threads_write"
check $?
# the qemu-img figures of qcow2-io are skipped without qemu-img
if command -v qemu-img >/dev/null; then
    "$build/bench/bench_qcow2" "$(command -v qemu-img)"
else
    "$build/bench/bench_qcow2"
fi
check $?
# snapshot-cost's qemu-img figure is skipped without qemu-img in PATH
"$build/bench/bench_chain" chain-read
check $?
"$build/bench/bench_chain" snapshot-cost
check $?
sh "$bench_dir/bench_convert.sh" "$build/examples/vdisk"
check $?
sh "$bench_dir/bench_convert_qcow2.sh" "$build/examples/vdisk"
check $?
sh "$bench_dir/bench_check_qcow2.sh" "$build/examples/vdisk"
check $?
sh "$bench_dir/bench_convert_mixed.sh" "$build/examples/vdisk"
check $?
sh "$bench_dir/bench_issue15.sh" "$build/examples/vdisk"
check $?
sh "$bench_dir/bench_luks.sh" "$build/examples/vdisk"
check $?
exit "$status"
