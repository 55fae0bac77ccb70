#!/usr/bin/env bash
# Regenerate the sample images in this folder: bash samples/make-samples.sh
# Needs qemu-img and qemu-io (Debian: qemu-utils), python3 and the python package zstandard.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"

for tool in qemu-img qemu-io python3; do
    command -v "$tool" >/dev/null || { echo "make-samples.sh: $tool is required" >&2; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf %s qcow2check >"$tmp/passphrase"   # no trailing newline: qemu reads the file verbatim
secret=(--object "secret,id=sec0,file=$tmp/passphrase")

G=1073741824  # what qemu-img means by 1G

# ---------------------------------------------------------------- helpers

luks_options() {  # prefix: "encrypt." for qcow2, "" for the luks format
    # aes-128-cbc keeps the 8 key slots at 64000 bytes each; the default aes-256-xts needs ~2 MiB.
    local p=$1
    echo "${p}key-secret=sec0,${p}iter-time=10,${p}cipher-alg=aes-128,${p}cipher-mode=cbc,${p}ivgen-alg=essiv,${p}ivgen-hash-alg=sha256"
}

retry() {  # qemu's PBKDF benchmark sometimes fails with "Unable to get accurate CPU usage"
    local attempt
    for attempt in 1 2 3 4; do
        "$@" 2>/dev/null && return 0
    done
    "$@"
}

qcow2() {  # name size [qemu-img create args...]
    local name=$1 size=$2
    shift 2
    qemu-img create -q -f qcow2 "$@" "$name" "$size"
}

write_pattern() {  # image byte offset length
    qemu-io -f qcow2 -c "write -q -P $2 $3 $4" "$1"
}

set_incompatible_bit() {  # image bit: OR a bit into header bytes 72..79
    python3 - "$1" "$2" <<'EOF'
import struct, sys
path, bit = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(72)
    (features,) = struct.unpack(">Q", f.read(8))
    f.seek(72)
    f.write(struct.pack(">Q", features | 1 << bit))
EOF
}

poke_u32() {  # file offset value: overwrite one big-endian 32-bit field
    python3 -c '
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2]))
    f.write(struct.pack(">I", int(sys.argv[3])))
' "$@"
}

pin_snapshot_dates() {  # image: replace the creation time of every snapshot by 2024-01-01
    python3 - "$1" <<'EOF'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(60)
    count, offset = struct.unpack(">IQ", f.read(12))
    for _ in range(count):
        f.seek(offset + 12)
        id_len, name_len, _, _, _, _, extra_len = struct.unpack(">HHIIQII", f.read(28))
        f.seek(offset + 16)
        f.write(struct.pack(">II", 1704067200, 0))
        offset += 40 + extra_len + id_len + name_len
        offset = (offset + 7) // 8 * 8
EOF
}

