#!/bin/sh
# shellcheck disable=SC2317 # the side_* functions are called through bench_pair
# luks: issue 18's encryption figures. The 1 GiB image in quarters (random,
# text, written zeroes, hole) as a LUKS qcow2 (aes-256-xts-plain64, QEMU's
# default) made by qemu-img, and as a plain qcow2 made by qemu-img from the
# same raw file (the same clusters allocated). In one run, interleaved:
#   1. `vdisk convert` of the LUKS image to raw against `qemu-img convert -W`
#      of it: time ratio vdisk / qemu-img, target <= 1.00;
#   2. sequential reads of the whole LUKS image through libvdisk against the
#      same reads of the plain image (`vdisk bench -s 1M -d 2`: 1 MiB reads
#      on two threads, the time of the reads alone as vdisk bench reports
#      it): throughput ratio LUKS / plain, target >= 0.70, twice:
#      a. with cache=none (-t none), the reads come from the disk, as a
#         hypervisor's do;
#      b. from a warm page cache, where a plain read is a copy from memory.
#         Printed beside its ceiling: the time of the plain reads over the
#         time libgcrypt's aes-256-xts alone takes (512-byte sectors, two
#         threads: bench_xts) to decrypt the image's data clusters. No
#         reader that decrypts them can do better, even one that never copies;
#   3. (information) `vdisk convert` to raw, LUKS image against plain image.
# Before timing: a LUKS qcow2 made by `vdisk convert` must pass qemu-img
# check and compare identical to the source under qemu-img, and the qemu-img
# image must read as the source through vdisk.
#
# Both LUKS images are made with encrypt.iter-time=10: opening one runs
# PBKDF2 for about 10 ms instead of QEMU's default 2 s, which would swamp
# the reads (both tools run the same iteration count, read from the header).
#
# usage: bench_luks.sh VDISK [QEMU_IMG [BENCH_XTS]]
# Exit: 0 whether the targets are met or not; 1 when something fails; 77
# (skip) when a tool is missing.
set -u
bench_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$bench_dir/lib.sh"

# qemu_luks CMD...: run a qemu-img command that makes a LUKS image, again
# while it fails with "Unable to get accurate CPU usage" (QEMU's PBKDF2
# timing reads 0 CPU time on a loaded machine); then show its stderr.
qemu_luks() {
    _try=0
    while :; do
        "$@" 2>"$BENCH_DIR/tool.err" && return 0
        _rc=$?
        _try=$((_try + 1))
        if [ "$_try" -ge 30 ] || ! grep -q "Unable to get accurate CPU usage" "$BENCH_DIR/tool.err"; then
            break
        fi
    done
    cat "$BENCH_DIR/tool.err" >&2
    return "$_rc"
}

bench_convert_init luks "${1:?usage: bench_luks.sh VDISK [QEMU_IMG]}" "${2:-qemu-img}"
mib=$(bench_image_mib 1024)
raw=$BENCH_DIR/src.raw
luks=$BENCH_DIR/luks.qcow2
plain=$BENCH_DIR/plain.qcow2
secret=$BENCH_DIR/passphrase
printf 'vdisk benchmark passphrase' >"$secret"
object="--object secret,id=s0,file=$secret"
luks_opts="driver=qcow2,file.filename=$luks,encrypt.key-secret=s0"
create_opts="encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10"

bench_make_quarters_image "$raw" "$mib"
# shellcheck disable=SC2086 # $object is two words
qemu_luks "$BENCH_QEMU_IMG" convert $object -f raw -O qcow2 -o "$create_opts" "$raw" "$luks" ||
    bench_broken "qemu-img cannot make the LUKS qcow2"
"$BENCH_QEMU_IMG" convert -f raw -O qcow2 "$raw" "$plain" || bench_broken "qemu-img cannot make the plain qcow2"
sync "$luks" "$plain"
cat "$luks" "$plain" >/dev/null

# shellcheck disable=SC2086
"$BENCH_VDISK" convert $object -f raw -O qcow2 -o "$create_opts" "$raw" "$BENCH_DIR/vdisk.qcow2" ||
    bench_broken "vdisk cannot make a LUKS qcow2"
# shellcheck disable=SC2086
"$BENCH_QEMU_IMG" check $object --image-opts "driver=qcow2,file.filename=$BENCH_DIR/vdisk.qcow2,encrypt.key-secret=s0" \
    >/dev/null || bench_broken "the LUKS qcow2 vdisk made fails qemu-img check"
# shellcheck disable=SC2086
"$BENCH_QEMU_IMG" compare $object --image-opts "driver=raw,file.filename=$raw" \
    "driver=qcow2,file.filename=$BENCH_DIR/vdisk.qcow2,encrypt.key-secret=s0" >/dev/null ||
    bench_broken "the LUKS qcow2 vdisk made differs from the source under qemu-img"
