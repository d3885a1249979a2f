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
# BENCH_SECONDS (wall clock), BENCH_KIB (peak RSS) and BENCH_CPU (user +
# system CPU seconds, all threads), each 0 without /usr/bin/time. On failure
# prints the log and returns 1.
bench_run() {
    _t0=$(date +%s%N)
    if bench_have_time; then
        /usr/bin/time -f '%M %U %S' -o "$BENCH_DIR/rss" "$@" >"$BENCH_DIR/log" 2>&1
    else
        echo 0 0 0 >"$BENCH_DIR/rss"
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
    BENCH_KIB=$(tail -n 1 "$BENCH_DIR/rss" | awk '{ print $1 }')
    # shellcheck disable=SC2034
    BENCH_CPU=$(tail -n 1 "$BENCH_DIR/rss" | awk '{ printf "%.2f", $2 + $3 }')
}

# bench_median: the median of the numbers on stdin, one per line.
bench_median() {
    sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

# bench_verdict VALUE TARGET: PASS if VALUE >= TARGET, else MISS.
bench_verdict() {
    awk -v v="$1" -v t="$2" 'BEGIN { print (v >= t ? "PASS" : "MISS") }'
}

# bench_ratio RATIO TARGET: RATIO with two decimals, or three where two would
# round a MISS up to the target.
bench_ratio() {
    awk -v r="$1" -v t="$2" 'BEGIN { s = sprintf("%.2f", r); if (r < t && s + 0 >= t) s = sprintf("%.3f", r); print s }'
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

# bench_make_quarters_image PATH MIB: a raw image of MIB MiB (a multiple of
# 4) in quarters: random data, text-like data, zeroes written as data, and
# a hole. Flushed and read once, as bench_make_mixed_image.
bench_make_quarters_image() {
    _bench_templates "$BENCH_DIR"
    _q=$(($2 / 4))
    rm -f "$1"
    truncate -s "${2}M" "$1"
    head -c "$((_q * 1048576))" /dev/urandom |
        dd of="$1" bs=1M conv=notrunc iflag=fullblock status=none
    _i=0
    while [ "$_i" -lt "$_q" ]; do
        _bench_put "$1" "$((_q + _i))" "$BENCH_DIR/text"
        _i=$((_i + 1))
    done
    dd if=/dev/zero of="$1" bs=1M count="$_q" seek="$((2 * _q))" conv=notrunc status=none
    sync "$1"
    cat "$1" >/dev/null
}

# ------------------------------------------------------------------ convert
#
# A convert benchmark:
#     bench_convert_init NAME VDISK QEMU_IMG
#     ...make the source images in $BENCH_DIR...
#     bench_convert_figure SRC SRC_FMT DST_FMT REF REF_FMT RSS_TARGET
# Each figure: one untimed conversion per tool, whose output must read as REF
# (qemu-img compare; qcow2 output must also pass qemu-img check), then
# $(bench_rounds 5) timed rounds, interleaved, and the figure lines.

# bench_skip MESSAGE: exit 77 (meson's skip).
bench_skip() {
    echo "$BENCH_NAME: SKIP: $*"
    exit 77
}

# bench_broken MESSAGE: exit 1, something is functionally wrong.
bench_broken() {
    echo "$BENCH_NAME: BROKEN: $*" >&2
    exit 1
}

# bench_convert_init NAME VDISK QEMU_IMG: skip when a tool is missing, make
# $BENCH_DIR, and choose the destination cache modes:
#
# qemu-img convert writes its destination with cache=unsafe by default (no
# sync at the end). A vdisk with -t does the same by default
# (VD_OPEN_NO_FLUSH), and both tools then run with their defaults; an older
# vdisk syncs its output when it closes it, so qemu-img then runs with
# -t writeback, which syncs too. $VDISK_BENCH_CACHE=MODE passes -t MODE to
# both instead (it needs a vdisk with -t).
bench_convert_init() {
    BENCH_NAME=$1
    BENCH_VDISK=$2
    BENCH_QEMU_IMG=$3
    command -v "$BENCH_VDISK" >/dev/null || bench_skip "no vdisk CLI at $BENCH_VDISK"
    command -v "$BENCH_QEMU_IMG" >/dev/null || bench_skip "no qemu-img ($BENCH_QEMU_IMG)"
    BENCH_VDISK_CACHE=
    BENCH_QEMU_CACHE=
    # shellcheck disable=SC2034 # BENCH_CACHE_NOTE is for the caller's header line
    if "$BENCH_VDISK" convert --help 2>&1 | grep -q -- '^ *-t '; then
        if [ -n "${VDISK_BENCH_CACHE:-}" ]; then
            BENCH_VDISK_CACHE="-t $VDISK_BENCH_CACHE"
            BENCH_QEMU_CACHE="-t $VDISK_BENCH_CACHE"
            BENCH_CACHE_NOTE="destination cache: -t $VDISK_BENCH_CACHE for both"
        else
            BENCH_CACHE_NOTE="destination cache: both defaults (unsafe, no sync)"
        fi
    else
        [ -z "${VDISK_BENCH_CACHE:-}" ] ||
            bench_skip "VDISK_BENCH_CACHE is set but this vdisk convert has no -t"
        BENCH_QEMU_CACHE="-t writeback"
        BENCH_CACHE_NOTE="destination cache: this vdisk has no -t and syncs its output, so qemu-img runs with -t writeback (syncs too)"
    fi
    bench_workdir
}

# _bench_convert TOOL SRC SRC_FMT DST_FMT OUT: one conversion with TOOL
# (vdisk or qemu), timed by bench_run; qemu-img also gets $BENCH_QEMU_EXTRA
# (such as -W).
_bench_convert() {
    case $1 in
        vdisk) set -- "$BENCH_VDISK" "$BENCH_VDISK_CACHE" "$2" "$3" "$4" "$5" ;;
        qemu) set -- "$BENCH_QEMU_IMG" "$BENCH_QEMU_CACHE ${BENCH_QEMU_EXTRA:-}" "$2" "$3" "$4" "$5" ;;
    esac
    # shellcheck disable=SC2086 # the cache option is empty or two words
    bench_run "$1" convert $2 -f "$4" -O "$5" "$3" "$6"
}

