"""Tests for qcow2check.sniff: naming what a file is when it is not QCOW2."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import shutil
import struct
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qcow2check.sniff import HEAD_SIZE, TAIL_SIZE, Identification, identify

KINDS = {
    "empty",
    "raw",
    "mbr",
    "gpt",
    "iso9660",
    "vmdk",
    "vhd",
    "vhdx",
    "vdi",
    "qed",
    "luks",
    "parallels",
    "dmg",
    "qcow",
    "gzip",
    "xz",
    "zstd",
    "bzip2",
    "zip",
    "tar",
    "git-lfs-pointer",
    "html",
}


def identify_bytes(data: bytes) -> Identification:
    """Identify a whole file's bytes, slicing head and tail as the caller does."""
    return identify(data[:HEAD_SIZE], data[max(0, len(data) - TAIL_SIZE) :], len(data))


def identify_file(path: Path) -> Identification:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(HEAD_SIZE)
        f.seek(max(0, size - TAIL_SIZE))
        tail = f.read(TAIL_SIZE)
    return identify(head, tail, size)


def at(size: int, *pieces: tuple[int, bytes]) -> bytes:
    """``size`` zero bytes with each ``(offset, data)`` piece written over them."""
    buf = bytearray(size)
    for offset, data in pieces:
        buf[offset : offset + len(data)] = data
    return bytes(buf)


def vhd_footer(disk_type: int) -> bytes:
    return at(512, (0, b"conectix"), (60, struct.pack(">I", disk_type)))


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("disk.img", b"\0" * 1024)
    return buf.getvalue()


def tar_bytes(*names: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 4
            archive.addfile(info, io.BytesIO(b"data"))
    return buf.getvalue()


LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    b"size 12345\n"
)
MBR = at(512, (510, b"\x55\xaa"))
FIXED_VHD = at(8192) + vhd_footer(2)
DMG = at(4096, (0, b"BZh91AY&SY")) + at(512, (0, b"koly"), (4, b"\0\0\0\4"))

