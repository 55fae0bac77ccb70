"""Make small QCOW2 images with qemu-img and qemu-io, and poke bytes into them.

Used by the walk tests: every image is built in a test's ``tmp_path``, corrupted
at a known offset, then checked by qcow2check and by ``qemu-img check``.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from qcow2check.findings import Report
from qcow2check.header import read_header
from qcow2check.image import ImageFile
from qcow2check.walk import check_tables

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-img and qemu-io are needed to build images",
)


def create(path: Path, size: str = "64M", *options: str, **opts: str) -> Path:
    """qemu-img create -f qcow2 with ``-o key=value`` for each of ``opts``."""
    command = ["qemu-img", "create", "-q", "-f", "qcow2"]
    settings = [f"{key}={value}" for key, value in opts.items()]
    if settings:
        command += ["-o", ",".join(settings)]
    subprocess.run([*command, *options, str(path), size], check=True)
    return path


def io(path: Path, *commands: str) -> None:
    """Run qemu-io commands (``"write -P 0x11 0 64k"``) on the image."""
    args = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        args += ["-c", command]
    subprocess.run([*args, str(path)], check=True, capture_output=True)


def image(tmp_path: Path, name: str = "t.qcow2", size: str = "64M", **opts) -> Path:
    """A fresh image with 64 KiB of data at guest offset 0 (the corpus base)."""
    path = create(tmp_path / name, size, **opts)
    io(path, "write -P 0x11 0 64k")
    return path


def read_u64(path: Path, offset: int) -> int:
    with open(path, "rb") as file:
        file.seek(offset)
        return struct.unpack(">Q", file.read(8))[0]


def poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


def poke_u64(path: Path, offset: int, value: int) -> None:
    poke(path, offset, struct.pack(">Q", value))


def poke_u32(path: Path, offset: int, value: int) -> None:
    poke(path, offset, struct.pack(">I", value))


def poke_u16(path: Path, offset: int, value: int) -> None:
    poke(path, offset, struct.pack(">H", value))


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as file:
        file.truncate(size)


def qemu_check(path: Path) -> tuple[int, dict | None]:
    """qemu-img check --output=json: exit code, and the JSON if it printed any."""
    done = subprocess.run(
        ["qemu-img", "check", "--output=json", "-f", "qcow2", str(path)],
        capture_output=True,
        text=True,
    )
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError:
        result = None
    return done.returncode, result


def walk(path: Path, deep: bool = False) -> Report:
    """Run the walk alone on an image whose header parses."""
    report = Report(str(path), "deep" if deep else "metadata")
    with ImageFile.open(path) as file:
        header = read_header(file, report)
        assert header is not None and header.geometry_valid, report.findings
        check_tables(file, header, report, deep=deep)
    return report


def rules(report: Report, severity: str | None = None) -> set[str]:
    return {
        finding.rule
        for finding in report.findings
        if severity is None or finding.severity == severity
    }


def assert_same_counts(report: Report, path: Path) -> dict:
    """Compare corruptions and leaks with qemu-img check; return qemu's JSON."""
    code, result = qemu_check(path)
    assert result is not None, f"qemu-img check printed no JSON (exit {code})"
    check = report.info["check"]
    assert check["corruptions"] == result.get("corruptions", 0), report.findings
    assert check["leaks"] == result.get("leaks", 0), report.findings
    return result
