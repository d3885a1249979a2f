#!/usr/bin/env bash
# Runs a libFuzzer target for the 'fuzz' meson suite.
#
#   run_fuzz.sh fuzz TARGET NAME SEEDS WORKDIR [DICT]
#       fuzz for $FUZZ_SECONDS (default 60) seconds from the seed corpus SEEDS,
#       keeping what it learns in WORKDIR/corpus/NAME and any crash in
#       WORKDIR/artifacts/NAME-*; extra libFuzzer flags come from $FUZZ_ARGS
#   run_fuzz.sh regress TARGET DIR...
#       run every file under the DIRs through TARGET once (no fuzzing)
#
# Every run is bounded per input: -timeout=10 -rss_limit_mb=512 (a single
# allocation above 512 MiB is a crash too).
set -euo pipefail

mode=$1 target=$2
shift 2
limits=(-timeout=10 -rss_limit_mb=512 -error_exitcode=1 -timeout_exitcode=1)

if [ -z "${ASAN_SYMBOLIZER_PATH:-}" ] && command -v llvm-symbolizer >/dev/null; then
    export ASAN_SYMBOLIZER_PATH=$(command -v llvm-symbolizer)
fi
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

case $mode in
fuzz)
    name=$1 seeds=$2 work=$3 dict=${4:-}
    seconds=${FUZZ_SECONDS:-60}
    mkdir -p "$work/corpus/$name" "$work/artifacts"
    args=("${limits[@]}" -max_total_time="$seconds" -print_final_stats=1
          -artifact_prefix="$work/artifacts/$name-")
    [ -z "$dict" ] || args+=(-dict="$dict")
    # shellcheck disable=SC2206 # FUZZ_ARGS is a list of flags
    args+=(${FUZZ_ARGS:-})
    echo "== $target ${args[*]} $work/corpus/$name $seeds"
    if ! "$target" "${args[@]}" "$work/corpus/$name" "$seeds"; then
        echo
        echo "== $name found a problem; the input is in $work/artifacts/ (newest $name-* file)."
        echo "== Reproduce: $target $work/artifacts/$name-..."
        echo "== Minimize:  $target -minimize_crash=1 -runs=10000 $work/artifacts/$name-..."
        echo "== Keep it:   copy it to tests/fuzz/regressions/ once it is fixed (see README.md)."
        exit 1
    fi
    ;;
regress)
    files=()
    for d in "$@"; do
        [ -d "$d" ] || continue
        while IFS= read -r -d '' f; do files+=("$f"); done \
            < <(find "$d" -type f ! -name 'README*' ! -name '.*' -print0 | sort -z)
    done
    if [ ${#files[@]} -eq 0 ]; then
        echo "no regression inputs in $*"
        exit 0
    fi
    echo "== replaying ${#files[@]} regression input(s) through $target"
    exec "$target" "${limits[@]}" "${files[@]}"
    ;;
*)
    echo "usage: run_fuzz.sh fuzz|regress TARGET ..." >&2
    exit 2
    ;;
esac
