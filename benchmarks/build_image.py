"""Build large QCOW2 images for the benchmarks in seconds, without qemu-img.

Two kinds of image, both clean for ``qemu-img check`` (no corruption, no leak):

``preallocated``
    What ``qemu-img create -o preallocation=metadata`` makes: every guest cluster
    has an L2 entry pointing at its own host cluster, which is allocated but never
    written, so the file is sparse and only the metadata takes disk space. As QEMU
    lays it out: the header in cluster 0, then the refcount table, the refcount
    blocks and the L1 table, then each L2 table followed by the data clusters it
    maps. Unlike QEMU, which grows the refcount table as it allocates and leaves
    refcount blocks between the data, all refcount blocks sit together at the
    start; for an image that needs a single refcount block the metadata is the same
    byte for byte. ``fill`` below 1 allocates only that share of the guest
    clusters, spread evenly (every other one at 0.5); an L2 table that would map
    nothing is not allocated, so a fill of 0 is a freshly created empty image.

``zlib``, ``zstd``
    What ``qemu-img convert -c -O qcow2 [-o compression_type=zstd]`` makes of a disk
    full of text: every cluster compressed on its own (raw deflate with a 4 KiB
    window as QEMU's ``qcow2_zlib_compress``; one zstd frame per cluster), packed
    byte after byte behind the L2 table that maps them. The text is words drawn
    from a fixed vocabulary by a seeded generator, so it compresses about as well
    as real text and is the same on every run. The refcount table and blocks come
    last, as they do after QEMU has had to grow them.

Both write only the metadata and the compressed data, in bulk, from numpy arrays
of big-endian integers. Built images are cached under ``$QCOW2CHECK_BENCH_DIR``
(default ``/tmp/qcow2check-bench``); :func:`cached_image` reuses them.

    python benchmarks/build_image.py preallocated big.qcow2 --size 1TiB
    python benchmarks/build_image.py zstd text.qcow2 --size 1GiB --verify
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import repeat
from pathlib import Path

import click
import numpy
import zstandard

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run from a checkout: benchmark the qcow2check next to this file.
    sys.path.insert(0, str(ROOT))

from qcow2check import layout  # noqa: E402
from qcow2check.units import parse_size  # noqa: E402

PREALLOCATED = "preallocated"
ZLIB = "zlib"
ZSTD = "zstd"
KINDS = (PREALLOCATED, ZLIB, ZSTD)
COMPRESSION_TYPES = {
    ZLIB: layout.QCOW2_COMPRESSION_TYPE_ZLIB,
    ZSTD: layout.QCOW2_COMPRESSION_TYPE_ZSTD,
}

# What qemu-img create writes by default: 16-bit refcounts and a 112-byte header
# (the 104-byte version 3 header, compression_type and padding).
REFCOUNT_ORDER = 4
REFCOUNT_DTYPE = ">u2"
HEADER_LENGTH = 112
# QEMU's qcow2_zlib_compress: deflateInit2(level -1, DEFLATED, wbits -12, memLevel 9).
ZLIB_WBITS = -12
ZLIB_MEMLEVEL = 9
ZSTD_LEVEL = 3  # ZSTD_CLEVEL_DEFAULT, what QEMU gets from ZSTD_createCCtx

# Part of every cached file name: bump it when a builder changes its output.
BUILDER_VERSION = 1
BENCH_DIR_ENV = "QCOW2CHECK_BENCH_DIR"
DEFAULT_BENCH_DIR = "/tmp/qcow2check-bench"

# The text is made in chunks of this size, each from its own seed, so that any
# cluster can be rebuilt alone and chunks can be compressed in parallel.
TEXT_CHUNK = 1 << 20
TEXT_VOCABULARY = 4096

_L2_BATCH_ENTRIES = 1 << 20


def bench_dir() -> Path:
    return Path(os.environ.get(BENCH_DIR_ENV, DEFAULT_BENCH_DIR))


def _div_up(a: int, b: int) -> int:
    return -(-a // b)


# --- Header cluster -------------------------------------------------------------


def feature_table() -> bytes:
    """The feature name table QEMU writes into every version 3 image it creates."""
    type_of = {kind: number for number, kind in layout.FEATURE_TYPE_KINDS.items()}
    return b"".join(
        layout.feature_name_entry.build(
            {
                "type": type_of[kind],
                "bit_number": bit,
                "feature_name": name.encode().ljust(46, b"\0"),
            }
        )
        for kind, names in layout.FEATURE_NAMES.items()
        for bit, name in names.items()
    )


def header_cluster(
    cluster_bits: int,
    size: int,
    *,
    l1_table_offset: int,
    l1_size: int,
    refcount_table_offset: int,
    refcount_table_clusters: int,
    compression_type: int = layout.QCOW2_COMPRESSION_TYPE_ZLIB,
) -> bytes:
    """Header, feature name table and end marker, as ``qcow2_update_header``."""
    incompatible = 0
    if compression_type != layout.QCOW2_COMPRESSION_TYPE_ZLIB:
        incompatible |= 1 << layout.QCOW2_INCOMPAT_COMPRESSION_BITNR
    header = layout.header_v3.build(
        {
            "version": 3,
            "backing_file_offset": 0,
            "backing_file_size": 0,
            "cluster_bits": cluster_bits,
            "size": size,
            "crypt_method": layout.QCOW_CRYPT_NONE,
            "l1_size": l1_size,
            "l1_table_offset": l1_table_offset,
            "refcount_table_offset": refcount_table_offset,
            "refcount_table_clusters": refcount_table_clusters,
            "nb_snapshots": 0,
            "snapshots_offset": 0,
            "incompatible_features": incompatible,
            "compatible_features": 0,
            "autoclear_features": 0,
            "refcount_order": REFCOUNT_ORDER,
            "header_length": HEADER_LENGTH,
            "compression_type": compression_type,
            "padding": bytes(7),
            "unknown_fields": None,
        }
    )
    table = feature_table()
    extensions = layout.header_extension.build(
        {
            "type": layout.QCOW2_EXT_MAGIC_FEATURE_TABLE,
            "length": len(table),
            "data": table,
            "padding": bytes(-len(table) % 8),
        }
    ) + layout.header_extension_header.build(
        {"type": layout.QCOW2_EXT_MAGIC_END, "length": 0}
    )
    return header + extensions


# --- Refcounts ------------------------------------------------------------------


def refcount_clusters(other_clusters: int, cluster_bits: int) -> tuple[int, int]:
    """(refcount table clusters, refcount blocks) to count themselves and the rest."""
    cluster_size = 1 << cluster_bits
    per_block = cluster_size * 8 >> REFCOUNT_ORDER
    table, blocks = 1, 1
    while True:
        total = other_clusters + table + blocks
        new_blocks = _div_up(total, per_block)
        new_table = _div_up(new_blocks * 8, cluster_size)
        if (new_table, new_blocks) == (table, blocks):
            return table, blocks
        table, blocks = new_table, new_blocks


def refcount_structures(
    counts: numpy.ndarray, cluster_bits: int, blocks_offset: int
) -> tuple[bytes, bytes]:
    """(refcount table, refcount blocks) for ``counts``, the refcount per cluster.

    The blocks are contiguous from ``blocks_offset``; the table is padded to whole
    clusters, the blocks cover whole blocks.
    """
    cluster_size = 1 << cluster_bits
    per_block = cluster_size * 8 >> REFCOUNT_ORDER
    nb_blocks = _div_up(len(counts), per_block)
    blocks = numpy.zeros(nb_blocks * per_block, dtype=REFCOUNT_DTYPE)
    blocks[: len(counts)] = counts
    table_entries = _div_up(nb_blocks * 8, cluster_size) * cluster_size // 8
    table = numpy.zeros(table_entries, dtype=">u8")
    table[:nb_blocks] = blocks_offset + cluster_size * numpy.arange(
        nb_blocks, dtype=numpy.uint64
    )
    return table.tobytes(), blocks.tobytes()


# --- Preallocated ---------------------------------------------------------------


def allocated_mask(start: int, count: int, fill: float) -> numpy.ndarray:
    """Which of guest clusters start..start+count-1 are allocated at ``fill``.

    Cluster v is allocated when floor((v + 1) * fill) > floor(v * fill): the
    allocated clusters are spread evenly, and any prefix holds its share.
    """
    if fill in (0.0, 1.0):
        return numpy.full(count, bool(fill))
    v = numpy.arange(start, start + count, dtype=numpy.float64)
    return numpy.floor((v + 1) * fill) > numpy.floor(v * fill)


def build_preallocated(
    path: str | os.PathLike, size: int, cluster_bits: int = 16, fill: float = 1.0
) -> None:
    """Write a metadata-preallocated image of ``size`` bytes to ``path``."""
    if not 0.0 <= fill <= 1.0:
        raise ValueError(f"fill must be between 0 and 1, not {fill}")
    cluster_size = 1 << cluster_bits
    l2_entries = cluster_size // 8
    guest_clusters = _div_up(size, cluster_size)
    l1_size = _div_up(guest_clusters, l2_entries)
    l1_clusters = max(1, _div_up(l1_size * 8, cluster_size))

    # Count the clusters each L2 table takes (itself and its data) before placing
    # anything: the refcount structures come first and their size depends on it.
    per_table = numpy.zeros(l1_size, dtype=numpy.int64)
    for first, mask in _masks(guest_clusters, l2_entries, fill):
        table_index = (first + numpy.flatnonzero(mask)) // l2_entries
        per_table += numpy.bincount(table_index, minlength=l1_size)
    per_table += per_table > 0
    reftable_clusters, refblocks = refcount_clusters(
        1 + l1_clusters + int(per_table.sum()), cluster_bits
    )
    reftable_offset = cluster_size
    refblocks_offset = reftable_offset + reftable_clusters * cluster_size
    l1_offset = refblocks_offset + refblocks * cluster_size
    first_table = l1_offset // cluster_size + l1_clusters
    table_cluster = first_table + numpy.concatenate(([0], numpy.cumsum(per_table)))
    total_clusters = int(table_cluster[-1])

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, total_clusters * cluster_size)
        header = header_cluster(
            cluster_bits,
            size,
            l1_table_offset=l1_offset,
            l1_size=l1_size,
            refcount_table_offset=reftable_offset,
            refcount_table_clusters=reftable_clusters,
        )
        os.pwrite(fd, header, 0)
        # Every cluster up to the last is in use exactly once.
        counts = numpy.ones(total_clusters, dtype=REFCOUNT_DTYPE)
        table, blocks = refcount_structures(counts, cluster_bits, refblocks_offset)
        os.pwrite(fd, table, reftable_offset)
        os.pwrite(fd, blocks, refblocks_offset)

        l1 = numpy.where(
            per_table > 0,
            (table_cluster[:-1].astype(numpy.uint64) << cluster_bits)
            | layout.QCOW_OFLAG_COPIED,
            0,
        ).astype(">u8")
        os.pwrite(fd, l1.tobytes(), l1_offset)

        for first, mask in _masks(guest_clusters, l2_entries, fill):
            _write_l2_batch(fd, first, mask, table_cluster, cluster_bits)
    finally:
        os.close(fd)


def _masks(
    guest_clusters: int, l2_entries: int, fill: float
) -> Iterator[tuple[int, numpy.ndarray]]:
    """Allocation masks in batches of whole L2 tables: (first guest cluster, mask)."""
    batch = max(l2_entries, _L2_BATCH_ENTRIES // l2_entries * l2_entries)
    for first in range(0, guest_clusters, batch):
        yield first, allocated_mask(first, min(batch, guest_clusters - first), fill)


def _write_l2_batch(
    fd: int,
    first: int,
    mask: numpy.ndarray,
    table_cluster: numpy.ndarray,
    cluster_bits: int,
) -> None:
    l2_entries = (1 << cluster_bits) // 8
    padded = _div_up(len(mask), l2_entries) * l2_entries
    entries = numpy.zeros(padded, dtype=numpy.uint64)
    guest = first + numpy.flatnonzero(mask)
    tables = guest // l2_entries
    # The data of table t follows it: the k-th allocated cluster of the table sits
    # k + 1 clusters after the table.
    first_table = first // l2_entries
    per_table = numpy.bincount(
        tables - first_table, minlength=len(entries) // l2_entries
    )
    first_of_table = numpy.cumsum(per_table) - per_table
    rank = numpy.arange(len(guest)) - first_of_table[tables - first_table]
    host = table_cluster[tables] + 1 + rank
    entries[guest - first] = (host.astype(numpy.uint64) << cluster_bits) | (
        layout.QCOW_OFLAG_COPIED
    )
    entries = entries.astype(">u8").reshape(-1, l2_entries)
    for index, row in enumerate(entries):
        if row.any():
            offset = int(table_cluster[first_table + index]) << cluster_bits
            os.pwrite(fd, row.tobytes(), offset)


# --- Text and compressed images -------------------------------------------------


@cache
def _vocabulary(seed: int) -> tuple[numpy.ndarray, ...]:
    """(word bytes, start and length of each word, cumulative word frequencies).

    Each word ends with its space or full stop; the frequencies are Zipf-like, as
    in natural text.
    """
    rng = numpy.random.default_rng([seed, 0x51F])
    letters = numpy.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", dtype=numpy.uint8)
    weights = 1.0 / numpy.arange(1, len(letters) + 1)
    words = []
    for _ in range(TEXT_VOCABULARY):
        length = int(rng.integers(1, 12))
        word = rng.choice(letters, size=length, p=weights / weights.sum()).tobytes()
        words.append(word + (b".\n" if rng.random() < 0.05 else b" "))
    lengths = numpy.array([len(word) for word in words], dtype=numpy.int64)
    starts = numpy.concatenate(([0], numpy.cumsum(lengths)[:-1]))
    frequencies = 1.0 / (numpy.arange(1, TEXT_VOCABULARY + 1) + 2.7)
    cdf = numpy.cumsum(frequencies / frequencies.sum())
    vocabulary = numpy.frombuffer(b"".join(words), dtype=numpy.uint8)
    return vocabulary, starts, lengths, cdf


def text_chunk(index: int, seed: int = 0) -> bytes:
    """Chunk ``index`` (TEXT_CHUNK bytes) of the endless text for ``seed``."""
    vocabulary, starts, lengths, cdf = _vocabulary(seed)
    rng = numpy.random.default_rng([seed, index])
    words = numpy.empty(0, dtype=numpy.int64)
    while lengths[words].sum() < TEXT_CHUNK:
        more = numpy.searchsorted(cdf, rng.random(TEXT_CHUNK // 4), side="right")
        words = numpy.concatenate((words, more))
    word_lengths = lengths[words]
    ends = numpy.cumsum(word_lengths)
    shift = numpy.repeat(starts[words] - (ends - word_lengths), word_lengths)
    positions = numpy.arange(TEXT_CHUNK) + shift[:TEXT_CHUNK]
    return vocabulary[positions].tobytes()


def text(offset: int, length: int, seed: int = 0) -> bytes:
    """``length`` bytes of the text from ``offset``."""
    first, last = offset // TEXT_CHUNK, (offset + length - 1) // TEXT_CHUNK
    data = b"".join(text_chunk(index, seed) for index in range(first, last + 1))
    start = offset - first * TEXT_CHUNK
    return data[start : start + length]


def compress_cluster(data: bytes, compression: str) -> bytes:
    """One cluster compressed as QEMU's qcow2 driver compresses it."""
    if compression == ZLIB:
        compressor = zlib.compressobj(
            zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, ZLIB_WBITS, ZLIB_MEMLEVEL
        )
        return compressor.compress(data) + compressor.flush()
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)


