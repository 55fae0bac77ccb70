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
from .tables import RUN_BYTES, batches, read_u64_tables

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

    def __init__(self, offsets, weights, sources, indices, names: list[str]):
        self.offsets = offsets
        self.weights = weights
        self.sources = sources
        self.indices = indices
        self.names = names

    def describe(self, index: int) -> str:
        source = self.names[int(self.sources[index])]
        return (
            f"L2 table at {int(self.offsets[index]):#x} ({source} index "
            f"{int(self.indices[index])})"
        )


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
    for position in bad[: walk.rec.take("l1-table", bad.size)].tolist():
        index = int(used[position])
        walk.rec.add(
            "l1-table",
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
        listed = walk.rec.take("refcount", wrong.size, severity_copied)
        for position in wrong[:listed].tolist():
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


def merge(found: list[tuple[np.ndarray, np.ndarray, np.ndarray]], names) -> L2Tables:
    """Deduplicate L2 table offsets, adding up how often each is reached.

    ``found`` holds (offsets, L1 indices, weights) per L1 table named in ``names``.
    """
    if not found:
        empty = np.zeros(0, np.int64)
        return L2Tables(empty.astype(np.uint64), empty, empty, empty, [])
    offsets = np.concatenate([part[0] for part in found])
    indices = np.concatenate([part[1] for part in found])
    weights = np.concatenate([part[2] for part in found])
    sources = np.repeat(np.arange(len(found)), [part[0].size for part in found])
    unique, first, inverse = np.unique(offsets, return_index=True, return_inverse=True)
    total = np.bincount(inverse, weights=weights, minlength=unique.size).astype(
        np.int64
    )
    return L2Tables(unique, total, sources[first], indices[first], names)


def walk_l2(walk: Walk, tables: L2Tables, active: bool, done: int, total: int) -> int:
    """Read and check every L2 table; returns the progress count reached."""
    header = walk.header
    cluster_size = walk.cluster_size
    per_batch = max(1, RUN_BYTES // cluster_size)
    parts = list(batches(tables.offsets, per_batch))
    if active and tables.offsets.size and tables.offsets[0] == 0:
        # An L1 entry with reserved bits only names an L2 table at offset 0: QEMU
        # walks it (check_refcounts_l1) but skips it in check_oflag_copied.
        parts = [slice(0, 1), *batches(tables.offsets[1:], per_batch, start=1)]
    for part in parts:
        count = part.stop - part.start
        buffer = walk.scratch.get("tables", count * cluster_size // 8, np.uint64)
        words = read_u64_tables(walk.image, tables.offsets[part], cluster_size, buffer)
        weights = tables.weights[part]
        copied = active and bool(tables.offsets[part.start])
        for weight in np.unique(weights).tolist():
            rows = np.flatnonzero(weights == weight)
            chosen = words if rows.size == count else words[rows]
            if header.extended_l2:
                entries, bitmaps = chosen[:, 0::2], chosen[:, 1::2]
            else:
                entries, bitmaps = chosen, None
            batch = Batch(
                walk, tables, part.start + rows, entries, bitmaps, weight, active
            )
            batch.check_copied = copied
            batch.check()
        done += count
        walk.tick(done, total)
    return done
