#!/bin/sh
# ABI check of the shared library: its exported symbols are exactly the
# global: names of the version script, all vd_*, all versioned LIBVDISK_1.N,
# every function the public header declares is among them, and the SONAME
# is libvdisk.so.1.
#
#   check_symbols.sh LIBRARY VERSION_SCRIPT HEADER
set -eu

lib=$1 map=$2 header=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
fail() { echo "FAIL: $*" >&2; status=1; }

# Exported, defined dynamic symbols (A lines are version definitions).
nm -D --defined-only "$lib" | awk '$2 != "A" { print $3 }' > "$tmp/versioned"
sed 's/@.*//' "$tmp/versioned" | sort -u > "$tmp/exported"
[ -s "$tmp/exported" ] || fail "no exported symbols in $lib"

# The global: names of the version script.
sed -e 's|/\*.*\*/||g' "$map" | awk '
    /global:/ { on = 1; next }
    /local:|}/ { on = 0 }
    on { gsub(/[ \t;]/, ""); if ($0 != "") print }' | sort -u > "$tmp/map"
[ -s "$tmp/map" ] || fail "no global: names in $map"

# Functions declared by the public header (VD_API lines).
sed -n 's/^VD_API[^(]*[ *]\(vd_[A-Za-z0-9_]*\)(.*/\1/p' "$header" | sort -u > "$tmp/header"
[ -s "$tmp/header" ] || fail "no VD_API declarations in $header"

if ! cmp -s "$tmp/exported" "$tmp/map"; then
    fail "exports differ from $map (< exported only, > map only):"
    diff "$tmp/exported" "$tmp/map" | grep '^[<>]' >&2 || true
fi
if ! cmp -s "$tmp/header" "$tmp/map"; then
    fail "header declarations differ from $map (< header only, > map only):"
    diff "$tmp/header" "$tmp/map" | grep '^[<>]' >&2 || true
fi
bad=$(grep -v '^vd_' "$tmp/exported" || true)
[ -z "$bad" ] || fail "exported symbols without the vd_ prefix: $bad"
unversioned=$(grep -v '@@\?LIBVDISK_1\.[0-9][0-9]*$' "$tmp/versioned" || true)
[ -z "$unversioned" ] || fail "symbols not versioned LIBVDISK_1.N: $unversioned"

soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
[ "$soname" = libvdisk.so.1 ] || fail "SONAME is '$soname', expected libvdisk.so.1"

[ $status -eq 0 ] && echo "ok: $(wc -l < "$tmp/exported") symbols, SONAME $soname"
exit $status
