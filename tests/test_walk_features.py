"""Images QEMU writes with every feature the walk follows: they must be accepted
with qemu-img check's figures, and their feature-specific corruptions named."""

from __future__ import annotations

import subprocess

import pytest

from qcow2check.findings import Report
from qcow2check.header import read_header
from qcow2check.image import ImageFile
from tests.qcow2_images import (
    assert_same_counts,
    create,
    image,
    io,
    needs_qemu,
    poke_u64,
    qemu_check,
    read_u64,
    rules,
    walk,
)

pytestmark = needs_qemu

L2, DATA = 0x40000, 0x50000
COPIED = 1 << 63
COMPRESSED = 1 << 62


def _assert_clean(path, deep=False):
    report = walk(path, deep=deep)
    assert report.accepted, report.findings
    assert not rules(report) - {"not-checked"}, report.findings
    result = assert_same_counts(report, path)
    check = report.info["check"]
    assert check["allocated_clusters"] == result.get("allocated-clusters", 0)
    assert check["fragmented_clusters"] == result.get("fragmented-clusters", 0)
    assert check["compressed_clusters"] == result.get("compressed-clusters", 0)
    assert check["total_clusters"] == result["total-clusters"]
    assert check["image_end_offset"] == result["image-end-offset"]
    return report


def _snapshot(path, name):
    subprocess.run(["qemu-img", "snapshot", "-c", name, str(path)], check=True)


def test_plain_image_figures_match_qemu(tmp_path):
    path = create(tmp_path / "t.qcow2", "256M")
    io(path, "write -P 0x11 0 64k", "write -P 0x22 1M 192k", "write -P 0x33 300k 64k")
    report = _assert_clean(path)
    assert report.info["check"]["fragmented_clusters"] > 0


def test_preallocated_metadata_image(tmp_path):
    path = create(tmp_path / "p.qcow2", "128M", preallocation="metadata")
    report = _assert_clean(path)
    assert report.info["check"]["allocated_clusters"] == 2048


def test_version_2_image(tmp_path):
    path = image(tmp_path, compat="0.10")
    _assert_clean(path)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 32, 64])
def test_refcount_widths(tmp_path, bits):
    path = create(tmp_path / "r.qcow2", "64M", refcount_bits=str(bits))
    io(path, "write -P 0x11 0 256k", "write -P 0x22 1M 64k")
    _assert_clean(path)


def test_refcount_width_1_packing(tmp_path):
    # With 1-bit refcounts the packing is LSB first: bit 5 of the refcount block's
    # first byte is cluster 5, the data cluster.
    path = create(tmp_path / "r.qcow2", "64M", refcount_bits="1")
    io(path, "write -P 0x11 0 64k")
    with open(path, "r+b") as file:
        file.seek(0x20000)
        first = file.read(1)[0]
        assert first == 0b00111111
        file.seek(0x20000)
        file.write(bytes([first & ~0b00100000]))

    report = walk(path)

    messages = [f.message for f in report.findings if f.rule == "refcount"]
    assert any(m.startswith("cluster 5 ") for m in messages), messages
    assert_same_counts(report, path)


def test_snapshots_are_walked(tmp_path):
    path = image(tmp_path)
    _snapshot(path, "one")
    io(path, "write -P 0x22 0 64k", "write -P 0x33 2M 64k")
    _snapshot(path, "two")
    io(path, "write -P 0x44 2M 64k")
    report = _assert_clean(path)
    assert report.info["check"]["allocated_clusters"] == 2


def test_snapshot_l1_unaligned_is_a_snapshot_table_error(tmp_path):
    # 13: the snapshot's L1 table offset no longer on a cluster boundary.
    path = image(tmp_path)
    _snapshot(path, "one")
    table = read_u64(path, 64)
    poke_u64(path, table, read_u64(path, table) + 0x200)

    report = walk(path)

    assert "snapshot-table" in rules(report, "error")
    assert_same_counts(report, path)


def test_snapshot_entry_without_extra_data(tmp_path):
    # 33: a version 3 entry must carry 16 bytes of extra data.
    path = image(tmp_path)
    _snapshot(path, "one")
    table = read_u64(path, 64)
    with open(path, "r+b") as file:
        file.seek(table + 36)
        file.write((8).to_bytes(4, "big"))

    report = walk(path)

    assert "snapshot-table" in rules(report, "error")
    assert any("incomplete" in f.message for f in report.findings)
    code, result = qemu_check(path)
    assert code != 0
    if result is not None:
        assert report.info["check"]["corruptions"] == result.get("corruptions", 0)


def _compressed_image(tmp_path, compression_type="zlib"):
    path = create(tmp_path / "c.qcow2", "64M", compression_type=compression_type)
    io(path, "write -c -P 0x11 0 64k", "write -c -P 0x22 64k 64k")
    return path


@pytest.mark.parametrize("compression_type", ["zlib", "zstd"])
def test_compressed_images_decode(tmp_path, compression_type):
    path = _compressed_image(tmp_path, compression_type)
    report = _assert_clean(path, deep=True)
    check = report.info["check"]
    assert check["compressed_clusters"] == 2
    assert check[f"{compression_type}_compressed_clusters"] == 2


def test_compressed_copied_flag(tmp_path):
    # 38: COPIED on a compressed entry.
    path = _compressed_image(tmp_path)
    entry = read_u64(path, L2)
    assert entry & COMPRESSED
    poke_u64(path, L2, entry | COPIED)

    report = walk(path)

    assert "compressed-cluster" in rules(report, "error")
    assert_same_counts(report, path)


