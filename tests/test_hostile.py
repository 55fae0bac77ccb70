"""Hostile inputs: a verdict for each, in bounded time and memory, touching nothing.

(a) Worst-case headers and tables — the largest claims QEMU allows and beyond,
tables pointing at each other — each validated at every level in a child process
whose peak memory and time are measured. The images are small on disk: sparse, or
cut short where the claim exceeds the file, so the validator has to check claims
against the file before it allocates.

(b) Files that are not regular: a FIFO, a directory, a UNIX socket, character
devices, a loop block device.

(c) Nothing outside the image is opened and the image is not changed, at every
level, whatever names the image carries.

And every input that ever failed (``tests/corpus/``) is replayed with its expected
verdict.

The memory bound, ``MEMORY_BOUND``: 256 MiB plus the bytes the file really holds
on disk. QEMU caps what a valid image can ask for — an active L1 table of 32 MiB,
a refcount table of 8 MiB, a snapshot table of 64 MiB — so a validator that holds
each of these once, decoded, plus the interpreter and numpy (about 45 MiB
measured), stays far below 256 MiB; what the file holds may be mirrored once more
(the computed refcounts of clusters that exist). Peak memory is the child's own
``VmHWM``: ``wait4``'s ``ru_maxrss`` of a child started with vfork and exec counts
the parent's peak too (Linux keeps the old mm's high-water mark across exec).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from qcow2check import LEVELS, ImageReadError, layout, validate

from .conftest import extension, header_fields

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parent / "corpus"

MiB = 1 << 20
MEMORY_BOUND = 256 * MiB
# Per level. Honest images of these sizes take well under a second; only a hang or
# a blow-up in proportion to a claim, not to the file, gets near this.
TIME_BOUND = 30.0
COPIED, COMPRESSED = 1 << 63, 1 << 62

# Runs in the child: validate one image at every level, record every file opened
# after start-up, and report time, verdict and peak memory per level.
RUNNER = r"""
import io, json, os, re, signal, sys, time
import qcow2check, qcow2check.walk
from tests.conftest import build_image

TIME_BOUND = float(sys.argv[2])

# Warm up, so that lazy imports (numpy, zlib, zstandard, thread pools) happen
# before the audit hook: after it, only the image should be opened.
for level in qcow2check.LEVELS:
    qcow2check.validate(io.BytesIO(build_image()), level=level)

opened = []
def audit(event, args):
    if event == "open" and not isinstance(args[0], int):
        opened.append(str(args[0]))
    elif event in ("os.listdir", "os.scandir", "subprocess.Popen", "os.system",
                   "os.exec", "os.posix_spawn", "socket.connect", "os.chdir"):
        opened.append(f"{event} {args[0]}")
sys.addaudithook(audit)

def peak():
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+)", status.read()).group(1)) * 1024

class Expired(BaseException):  # not an Exception: the walk may catch those
    pass

def expire(signum, frame):
    raise Expired

signal.signal(signal.SIGALRM, expire)
result = {"levels": {}, "opened": opened}
for level in qcow2check.LEVELS:
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, TIME_BOUND)
    try:
        report = qcow2check.validate(sys.argv[1], level=level)
    except Expired:
        result["levels"][level] = {"seconds": None, "peak": peak()}
        continue
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    result["levels"][level] = {
        "seconds": time.monotonic() - start,
        "accepted": report.accepted,
        "errors": sorted({f.rule for f in report.findings if f.severity == "error"}),
        "bytes_read": report.info.get("bytes_read"),
        "peak": peak(),
    }
    json.dumps(report.to_dict(), allow_nan=False)