text_raw() {  # path text_bytes virtual_size: text-like data at the start, sparse after
    python3 - "$@" <<'EOF'
import sys
path, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lines = (b"%07d the quick brown fox jumps over the lazy dog\n" % i for i in range(n // 40 + 1))
with open(path, "wb") as f:
    f.write(b"".join(lines)[:n])
    f.truncate(size)
EOF
}

# ---------------------------------------------------------------- accepted

make_accepted() {
    qcow2 ok-v3.qcow2 1G
    qcow2 ok-v2.qcow2 1G -o compat=0.10
    qcow2 ok-1gb.qcow2 1000000000
    qcow2 ok-1tb.qcow2 1000000000000
    qcow2 extended-l2.qcow2 1G -o extended_l2=on,cluster_size=128k

    # Data in two L2 tables (each covers 512 MiB) plus one v3 zero cluster.
    qcow2 ok-data.qcow2 1G
    write_pattern ok-data.qcow2 0x5a 0 128k
    write_pattern ok-data.qcow2 0xa5 1M 64k
    write_pattern ok-data.qcow2 0x3c 768M 64k
    qemu-io -f qcow2 -c "write -q -z 2M 64k" ok-data.qcow2

    text_raw "$tmp/text.raw" 262144 $G
    qemu-img convert -q -c -f raw -O qcow2 -o compression_type=zlib "$tmp/text.raw" ok-zlib-compressed.qcow2
}

make_warnings() {
    qcow2 dirty.qcow2 1G
    set_incompatible_bit dirty.qcow2 0

    qcow2 snapshot.qcow2 1G
    write_pattern snapshot.qcow2 0x11 0 64k
    qemu-img snapshot -q -c snap1 snapshot.qcow2
    pin_snapshot_dates snapshot.qcow2
}

# ---------------------------------------------------------------- rejected

make_encrypted() {
    retry qcow2 encrypted-luks.qcow2 1G "${secret[@]}" -o "encrypt.format=luks,$(luks_options encrypt.)"
    qcow2 encrypted-aes.qcow2 1G "${secret[@]}" -o encrypt.format=aes,encrypt.key-secret=sec0
}

make_zstd() {
    qcow2 zstd-header.qcow2 1G -o compression_type=zstd
    text_raw "$tmp/text.raw" 262144 $G
    qemu-img convert -q -c -f raw -O qcow2 -o compression_type=zstd "$tmp/text.raw" zstd-data.qcow2
}

make_external_files() {
    qemu-img create -q -f raw backing-base.raw 64k
    qemu-io -f raw -c "write -q -P 0xbb 0 64k" backing-base.raw
    qcow2 backing.qcow2 1G -b backing-base.raw -F raw

    # qemu makes the data file as large as the disk; an empty one still opens (reads as zeros).
    qcow2 data-file.qcow2 1G -o data_file=data-file.raw
    truncate -s 0 data-file.raw
}

make_bad_sizes() {
    qcow2 small-size.qcow2 999999488
    qcow2 1tib.qcow2 1T
}

make_bad_headers() {
    cp ok-v3.qcow2 corrupt-flag.qcow2
    set_incompatible_bit corrupt-flag.qcow2 1
    cp ok-v3.qcow2 unknown-feature.qcow2
    set_incompatible_bit unknown-feature.qcow2 5

    cp ok-v3.qcow2 invalid-cluster-bits.qcow2
    poke_u32 invalid-cluster-bits.qcow2 20 22
    head -c 50 ok-v3.qcow2 >short-header.qcow2

    qemu-img create -q -f qcow qcow-v1.qcow 1G
}

make_truncated() {
    # Fresh 64 KiB-cluster layout: L1 at 0x30000, L2 at 0x40000, data from 0x50000.
    qcow2 "$tmp/data.qcow2" 1G
    write_pattern "$tmp/data.qcow2" 0x77 0 512k
    cp "$tmp/data.qcow2" truncated.qcow2
    truncate -s $((0x50000 + 0x28000)) truncated.qcow2
    cp "$tmp/data.qcow2" truncated-at-l2.qcow2
    truncate -s $((0x40000)) truncated-at-l2.qcow2
}

# ---------------------------------------------------------------- not qcow2

make_other_formats() {
    : >empty.img
    qemu-img create -q -f raw raw.img 512k
    qemu-io -f raw -c "write -q -P 0x42 0 512k" raw.img

    qemu-img create -q -f vmdk disk.vmdk 1G
    qemu-img create -q -f vpc disk.vhd 1G
    qemu-img create -q -f vhdx disk.vhdx 1G
    qemu-img create -q -f vdi disk.vdi 1G
    qemu-img create -q -f qed disk.qed 1G
    retry qemu-img create -q -f luks "${secret[@]}" -o "$(luks_options "")" disk.luks 64k
}

make_iso() {  # system area, primary volume descriptor, set terminator
    python3 - disk.iso <<'EOF'
import struct, sys
def both16(n): return struct.pack("<H", n) + struct.pack(">H", n)
def both32(n): return struct.pack("<I", n) + struct.pack(">I", n)
pvd = bytearray(2048)
pvd[0:7] = b"\x01CD001\x01"
pvd[8:40] = b"LINUX".ljust(32)
pvd[40:72] = b"QCOW2CHECK".ljust(32)
pvd[80:88] = both32(18)          # volume space size in blocks
pvd[120:124] = both16(1)         # volume set size
pvd[124:128] = both16(1)         # volume sequence number
pvd[128:132] = both16(2048)      # logical block size
pvd[881] = 1                     # file structure version
terminator = bytearray(2048)
terminator[0:7] = b"\xffCD001\x01"
with open(sys.argv[1], "wb") as f:
    f.write(bytes(16 * 2048) + pvd + terminator)
EOF
}

make_wrapped_copies() {  # ok-v3.qcow2 compressed whole-file, and as a Git LFS pointer
    python3 - ok-v3.qcow2 <<'EOF'
import bz2, gzip, lzma, sys
import zstandard
src = sys.argv[1]
data = open(src, "rb").read()
outputs = {
    ".gz": gzip.compress(data, 9, mtime=0),
    ".xz": lzma.compress(data),
    ".zst": zstandard.ZstdCompressor(level=19).compress(data),
    ".bz2": bz2.compress(data, 9),
}
for ext, blob in outputs.items():
    open(src + ext, "wb").write(blob)
EOF
    printf 'version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %s\n' \
        "$(sha256sum ok-v3.qcow2 | cut -d' ' -f1)" "$(stat -c %s ok-v3.qcow2)" >lfs-pointer.qcow2
}

# ---------------------------------------------------------------- main

rm -f ./*.qcow2 ./*.qcow ./*.img ./*.raw ./*.vmdk ./*.vhd ./*.vhdx ./*.vdi ./*.qed ./*.luks \
    ./*.iso ./*.gz ./*.xz ./*.zst ./*.bz2
make_accepted
make_warnings
make_encrypted
make_zstd
make_external_files
make_bad_sizes
make_bad_headers
make_truncated
make_other_formats
make_iso
make_wrapped_copies