# _bench_convert_check TOOL SRC SRC_FMT DST_FMT REF REF_FMT: the untimed
# conversion, whose output must read as REF and, as qcow2, pass qemu-img
# check; prints the bytes the output occupies once flushed (unflushed
# delayed-allocation files do not count their extent tree yet).
_bench_convert_check() {
    _out=$BENCH_DIR/check-$1
    _bench_convert "$1" "$2" "$3" "$4" "$_out" || bench_broken "$1 convert failed"
    if ! "$BENCH_QEMU_IMG" compare -f "$6" -F "$4" "$5" "$_out" >"$BENCH_DIR/compare" 2>&1; then
        cat "$BENCH_DIR/compare" >&2
        bench_broken "the $1 $3->$4 output differs from the source (qemu-img compare)"
    fi
    if [ "$4" = qcow2 ] && ! "$BENCH_QEMU_IMG" check -f qcow2 "$_out" >"$BENCH_DIR/compare" 2>&1; then
        cat "$BENCH_DIR/compare" >&2
        bench_broken "the $1 $3->$4 output fails qemu-img check"
    fi
    sync "$_out"
    bench_allocated "$_out"
    rm -f "$_out"
}

# _bench_convert_timed TOOL SRC SRC_FMT DST_FMT: one timed conversion, its
# seconds and peak KiB appended to $BENCH_DIR/TOOL.sec and TOOL.rss; the
# output is deleted.
_bench_convert_timed() {
    _bench_convert "$1" "$2" "$3" "$4" "$BENCH_DIR/out" || bench_broken "$1 convert failed"
    rm -f "$BENCH_DIR/out"
    echo "$BENCH_SECONDS" >>"$BENCH_DIR/$1.sec"
    echo "$BENCH_KIB" >>"$BENCH_DIR/$1.rss"
}

