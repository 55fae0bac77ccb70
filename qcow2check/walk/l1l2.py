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
from .l2entries import COPIED, Batch
from .refcounts import refcount_is_one
from .state import Walk
from .tables import RUN_BYTES, batches, read_u64_tables

U = np.uint64
L1_RESERVED = U(layout.L1E_RESERVED_MASK)
L1_OFFSET = U(layout.L1E_OFFSET_MASK)


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

    Returns the distinct L2 table offsets to read, the first L1 index naming each,
    and how often each is reached. Entries naming the same table are handled
    once, so 4,194,304 entries naming one table cost a sort, not 4,194,304 walks.
    """
    reserved = np.flatnonzero(l1 & L1_RESERVED)
    walk.corruptions += reserved.size * weight
    for index in reserved[: walk.rec.take("l1-table", reserved.size)].tolist():
        walk.rec.add(
            "l1-table",
            f"{name} entry {index} ({int(l1[index]):#x}) has reserved bits set "
            f"({int(l1[index] & L1_RESERVED):#x}); expected them clear",
            l1_offset + 8 * index,
        )

    # QEMU walks every non-zero entry, even one whose offset bits are all clear.
    l2 = l1 & L1_OFFSET
    order = np.argsort(l2, kind="stable")
    order = order[l1[order] != 0]
    ordered = l2[order]
    new = np.ones(ordered.size, dtype=bool)
    new[1:] = ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(new)
    tables = ordered[starts]
    first_index = order[starts]
    reached = np.diff(np.append(starts, ordered.size)) * weight
    del ordered, new

    if active:
        _check_copied_l1(walk, l1, l2, tables, l1_offset, name)
    del l2, order

    cluster_size = walk.cluster_size
    past = tables >= U(walk.file_size)
    _report_l1(
        walk,
        past,
        reached,
        first_index,
        l1_offset,
        lambda k: (
            f"{name} entry {int(first_index[k])} points at an L2 table at "
            f"{int(tables[k]):#x}, past the end of the file at {walk.file_size:#x}; "
            "expected a table inside the file (a truncated image?)"
        ),
    )
    unaligned = tables % U(cluster_size) != 0
    _report_l1(
        walk,
        unaligned,
        reached,
        first_index,
        l1_offset,
        lambda k: (
            f"{name} entry {int(first_index[k])} points at an L2 table at "
            f"{int(tables[k]):#x}, which is not cluster aligned; expected a multiple "
            "of the cluster size"
        ),
    )

    inside = ~past
    clusters = (tables[inside] >> U(walk.cluster_bits)).astype(np.int64)
    amounts = reached[inside].astype(np.uint64)
    spill = unaligned[inside]
    clusters = np.concatenate((clusters, clusters[spill] + 1))
    amounts = np.concatenate((amounts, amounts[spill]))
    unique, where = np.unique(clusters, return_inverse=True)
    walk.counts.add_amounts(unique, np.bincount(where, weights=amounts))
    return tables[inside], first_index[inside], reached[inside]


def _report_l1(walk, mask, reached, first_index, l1_offset, text) -> None:
    """Count the entries behind the tables in ``mask``; list the first few."""
    bad = np.flatnonzero(mask)
    walk.corruptions += int(reached[bad].sum())
    for k in bad[: walk.rec.take("l1-table", bad.size)].tolist():
        walk.rec.add("l1-table", text(k), l1_offset + 8 * int(first_index[k]))


def _check_copied_l1(walk, l1, l2, tables, l1_offset, name) -> None:
    """check_oflag_copied for L1 entries: COPIED set exactly when refcount is 1."""
    nonzero = tables != 0
    one, known = refcount_is_one(walk, tables[nonzero] >> U(walk.cluster_bits))
    if not known.all() or one.any():
        expect = np.zeros(tables.size, dtype=np.int8)
        expect[np.flatnonzero(nonzero)] = np.where(known, one, -1)
    else:
        expect = None

    # Per entry: the flag it has against the flag its table's refcount asks for.
    if expect is None:
        wrong = np.flatnonzero((l2 != 0) & (l1 >= COPIED))
    else:
        wanted = expect[np.searchsorted(tables, l2)]
        wrong = np.flatnonzero(
            (l2 != 0) & (wanted >= 0) & ((l1 >= COPIED) != (wanted == 1))
        )
    walk.corruptions += wrong.size
    severity = walk.refcount_severity
    for index in wrong[: walk.rec.take("refcount", wrong.size, severity)].tolist():
        copied = bool(l1[index] >= COPIED)
        walk.rec.add(
            "refcount",
            f"{name} entry {index}: the COPIED flag (bit 63) is "
            f"{'set' if copied else 'clear'} but the L2 table's refcount is "
            f"{'not ' if copied else ''}1; expected it set exactly when the "
            "refcount is 1 (QEMU: OFLAG_COPIED)",
            l1_offset + 8 * index,
            severity,
        )


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
