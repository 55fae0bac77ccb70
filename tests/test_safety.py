"""The image is only read, and no file named inside it is ever opened."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from qcow2check import LEVELS, layout, validate

from .conftest import build_image, extension, qemu_img, requires_qemu_img


def test_a_fifo_named_as_backing_file_is_never_opened(tmp_path):
    # Opening a FIFO blocks until a writer comes: a hang here means it was opened.
    fifo = tmp_path / "backing.fifo"
    os.mkfifo(fifo)
    image = tmp_path / "overlay.qcow2"
    image.write_bytes(build_image(backing_file=str(fifo).encode()))
    data_fifo = tmp_path / "data.fifo"
    os.mkfifo(data_fifo)
    data_image = tmp_path / "data.qcow2"
    data_image.write_bytes(
        build_image(
            (extension(layout.QCOW2_EXT_MAGIC_DATA_FILE, str(data_fifo).encode()),),
            incompatible_features=1 << 2,
        )
    )
    code = (
        "import sys, qcow2check\n"
        "for path in sys.argv[1:]:\n"
        "    for level in qcow2check.LEVELS:\n"
        "        qcow2check.validate(path, level=level)\n"
    )

    subprocess.run(
        [sys.executable, "-c", code, str(image), str(data_image)],
        check=True,
        timeout=60,
    )


@requires_qemu_img
@pytest.mark.parametrize("level", LEVELS)
def test_the_image_is_not_changed(tmp_path, level):
    path = tmp_path / "dirty.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", str(path), "1G")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))

    validate(path, level=level)

    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert os.stat(path).st_mtime_ns == 1_000_000_000


def test_the_image_is_opened_read_only(tmp_path, monkeypatch):
    path = tmp_path / "image.qcow2"
    path.write_bytes(build_image())
    opened = []
    real_open = os.open

    def recording_open(name, flags, *args, **kwargs):
        opened.append((os.fspath(name), flags))
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)

    validate(path, level="quick")

    assert [name for name, _ in opened] == [str(path)]
    flags = opened[0][1]
    assert flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC) == 0


def test_an_internal_error_in_the_walk_rejects_the_image(tmp_path, monkeypatch):
    import qcow2check.walk as walk

    path = tmp_path / "image.qcow2"
    path.write_bytes(build_image())

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(walk, "_walk", broken)

    report = validate(path)

    assert not report.accepted
    (finding,) = [f for f in report.findings if f.severity == "error"]
    assert finding.rule == "not-checked"
    assert "internal error" in finding.message


def test_a_file_object_opened_from_a_descriptor_is_named_as_text(tmp_path):
    path = tmp_path / "image.qcow2"
    path.write_bytes(build_image())
    with os.fdopen(os.open(path, os.O_RDONLY), "rb") as file:
        report = validate(file, level="quick")
    assert isinstance(report.path, str)
    assert report.accepted