def test_compressed_span_overruns(tmp_path):
    # 39: the sector count set to its maximum spans into the next cluster, which
    # holds a normal data cluster.
    path = _compressed_image(tmp_path)
    io(path, "write -P 0x33 1M 64k")
    entry = read_u64(path, L2)
    poke_u64(path, L2, entry | 0xFF << 54)

    report = walk(path)

    assert "refcount" in rules(report, "error")
    assert_same_counts(report, path)


def test_undecodable_compressed_cluster_only_at_deep_level(tmp_path):
    # 40: the stream no longer starts where the descriptor says.
    path = _compressed_image(tmp_path)
    entry = read_u64(path, L2)
    poke_u64(path, L2, entry + 7)

    shallow = walk(path)
    deep = walk(path, deep=True)

    assert shallow.accepted, shallow.findings
    assert "compressed-cluster" in rules(deep, "error")
    assert deep.info["check"]["corruptions"] == 0
    assert_same_counts(deep, path)


def test_zstd_garbage_is_caught(tmp_path):
    path = _compressed_image(tmp_path, "zstd")
    entry = read_u64(path, L2)
    start = entry & ((1 << 54) - 1)
    with open(path, "r+b") as file:
        file.seek(start + 4)
        file.write(b"\xff" * 64)

    report = walk(path, deep=True)

    assert "compressed-cluster" in rules(report, "error")


def test_extended_l2_image(tmp_path):
    path = create(tmp_path / "x.qcow2", "64M", extended_l2="on")
    io(path, "write -P 0x11 0 64k", "write -P 0x22 1M 4k", "write -z 2M 64k")
    _assert_clean(path)


@pytest.mark.parametrize(
    ("entry", "bitmap"),
    [
        # 41: subcluster 0 both allocated and zero.
        (0, 1 << 32 | 1),
        # 41: an unallocated entry with allocation bits.
        (1, 1),
    ],
)
def test_extended_l2_bitmap_errors(tmp_path, entry, bitmap):
    path = create(tmp_path / "x.qcow2", "64M", extended_l2="on")
    io(path, "write -P 0x11 0 64k")
    poke_u64(path, L2 + 16 * entry + 8, bitmap)

    report = walk(path)

    assert "l2-table" in rules(report, "error")
    result = assert_same_counts(report, path)
    assert result["corruptions"] == 1


def test_zero_flag_in_version_2_is_stricter_than_qemu(tmp_path):
    # 43: QEMU's check passes it; a read fails.
    path = image(tmp_path, compat="0.10")
    poke_u64(path, L2, read_u64(path, L2) | 1)

    report = walk(path)

    assert "l2-table" in rules(report, "error")
    assert report.info["check"]["corruptions"] == 0
    assert_same_counts(report, path)


def _bitmap_table(path):
    report = Report(str(path), "metadata")
    with ImageFile.open(path) as file:
        header = read_header(file, report)
    directory = header.bitmaps_extension.bitmap_directory_offset
    return read_u64(path, directory)


def test_bitmaps_accepted(tmp_path):
    path = image(tmp_path)
    subprocess.run(["qemu-img", "bitmap", "--add", str(path), "b0"], check=True)
    subprocess.run(["qemu-img", "bitmap", "--add", str(path), "b1"], check=True)
    _assert_clean(path)


def test_bitmap_table_entry_corrupted(tmp_path):
    path = image(tmp_path)
    subprocess.run(["qemu-img", "bitmap", "--add", str(path), "b0"], check=True)
    table = _bitmap_table(path)
    poke_u64(path, table, 0x2)

    report = walk(path)

    assert "bitmap" in rules(report, "error")
    code, _ = qemu_check(path)
    assert code != 0


def test_compressed_data_past_the_end_at_deep_level(tmp_path):
    path = _compressed_image(tmp_path)
    entry = read_u64(path, L2)
    poke_u64(path, L2, entry & ~((1 << 54) - 1) | 1 << 40)
    poke_u64(path, L2 + 8, read_u64(path, L2))

    report = walk(path, deep=True)

    assert "compressed-cluster" in rules(report, "error")
    assert not any("internal error" in f.message for f in report.findings)
    assert_same_counts(report, path)


def test_snapshot_table_past_the_end(tmp_path):
    # The header claims 1000 snapshots past the end of the file: each entry reads
    # as zeros, an incomplete version 3 entry, counted without being parsed.
    path = image(tmp_path)
    poke_u64(path, 64, 1 << 30)
    with open(path, "r+b") as file:
        file.seek(60)
        file.write((1000).to_bytes(4, "big"))

    report = walk(path)

    assert "snapshot-table" in rules(report, "error")
    result = assert_same_counts(report, path)
    assert result["corruptions"] == 1001


def test_deep_level_says_snapshot_only_clusters_were_not_decoded():
    from pathlib import Path

    from qcow2check import validate

    samples = Path(__file__).parent.parent / "samples"
    with_snapshot = validate(samples / "snapshot.qcow2", level="deep")
    without = validate(samples / "ok-data.qcow2", level="deep")

    def notes(report):
        return [f.message for f in report.findings if f.rule == "not-checked"]

    assert any("internal snapshots were not decoded" in m for m in notes(with_snapshot))
    assert notes(without) == []
