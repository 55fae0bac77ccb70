"""The corruption corpus (format notes section 7): each image is corrupted at a
known offset, then the walk must name the rule and count corruptions and leaks
exactly as ``qemu-img check --output=json`` does.

Base image, as in qemu-iotests 060: 64 MiB, 64 KiB clusters, 64 KiB written at
guest offset 0, so the header is at 0x0, the refcount table at 0x10000, the
refcount block at 0x20000, the L1 table at 0x30000, the L2 table at 0x40000 and
the data cluster at 0x50000.
"""

from __future__ import annotations

import pytest

from tests.qcow2_images import (
    assert_same_counts,
    image,
    io,
    needs_qemu,
    poke_u16,
    poke_u64,
    qemu_check,
    read_u64,
    rules,
    truncate,
    walk,
)

pytestmark = needs_qemu

REFTABLE, REFBLOCK, L1, L2, DATA = 0x10000, 0x20000, 0x30000, 0x40000, 0x50000
COPIED = 1 << 63


@pytest.mark.parametrize(
    ("case", "offset", "value", "expected"),
    [
        # 16: the L1 entry points at the L1 table's own cluster.
        ("l1-points-at-itself", L1, COPIED | L1, {"overlap", "refcount"}),
        # 17: an L2 entry points at the refcount block.
        ("l2-points-at-refblock", L2, COPIED | REFBLOCK, {"overlap", "refcount"}),
        # 20: an unaligned L1 entry: QEMU reads the table there, an avalanche.
        ("l1-unaligned", L1, COPIED | 0x42A00, {"l1-table", "l2-table"}),
        # 21 and 22: unaligned data and preallocated zero cluster offsets.
        ("l2-unaligned", L2, COPIED | 0x52A00, {"l2-table", "refcount"}),
        ("l2-unaligned-zero", L2, COPIED | 0x52A01, {"l2-table", "refcount"}),
        # 24: the refcount table entry is gone: every cluster has refcount 0.
        ("reftable-empty", REFTABLE, 0, {"refcount"}),
        # 28 and 30: refcount blocks beyond the end of the file.
        ("refblock-far-past-end", REFTABLE + 8, 0x00FFFFFF00000000, {"refcount"}),
        ("refblock-past-end", REFTABLE + 8, 0x100000, {"refcount"}),
        # 31: a data cluster 2**32 clusters into a small file.
        ("data-far-past-end", L2 + 8, COPIED | 1 << 48, {"l2-table"}),
        ("l1-reserved-bits", L1, COPIED | L2 | 1, {"l1-table"}),
        ("l2-reserved-bits", L2, COPIED | DATA | 2, {"l2-table"}),
        ("l1-past-end", L1, COPIED | 0x7000000, {"l1-table"}),
    ],
)
def test_corrupted_entry(tmp_path, case, offset, value, expected):
    path = image(tmp_path)
    poke_u64(path, offset, value)

    report = walk(path)

    assert expected <= rules(report, "error"), report.findings
    assert not report.accepted
    result = assert_same_counts(report, path)
    assert result.get("corruptions", 0) > 0


def test_unaligned_refcount_block_is_a_check_error(tmp_path):
    # 23: QEMU cannot read the refcounts at all and exits 1.
    path = image(tmp_path)
    poke_u64(path, REFTABLE, 0x22A00)

    report = walk(path)

    assert "refcount" in rules(report, "error")
    assert report.info["check"]["check_errors"] > 0
    code, result = qemu_check(path)
    assert code == 1
    if result is not None:
        assert report.info["check"]["check_errors"] == result["check-errors"]


def test_header_refcount_two_and_l1_copied_clear(tmp_path):
    # 32: a leak on cluster 0 and an OFLAG_COPIED error on the L1 entry.
    path = image(tmp_path)
    poke_u16(path, REFBLOCK, 2)
    poke_u64(path, L1, L2)

    report = walk(path)

    assert {"leaked-clusters", "refcount"} <= rules(report)
    leak = next(f for f in report.findings if f.rule == "leaked-clusters")
    assert leak.severity == "warning" and "1 clusters" in leak.message
    assert any("COPIED" in f.message for f in report.findings)
    result = assert_same_counts(report, path)
    assert result["corruptions"] == 1 and result["leaks"] == 1


def test_data_cluster_refcount_two(tmp_path):
    # 37: refcount 2 on a data cluster whose L2 entry says COPIED.
    path = image(tmp_path)
    poke_u16(path, REFBLOCK + 2 * 5, 2)

    report = walk(path)

    assert {"leaked-clusters", "refcount"} <= rules(report)
    assert_same_counts(report, path)


def test_snapshot_l2_entry_points_at_active_data(tmp_path):
    # 18: a snapshot's L2 entry shares the active data cluster: a refcount error,
    # and the snapshot's old data cluster is leaked.
    path = image(tmp_path)
    _snapshot(path, "s1")
    io(path, "write -P 0x22 0 64k")
    active_l2 = read_u64(path, read_u64(path, 40)) & 0x00FFFFFFFFFFFE00
    active_data = read_u64(path, active_l2) & 0x00FFFFFFFFFFFE00
    assert active_l2 != L2 and active_data != DATA
    poke_u64(path, L2, active_data)

    report = walk(path)

    assert {"refcount", "leaked-clusters"} <= rules(report)
    result = assert_same_counts(report, path)
    assert result["corruptions"] >= 1 and result["leaks"] >= 1


@pytest.mark.parametrize(
    ("size", "accepted"),
    [
        # 46: cut inside the L2 table: the data cluster lies past the end.
        (L2 + 0x100, False),
        # A partial last cluster is allowed.
        (DATA + 0x100, True),
    ],
)
def test_truncated_file(tmp_path, size, accepted):
    path = image(tmp_path)
    truncate(path, size)

    report = walk(path)

    assert report.accepted is accepted, report.findings
    if not accepted:
        assert "l2-table" in rules(report)
        assert any("past the end of the file" in f.message for f in report.findings)
    assert_same_counts(report, path)


def test_dirty_image_refcounts_are_warnings(tmp_path):
    # 36: lazy refcounts, killed mid-write: the stored refcounts are stale.
    path = tmp_path / "dirty.qcow2"
    from tests.qcow2_images import create

    create(path, "64M", compat="1.1", lazy_refcounts="on")
    try:
        io(path, "write -P 0x2a 0 128k", "sigraise 9")
    except Exception:
        pass

    report = walk(path)

    refcount = [f for f in report.findings if f.rule == "refcount"]
    assert refcount and all(f.severity == "warning" for f in refcount)
    assert report.accepted
    assert_same_counts(report, path)


def _snapshot(path, name):
    import subprocess

    subprocess.run(["qemu-img", "snapshot", "-c", name, str(path)], check=True)
