#!/bin/sh
# Build and run a program from nothing but pkg-config's flags.
#
#   check_pkgconfig.sh uninstalled BUILDDIR PROGRAM.c CC
#       against the build tree's meson-uninstalled/libvdisk-uninstalled.pc
#   check_pkgconfig.sh installed BUILDDIR PROGRAM.c CC MESON [PYTHON]
#       `meson install --destdir` into a temporary root, check what was
#       installed (library, headers, pc file, the vdisk CLI and its man page,
#       the API reference's man pages),
#       then build against the installed libvdisk.pc through a sysroot. With
#       PYTHON: the Python package is installed too (with py.typed), and
#       imports and opens an image with the installed library.
#
# Both modes check that the pc file's Requires.private names exactly the
# pkg-config modules in REQUIRES_PRIVATE (environment: what the library links,
# "zlib libgcrypt libzstd" with zstd), and build the program with
# `pkg-config --static` flags: linked fully statically when the install holds
# libvdisk.a (-Ddefault_library=both or static), else against the shared
# library, which still shows that every flag resolves.
#
# TEST_CFLAGS (environment) is added to the compile: sanitizer builds need it
# (and rule out the fully static link).
set -eu

mode=$1 builddir=$2 program=$3 cc=$4 meson=${5:-meson} python=${6:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
fail() { echo "FAIL: $*" >&2; status=1; }

# build_and_run PKG LIBDIR EXPECTED_ROOT: compile with PKG's flags, run the
# program with LIBDIR first in the search path, and check that the library it
# loaded lives under EXPECTED_ROOT.
build_and_run() {
    flags=$(pkg-config --cflags --libs "$1") || { fail "pkg-config $1 failed"; return; }
    echo "pkg-config $1: $flags"
    # shellcheck disable=SC2086 # flags are words
    if ! $cc ${TEST_CFLAGS:-} -o "$tmp/hello" "$program" $flags; then
        fail "could not build $program with pkg-config $1's flags"
        return
    fi
    LD_LIBRARY_PATH=$2 "$tmp/hello" || fail "$program built against $1 did not run cleanly"
    loaded=$(LD_LIBRARY_PATH=$2 ldd "$tmp/hello" | awk '$1 ~ /^libvdisk\.so/ { print $3 }')
    case $loaded in
        "$3"/*) ;;
        *) fail "the program loaded libvdisk from '$loaded', not from under $3" ;;
    esac
}

# check_requires_private PKG: Requires.private is exactly $REQUIRES_PRIVATE.
check_requires_private() {
    want=$(printf '%s\n' ${REQUIRES_PRIVATE:-} | sort | tr '\n' ' ')
    got=$(pkg-config --print-requires-private "$1" | awk '{ print $1 }' | sort | tr '\n' ' ')
    echo "pkg-config $1 Requires.private: $got"
    [ "$got" = "$want" ] || fail "$1's Requires.private is '$got', expected '$want'"
}

# build_static PKG LIBDIR: build with `pkg-config --static` flags, fully
# static when LIBDIR holds libvdisk.a, and run the program.
build_static() {
    flags=$(pkg-config --static --cflags --libs "$1") ||
        { fail "pkg-config --static $1 failed"; return; }
    echo "pkg-config --static $1: $flags"
    static=
    if [ -f "$2/libvdisk.a" ] && [ -z "${TEST_CFLAGS:-}" ]; then
        static=-static
    else
        echo "note: no libvdisk.a in $2 (-Ddefault_library=both installs one) or a sanitizer" \
             "build: linking the --static flags against the shared library"
    fi
    # shellcheck disable=SC2086 # flags are words
    if ! $cc ${TEST_CFLAGS:-} $static -o "$tmp/hello-static" "$program" $flags; then
        fail "could not build $program ${static:+fully statically }with pkg-config --static $1"
        return
    fi
    if [ -n "$static" ] && readelf -d "$tmp/hello-static" 2>/dev/null | grep -q NEEDED; then
        fail "the -static build of $program still needs shared libraries"
    fi
    LD_LIBRARY_PATH=$2 "$tmp/hello-static" ||
        fail "$program built with pkg-config --static $1 did not run cleanly"
}

# check_python_package ROOT LIBDIR: the installed package, run from a
# directory outside any build tree (where it would look for the library
# first), creates and opens an image through the library installed in LIBDIR.
check_python_package() {
    init=$(expect_file "$1" '*-packages/libvdisk/__init__.py' "the Python package")
    expect_file "$1" '*-packages/libvdisk/py.typed' "the Python package's py.typed" >/dev/null
    [ -n "$init" ] || return 0
    site=$(dirname "$(dirname "$init")")
    echo "Python package: $site/libvdisk"
    # shellcheck disable=SC2016 # $-less Python
    (cd "$tmp" && env -u LIBVDISK_LIBRARY PYTHONPATH="$site" LD_LIBRARY_PATH="$2" \
        "$python" -c '
import sys, libvdisk
assert libvdisk.__file__.startswith(sys.argv[1]), libvdisk.__file__
libvdisk.create("disk.qcow2", "qcow2", 1 << 20)
with libvdisk.open("disk.qcow2", "r+") as image:
    image.pwrite(0, b"installed")
    assert image.pread(0, 9) == b"installed" and image.size == 1 << 20
loaded = [line.split()[-1] for line in open("/proc/self/maps") if "libvdisk.so" in line]
assert loaded and all(p.startswith(sys.argv[1]) for p in loaded), loaded
print("the installed package opened an image with", loaded[0])
' "$1") || fail "the installed Python package did not work with the installed library"
}

# expect_file ROOT PATTERN WHAT: exactly one file matching the find -path PATTERN.
expect_file() {
    found=$(find "$1" -path "$2" \( -type f -o -type l \) | head -n 1)
    if [ -z "$found" ]; then
        fail "$3 is not installed (no $2 under $1)"
    fi
    echo "$found"
}

case $mode in
uninstalled)
    PKG_CONFIG_PATH=$builddir/meson-uninstalled
    export PKG_CONFIG_PATH
    build_and_run libvdisk-uninstalled "$builddir/lib" "$builddir"
    check_requires_private libvdisk-uninstalled
    build_static libvdisk-uninstalled "$builddir/lib"
    ;;
installed)
    root=$tmp/root
    "$meson" install -C "$builddir" --destdir "$root" --no-rebuild --quiet ||
        { echo "FAIL: meson install failed" >&2; exit 1; }
    pc=$(expect_file "$root" '*/pkgconfig/libvdisk.pc' "libvdisk.pc")
    soname=$(expect_file "$root" '*/libvdisk.so.1' "libvdisk.so.1")
    expect_file "$root" '*/libvdisk.so' "the libvdisk.so development link" >/dev/null
    expect_file "$root" '*/include/libvdisk/libvdisk.h' "libvdisk.h" >/dev/null
    expect_file "$root" '*/include/libvdisk/version.h' "version.h" >/dev/null
    cli=$(expect_file "$root" '*/bin/vdisk' "the vdisk CLI")
    expect_file "$root" '*/man1/vdisk.1*' "the vdisk.1 man page" >/dev/null
    expect_file "$root" '*/man3/libvdisk.3*' "the API reference (libvdisk.3)" >/dev/null
    expect_file "$root" '*/man3/vd_open.3*' "the API reference's vd_open.3" >/dev/null
    if [ -n "$cli" ] && [ ! -x "$cli" ]; then
        fail "$cli is not executable"
    fi
    if [ -n "$python" ] && [ -n "$soname" ]; then
        check_python_package "$root" "$(dirname "$soname")"
    fi
    private=$(find "$root" -name 'internal.h' -o -name 'options.h' -o -name 'file.h' \
                   -o -name '*.a' ! -name libvdisk.a)
    [ -z "$private" ] || fail "private files are installed: $private"
    if [ -n "$soname" ] && readelf -d "$soname" | grep -Eq 'RPATH|RUNPATH'; then
        fail "the installed library keeps a build-tree RPATH/RUNPATH"
    fi
    if [ -n "$pc" ] && [ -n "$soname" ]; then
        # the installed pc file first; the system's for what it requires
        PKG_CONFIG_LIBDIR=$(dirname "$pc"):$(pkg-config --variable pc_path pkg-config)
        PKG_CONFIG_SYSROOT_DIR=$root
        export PKG_CONFIG_LIBDIR PKG_CONFIG_SYSROOT_DIR
        build_and_run libvdisk "$(dirname "$soname")" "$root"
        check_requires_private libvdisk
        build_static libvdisk "$(dirname "$soname")"
    fi
    ;;
*)
    echo "usage: $0 uninstalled|installed BUILDDIR PROGRAM.c CC [MESON]" >&2
    exit 2
    ;;
esac
exit $status
