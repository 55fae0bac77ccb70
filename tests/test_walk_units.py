"""The walk's building blocks, its limits on findings, and hostile input."""

from __future__ import annotations

import random
import struct
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcow2check.findings import Report
from qcow2check.validate import validate
from qcow2check.walk.state import FINDINGS_PER_RULE, Counts, Recorder
from qcow2check.walk.tables import decode_refcounts
from tests.qcow2_images import (
    assert_same_counts,
    create,
    image,
    io,
    needs_qemu,
    poke,
    poke_u64,
    qemu_check,
    read_u64,
    rules,
    walk,
)

L1, L2, DATA = 0x30000, 0x40000, 0x50000
COPIED = 1 << 63


@pytest.mark.parametrize("order", range(7))
def test_decode_refcounts_every_width(order):
    bits = 1 << order
    values = [random.Random(order).randrange(1 << bits) for _ in range(64)]
    if bits >= 8:
        data = b"".join(v.to_bytes(bits // 8, "big") for v in values)
    else:
        # Narrow entries fill each byte from its least significant bit.
        per_byte = 8 // bits
        data = bytes(
            sum(v << (bits * i) for i, v in enumerate(values[j : j + per_byte]))
            for j in range(0, len(values), per_byte)
        )
    assert decode_refcounts(data, order).tolist() == values


def test_counts_repeats_and_widening():
    counts = Counts(8, 9)
    counts.add(np.array([1, 2, 3]))
    counts.add(np.array([3, 3, 1]), weight=2)
    counts.add(np.array([5]), weight=300)
    counts.add(np.array([5]), weight=70000)
    assert counts.array.tolist() == [0, 3, 1, 5, 0, 70300, 0, 0]
    counts.add_region(512 * 6 + 100, 600)
    assert counts.array[6:].tolist() == [1, 1]


def test_recorder_lists_the_first_findings_and_counts_the_rest():
    report = Report("x", "metadata")
    recorder = Recorder(report)
    listed = recorder.take("l2-table", 50)
    for index in range(listed):
        recorder.add("l2-table", f"entry {index}", index)
    recorder.finish()
    assert listed == FINDINGS_PER_RULE
    assert len(report.findings) == FINDINGS_PER_RULE + 1
    assert report.findings[-1].message.startswith(
        f"... and {50 - FINDINGS_PER_RULE} more l2-table findings"
    )


@needs_qemu
def test_wrecked_l2_table_is_summarised_with_exact_counts(tmp_path):
    path = image(tmp_path)
    # Every entry of the L2 table: the data cluster with a reserved bit set.
    poke(path, L2, struct.pack(">Q", COPIED | DATA | 2) * 8192)

    report = walk(path)

    l2 = [f for f in report.findings if f.rule == "l2-table"]
    assert len(l2) == FINDINGS_PER_RULE + 1
    assert "more l2-table findings" in l2[-1].message
    assert len(report.findings) < 100
    result = assert_same_counts(report, path)
    assert result["corruptions"] > 8192


@needs_qemu
def test_refcount_overflow(tmp_path):
    # Two L2 entries share a data cluster that a 1-bit refcount cannot count twice.
    path = create(tmp_path / "r.qcow2", "64M", refcount_bits="1")
    io(path, "write -P 0x11 0 64k")
    poke_u64(path, L2 + 8, read_u64(path, L2))

    report = walk(path)

    assert any("more than a 1-bit refcount" in f.message for f in report.findings)
    assert_same_counts(report, path)


@needs_qemu
def test_external_data_file(tmp_path):
    path = create(tmp_path / "d.qcow2", "64M", data_file=str(tmp_path / "d.raw"))
    io(path, "write -P 0x11 0 64k", "write -P 0x22 1M 64k")

    report = walk(path)

    assert not rules(report) - {"not-checked"}, report.findings
    assert report.info["check"]["allocated_clusters"] == 2
    assert_same_counts(report, path)


@needs_qemu
def test_luks_header_clusters_are_referenced(tmp_path):
    path = tmp_path / "l.qcow2"
    subprocess.run(
        [
            "qemu-img", "create", "-q", "--object", "secret,id=s0,data=pw",
            "-f", "qcow2", "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
            str(path), "64M",
        ],
        check=True,
    )  # fmt: skip

    report = walk(path)

    # Without the encryption header's clusters they would all be leaked.
    assert "leaked-clusters" not in rules(report), report.findings
    assert report.info["check"]["image_end_offset"] > 1 << 20


@needs_qemu
def test_progress_is_reported(tmp_path):
    path = create(tmp_path / "p.qcow2", "1G", cluster_size="4096")
    io(path, "write -P 0x11 0 1M", "write -P 0x22 512M 1M")
    calls = []

    report = validate(path, level="metadata", progress=lambda *a: calls.append(a))

    assert report.accepted, report.findings
    assert calls and calls[-1][0] == calls[-1][1] > 0
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


@pytest.fixture(scope="module")
def base_image(tmp_path_factory):
    if shutil_which("qemu-img") is None:
        pytest.skip("qemu-img is needed")
    path = create(tmp_path_factory.mktemp("base") / "b.qcow2", "64M")
    io(path, "write -P 0x11 0 64k", "write -c -P 0x22 1M 64k")
    subprocess.run(["qemu-img", "snapshot", "-c", "s1", str(path)], check=True)
    io(path, "write -P 0x33 0 64k", "write -P 0x44 2M 64k")
    return path.read_bytes()


def shutil_which(name):
    import shutil

    return shutil.which(name)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    pokes=st.lists(
        st.tuples(st.integers(0x10000, 0xBFFF8), st.integers(0, (1 << 64) - 1)),
        min_size=1,
        max_size=4,
    ),
    cut=st.one_of(st.none(), st.integers(0x50000, 0xC0000)),
)
def test_hostile_tables_never_crash_and_match_qemu(tmp_path, base_image, pokes, cut):
    data = bytearray(base_image)
    for offset, value in pokes:
        offset = min(offset, len(data) - 8) // 8 * 8
        data[offset : offset + 8] = struct.pack(">Q", value)
    path = tmp_path / "h.qcow2"
    path.write_bytes(bytes(data if cut is None else data[:cut]))

    report = validate(path, level="deep")

    assert not any("internal error" in f.message for f in report.findings)
    code, result = qemu_check(path)
    if "check" in report.info and result is not None and code in (0, 2, 3):
        check = report.info["check"]
        assert check["corruptions"] == result.get("corruptions", 0)
        assert check["leaks"] == result.get("leaks", 0)


@needs_qemu
def test_more_clusters_than_qemu_can_count(tmp_path):
    path = create(tmp_path / "s.qcow2", "64M", cluster_size="512")
    with open(path, "r+b") as file:
        file.truncate(1 << 41)

    report = walk(path)

    assert "check" not in report.info
    assert [f.rule for f in report.findings] == ["not-checked"]
    code, _ = qemu_check(path)
    assert code == 1