def _compressed_batch(
    first: int, count: int, cluster_bits: int, compression: str, seed: int
) -> list[bytes]:
    cluster_size = 1 << cluster_bits
    data = text(first * cluster_size, count * cluster_size, seed)
    return [
        compress_cluster(data[i : i + cluster_size], compression)
        for i in range(0, len(data), cluster_size)
    ]


def build_compressed(
    path: str | os.PathLike,
    size: int,
    cluster_bits: int = 16,
    compression: str = ZLIB,
    seed: int = 0,
) -> None:
    """Write an image of ``size`` bytes of text, every cluster compressed."""
    cluster_size = 1 << cluster_bits
    if size % cluster_size:
        raise ValueError(f"size must be a multiple of the cluster size {cluster_size}")
    l2_entries = cluster_size // 8
    guest_clusters = size // cluster_size
    l1_size = _div_up(guest_clusters, l2_entries)
    l1_clusters = max(1, _div_up(l1_size * 8, cluster_size))
    l1_offset = cluster_size
    _, sectors_shift = layout.compressed_descriptor_fields(cluster_bits)
    batch = max(1, TEXT_CHUNK // cluster_size)

    l1 = numpy.zeros(l1_size, dtype=numpy.uint64)
    next_cluster = 1 + l1_clusters
    # Refcounts of everything before the refcount structures. Compressed data takes
    # less room than the clusters it holds, which bounds the count of clusters.
    counts = numpy.zeros(next_cluster + l1_size + guest_clusters, dtype=numpy.int64)
    counts[:next_cluster] = 1

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    workers = ThreadPoolExecutor(os.cpu_count() or 1)
    try:
        for table in range(l1_size):
            first_guest = table * l2_entries
            nb_entries = min(l2_entries, guest_clusters - first_guest)
            table_offset = next_cluster * cluster_size
            l1[table] = table_offset | layout.QCOW_OFLAG_COPIED
            l2 = numpy.zeros(l2_entries, dtype=numpy.uint64)
            cursor = table_offset + cluster_size
            end = first_guest + nb_entries
            starts = range(first_guest, end, batch)
            batches = workers.map(
                _compressed_batch,
                starts,
                [min(batch, end - start) for start in starts],
                repeat(cluster_bits),
                repeat(compression),
                repeat(seed),
            )
            index = 0
            for blobs in batches:
                lengths = numpy.array([len(blob) for blob in blobs], dtype=numpy.int64)
                if lengths.max() >= cluster_size:
                    raise RuntimeError("a cluster of text did not compress")
                offsets = cursor + numpy.concatenate(([0], numpy.cumsum(lengths)[:-1]))
                last = offsets + lengths - 1
                sectors = (last >> 9) - (offsets >> 9)
                l2[index : index + len(blobs)] = (
                    layout.QCOW_OFLAG_COMPRESSED
                    | offsets.astype(numpy.uint64)
                    | (sectors.astype(numpy.uint64) << sectors_shift)
                )
                os.pwrite(fd, b"".join(blobs), cursor)
                cursor = int(last[-1]) + 1
                index += len(blobs)
                _add_references(counts, offsets, last, cluster_bits)
            counts[table_offset // cluster_size] += 1
            os.pwrite(fd, l2.astype(">u8").tobytes(), table_offset)
            next_cluster = _div_up(cursor, cluster_size)

        reftable_clusters, refblocks = refcount_clusters(next_cluster, cluster_bits)
        refblocks_offset = next_cluster * cluster_size
        reftable_offset = refblocks_offset + refblocks * cluster_size
        total_clusters = next_cluster + refblocks + reftable_clusters
        counts = numpy.concatenate(
            (counts[:next_cluster], numpy.ones(total_clusters - next_cluster, int))
        )
        table, blocks = refcount_structures(counts, cluster_bits, refblocks_offset)
        os.pwrite(fd, blocks, refblocks_offset)
        os.pwrite(fd, table, reftable_offset)
        os.ftruncate(fd, total_clusters * cluster_size)
        os.pwrite(fd, l1.astype(">u8").tobytes(), l1_offset)
        header = header_cluster(
            cluster_bits,
            size,
            l1_table_offset=l1_offset,
            l1_size=l1_size,
            refcount_table_offset=reftable_offset,
            refcount_table_clusters=reftable_clusters,
            compression_type=COMPRESSION_TYPES[compression],
        )
        os.pwrite(fd, header, 0)
    finally:
        workers.shutdown()
        os.close(fd)


def _add_references(
    counts: numpy.ndarray, first: numpy.ndarray, last: numpy.ndarray, cluster_bits: int
) -> None:
    """Count one reference from each compressed cluster to each cluster it touches."""
    start, end = first >> cluster_bits, last >> cluster_bits
    base = int(start[0])
    added = numpy.bincount(numpy.concatenate((start, end[end != start])) - base)
    counts[base : base + len(added)] += added


def write_raw_text(path: str | os.PathLike, size: int, seed: int = 0) -> None:
    """The guest view of a compressed image, for ``qemu-img compare``."""
    with open(path, "wb") as raw:
        for index in range(_div_up(size, TEXT_CHUNK)):
            raw.write(text_chunk(index, seed)[: size - index * TEXT_CHUNK])


# --- Building, caching, checking ------------------------------------------------


def build(
    kind: str,
    path: str | os.PathLike,
    size: int,
    cluster_bits: int = 16,
    fill: float = 1.0,
    seed: int = 0,
) -> None:
    """Build an image of ``kind`` at ``path``."""
    if kind == PREALLOCATED:
        build_preallocated(path, size, cluster_bits, fill)
    elif kind in COMPRESSION_TYPES:
        build_compressed(path, size, cluster_bits, kind, seed)
    else:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")


def cached_image(
    kind: str,
    size: int,
    cluster_bits: int = 16,
    fill: float = 1.0,
    seed: int = 0,
    directory: str | os.PathLike | None = None,
    on_build: Callable[[Path], None] | None = None,
) -> Path:
    """The path of a built image, building it first unless the cache has it.

    ``on_build(path)`` is called before a build, which can take a minute.
    """
    directory = Path(directory) if directory is not None else bench_dir()
    directory.mkdir(parents=True, exist_ok=True)
    if kind == PREALLOCATED:
        detail = f"fill{fill:g}"
    else:
        detail = f"seed{seed}"
    path = (
        directory / f"{kind}-{size}-c{cluster_bits}-{detail}-v{BUILDER_VERSION}.qcow2"
    )
    if not path.exists():
        if on_build is not None:
            on_build(path)
        # Build beside it and rename, so that an interrupted build is not reused.
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            build(kind, partial, size, cluster_bits, fill, seed)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return path


def qemu_img_problems(
    path: str | os.PathLike,
    kind: str,
    size: int,
    cluster_bits: int,
    seed: int = 0,
) -> list[str]:
    """What qemu-img check, info and (for text) compare say is wrong; [] if fine."""
    problems = []
    check = subprocess.run(
        ["qemu-img", "check", "--output=json", os.fspath(path)],
        capture_output=True,
        text=True,
    )
    try:
        result = json.loads(check.stdout)
    except json.JSONDecodeError:
        return [f"qemu-img check exit {check.returncode}: {check.stderr.strip()}"]
    for key in ("corruptions", "leaks", "check-errors"):
        if result.get(key):
            problems.append(f"qemu-img check: {key} {result[key]}")
    if check.returncode != 0:
        problems.append(f"qemu-img check exit {check.returncode}")

    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", os.fspath(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    expected = {
        "virtual-size": size,
        "cluster-size": 1 << cluster_bits,
        "compression-type": ZSTD if kind == ZSTD else ZLIB,
    }
    found = {
        "virtual-size": info["virtual-size"],
        "cluster-size": info["cluster-size"],
        "compression-type": info["format-specific"]["data"]["compression-type"],
    }
    for key, value in expected.items():
        if found[key] != value:
            problems.append(f"qemu-img info: {key} {found[key]}, expected {value}")

    if kind in COMPRESSION_TYPES:
        with tempfile.TemporaryDirectory(dir=Path(path).parent) as scratch:
            raw = Path(scratch, "guest.raw")
            write_raw_text(raw, size, seed)
            compare = subprocess.run(
                ["qemu-img", "compare", "-f", "qcow2", "-F", "raw", path, raw],
                capture_output=True,
                text=True,
            )
        if compare.returncode != 0:
            problems.append(
                f"qemu-img compare exit {compare.returncode}: "
                f"{(compare.stdout + compare.stderr).strip()}"
            )
    return problems


@click.command()
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("out", type=click.Path(dir_okay=False, writable=True))
@click.option("--size", default="1GiB", show_default=True, help="Virtual size.")
@click.option(
    "--cluster-bits",
    type=click.IntRange(9, 21),
    default=16,
    show_default=True,
    help="log2 of the cluster size: 16 is 64 KiB, 12 is 4 KiB.",
)
@click.option(
    "--fill",
    type=click.FloatRange(0, 1),
    default=1.0,
    show_default=True,
    help="Share of guest clusters allocated (preallocated only).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the text.")
@click.option(
    "--verify", is_flag=True, help="Then run qemu-img check, info and compare."
)
def main(
    kind: str,
    out: str,
    size: str,
    cluster_bits: int,
    fill: float,
    seed: int,
    verify: bool,
) -> None:
    """Build a QCOW2 image of KIND (preallocated, zlib or zstd) at OUT."""
    try:
        nbytes = parse_size(size)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--size") from error
    start = time.perf_counter()
    build(kind, out, nbytes, cluster_bits, fill, seed)
    elapsed = time.perf_counter() - start
    click.echo(f"built {out} in {elapsed:.2f} s")
    if verify:
        problems = qemu_img_problems(out, kind, nbytes, cluster_bits, seed)
        for problem in problems:
            click.echo(problem, err=True)
        if problems:
            raise SystemExit(1)
        click.echo("qemu-img: no corruption, no leak, size and cluster size right")


if __name__ == "__main__":
    main()
