"""Identify what a file is when it is not a QCOW2 image.

The caller reads the first ``HEAD_SIZE`` and the last ``TAIL_SIZE`` bytes of the
file and passes them to :func:`identify`, which looks for the signatures of other
disk image formats, compressed files, archives, Git LFS pointers and raw disks, and
says what the file is and what to do about it.

Advice strings may hold the placeholders ``{path}`` (the file examined) and
``{output}`` (where a QCOW2 image should go); fill them with ``str.format`` after
shell-quoting the paths. No advice contains any other brace.
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

HEAD_SIZE = 0x8006
TAIL_SIZE = 512

_SECTOR = 512
_ISO_OFFSET = 0x8001
_TAR_OFFSET = 257
_VDI_OFFSET = 0x40
_VDI_SIGNATURE = struct.pack("<I", 0xBEDA107F)
_LFS_VERSIONS = (
    b"version https://git-lfs.github.com/spec/v1",
    b"version https://hawser.github.com/spec/v1",
)
_LFS_SIZE = re.compile(rb"^size (\d+)$", re.MULTILINE)
_VMDK_CREATE_TYPE = re.compile(rb'^\s*createType\s*=\s*"([^"\r\n]*)"', re.MULTILINE)
_BZIP2_LEVELS = tuple(bytes([level]) for level in b"123456789")
_VHD_TYPES = {2: "fixed", 3: "dynamic", 4: "differencing"}


class Identification(NamedTuple):
    """What a non-QCOW2 file is.

    ``kind`` is a short machine name, ``description`` says what the file is for a
    person, ``advice`` says what to do (or is None) and ``offset`` is the byte
    offset of the signature that identified the file.
    """

    kind: str
    description: str
    advice: str | None
    offset: int


def _convert(fmt: str) -> str:
    return f"convert it: qemu-img convert -f {fmt} -O qcow2 {{path}} {{output}}"


def _decompress(command: str) -> str:
    return (
        f"decompress it first (e.g. `{command} {{path}}`), "
        "then check the decompressed file"
    )


_RAW_ADVICE = _convert("raw")


def identify(head: bytes, tail: bytes, file_size: int) -> Identification:
    """Say what a file is from its first and last bytes.

    ``head`` is the first ``min(HEAD_SIZE, file_size)`` bytes of the file and
    ``tail`` the last ``min(TAIL_SIZE, file_size)`` bytes. A signature that would
    lie beyond the bytes given does not match.
    """
    if file_size == 0:
        return Identification(
            "empty",
            "an empty file (0 bytes)",
            "the file is empty: copy or download the image again",
            0,
        )
    for check in (_head_formats, _tail_formats, _packed_formats, _raw_contents):
        found = check(head, tail, file_size)
        if found is not None:
            return found
    return Identification(
        "raw", "raw or unknown data (no known image signature)", _RAW_ADVICE, 0
    )


def _head_formats(head: bytes, tail: bytes, file_size: int) -> Identification | None:
    """Disk image formats whose header starts the file."""
    if head.startswith(b"QFI\xfb"):
        version = _be32(head, 4)
        shown = "unknown version" if version is None else f"version {version}"
        return Identification("qcow", f"a QCOW image ({shown})", None, 0)
    if head.startswith(b"KDMV"):
        return Identification(
            "vmdk", _vmdk_sparse_description(head), _convert("vmdk"), 0
        )
    if head.startswith(b"COWD"):
        return Identification(
            "vmdk",
            "a VMDK image (VMware ESX COWD sparse extent)",
            _convert("vmdk"),
            0,
        )
    if head.startswith(b"# Disk DescriptorFile"):
        return _vmdk_descriptor(head)
    if head.startswith(b"conectix"):
        return _vhd(head, 0)
    if head.startswith(b"vhdxfile"):
        return Identification("vhdx", "a VHDX image", _convert("vhdx"), 0)
    if head.startswith(b"QED\0"):
        return Identification("qed", "a QED image", _convert("qed"), 0)
    if head.startswith((b"WithoutFreeSpace", b"WithouFreSpacExt")):
        return Identification(
            "parallels", "a Parallels disk image", _convert("parallels"), 0
        )
    if head[_VDI_OFFSET : _VDI_OFFSET + 4] == _VDI_SIGNATURE:
        return Identification(
            "vdi", "a VirtualBox VDI image", _convert("vdi"), _VDI_OFFSET
        )
    if head.startswith(b"<<< ") and b"Disk Image >>>" in head[:64]:
        return Identification("vdi", "a VirtualBox VDI image", _convert("vdi"), 0)
    return None


def _tail_formats(head: bytes, tail: bytes, file_size: int) -> Identification | None:
    """Formats identified by a footer in the last 512 bytes."""
    if len(tail) < _SECTOR:
        return None
    footer = tail[-_SECTOR:]
    offset = file_size - _SECTOR
    if footer.startswith(b"conectix"):
        return _vhd(footer, offset)
    if footer.startswith(b"koly"):
        return Identification(
            "dmg", "an Apple disk image (DMG)", _convert("dmg"), offset
        )
    return None


def _packed_formats(head: bytes, tail: bytes, file_size: int) -> Identification | None:
    """Compressed files, archives and things that stand in for a file."""
    if head.startswith(b"\x1f\x8b\x08"):
        return Identification(
            "gzip", "a gzip-compressed file", _decompress("gunzip -k"), 0
        )
    if head.startswith(b"\xfd7zXZ\x00"):
        return Identification("xz", "an xz-compressed file", _decompress("unxz -k"), 0)
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return Identification(
            "zstd", "a zstd-compressed file", _decompress("zstd -d"), 0
        )
    if head[:3] == b"BZh" and head[3:4] in _BZIP2_LEVELS:
        return Identification(
            "bzip2", "a bzip2-compressed file", _decompress("bunzip2 -k"), 0
        )
    if head.startswith(b"PK\x03\x04"):
        return Identification(
            "zip",
            "a zip archive",
            "extract the disk image from it first (e.g. `unzip {path}`)",
            0,
        )
    if head[_TAR_OFFSET : _TAR_OFFSET + 5] == b"ustar":
        return _tar(head)
    if head.startswith(_LFS_VERSIONS):
        return _lfs_pointer(head)
    if head[:1024].lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return Identification(
            "html",
            "an HTML page, not an image (an error page saved by a failed download?)",
            "download the image again and check the URL",
            0,
        )
    return None


def _raw_contents(head: bytes, tail: bytes, file_size: int) -> Identification | None:
    """Raw containers, disks and media recognised by what they hold.

    These run after the footer checks, as a fixed VHD or a DMG may hold any of them.
    """
    if head.startswith(b"LUKS\xba\xbe"):
        version = _be16(head, 6)
        shown = "" if version is None else f" (LUKS version {version})"
        return Identification(
            "luks",
            f"a LUKS-encrypted raw container{shown}",
            "it is encrypted and the import takes no encrypted image: decrypt it "
            "with its passphrase (cryptsetup open, or qemu-img convert with a "
            "secret object) and convert the decrypted disk to QCOW2",
            0,
        )
    if head[_ISO_OFFSET : _ISO_OFFSET + 5] == b"CD001":
        return Identification(
            "iso9660",
            "an ISO 9660 CD/DVD image",
            "an ISO image is installation media rather than a disk; to import it "
            "anyway, " + _RAW_ADVICE,
            _ISO_OFFSET,
        )
    for offset in (_SECTOR, 4096):
        if head[offset : offset + 8] == b"EFI PART":
            return Identification(
                "gpt",
                "a raw disk image with a GPT partition table",
                _RAW_ADVICE,
                offset,
            )
    if head[510:512] == b"\x55\xaa":
        return Identification(
            "mbr", "a raw disk image with an MBR partition table", _RAW_ADVICE, 510
        )
    return None


def _vmdk_sparse_description(head: bytes) -> str:
    compress = _le16(head, 77)
    if compress == 1:
        return "a VMDK image (stream-optimized sparse extent)"
    return "a VMDK image (sparse extent)"


def _vmdk_descriptor(head: bytes) -> Identification:
    match = _VMDK_CREATE_TYPE.search(head[:4096])
    create_type = ""
    if match:
        create_type = match.group(1).decode("ascii", "replace")
    shown = f", createType {create_type}" if create_type else ""
    return Identification(
        "vmdk",
        f"a VMDK descriptor file{shown} (text that points to separate extent files)",
        "keep its extent files next to it and " + _convert("vmdk"),
        0,
    )


def _vhd(footer: bytes, offset: int) -> Identification:
    disk_type = _VHD_TYPES.get(_be32(footer, 60) or 0)
    if disk_type == "differencing":
        return Identification(
            "vhd",
            "a differencing VHD image (it only holds changes to a parent image)",
            "merge it into its parent first (e.g. with Hyper-V's Merge-VHD), then "
            "convert the merged image with qemu-img convert -f vpc -O qcow2",
            offset,
        )
    shown = f" ({disk_type})" if disk_type else ""
    return Identification("vhd", f"a VHD image{shown}", _convert("vpc"), offset)


def _tar(head: bytes) -> Identification:
    first_member = head[:100].split(b"\0", 1)[0]
    if first_member.lower().endswith(b".ovf"):
        description = "a tar archive (an OVA appliance: an OVF descriptor and disks)"
    else:
        description = "a tar archive (an OVA?)"
    return Identification(
        "tar",
        description,
        "extract the disk image from it first (e.g. `tar -xf {path}`), then "
        "convert that disk (an OVA's disks are usually VMDK: "
        "qemu-img convert -f vmdk -O qcow2)",
        _TAR_OFFSET,
    )


def _lfs_pointer(head: bytes) -> Identification:
    match = _LFS_SIZE.search(head[:1024])
    shown = f" (the real file is {int(match.group(1))} bytes)" if match else ""
    return Identification(
        "git-lfs-pointer",
        f"a Git LFS pointer file{shown}",
        "the image itself is in Git LFS: run git lfs pull "
        "(or download the file itself rather than the pointer)",
        0,
    )


def _be16(data: bytes, offset: int) -> int | None:
    if len(data) < offset + 2:
        return None
    return int(struct.unpack_from(">H", data, offset)[0])


def _le16(data: bytes, offset: int) -> int | None:
    if len(data) < offset + 2:
        return None
    return int(struct.unpack_from("<H", data, offset)[0])


def _be32(data: bytes, offset: int) -> int | None:
    if len(data) < offset + 4:
        return None
    return int(struct.unpack_from(">I", data, offset)[0])
