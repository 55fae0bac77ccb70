"""L1 and L2 tables: entry checks, references, fragmentation and the COPIED flag.

Mirrors ``check_refcounts_l1``, ``check_refcounts_l2`` and ``check_oflag_copied``
in QEMU's ``block/qcow2-refcount.c``. L2 tables are deduplicated before they are
read: a table reached N times (from several L1 entries or snapshots) is read once
and its findings counted N times, as QEMU counts them, so that snapshots sharing
tables cost nothing extra and an L1 table pointing at itself cannot loop.
"""

from __future__ import annotations

import numpy as np

from .. import layout
from .l2entries import Batch
from .refcounts import refcount_is_one
from .state import Walk
from .tables import RUN_BYTES, read_run, runs

U = np.uint64
COPIED = U(layout.QCOW_OFLAG_COPIED)
COMPRESSED = U(layout.QCOW_OFLAG_COMPRESSED)
ZERO = U(layout.QCOW_OFLAG_ZERO)
L1_RESERVED = U(layout.L1E_RESERVED_MASK)
L1_OFFSET = U(layout.L1E_OFFSET_MASK)
L2_RESERVED = U(layout.L2E_STD_RESERVED_MASK)
L2_OFFSET = U(layout.L2E_OFFSET_MASK)
ALL_ALLOC = U(layout.QCOW_L2_BITMAP_ALL_ALLOC)


class L2Tables:
    """Distinct L2 tables to read, how often each is reached, and from where."""

    def __init__(self, offsets: np.ndarray, weights: np.ndarray, where: list[str]):
        self.offsets = offsets
        self.weights = weights
        self.where = where

    def describe(self, index: int) -> str:
        return f"L2 table at {int(self.offsets[index]):#x} ({self.where[index]})"


def check_l1(
    walk: Walk, l1: np.ndarray, l1_offset: int, weight: int, active: bool, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check one L1 table's entries and count its L2 tables' clusters.

    Returns the L2 table offsets to read, the L1 index of each, and the weight.
    """
    used = np.flatnonzero(l1)
    entries = l1[used]
    severity_copied = walk.refcount_severity

    reserved = np.flatnonzero(entries & L1_RESERVED)
    walk.corruptions += reserved.size * weight
    for position in reserved[: walk.rec.take("l1-table", reserved.size)].tolist():
        index = int(used[position])
        walk.rec.add(
            "l1-table",
            f"{name} entry {index} ({int(entries[position]):#x}) has reserved bits "
            f"set ({int(entries[position] & L1_RESERVED):#x}); expected them clear",
            l1_offset + 8 * index,
        )

    l2 = entries & L1_OFFSET
    cluster_size = walk.cluster_size
    past = l2 >= U(walk.file_size)
    bad = np.flatnonzero(past)
    walk.corruptions += bad.size * weight
    for position in bad[: walk.rec.take("l2-table", bad.size)].tolist():
        index = int(used[position])
        walk.rec.add(
            "l2-table",
            f"{name} entry {index} points at an L2 table at {int(l2[position]):#x}, "
            f"past the end of the file at {walk.file_size:#x}; expected a table "
            "inside the file (a truncated image?)",
            l1_offset + 8 * index,
        )

    inside = l2[~past]
    unaligned = inside % U(cluster_size) != 0
    clusters = (inside >> U(walk.cluster_bits)).astype(np.int64)
    walk.counts.add(
        np.sort(np.concatenate((clusters, clusters[unaligned] + 1))), weight
    )
    bad = np.flatnonzero((l2 % U(cluster_size)) != 0)
    walk.corruptions += bad.size * weight
    for position in bad[: walk.rec.take("l1-table", bad.size)].tolist():
        index = int(used[position])
        walk.rec.add(
            "l1-table",
            f"{name} entry {index} points at an L2 table at {int(l2[position]):#x}, "
            "which is not cluster aligned; expected a multiple of the cluster size",
            l1_offset + 8 * index,
        )

    if active:
        nonzero = np.flatnonzero(l2)
        one, known = refcount_is_one(walk, (l2[nonzero] >> U(walk.cluster_bits)))
        copied = (entries[nonzero] & COPIED) != 0
        wrong = np.flatnonzero(known & (one != copied))
        walk.corruptions += wrong.size * weight
        for position in wrong[: walk.rec.take("refcount", wrong.size)].tolist():
            index = int(used[nonzero[position]])
            state = "set" if copied[position] else "clear"
            expected = "set only when" if copied[position] else "set when"
            walk.rec.add(
                "refcount",
                f"{name} entry {index}: the COPIED flag (bit 63) is {state} but the "
                f"L2 table's refcount is {'not ' if copied[position] else ''}1; "
                f"expected it {expected} the refcount is 1 (QEMU: OFLAG_COPIED)",
                l1_offset + 8 * index,
                severity_copied,
            )
    keep = ~past
    return l2[keep], used[keep], np.full(int(keep.sum()), weight, dtype=np.int64)


def merge(
    offsets: list[np.ndarray], weights: list[np.ndarray], where: list[list[str]]
) -> L2Tables:
    """Deduplicate L2 table offsets, adding up how often each is reached."""
    if not offsets:
        return L2Tables(np.zeros(0, np.uint64), np.zeros(0, np.int64), [])
    all_offsets = np.concatenate(offsets)
    all_weights = np.concatenate(weights)
    labels = [label for group in where for label in group]
    unique, first, inverse = np.unique(
        all_offsets, return_index=True, return_inverse=True
    )
    total = np.bincount(inverse, weights=all_weights).astype(np.int64)
    return L2Tables(unique, total, [labels[i] for i in first.tolist()])


def walk_l2(walk: Walk, tables: L2Tables, active: bool, done: int, total: int) -> int:
    """Read and check every L2 table; returns the progress count reached."""
    header = walk.header
    entry_size = layout.L2E_SIZE_EXTENDED if header.extended_l2 else 8
    per_run = max(1, RUN_BYTES // walk.cluster_size)
    for part in runs(tables.offsets, walk.cluster_size, per_run):
        count = part.stop - part.start
        data = read_run(
            walk.image, int(tables.offsets[part.start]), count, walk.cluster_size
        )
        words = np.frombuffer(data, ">u8").astype(np.uint64)
        words = words.reshape(count, walk.cluster_size // 8)
        weights = tables.weights[part]
        for weight in np.unique(weights).tolist():
            rows = np.flatnonzero(weights == weight)
            chosen = words if rows.size == count else words[rows]
            if entry_size == 16:
                entries, bitmaps = chosen[:, 0::2], chosen[:, 1::2]
            else:
                entries, bitmaps = chosen, None
            Batch(
                walk, tables, part.start + rows, entries, bitmaps, weight, active
            ).check()
        done += count
        walk.tick(done, total)
    return done
