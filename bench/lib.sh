# Shared helpers of the shell benchmarks (POSIX sh: Debian runs them with
# dash). Source it:  . "$bench_dir/lib.sh"
#
# Like the C benchmarks, every figure is a ratio measured within one run, the
# two contenders interleaved round by round.

# bench_rounds DEFAULT: timed rounds per figure ($VDISK_BENCH_ROUNDS or DEFAULT).
bench_rounds() {
    echo "${VDISK_BENCH_ROUNDS:-$1}"
}

# bench_image_mib DEFAULT: scratch image size in MiB ($VDISK_BENCH_MIB or DEFAULT).
bench_image_mib() {
    echo "${VDISK_BENCH_MIB:-$1}"
}

# bench_workdir: make the scratch directory $BENCH_DIR under $TMPDIR (or
# /tmp), removed when the script exits. Call it from the main shell.
bench_workdir() {
    BENCH_DIR=$(mktemp -d "${TMPDIR:-/tmp}/vdisk-bench.XXXXXX") || exit 1
    trap 'rm -rf "$BENCH_DIR"' EXIT
    trap 'exit 130' INT TERM
}

# bench_have_time: whether /usr/bin/time (Debian package "time") is there.
bench_have_time() {
    [ -x /usr/bin/time ]
}

# bench_run CMD...: run a command, its output kept in $BENCH_DIR/log. Sets
# BENCH_SECONDS (wall clock) and BENCH_KIB (peak RSS, 0 without
# /usr/bin/time). On failure prints the log and returns 1.
bench_run() {
    _t0=$(date +%s%N)
    if bench_have_time; then
        /usr/bin/time -f %M -o "$BENCH_DIR/rss" "$@" >"$BENCH_DIR/log" 2>&1
    else
        echo 0 >"$BENCH_DIR/rss"
        "$@" >"$BENCH_DIR/log" 2>&1
    fi
    _rc=$?
    _t1=$(date +%s%N)
    if [ "$_rc" -ne 0 ]; then
        echo "FAILED (exit $_rc): $*" >&2
        cat "$BENCH_DIR/log" >&2
        return 1
    fi
    # shellcheck disable=SC2034 # results for the caller
    BENCH_SECONDS=$(awk -v a="$_t0" -v b="$_t1" 'BEGIN { printf "%.6f", (b - a) / 1e9 }')
    # shellcheck disable=SC2034
    BENCH_KIB=$(tail -n 1 "$BENCH_DIR/rss")
}

# bench_median: the median of the numbers on stdin, one per line.
bench_median() {
    sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

# bench_verdict VALUE TARGET: PASS if VALUE >= TARGET, else MISS.
bench_verdict() {
    awk -v v="$1" -v t="$2" 'BEGIN { print (v >= t ? "PASS" : "MISS") }'
}

# bench_fmt FORMAT NUMBER: printf with awk (dash's printf has no floats).
bench_fmt() {
    awk -v f="$1" -v n="$2" 'BEGIN { printf f, n }'
}

# bench_allocated FILE: bytes the file occupies on disk (st_blocks * 512).
bench_allocated() {
    stat -c '%b %B' "$1" | awk '{ print $1 * $2 }'
}

# bench_mib N [UNIT]: N * UNIT (default 1) bytes in MiB, one decimal.
bench_mib() {
    awk -v n="$1" -v u="${2:-1}" 'BEGIN { printf "%.1f MiB", n * u / 1048576 }'
}

# _bench_put IMAGE MIB_INDEX SOURCE: write 1 MiB of SOURCE at that MiB of IMAGE.
_bench_put() {
    dd if="$3" of="$1" bs=1M count=1 seek="$2" conv=notrunc iflag=fullblock status=none
}

# _bench_templates DIR: the 1 MiB text-like and patchy (64 KiB of random data,
# 64 KiB of zeroes written as data, ...) region contents.
_bench_templates() {
    awk 'BEGIN { for (i = 0; i < 20000; i++)
                     printf "%06d the quick brown fox jumps over the lazy dog %d\n", i, i * 7919 % 1000 }' |
        head -c 1048576 >"$1/text"
    head -c 1048576 /dev/urandom >"$1/patchy"
    for _k in 1 3 5 7 9 11 13 15; do
        dd if=/dev/zero of="$1/patchy" bs=64K count=1 seek="$_k" conv=notrunc status=none
    done
}

# bench_make_mixed_image PATH MIB: a raw image of MIB MiB (a multiple of 8)
# cycling through 1 MiB regions of random data, hole, text-like data, hole,
# zeroes written as data, hole, patchy data, hole: half of it holes. The file
# is then flushed (no writeback during the timed runs) and read once (page
# cache warm).
bench_make_mixed_image() {
    _bench_templates "$BENCH_DIR"
    rm -f "$1"
    truncate -s "${2}M" "$1"
    _i=0
    while [ "$_i" -lt "$2" ]; do
        case $((_i % 8)) in
            0) _bench_put "$1" "$_i" /dev/urandom ;;
            2) _bench_put "$1" "$_i" "$BENCH_DIR/text" ;;
            4) _bench_put "$1" "$_i" /dev/zero ;;
            6) _bench_put "$1" "$_i" "$BENCH_DIR/patchy" ;;
        esac
        _i=$((_i + 1))
    done
    sync "$1"
    cat "$1" >/dev/null
}