# (id, data, kind, offset, words the description or advice must hold)
CASES = [
    ("empty", b"", "empty", 0, "empty"),
    ("zeros", at(4096), "raw", 0, "-f raw -O qcow2 {path} {output}"),
    ("short text", b"hello\n", "raw", 0, "-f raw"),
    ("mbr", MBR + at(1024), "mbr", 510, "-f raw -O qcow2 {path} {output}"),
    ("mbr exactly 512", MBR, "mbr", 510, "MBR partition table"),
    (
        "gpt",
        at(4096, (510, b"\x55\xaa"), (512, b"EFI PART")),
        "gpt",
        512,
        "-f raw -O qcow2 {path} {output}",
    ),
    (
        "gpt 4k sectors",
        at(16384, (510, b"\x55\xaa"), (4096, b"EFI PART")),
        "gpt",
        4096,
        "GPT partition table",
    ),
    ("iso9660", at(0x9000, (0x8001, b"CD001")), "iso9660", 0x8001, "-f raw"),
    (
        "isohybrid",
        at(0x9000, (510, b"\x55\xaa"), (512, b"EFI PART"), (0x8001, b"CD001")),
        "iso9660",
        0x8001,
        "ISO 9660",
    ),
    ("iso exactly head size", at(HEAD_SIZE, (0x8001, b"CD001")), "iso9660", 0x8001, ""),
    ("iso cut short", at(0x8005, (0x8001, b"CD00")), "raw", 0, ""),
    (
        "vmdk sparse",
        at(4096, (0, b"KDMV\1\0\0\0")),
        "vmdk",
        0,
        "-f vmdk -O qcow2 {path} {output}",
    ),
    (
        "vmdk stream-optimized",
        at(4096, (0, b"KDMV\3\0\0\0"), (77, b"\1\0")),
        "vmdk",
        0,
        "stream-optimized",
    ),
    (
        "vmdk descriptor",
        b'# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\n',
        "vmdk",
        0,
        "monolithicFlat",
    ),
    ("vmware cowd", at(2048, (0, b"COWD\1\0\0\0")), "vmdk", 0, "-f vmdk"),
    (
        "vhd dynamic",
        vhd_footer(3) + at(4096) + vhd_footer(3),
        "vhd",
        0,
        "-f vpc -O qcow2 {path} {output}",
    ),
    ("vhd fixed", FIXED_VHD, "vhd", len(FIXED_VHD) - 512, "fixed"),
    (
        "vhd fixed holding an mbr disk",
        MBR + at(4096) + vhd_footer(2),
        "vhd",
        512 + 4096,
        "-f vpc",
    ),
    ("vhd differencing", vhd_footer(4) + at(1024) + vhd_footer(4), "vhd", 0, "parent"),
    ("vhdx", at(4096, (0, b"vhdxfileQ\0E\0M\0U\0")), "vhdx", 0, "-f vhdx"),
    (
        "vdi",
        at(
            512,
            (0, b"<<< QEMU VM Virtual Disk Image >>>\n"),
            (0x40, b"\x7f\x10\xda\xbe"),
        ),
        "vdi",
        0x40,
        "-f vdi -O qcow2 {path} {output}",
    ),
    (
        "vdi text only",
        at(512, (0, b"<<< Oracle VM VirtualBox Disk Image >>>\n")),
        "vdi",
        0,
        "-f vdi",
    ),
    ("qed", at(4096, (0, b"QED\0")), "qed", 0, "-f qed -O qcow2 {path} {output}"),
    (
        "luks",
        at(4096, (0, b"LUKS\xba\xbe\0\1aes")),
        "luks",
        0,
        "LUKS-encrypted raw container",
    ),
    ("luks2", at(4096, (0, b"LUKS\xba\xbe\0\2")), "luks", 0, "decrypt"),
    (
        "parallels",
        at(4096, (0, b"WithoutFreeSpace")),
        "parallels",
        0,
        "-f parallels -O qcow2 {path} {output}",
    ),
    ("parallels ext", at(4096, (0, b"WithouFreSpacExt")), "parallels", 0, ""),
    ("dmg", DMG, "dmg", len(DMG) - 512, "-f dmg -O qcow2 {path} {output}"),
    ("qcow1", at(512, (0, b"QFI\xfb\0\0\0\1")), "qcow", 0, "version 1"),
    ("gzip", gzip.compress(b"\0" * 4096), "gzip", 0, "gunzip -k {path}"),
    ("xz", lzma.compress(b"\0" * 4096), "xz", 0, "unxz -k {path}"),
    ("zstd", b"\x28\xb5\x2f\xfd\x04\x58" + at(64), "zstd", 0, "zstd -d {path}"),
    ("bzip2", bz2.compress(b"\0" * 4096), "bzip2", 0, "bunzip2 -k {path}"),
    ("zip", zip_bytes(), "zip", 0, "unzip {path}"),
    ("tar", tar_bytes("disk.vmdk"), "tar", 257, "tar -xf {path}"),
    ("ova", tar_bytes("vm.ovf", "vm-disk1.vmdk"), "tar", 257, "OVF descriptor"),
    ("git lfs pointer", LFS_POINTER, "git-lfs-pointer", 0, "git lfs pull"),
    ("git lfs pointer size", LFS_POINTER, "git-lfs-pointer", 0, "12345 bytes"),
    (
        "html error page",
        b"\n<!DOCTYPE html>\n<html><body>404</body></html>\n",
        "html",
        0,
        "download",
    ),
    # A file shorter than a signature does not match it.
    ("kdmv cut short", b"KDM", "raw", 0, ""),
    ("bzip2 magic without level", b"BZh", "raw", 0, ""),
    ("bzip2 magic with level 0", b"BZh0" + at(64), "raw", 0, ""),
    ("gzip magic cut short", b"\x1f\x8b", "raw", 0, ""),
    ("koly not at the footer", at(4096) + b"koly" + at(509), "raw", 0, ""),
    ("conectix not at the footer", at(4096) + b"conectix" + at(505), "raw", 0, ""),
    ("koly in a file shorter than a footer", b"koly" + at(100), "raw", 0, ""),
    ("ustar at the wrong offset", at(1024, (256, b"ustar")), "raw", 0, ""),
]


