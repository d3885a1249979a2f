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
"$build/bench/bench_raw" || status=1
sh "$bench_dir/bench_convert.sh" "$build/examples/vdisk"
rc=$?
[ "$rc" -eq 0 ] || [ "$rc" -eq 77 ] || status=1
exit "$status"
