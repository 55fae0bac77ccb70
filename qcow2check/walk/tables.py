"""Bulk reading and decoding of tables: L1, L2, refcount and bitmap tables.

Tables are read with few large reads: neighbouring clusters are coalesced into runs,
and each run is decoded with one ``numpy.frombuffer`` call. Bytes past the end of the
file read as zeros, as QEMU's block layer pads a short read (``file-posix.c``
``handle_aiocb_rw``), so a table cut off by a truncated upload decodes as unallocated
entries; the walk reports the truncation itself where the table is counted.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..image import ImageFile

# One read and one numpy batch covers at most this many bytes: large enough that a
# run of 4 KiB L2 tables costs a handful of Python steps, small enough that the
# temporaries of a batch stay in the CPU cache and the peak memory stays low.
RUN_BYTES = 512 << 10

INT64_MAX = (1 << 63) - 1


def read_padded(image: ImageFile, offset: int, length: int) -> bytes:
    """Read ``length`` bytes at ``offset``; what lies past the end reads as zeros."""
    if length <= 0:
        return b""
    if offset >= image.size:
        return bytes(length)
    data = image.read_at(offset, length)
    if len(data) < length:
        data += bytes(length - len(data))
    return data


def read_u64_table(image: ImageFile, offset: int, entries: int) -> np.ndarray:
    """Read a table of big-endian u64 entries, decoded to native uint64.

    Entries past the end of the file would read as zeros (unused), so they are
    left out: a claimed size costs no memory beyond what the file holds.
    """
    entries = max(0, min(entries, -(-(image.size - offset) // 8)))
    data = read_padded(image, offset, entries * 8)
    return np.frombuffer(data, ">u8").astype(np.uint64)


def batches(offsets: np.ndarray, max_items: int, start: int = 0) -> Iterator[slice]:
    """Split ``offsets`` into slices of up to ``max_items`` tables to check at once.

    The slices count from ``start``, for ``offsets`` cut from a longer array.
    """
    for first in range(0, len(offsets), max_items):
        yield slice(start + first, start + min(first + max_items, len(offsets)))


def _run_bounds(offsets: np.ndarray, length: int) -> list[int]:
    """Indices where a new run of neighbouring aligned tables starts, and the end."""
    aligned = offsets % length == 0
    follows = np.zeros(len(offsets), dtype=bool)
    follows[1:] = (np.diff(offsets) == length) & aligned[1:] & aligned[:-1]
    return [*np.flatnonzero(~follows).tolist(), len(offsets)]


def read_tables(image: ImageFile, offsets: np.ndarray, length: int) -> bytearray:
    """Read the tables at sorted ``offsets`` back to back, neighbours at once."""
    out = bytearray(len(offsets) * length)
    view = memoryview(out)
    bounds = _run_bounds(offsets, length)
    for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
        first = int(offsets[begin])
        if first >= image.size or first > INT64_MAX - (end - begin) * length:
            continue
        data = image.read_at(first, (end - begin) * length)
        view[begin * length : begin * length + len(data)] = data
    return out


def read_u64_tables(
    image: ImageFile, offsets: np.ndarray, length: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Read the tables at sorted ``offsets``, decoded to native uint64 rows.

    ``out``, if given, is a reusable buffer of at least that many entries.
    """
    count = len(offsets) * length // 8
    words = np.empty(count, np.uint64) if out is None else out[:count]
    filled = 0
    bounds = _run_bounds(offsets, length)
    for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
        first = int(offsets[begin])
        start = begin * length // 8
        words[filled:start] = 0
        filled = start
        if first >= image.size or first > INT64_MAX - (end - begin) * length:
            continue
        data = image.read_at(first, (end - begin) * length)
        if len(data) % 8:
            # The file ends inside an entry: its missing bytes read as zeros.
            data += bytes(-len(data) % 8)
        words[start : start + len(data) // 8] = np.frombuffer(data, ">u8")
        filled = start + len(data) // 8
    words[filled:] = 0
    return words.reshape(len(offsets), length // 8)


def decode_refcounts(data: bytes, refcount_order: int) -> np.ndarray:
    """Decode refcount block bytes into one unsigned integer per cluster.

    qcow2.rst "Host cluster management": entries narrower than a byte are packed
    starting from the least significant bit of each byte; wider ones are big-endian.
    """
    if refcount_order >= 3:
        width = 1 << (refcount_order - 3)
        return np.frombuffer(data, f">u{width}")
    raw = np.frombuffer(data, np.uint8)
    if refcount_order == 0:
        return np.unpackbits(raw, bitorder="little")
    bits = 1 << refcount_order
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    return ((raw[:, None] >> shifts) & mask).reshape(-1)