result["opened"] = [path for path in opened if path != "/proc/self/status"]
print(json.dumps(result), flush=True)
# A level cut short may leave decoding threads behind: do not wait for them.
os._exit(0)
"""


def run_levels(path: Path, timeout: float = 3 * TIME_BOUND + 30) -> dict:
    """Validate ``path`` at every level in a child process; return its figures."""
    with open(path.parent / "runner.out", "w+b") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(path), str(TIME_BOUND)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            pytest.fail(f"{path.name}: no verdict within {timeout} s")
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    assert child.returncode == 0, text
    return json.loads(text.splitlines()[-1])


# --- Building images --------------------------------------------------------------


class Image:
    """A version 3 image written piece by piece into a sparse file."""

    def __init__(self, cluster_bits: int = 16, **changes) -> None:
        self.cluster = 1 << cluster_bits
        self.cluster_bits = cluster_bits
        entries = self.cluster // 8
        changes.setdefault("size", 1 << 30)
        changes.setdefault("l1_size", -(-changes["size"] // (entries * self.cluster)))
        self.fields = header_fields(cluster_bits=cluster_bits, **changes)
        self.extensions: list[bytes] = []
        self.pieces: dict[int, bytes] = {}
        self.file_size: int | None = None

    def put(self, offset: int, data: bytes) -> None:
        self.pieces[offset] = data

    def put_u64s(self, offset: int, values) -> None:
        self.put(offset, struct.pack(f">{len(values)}Q", *values))

    def write(self, path: Path) -> Path:
        header = layout.header_v3.build(self.fields) + b"".join(self.extensions)
        with open(path, "wb") as file:
            file.write(header + bytes(8))
            for offset, data in sorted(self.pieces.items()):
                file.seek(offset)
                file.write(data)
            end = -(-max(file.tell(), self.cluster) // self.cluster) * self.cluster
            file.truncate(self.file_size or end)
        return path


def clean(cluster_bits: int = 16, **changes) -> Image:
    """A clean 1 GiB image, laid out as qemu-img lays it out: header, refcount table,
    refcount block, L1, one L2 table and one data cluster in clusters 0 to 5."""
    image = Image(cluster_bits, **changes)
    c = image.cluster
    image.fields.update(refcount_table_offset=c, l1_table_offset=3 * c)
    image.put_u64s(c, [2 * c])
    image.put(2 * c, struct.pack(">6H", *[1] * 6))
    image.put_u64s(3 * c, [COPIED | 4 * c])
    image.put_u64s(4 * c, [COPIED | 5 * c])
    image.put(5 * c, b"\xab" * c)
    return image


def l1_max_sparse() -> Image:
    image = clean(l1_size=4194304)
    image.pieces.pop(3 * image.cluster)
    image.file_size = 3 * image.cluster + 32 * MiB
    return image


def l1_max_one_l2() -> Image:
    # Every one of 4,194,304 L1 entries names the same L2 table.
    image = clean(l1_size=4194304)
    c = image.cluster
    l2 = 3 * c + 32 * MiB
    image.put(3 * c, struct.pack(">Q", COPIED | l2) * 4194304)
    image.put_u64s(l2, [COPIED | 5 * c])
    return image


def l1_all_ones(sparse: bool) -> Image:
    image = clean(l1_size=0xFFFFFFFF)
    if sparse:
        image.file_size = 3 * image.cluster + 0xFFFFFFFF * 8
    return image


def reftable_at_cap(one_block: bool) -> Image:
    image = clean(refcount_table_clusters=(8 * MiB) // (1 << 16))
    c = image.cluster
    image.fields["refcount_table_offset"] = 16 * c
    image.pieces.pop(c)
    entries = 8 * MiB // 8
    image.put_u64s(16 * c, [2 * c] * (entries if one_block else 1))
    image.file_size = 16 * c + 8 * MiB
    return image


def reftable_above_cap(clusters: int) -> Image:
    return clean(refcount_table_clusters=clusters)


def snapshots(count: int, l1_offset: int, l1_size: int) -> Image:
    image = clean(nb_snapshots=count, snapshots_offset=16 << 16)
    entry = struct.pack(
        ">QIHHIIQII", l1_offset, l1_size, 1, 1, 0, 0, 0, 0, 16
    ) + struct.pack(">QQ", 0, 1 << 30)
    entry += b"1s"
    entry += bytes(-len(entry) % 8)
    image.put(16 << 16, entry * count)
    return image


def snapshots_sharing_one_big_l1() -> Image:
    # 65,536 snapshots share the active L1 table, whose 8,192 entries all name one
    # L2 table: half a billion references to a single cluster.
    image = snapshots(65536, 3 << 16, 8192)
    image.fields["l1_size"] = 8192
    image.put(3 << 16, struct.pack(">Q", COPIED | 4 << 16) * 8192)
    return image


def extension_area_full() -> Image:
    # 2 MiB clusters: cluster 0 holds 262,131 empty records of an unknown type.
    image = clean(21)
    room = (image.cluster - 112 - 8) // 8
    image.extensions = [extension(0x12345678, b"")] * room
    return image


def l2_entry_at_l1() -> Image:
    image = clean()
    image.put_u64s(4 << 16, [COPIED | 3 << 16])
    return image


def refblock_is_reftable() -> Image:
    image = clean()
    image.put_u64s(1 << 16, [1 << 16])
    return image


def refblock_counts_itself_max() -> Image:
    image = clean()
    image.put(2 << 16, struct.pack(">6H", 1, 1, 0xFFFF, 1, 1, 1))
    return image


def snapshot_shares_active_tables() -> Image:
    return snapshots(1, 3 << 16, 1)


def compressed_max_sectors(cluster_bits: int, entries: int) -> Image:
    # Compressed descriptors with the largest sector count (2 clusters of data),
    # all at the same offset.
    image = clean(cluster_bits)
    c = image.cluster
    shift = 62 - (cluster_bits - 8)
    count = (1 << (cluster_bits - 8)) - 1
    image.put(4 * c, struct.pack(">Q", COMPRESSED | count << shift | 5 * c) * entries)
    image.file_size = 8 * c
    return image


def bitmaps(count: int, table_offset: int, table_size: int) -> Image:
    # Persistent bitmaps, each claiming the largest table QEMU allows (2**27
    # entries, 1 GiB) at the same place.
    image = clean(autoclear_features=1)
    directory = 16 << 16
    entry = struct.pack(">QIIBBHI", table_offset, table_size, 0, 1, 16, 1, 0) + b"b"
    entry += bytes(-len(entry) % 8)
    image.put(directory, entry * count)
    image.extensions = [
        extension(
            layout.QCOW2_EXT_MAGIC_BITMAPS,
            struct.pack(">IIQQ", count, 0, len(entry) * count, directory),
        )
    ]
    return image


def sparse_terabyte_small_clusters() -> Image:
    # A 1 TiB file of 512-byte clusters: 2**31 clusters, almost all holes.
    image = clean(9)
    image.file_size = 1 << 40
    return image


def _with(image: Image, **changes) -> Image:
    image.fields.update(changes)
    return image


HOSTILE = {
    "l1-4194304-entries-sparse": (l1_max_sparse, True),
    "l1-4194304-entries-one-l2": (l1_max_one_l2, True),
    "l1-size-all-ones-short": (lambda: l1_all_ones(False), True),
    "l1-size-all-ones-sparse": (lambda: l1_all_ones(True), True),
    "reftable-8mib-sparse": (lambda: reftable_at_cap(False), True),
    "reftable-8mib-one-block": (lambda: reftable_at_cap(True), True),
    "reftable-129-clusters": (lambda: reftable_above_cap(129), True),
    "reftable-all-ones": (lambda: reftable_above_cap(0xFFFFFFFF), True),
    "snapshots-65536-far": (lambda: snapshots(65536, 1 << 50, 4194304), True),
    "snapshots-65536-sharing-l1": (snapshots_sharing_one_big_l1, True),
    "snapshots-all-ones": (
        lambda: _with(snapshots(1, 3 << 16, 1), nb_snapshots=0xFFFFFFFF),
        True,
    ),
    "extension-area-full": (extension_area_full, None),
    "l2-entry-at-l1": (l2_entry_at_l1, True),
    "refblock-is-reftable": (refblock_is_reftable, True),
    "refblock-counts-itself-max": (refblock_counts_itself_max, None),
    "snapshot-shares-active-tables": (snapshot_shares_active_tables, True),
    "compressed-max-sectors-64k": (lambda: compressed_max_sectors(16, 1), True),
    "compressed-max-sectors-2m": (lambda: compressed_max_sectors(21, 262144), True),
    "sparse-1tib-512-byte-clusters": (sparse_terabyte_small_clusters, True),
    "bitmap-table-1gib-past-eof": (lambda: bitmaps(1, 32 << 16, 1 << 27), True),
    "bitmaps-65535-far": (lambda: bitmaps(65535, 1 << 50, 1 << 27), True),
}


def file_state(path: Path) -> tuple:
    """What a write would change: size, blocks, times, and the bytes if few."""
    info = os.stat(path)
    digest = (
        hashlib.sha256(path.read_bytes()).hexdigest()
        if info.st_blocks * 512 <= 64 * MiB and info.st_size <= 64 * MiB
        else None
    )
    return info.st_size, info.st_blocks, info.st_mtime_ns, info.st_ctime_ns, digest


def held_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


# --- (a) Worst cases, in a child, measured ---------------------------------------


def test_the_clean_base_image_is_accepted(tmp_path):
    path = clean().write(tmp_path / "clean.qcow2")
    for level in LEVELS:
        report = validate(path, level=level)
        assert report.accepted, (level, report.findings)
        assert not [f for f in report.findings if f.severity != "info"], level
    if shutil.which("qemu-img"):
        check = subprocess.run(["qemu-img", "check", str(path)], capture_output=True)
        assert check.returncode == 0, check.stdout


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_image_gets_a_verdict_in_bounded_time_and_memory(tmp_path, name):
    build, rejected = HOSTILE[name]
    path = build().write(tmp_path / f"{name}.qcow2")
    before = file_state(path)

    result = run_levels(path)

    levels = result["levels"]
    bound = MEMORY_BOUND + held_bytes(path)
    for level, figures in levels.items():
        assert figures["seconds"] is not None, f"{level}: over {TIME_BOUND} s"
        assert figures["peak"] < bound, (level, figures, bound)
    if rejected:
        for level in ("metadata", "deep"):
            assert not levels[level]["accepted"], (level, levels[level])
    assert result["opened"] == [str(path)] * len(LEVELS), result["opened"]
    assert file_state(path) == before


# --- (b) Files that are not regular --------------------------------------------


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qcow2check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def validate_in_child(path: Path | str, timeout: float = 30) -> str:
    """The outcome of validate() at every level, from a child that may not block."""
    code = (
        "import sys, qcow2check\n"
        "for level in qcow2check.LEVELS:\n"
        "    try:\n"
        "        r = qcow2check.validate(sys.argv[1], level=level)\n"
        "        print(level, r.accepted, r.info.get('bytes_read'))\n"
        "    except qcow2check.ImageReadError as error:\n"
        "        print(level, 'ImageReadError', error.reason)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "image.qcow2"
    os.mkfifo(fifo)
    start = time.monotonic()

    out = validate_in_child(fifo, timeout=30)
    cli = run_cli(str(fifo), timeout=30)

    assert out.count("ImageReadError is a FIFO") == len(LEVELS), out
    assert cli.returncode == 2, cli
    assert time.monotonic() - start < 20


def test_a_pipe_given_as_a_file_object_is_refused():
    read_end, write_end = os.pipe()
    try:
        with open(read_end, "rb", closefd=False) as pipe, time_limit(10):
            for level in LEVELS:
                with pytest.raises(ImageReadError, match="cannot seek"):
                    validate(pipe, level=level)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_an_empty_stream_gets_a_verdict():
    for level in LEVELS:
        report = validate(io.BytesIO(b""), level=level)
        assert not report.accepted
        assert report.rules_found() == {"not-qcow2"}


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(ImageReadError, match="directory"):
        validate(tmp_path, level="quick")
    assert run_cli(str(tmp_path)).returncode == 2


def test_a_unix_socket_is_refused(tmp_path):
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        server.listen(1)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        for level in LEVELS:
            with pytest.raises(ImageReadError):
                validate(path, level=level)
        assert run_cli(str(path)).returncode == 2
    finally:
        server.close()


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_a_character_device_gets_a_verdict_after_a_bounded_read(device):
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    with time_limit(10):
        for level in LEVELS:
            report = validate(device, level=level)
            assert not report.accepted, (level, report.findings)
            assert report.rules_found() & {"not-qcow2"}, report.findings
            assert report.info["bytes_read"] <= 128 << 10, report.info
    assert run_cli(device, timeout=30).returncode == 1


def test_a_loop_block_device_gets_the_verdict_of_its_file(tmp_path):
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("attaching a loop device needs root and losetup")
    path = clean().write(tmp_path / "clean.qcow2")
    attach = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", str(path)],
        capture_output=True,
        text=True,
    )
    if attach.returncode:
        pytest.skip(f"losetup refused: {attach.stderr.strip()}")
    device = attach.stdout.strip()
    try:
        assert stat.S_ISBLK(os.stat(device).st_mode)
        for level in LEVELS:
            from_file = validate(path, level=level)
            from_device = validate(device, level=level)
            assert from_device.accepted == from_file.accepted, level
            assert from_device.rules_found() == from_file.rules_found(), level
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)


# --- (c) Nothing outside the image is opened, nothing is changed ----------------


def outside_names(tmp_path_factory) -> dict[str, bytes]:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    secret = elsewhere / "secret"
    secret.write_bytes(b"not for the validator")
    fifo = elsewhere / "fifo"
    os.mkfifo(fifo)
    return {
        "fifo": str(fifo).encode(),
        "device": b"/dev/zero",
        "outside-file": str(secret).encode(),
        "relative-outside": b"../elsewhere/secret",
        "json-spec": b'json:{"driver":"raw","file":{"driver":"file",'
        b'"filename":"' + str(secret).encode() + b'"}}',
    }


@pytest.fixture(scope="module")
def names(tmp_path_factory) -> dict[str, bytes]:
    return outside_names(tmp_path_factory)


@pytest.mark.parametrize(
    "kind", ["fifo", "device", "outside-file", "relative-outside", "json-spec"]
)
@pytest.mark.parametrize("field", ["backing file", "data file"])
def test_a_name_in_the_image_is_never_opened(tmp_path, names, kind, field):
    image = clean()
    name = names[kind]
    if field == "backing file":
        image.put(1024, name)
        image.fields.update(backing_file_offset=1024, backing_file_size=len(name))
        image.extensions = [extension(layout.QCOW2_EXT_MAGIC_BACKING_FORMAT, b"raw")]
    else:
        image.extensions = [extension(layout.QCOW2_EXT_MAGIC_DATA_FILE, name)]
        image.fields["incompatible_features"] = 1 << 2
    path = image.write(tmp_path / "image.qcow2")
    before = file_state(path)

    result = run_levels(path, timeout=60)

    assert result["opened"] == [str(path)] * len(LEVELS), result["opened"]
    assert file_state(path) == before
    for level, figures in result["levels"].items():
        assert not figures["accepted"], level


# --- Every input that ever failed ------------------------------------------------


@contextmanager
def time_limit(seconds: float):
    """Fail, instead of hanging the suite, when the block runs too long."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _expected() -> dict:
    return json.loads((CORPUS / "expected.json").read_text())


def test_every_corpus_input_has_an_expected_verdict():
    listed = set(_expected())
    present = {p.name for p in CORPUS.iterdir()} - {"expected.json", "README.md"}
    for entry in _expected().values():
        assert {"found", "accepted", "rules"} <= entry.keys(), entry
    assert present == listed


@pytest.mark.parametrize("name", sorted(_expected()))
def test_corpus_input_gets_its_expected_verdict(name, caplog):
    expected = _expected()[name]
    data = (CORPUS / name).read_bytes()
    for level in LEVELS:
        want = {"absent": [], **expected, **expected.get("levels", {}).get(level, {})}
        caplog.clear()
        with time_limit(TIME_BOUND), caplog.at_level(logging.DEBUG, "qcow2check"):
            report = validate(io.BytesIO(data), level=level)
        errors = {f.rule for f in report.findings if f.severity == "error"}
        # The walk logs an internal error with its traceback and carries on: that
        # is a failure too.
        logged = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
        assert not logged, (level, logged[0].getMessage())
        assert report.accepted == want["accepted"], (level, report.findings)
        assert set(want["rules"]) <= errors, (level, report.findings)
        assert not set(want["absent"]) & errors, (level, report.findings)
