#!/usr/bin/env bash
# Seed corpora of the fuzz targets, generated (never committed) into OUTDIR:
#
#   OUTDIR/images/   small valid images of every kind qemu-img makes for the
#                    supported formats, plus a few vdisk makes
#   OUTDIR/options/  inputs of fuzz_options ("FORMAT SIZE FLAGS" line + options)
#
# usage: make_corpus.sh OUTDIR VDISK QEMU_IMG QEMU_IO [STAMP]
#   QEMU_IMG / QEMU_IO may be "none": the qemu seeds are then left out.
# Every image is a few KiB to a few hundred KiB. A new format adds a section
# below ("# --- <format>") that writes OUTDIR/images/<format>-*.
set -euo pipefail

abspath() { case $1 in /*|none|'') printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }
out=$(abspath "$1") vdisk=$(abspath "$2") qimg=$(abspath "$3") qio=$(abspath "$4") stamp=$(abspath "${5:-}")
ulimit -c 0 # qemu-io's 'abort' must not leave core files

rm -rf "$out"
mkdir -p "$out/images" "$out/options"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" # qemu-img makes external data files relative to the working directory
img=$out/images

have_qemu=false
if [ "$qimg" != none ] && [ "$qio" != none ] && [ -x "$qimg" ] && [ -x "$qio" ]; then
    have_qemu=true
fi

q() { "$qimg" "$@" >/dev/null; }
# qio FILE FORMAT CMD...: run qemu-io commands on an image
qio() {
    local f=$1 fmt=$2; shift 2
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    "$qio" -f "$fmt" "${args[@]}" "$f" >/dev/null
}
# set_byte FILE OFFSET VALUE(octal escape, e.g. \\002)
set_byte() { printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }

# A guest pattern written into most images: data, a zeroed range, a partial cluster.
fill() {
    local f=$1 fmt=$2 cs=$3
    qio "$f" "$fmt" "write -P 0x11 0 $cs" "write -P 0x22 $((cs * 3)) $((cs * 2))" \
        "write -P 0x33 $((cs * 7 + 512)) 512" "write -z $((cs * 9)) $cs"
}

# --- raw
if $have_qemu; then
    : >"$img/raw-empty.raw"
    q create -f raw "$img/raw-64k.raw" 64k
    qio "$img/raw-64k.raw" raw "write -P 0x5a 0 4k" "write -P 0xa5 40k 9k"
    head -c 512 /dev/zero >"$img/raw-qcow-magic-v1.raw"
    set_byte "$img/raw-qcow-magic-v1.raw" 0 'QFI\373\000\000\000\001' # qcow version 1: probes as raw
fi
"$vdisk" create -q -f raw "$img/raw-vdisk-8k.raw" 8k

# --- qcow2
if $have_qemu; then
    # versions and cluster sizes
    q create -f qcow2 -o compat=0.10,cluster_size=4k "$img/qcow2-v2-4k.qcow2" 1M
    fill "$img/qcow2-v2-4k.qcow2" qcow2 4096
    for cs in 512 4096 65536; do
        f=$img/qcow2-v3-$((cs / 1024))k.qcow2
        [ "$cs" -ge 1024 ] || f=$img/qcow2-v3-$cs.qcow2
        q create -f qcow2 -o compat=1.1,cluster_size=$cs "$f" 1M
        fill "$f" qcow2 $((cs < 8192 ? cs : 8192)) # a few data clusters at most
    done
    q create -f qcow2 -o cluster_size=512 "$img/qcow2-v3-512-empty.qcow2" 128k

    # extended L2 entries (subclusters)
    for n in 16384 32768; do
        f=$img/qcow2-extl2-$((n / 1024))k.qcow2
        q create -f qcow2 -o extended_l2=on,cluster_size=$n "$f" 1M
        qio "$f" qcow2 "write -P 0x44 512 512" "write -P 0x55 $((n + n / 2)) $((n / 4))" \
            "write -z $((n * 4)) $((n / 32))" "write -P 0x66 $((n * 6)) $n" "discard $((n * 6)) $((n / 2))"
    done

    # compressed clusters
    q create -f raw "$tmp/pattern.raw" 256k
    qio "$tmp/pattern.raw" raw "write -P 0x77 0 64k" "write -P 0x78 128k 8k" "write -P 0x79 200k 56k"
    q convert -c -f raw -O qcow2 -o cluster_size=4k "$tmp/pattern.raw" "$img/qcow2-compressed-zlib.qcow2"
    q convert -c -f raw -O qcow2 -o cluster_size=4k,compression_type=zstd "$tmp/pattern.raw" \
        "$img/qcow2-compressed-zstd.qcow2"
    q convert -c -f raw -O qcow2 -o cluster_size=64k "$tmp/pattern.raw" "$img/qcow2-compressed-64k.qcow2"
    q convert -c -f raw -O qcow2 -o compat=0.10,cluster_size=4k "$tmp/pattern.raw" \
        "$img/qcow2-v2-compressed.qcow2"

    # backing files (the fuzz layer refuses to open them; the name is what matters)
    q create -f qcow2 -o cluster_size=4k "$tmp/base.qcow2" 1M
    q create -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 "$tmp/overlay.qcow2" 1M
    qio "$tmp/overlay.qcow2" qcow2 "write -P 0x88 8k 8k" "write -z 64k 4k"
    cp "$tmp/overlay.qcow2" "$img/qcow2-backing-qcow2.qcow2"
    q create -f qcow2 -o cluster_size=4k -u -b ../somewhere/base.raw -F raw "$img/qcow2-backing-raw.qcow2" 1M
    q create -f qcow2 -o compat=0.10,cluster_size=4k -u -b /abs/path/base.img -F qcow2 \
        "$img/qcow2-v2-backing.qcow2" 1M
    q create -f qcow2 -o cluster_size=16k,extended_l2=on -b base.qcow2 -F qcow2 "$tmp/overlay-extl2.qcow2" 1M
    qio "$tmp/overlay-extl2.qcow2" qcow2 "write -P 0x89 1k 1k" "write -z 20k 1k"
    cp "$tmp/overlay-extl2.qcow2" "$img/qcow2-extl2-backing.qcow2"

    # internal snapshots
    for v in 0.10 1.1; do
        f=$img/qcow2-snapshots-$v.qcow2
        q create -f qcow2 -o compat=$v,cluster_size=4k "$f" 1M
        qio "$f" qcow2 "write -P 0x91 0 12k"
        q snapshot -c first "$f"
        qio "$f" qcow2 "write -P 0x92 4k 4k" "write -P 0x93 512k 4k"
        q snapshot -c second "$f"
        qio "$f" qcow2 "write -z 0 4k"
    done
    q create -f qcow2 -o cluster_size=512 "$tmp/snap512.qcow2" 64k
    qio "$tmp/snap512.qcow2" qcow2 "write -P 0x94 0 2k"
    q snapshot -c s "$tmp/snap512.qcow2"
    q resize "$tmp/snap512.qcow2" 128k
    qio "$tmp/snap512.qcow2" qcow2 "write -P 0x95 100k 1k"
    cp "$tmp/snap512.qcow2" "$img/qcow2-snapshot-resized-512.qcow2"

    # lazy refcounts: a clean one, and one left dirty by a crash (qemu-io abort)
    q create -f qcow2 -o lazy_refcounts=on,cluster_size=4k "$img/qcow2-lazy-clean.qcow2" 1M
    fill "$img/qcow2-lazy-clean.qcow2" qcow2 4096
    q create -f qcow2 -o lazy_refcounts=on,cluster_size=4k "$tmp/dirty.qcow2" 1M
    bash -c '"$@" >/dev/null 2>&1; exit 0' - "$qio" -f qcow2 -c "write -P 0x99 0 16k" \
        -c "write -P 0x9a 64k 4k" -c abort "$tmp/dirty.qcow2" 2>/dev/null
    cp "$tmp/dirty.qcow2" "$img/qcow2-lazy-dirty.qcow2"

    # refcount widths, preallocation, a large sparse disk
    for bits in 1 8 64; do
        f=$img/qcow2-refcount$bits.qcow2
        q create -f qcow2 -o refcount_bits=$bits,cluster_size=4k "$f" 1M
        fill "$f" qcow2 4096
    done
    q create -f qcow2 -o preallocation=metadata,cluster_size=4k "$img/qcow2-prealloc-metadata.qcow2" 128k
    q create -f qcow2 -o cluster_size=64k "$img/qcow2-100g.qcow2" 100G
    qio "$img/qcow2-100g.qcow2" qcow2 "write -P 0xbb 50G 4k"

    # external data file (named only), persistent bitmap, corrupt bit
    q create -f qcow2 -o cluster_size=4k,data_file=ext.data "$tmp/datafile.qcow2" 1M
    cp "$tmp/datafile.qcow2" "$img/qcow2-data-file.qcow2"
    q create -f qcow2 -o cluster_size=4k,data_file=ext2.data,data_file_raw=on "$tmp/datafile-raw.qcow2" 64k
    cp "$tmp/datafile-raw.qcow2" "$img/qcow2-data-file-raw.qcow2"
    q create -f qcow2 -o cluster_size=4k "$img/qcow2-bitmap.qcow2" 1M
    qio "$img/qcow2-bitmap.qcow2" qcow2 "write -P 0xcc 0 8k"
    q bitmap --add "$img/qcow2-bitmap.qcow2" b0
    cp "$img/qcow2-v3-4k.qcow2" "$img/qcow2-corrupt-bit.qcow2"
    set_byte "$img/qcow2-corrupt-bit.qcow2" 79 '\002' # incompatible features: corrupt

fi

# images vdisk itself makes
"$vdisk" create -q -f qcow2 -o cluster_size=4k,lazy_refcounts=on "$img/qcow2-vdisk-lazy.qcow2" 1M
"$vdisk" create -q -f qcow2 -o compat=0.10,cluster_size=512 "$img/qcow2-vdisk-v2-512.qcow2" 64k
"$vdisk" create -q -f qcow2 -o cluster_size=16k,extended_l2=on,refcount_bits=4 "$img/qcow2-vdisk-extl2.qcow2" 1M
if $have_qemu; then
    "$vdisk" convert -q -f raw -O qcow2 -o cluster_size=4k "$tmp/pattern.raw" "$img/qcow2-vdisk-convert.qcow2"
fi

# --- luks: passphrase "fuzz" (FUZZ_PASSPHRASE), the fewest PBKDF2 iterations;
# 128-bit keys, whose key material (8 slots) takes 0.5 MiB (xts: 1 MiB), not 2

printf fuzz >"$tmp/pw"
luks_obj="secret,id=s,file=$tmp/pw"
if $have_qemu; then
    for combo in aes-128:xts:plain64:sha256 aes-128:cbc:essiv:sha1 aes-128:ecb:plain:sha512; do
        IFS=: read -r alg mode ivgen hash <<<"$combo"
        f=$img/luks-$alg-$mode-$ivgen-$hash.luks
        for attempt in 1 2 3 4 5; do # qemu-img may fail to time PBKDF2 on a fast machine
            "$qimg" create -q -f luks --object "$luks_obj" -o key-secret=s,iter-time=1,cipher-alg=$alg,cipher-mode=$mode,ivgen-alg=$ivgen,hash-alg=$hash "$f" 16k 2>/dev/null && break
        done
        "$qio" --object "$luks_obj" --image-opts "driver=luks,key-secret=s,file.filename=$f" \
            -c "write -P 0x5a 512 4k" >/dev/null
    done
fi
"$vdisk" create -q -f luks --object "$luks_obj" -o key-secret=s,iter-time=1,cipher-alg=aes-128,cipher-mode=cbc \
    "$img/luks-vdisk.luks" 8k

# --- vmdk: the single-file subformats (the targets open one file; extent files are not there)
if $have_qemu; then
    q create -f vmdk "$img/vmdk-sparse.vmdk" 1M
    fill "$img/vmdk-sparse.vmdk" vmdk 4096
    q create -f vmdk -o zeroed_grain=on "$img/vmdk-sparse-zeroed.vmdk" 1M
    qio "$img/vmdk-sparse-zeroed.vmdk" vmdk "write -P 0x44 0 64k" "write -z 0 64k" "write -P 0x45 128k 4k"
    q create -f raw "$tmp/vmdk-src.raw" 512k
    qio "$tmp/vmdk-src.raw" raw "write -P 0x46 0 64k" "write -P 0x47 200k 3k"
    q convert -f raw -O vmdk -o subformat=streamOptimized "$tmp/vmdk-src.raw" "$img/vmdk-stream.vmdk"
    printf '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 8 ZERO\nRW 8 FLAT "missing.img" 0\n' >"$img/vmdk-descriptor.vmdk"
fi
"$vdisk" create -q -f vmdk "$img/vmdk-vdisk.vmdk" 256k

# --- qcow (version 1): plain, compressed clusters, a backing file name (absent here)
if $have_qemu; then
    q create -f qcow "$img/qcow1-plain.qcow" 1M
    fill "$img/qcow1-plain.qcow" qcow 4096
    q create -f qcow "$img/qcow1-compressed.qcow" 1M
    qio "$img/qcow1-compressed.qcow" qcow "write -c -P 0x48 0 4k" "write -c -P 0x49 64k 4k" "write -P 0x4a 8k 4k"
    q create -f qcow -u -b missing.qcow -F qcow "$img/qcow1-backing.qcow" 256k
fi
"$vdisk" create -q -f qcow "$img/qcow1-vdisk.qcow" 256k

# --- options (fuzz_options): "FORMAT SIZE FLAGS" then the option string
o=$out/options
n=0
opt() { printf '%s' "$1" >"$o/$(printf 'opt-%02d' $n)"; n=$((n + 1)); }
opt $'qcow2 1048576 0\n'
opt $'qcow2 1048576 0\ncluster_size=4096'
opt $'qcow2 65536 0\ncompat=0.10'
opt $'qcow2 1048576 0\ncompat=1.1,lazy_refcounts=on,refcount_bits=8'
opt $'qcow2 1048576 0\ncluster_size=512,refcount_bits=1'
opt $'qcow2 1048576 0\ncluster_size=64k,refcount_bits=64,preallocation=metadata'
opt $'qcow2 2097152 0\npreallocation=full,cluster_size=4k'
opt $'qcow2 2097152 0\npreallocation=falloc,compat=v2'
opt $'qcow2 1048576 0\nextended_l2=on,cluster_size=16k'
opt $'qcow2 1048576 0\ncompression_type=zstd,cluster_size=2M'
opt $'qcow2 0 0\nbacking_file=base.qcow2'
opt $'qcow2 2097152 0\nbacking_file=base.raw,backing_fmt=raw'
opt $'qcow2 1048576 2\nbacking_file=missing.qcow2,backing_fmt=qcow2'
opt $'qcow2 1048576 0\ndata_file=data.raw'
opt $'qcow2 1048576 0\ndata_file=data.raw,data_file_raw=on,preallocation=full'
opt $'qcow2 1099511627776 0\ncluster_size=512'
opt $'qcow2 1048576 1\ncluster_size=4k,,x=1'
opt $'raw 1048576 0\npreallocation=full'
opt $'raw 4096 0\n'
opt $'raw 1048576 0\npreallocation=falloc'
opt ',,=,,,a=b,,,,c'
opt 'cluster_size=1T,refcount_bits=-1,lazy_refcounts=maybe'
opt $'qcow2 1 0\nbacking_file=base.qcow2,backing_fmt=qcow2,cluster_size=1k,extended_l2=off'

[ -z "$stamp" ] || touch "$stamp"
echo "fuzz corpus: $(ls "$img" | wc -l) images ($(du -sk "$img" | cut -f1) KiB), $n option inputs in $out"