@pytest.mark.parametrize(
    ("data", "kind", "offset", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_identify(data: bytes, kind: str, offset: int, words: str) -> None:
    found = identify_bytes(data)
    assert (found.kind, found.offset) == (kind, offset)
    assert words in found.description + " " + (found.advice or "")


@pytest.mark.parametrize("data", [case[1] for case in CASES], ids=[c[0] for c in CASES])
def test_advice_fills_in(data: bytes) -> None:
    found = identify_bytes(data)
    assert found.kind in KINDS
    assert found.description
    if found.advice is not None:
        filled = found.advice.format(path="'in file'", output="'out.qcow2'")
        assert "{" not in filled and "}" not in filled


@pytest.mark.parametrize(
    ("kind", "command"),
    [
        ("gzip", "gunzip"),
        ("xz", "unxz"),
        ("zstd", "zstd -d"),
        ("bzip2", "bunzip2"),
    ],
)
def test_compressed_advice_says_decompress(kind: str, command: str) -> None:
    data = next(case[1] for case in CASES if case[0] == kind)
    advice = identify_bytes(data).advice
    assert advice is not None
    assert advice.startswith("decompress it first")
    assert f"`{command}" in advice


def test_lfs_pointer_without_size_line() -> None:
    found = identify_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    assert found.kind == "git-lfs-pointer"
    assert found.advice is not None and "git lfs pull" in found.advice
    assert "bytes" not in found.description


def test_raw_description_is_exact() -> None:
    found = identify_bytes(at(1 << 16))
    assert found == Identification(
        "raw",
        "raw or unknown data (no known image signature)",
        "convert it: qemu-img convert -f raw -O qcow2 {path} {output}",
        0,
    )


@given(st.binary(max_size=HEAD_SIZE + 1024))
def test_any_bytes_get_a_known_kind(data: bytes) -> None:
    found = identify_bytes(data)
    assert found.kind in KINDS
    assert 0 <= found.offset <= max(0, len(data) - 1)
    if found.advice is not None:
        found.advice.format(path="IN", output="OUT")


@given(st.binary(max_size=600), st.integers(min_value=0, max_value=4096))
def test_zero_padding_keeps_a_head_signature(prefix: bytes, padding: int) -> None:
    """Head signatures do not depend on how much zero data follows them."""
    data = b"KDMV" + prefix
    assert identify_bytes(data + bytes(padding)).kind == "vmdk"


QEMU_IMAGES = [
    (["-f", "vmdk"], "vmdk", "sparse extent", lambda size: 0),
    (
        ["-f", "vmdk", "-o", "subformat=streamOptimized"],
        "vmdk",
        "stream-optimized",
        lambda size: 0,
    ),
    (["-f", "vpc"], "vhd", "dynamic", lambda size: 0),
    (["-f", "vpc", "-o", "subformat=fixed"], "vhd", "fixed", lambda size: size - 512),
    (["-f", "vhdx"], "vhdx", "VHDX", lambda size: 0),
    (["-f", "vdi"], "vdi", "VDI", lambda size: 0x40),
    (["-f", "qed"], "qed", "QED", lambda size: 0),
    (["-f", "parallels"], "parallels", "Parallels", lambda size: 0),
    (["-f", "raw"], "raw", "raw or unknown data", lambda size: 0),
    (
        [
            "-f",
            "luks",
            "--object",
            "secret,id=s,data=pw",
            "-o",
            "key-secret=s,iter-time=10",
        ],
        "luks",
        "LUKS-encrypted",
        lambda size: 0,
    ),
]


@pytest.mark.skipif(
    shutil.which("qemu-img") is None, reason="qemu-img is not installed"
)
@pytest.mark.parametrize(
    ("args", "kind", "words", "offset"),
    QEMU_IMAGES,
    ids=[" ".join(image[0][1:]) for image in QEMU_IMAGES],
)
def test_qemu_img_create(
    tmp_path: Path, args: list[str], kind: str, words: str, offset: Callable[[int], int]
) -> None:
    image = tmp_path / "image"
    subprocess.run(
        ["qemu-img", "create", "-q", *args, str(image), "4M"],
        check=True,
        capture_output=True,
    )
    found = identify_file(image)
    assert found.kind == kind
    assert found.offset == offset(image.stat().st_size)
    assert words in found.description