# bench_convert_figure SRC SRC_FMT DST_FMT REF REF_FMT RSS_TARGET: convert
# SRC with both tools and print the figure lines: time (ratio qemu-img /
# vdisk, target >= 1), allocated size (target vdisk <= qemu-img) and peak RSS
# (a target, vdisk <= qemu-img, if RSS_TARGET is 1; else information).
bench_convert_figure() {
    _src=$1 _sfmt=$2 _dfmt=$3 _ref=$4 _rfmt=$5 _rss_target=$6
    _title="$_sfmt->$_dfmt convert${BENCH_QEMU_EXTRA:+ (qemu-img $BENCH_QEMU_EXTRA)}"
    _rounds=$(bench_rounds 5)
    rm -f "$BENCH_DIR/vdisk.sec" "$BENCH_DIR/qemu.sec" "$BENCH_DIR/vdisk.rss" "$BENCH_DIR/qemu.rss"

    _vdisk_alloc=$(_bench_convert_check vdisk "$_src" "$_sfmt" "$_dfmt" "$_ref" "$_rfmt") || exit 1
    _qemu_alloc=$(_bench_convert_check qemu "$_src" "$_sfmt" "$_dfmt" "$_ref" "$_rfmt") || exit 1
    _checked="qemu-img compare"
    [ "$_dfmt" != qcow2 ] || _checked="qemu-img compare, qemu-img check"
    echo "$_title output: identical to the source for vdisk and qemu-img ($_checked)"

    _r=1
    while [ "$_r" -le "$_rounds" ]; do
        if [ $((_r % 2)) -eq 1 ]; then
            _bench_convert_timed vdisk "$_src" "$_sfmt" "$_dfmt"
            _bench_convert_timed qemu "$_src" "$_sfmt" "$_dfmt"
        else
            _bench_convert_timed qemu "$_src" "$_sfmt" "$_dfmt"
            _bench_convert_timed vdisk "$_src" "$_sfmt" "$_dfmt"
        fi
        _r=$((_r + 1))
    done

    _ratio=$(paste "$BENCH_DIR/qemu.sec" "$BENCH_DIR/vdisk.sec" | awk '{ print $1 / $2 }' | bench_median)
    echo "$_title $(bench_image_mib 1024)M ${BENCH_IMAGE_KIND:-half-sparse}:" \
         "vdisk $(bench_fmt %.3f "$(bench_median <"$BENCH_DIR/vdisk.sec")") s," \
         "qemu-img $(bench_fmt %.3f "$(bench_median <"$BENCH_DIR/qemu.sec")") s," \
         "ratio $(bench_ratio "$_ratio" 1) (target >= 1.00) $(bench_verdict "$_ratio" 1)"
    echo "$_title allocated: vdisk $_vdisk_alloc B ($(bench_mib "$_vdisk_alloc"))," \
         "qemu-img $_qemu_alloc B ($(bench_mib "$_qemu_alloc"))" \
         "(target vdisk <= qemu-img) $(bench_verdict "$_qemu_alloc" "$_vdisk_alloc")"
    if bench_have_time; then
        _vdisk_rss=$(bench_median <"$BENCH_DIR/vdisk.rss")
        _qemu_rss=$(bench_median <"$BENCH_DIR/qemu.rss")
        if [ "$_rss_target" = 1 ]; then
            _verdict="(target vdisk <= qemu-img) $(bench_verdict "$_qemu_rss" "$_vdisk_rss")"
        else
            _verdict="(information)"
        fi
        echo "$_title peak RSS: vdisk $(bench_mib "$_vdisk_rss" 1024)," \
             "qemu-img $(bench_mib "$_qemu_rss" 1024) $_verdict"
    else
        echo "$_title peak RSS: n/a (/usr/bin/time is missing: install the Debian package 'time')"
    fi
}

