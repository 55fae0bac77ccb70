"""Shared fixtures: images built in memory with construct, and qemu-img helpers."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess

import pytest

from qcow2check import layout

GiB = 1 << 30
CLUSTER_BITS = 16
CLUSTER_SIZE = 1 << CLUSTER_BITS

requires_qemu_img = pytest.mark.skipif(
    shutil.which("qemu-img") is None, reason="qemu-img is not installed"
)


def header_fields(**changes) -> dict:
    """A valid version 3 header for a 1 GiB image laid out as qemu-img lays it out:
    header, refcount table, refcount block, L1 table in clusters 0 to 3."""
    fields = dict(
        magic=layout.MAGIC,
        version=3,
        backing_file_offset=0,
        backing_file_size=0,
        cluster_bits=CLUSTER_BITS,
        size=GiB,
        crypt_method=0,
        l1_size=2,
        l1_table_offset=3 * CLUSTER_SIZE,
        refcount_table_offset=CLUSTER_SIZE,
        refcount_table_clusters=1,
        nb_snapshots=0,
        snapshots_offset=0,
        incompatible_features=0,
        compatible_features=0,
        autoclear_features=0,
        refcount_order=4,
        header_length=112,
        compression_type=0,
        padding=bytes(7),
        unknown_fields=None,
    )
    fields.update(changes)
    return fields


def extension(ext_type: int, data: bytes) -> bytes:
    return layout.header_extension.build(
        dict(type=ext_type, length=len(data), data=data, padding=bytes(-len(data) % 8))
    )


def build_image(
    extensions: tuple[bytes, ...] = (),
    backing_file: bytes | None = None,
    clusters: int = 4,
    **changes,
) -> bytes:
    """Cluster 0 (header, extensions, end marker, backing file name), then empty
    clusters, so that every table the header points at lies inside the file."""
    fields = header_fields(**changes)
    struct_ = layout.header_v2 if fields["version"] == 2 else layout.header_v3
    area = struct_.build(fields) + b"".join(extensions) + bytes(8)
    if backing_file is not None:
        fields.update(
            backing_file_offset=len(area), backing_file_size=len(backing_file)
        )
        area = struct_.build(fields) + b"".join(extensions) + bytes(8) + backing_file

    cluster_bits = fields["cluster_bits"]
    cluster_size = 1 << cluster_bits if 9 <= cluster_bits <= 21 else CLUSTER_SIZE
    return area.ljust(cluster_size, b"\0") + bytes(cluster_size * (clusters - 1))


def put_u64(data: bytes, offset: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(">Q", out, offset, value)
    return bytes(out)


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["qemu-img", *args], check=True, capture_output=True, text=True
    )


def qemu_img_info(path) -> dict:
    return json.loads(qemu_img("info", "--output=json", str(path)).stdout)


def error_rules(report) -> set[str]:
    """The rules of a report's errors and warnings (info findings left out)."""
    return {f.rule for f in report.findings if f.severity != "info"}
