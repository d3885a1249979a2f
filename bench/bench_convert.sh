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

bench_convert_init convert-raw "${1:?usage: bench_convert.sh VDISK [QEMU_IMG]}" "${2:-qemu-img}"
mib=$(bench_image_mib 1024)
src=$BENCH_DIR/src.raw
bench_make_mixed_image "$src" "$mib"
echo "convert-raw: vdisk vs $("$BENCH_QEMU_IMG" --version | head -n 1), ${mib} MiB half-sparse image" \
     "($(bench_mib "$(bench_allocated "$src")") allocated) in $BENCH_DIR, page cache warm," \
     "median of $(bench_rounds 5) rounds; $BENCH_CACHE_NOTE"

bench_convert_figure "$src" raw raw "$src" raw 0
exit 0