# ------------------------------------------------------------ paired figures
#
# bench_pair TITLE TARGET A B: the caller defines shell functions side_A and
# side_B, each running one command through bench_run (and tidying up after
# it). Each runs once untimed, then $(bench_rounds 5) rounds interleaved (the
# order alternating); prints the median times, the median per-round time
# ratio A / B (target <= TARGET; "-" for information only), the median
# peak RSS of both (target A <= B) and, for information, the median CPU time
# of both: on a busy machine the wall-clock ratio also follows the share of
# the cores each side gets. The ratio is left in BENCH_PAIR_RATIO.
bench_pair() {
    _title=$1 _target=$2 _a=$3 _b=$4
    rm -f "$BENCH_DIR/$_a.sec" "$BENCH_DIR/$_b.sec" "$BENCH_DIR/$_a.rss" "$BENCH_DIR/$_b.rss" \
          "$BENCH_DIR/$_a.cpu" "$BENCH_DIR/$_b.cpu"
    "side_$_a" || bench_broken "$_title: $_a failed"
    "side_$_b" || bench_broken "$_title: $_b failed"
    _r=1
    while [ "$_r" -le "$(bench_rounds 5)" ]; do
        if [ $((_r % 2)) -eq 1 ]; then
            _bench_pair_timed "$_title" "$_a"
            _bench_pair_timed "$_title" "$_b"
        else
            _bench_pair_timed "$_title" "$_b"
            _bench_pair_timed "$_title" "$_a"
        fi
        _r=$((_r + 1))
    done
    _ratio=$(paste "$BENCH_DIR/$_a.sec" "$BENCH_DIR/$_b.sec" | awk '{ print $1 / $2 }' | bench_median)
    # shellcheck disable=SC2034 # for the caller
    BENCH_PAIR_RATIO=$_ratio
    _rss_a=$(bench_median <"$BENCH_DIR/$_a.rss")
    _rss_b=$(bench_median <"$BENCH_DIR/$_b.rss")
    if [ "$_target" = - ]; then
        _verdict="(information)"
        _rss_verdict="(information)"
    else
        _verdict="(target <= $_target) $(bench_verdict "$_target" "$_ratio")"
        _rss_verdict="(target $(_bench_label "$_a") <= $(_bench_label "$_b")) $(bench_verdict "$_rss_b" "$_rss_a")"
    fi
    _line="$_title: $(_bench_label "$_a") $(bench_fmt %.3f "$(bench_median <"$BENCH_DIR/$_a.sec")") s,"
    _line="$_line $(_bench_label "$_b") $(bench_fmt %.3f "$(bench_median <"$BENCH_DIR/$_b.sec")") s,"
    _line="$_line ratio $(_bench_label "$_a")/$(_bench_label "$_b") $(bench_fmt %.2f "$_ratio") $_verdict"
    if bench_have_time; then
        _line="$_line; peak RSS $(_bench_label "$_a") $(bench_mib "$_rss_a" 1024),"
        _line="$_line $(_bench_label "$_b") $(bench_mib "$_rss_b" 1024) $_rss_verdict"
        _line="$_line; CPU time $(_bench_label "$_a") $(bench_median <"$BENCH_DIR/$_a.cpu") s,"
        _line="$_line $(_bench_label "$_b") $(bench_median <"$BENCH_DIR/$_b.cpu") s (information)"
    fi
    echo "$_line"
}

# _bench_label SIDE: how a side is named in figure lines (side "qemu" is qemu-img).
_bench_label() {
    if [ "$1" = qemu ]; then echo qemu-img; else echo "$1"; fi
}

# _bench_pair_timed TITLE SIDE: one timed run of side_SIDE, recorded.
_bench_pair_timed() {
    "side_$2" || bench_broken "$1: $2 failed"
    echo "$BENCH_SECONDS" >>"$BENCH_DIR/$2.sec"
    echo "$BENCH_KIB" >>"$BENCH_DIR/$2.rss"
    echo "$BENCH_CPU" >>"$BENCH_DIR/$2.cpu"
}

# bench_same_output TITLE CMD_A CMD_B: both commands (strings, word-split)
# must succeed and print the same thing (else BROKEN).
bench_same_output() {
    # shellcheck disable=SC2086 # the commands are word lists
    $2 >"$BENCH_DIR/out.a" 2>&1 || { cat "$BENCH_DIR/out.a" >&2; bench_broken "$1: $2 failed"; }
    # shellcheck disable=SC2086
    $3 >"$BENCH_DIR/out.b" 2>&1 || { cat "$BENCH_DIR/out.b" >&2; bench_broken "$1: $3 failed"; }
    cmp -s "$BENCH_DIR/out.a" "$BENCH_DIR/out.b" ||
        { diff "$BENCH_DIR/out.a" "$BENCH_DIR/out.b" | head -n 20 >&2; bench_broken "$1: outputs differ"; }
}