rm -f "$BENCH_DIR/vdisk.qcow2"
# shellcheck disable=SC2086
"$BENCH_VDISK" convert $object --image-opts -O raw "$luks_opts" "$BENCH_DIR/out.raw" ||
    bench_broken "vdisk cannot read qemu-img's LUKS qcow2"
cmp -s "$raw" "$BENCH_DIR/out.raw" || bench_broken "qemu-img's LUKS qcow2 reads wrong through vdisk"
rm -f "$BENCH_DIR/out.raw"

aes=no
grep -qw aes /proc/cpuinfo && aes=yes
echo "luks: vdisk vs $("$BENCH_QEMU_IMG" --version | head -n 1), ${mib} MiB image in quarters" \
     "(random, text, written zeroes, hole) as aes-256-xts-plain64 LUKS qcow2 (qemu-img, iter-time 10 ms)" \
     "and plain qcow2, page cache warm, median of $(bench_rounds 5) rounds; $(nproc) cores, AES-NI: $aes;" \
     "$BENCH_CACHE_NOTE; checked: a vdisk-made LUKS qcow2 passes qemu-img check and compare, qemu-img's reads as the source"

# 1. the whole image decrypted into a raw file, by each tool
side_vdisk() {
    # shellcheck disable=SC2086
    bench_run "$BENCH_VDISK" convert $BENCH_VDISK_CACHE $object --image-opts -O raw "$luks_opts" "$BENCH_DIR/out.raw" || return 1
    rm -f "$BENCH_DIR/out.raw"
}
side_qemu() {
    # shellcheck disable=SC2086
    bench_run "$BENCH_QEMU_IMG" convert $BENCH_QEMU_CACHE -W $object --image-opts -O raw "$luks_opts" "$BENCH_DIR/out.raw" || return 1
    rm -f "$BENCH_DIR/out.raw"
}
bench_pair "luks qcow2->raw convert ${mib}M quarters (qemu-img -W)" 1.00 vdisk qemu

# 2. reads alone: vdisk bench's own time of its read loop (opening and the
# key derivation excluded), one pass over the image
reads=$((mib))
read_cache=none
_bench_reads() {
    # shellcheck disable=SC2086
    bench_run "$BENCH_VDISK" bench -c "$reads" -s 1M -d 2 -t "$read_cache" "$@" || return 1
    BENCH_SECONDS=$(sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p' "$BENCH_DIR/log")
    [ -n "$BENCH_SECONDS" ] || { cat "$BENCH_DIR/log" >&2; return 1; }
}
# shellcheck disable=SC2086
side_luks() { _bench_reads $object --image-opts "$luks_opts"; }
side_plain() { _bench_reads -f qcow2 "$plain"; }
_read_figure() { # _read_figure TITLE: the pair, and the throughput ratio against the target
    bench_pair "$1, time luks vs plain qcow2" - luks plain
    throughput=$(awk -v r="$BENCH_PAIR_RATIO" 'BEGIN { print 1 / r }')
    echo "$1: throughput luks/plain $(bench_ratio "$throughput" 0.70) (target >= 0.70)" \
         "$(bench_verdict "$throughput" 0.70)"
}
_read_figure "luks seq-read 1M x2 threads cache=none ${mib}M quarters"
read_cache=writeback
cat "$luks" "$plain" >/dev/null
_read_figure "luks seq-read 1M x2 threads warm page cache ${mib}M quarters"
# the ceiling: only the data clusters are decrypted (holes and zero clusters are not)
data_bytes=$("$BENCH_QEMU_IMG" map --output=json -f qcow2 "$plain" |
    awk '/"zero": false/ && /"data": true/ { sub(/.*"length": /, ""); sub(/,.*/, ""); n += $0 } END { print n + 0 }')
if [ -n "${3:-}" ] && xts=$("$3" 2 | awk '$1 == "xts" { print $3 }') && [ -n "$xts" ]; then
    bench_median <"$BENCH_DIR/plain.sec" | awk -v x="$xts" -v d="$data_bytes" -v b="$((mib * 1048576))" '{
        ceiling = $1 / (d / x)
        printf "    beside its ceiling: aes-256-xts alone (libgcrypt, 512-byte sectors, 2 threads) %.2f GB/s " \
               "decrypts the image'"'"'s %.0f MiB of data in %.3f s, plain reads take %.3f s (%.2f GB/s): at most %.2f\n",
               x / 1e9, d / 1048576, d / x, $1, b / $1 / 1e9, ceiling < 1 ? ceiling : 1 }'
fi

# 3. the same convert as 1, of the plain image
side_plain_convert() {
    # shellcheck disable=SC2086
    bench_run "$BENCH_VDISK" convert $BENCH_VDISK_CACHE -f qcow2 -O raw "$plain" "$BENCH_DIR/out.raw" || return 1
    rm -f "$BENCH_DIR/out.raw"
}
side_luks_convert() { side_vdisk; }
bench_pair "vdisk qcow2->raw convert ${mib}M quarters, time luks vs plain" - luks_convert plain_convert
exit 0
