"""The refcount table and blocks: what is stored, and how it compares with what is
referenced.

Mirrors ``block/qcow2-refcount.c``: ``qcow2_get_refcount`` (a stored refcount),
``check_refblocks`` (the refcount blocks' own clusters) and ``compare_refcounts``
(stored against computed, cluster by cluster).
"""

from __future__ import annotations

import numpy as np

from .. import layout, limits
from .state import FLAG_REFCOUNT_ONE, Walk, get_flags, set_flags
from .tables import (
    INT64_MAX,
    RUN_BYTES,
    decode_refcounts,
    read_tables,
    read_u64_table,
)

# Leaked clusters named in the one leaked-clusters finding.
LEAKS_NAMED = 8

# Clusters compared per step where no refcount block exists, so that a wrecked
# refcount table costs bounded temporaries.
CHUNK_CLUSTERS = 1 << 20

ZERO, VALID, UNREADABLE = 0, 1, 2


class StoredRefcounts:
    """The refcounts the image stores, looked up as ``qcow2_get_refcount`` does."""

    def __init__(self, walk: Walk, reftable: np.ndarray) -> None:
        self.walk = walk
        header = walk.header
        self.block_bits = walk.cluster_bits + 3 - header.refcount_order
        self.block_entries = 1 << self.block_bits
        self.refcount_order = header.refcount_order
        self.reftable = reftable
        self.offsets = reftable & np.uint64(layout.REFT_OFFSET_MASK)
        cluster_size = np.uint64(walk.cluster_size)
        unreadable = (self.offsets % cluster_size != 0) | (
            self.offsets > np.uint64(INT64_MAX - walk.cluster_size)
        )
        self.state = np.where(
            self.offsets == 0, ZERO, np.where(unreadable, UNREADABLE, VALID)
        ).astype(np.uint8)

    def block_runs(self, last_block: int):
        """Yield (first block index, block count, refcounts) over valid blocks.

        Blocks with neighbouring refcount table indices are decoded together.
        """
        cluster_size = self.walk.cluster_size
        per_run = max(1, RUN_BYTES // cluster_size)
        index = np.flatnonzero(self.state[:last_block] == VALID)
        if index.size == 0:
            return
        follows = np.zeros(index.size, dtype=bool)
        follows[1:] = np.diff(index) == 1
        starts = np.flatnonzero(~follows).tolist() + [index.size]
        for begin, end in zip(starts[:-1], starts[1:], strict=True):
            for chunk in range(begin, end, per_run):
                stop = min(chunk + per_run, end)
                offsets = self.offsets[index[chunk:stop]]
                order = np.argsort(offsets, kind="stable")
                data = read_tables(self.walk.image, offsets[order], cluster_size)
                values = decode_refcounts(data, self.refcount_order)
                if (order[1:] < order[:-1]).any():
                    blocks = values.reshape(order.size, -1)
                    values = np.empty_like(blocks)
                    values[order] = blocks
                    values = values.reshape(-1)
                yield int(index[chunk]), stop - chunk, values

    def lookup(self, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored refcounts of any clusters, and whether each could be read."""
        clusters = clusters.astype(np.int64)
        values = np.zeros(clusters.size, dtype=np.uint64)
        blocks = clusters >> self.block_bits
        state = np.full(clusters.size, ZERO, dtype=np.uint8)
        in_table = blocks < self.state.size
        state[in_table] = self.state[blocks[in_table]]
        valid = np.flatnonzero(state == VALID)
        if valid.size:
            # One read per refcount block, however many clusters it answers for.
            unique, inverse = np.unique(blocks[valid], return_inverse=True)
            order = np.argsort(inverse, kind="stable")
            bounds = np.searchsorted(inverse[order], np.arange(unique.size + 1))
            for k, block in enumerate(unique.tolist()):
                chosen = valid[order[bounds[k] : bounds[k + 1]]]
                data = read_tables(
                    self.walk.image,
                    self.offsets[block : block + 1],
                    self.walk.cluster_size,
                )
                block_values = decode_refcounts(data, self.refcount_order)
                values[chosen] = block_values[
                    clusters[chosen] & (self.block_entries - 1)
                ]
        return values, state != UNREADABLE

    def is_one(self, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whether each stored refcount is 1, and whether it could be read."""
        clusters = clusters.astype(np.int64)
        flagged = clusters < len(self.walk.flags)
        one = np.zeros(clusters.size, dtype=bool)
        known = np.ones(clusters.size, dtype=bool)
        inside = clusters[flagged]
        one[flagged] = get_flags(self.walk.flags, inside) & FLAG_REFCOUNT_ONE != 0
        blocks = inside >> self.block_bits
        in_table = blocks < self.state.size
        state = np.full(blocks.size, ZERO, dtype=np.uint8)
        state[in_table] = self.state[blocks[in_table]]
        known[flagged] = state != UNREADABLE
        if not flagged.all():
            values, readable = self.lookup(clusters[~flagged])
            one[~flagged] = values == 1
            known[~flagged] = readable
        return one, known


def read_stored(walk: Walk) -> None:
    """Read the refcount table, and flag every cluster whose refcount is 1."""
    header = walk.header
    size = header.refcount_table_clusters * walk.cluster_size
    entries = 0
    if size > limits.QCOW_MAX_REFTABLE_SIZE:
        walk.rec.add(
            "not-checked",
            f"the refcount table was not read: {size} bytes is more than QEMU's "
            f"limit of {limits.QCOW_MAX_REFTABLE_SIZE}",
            48,
        )
    else:
        entries = size // 8
    reftable = read_u64_table(walk.image, header.refcount_table_offset, entries)
    stored = StoredRefcounts(walk, reftable)
    stored.table_bytes = 8 * entries
    walk.stored = stored

    last_block = -(-len(walk.flags) // stored.block_entries)
    for first_block, _count, values in stored.block_runs(last_block):
        set_flags(
            walk.flags,
            first_block * stored.block_entries,
            values == 1,
            FLAG_REFCOUNT_ONE,
        )


def count_refblocks(walk: Walk) -> None:
    """check_refblocks: validate the table entries and count each block's cluster."""
    stored = walk.stored
    reftable = stored.reftable
    offsets = stored.offsets
    cluster_size = walk.cluster_size
    table_offset = walk.header.refcount_table_offset
    severity = walk.refcount_severity
    counts = walk.counts
    nb_clusters = walk.file_clusters + int(counts.array[walk.file_clusters] > 0)

    reserved = (reftable & np.uint64(layout.REFT_RESERVED_MASK)) != 0
    unaligned = ~reserved & (offsets % np.uint64(cluster_size) != 0)
    outside = (
        ~reserved
        & ~unaligned
        & (offsets != 0)
        & ((offsets >> np.uint64(walk.cluster_bits)) >= np.uint64(nb_clusters))
    )
    problems = (
        (reserved, "has reserved bits set (mask 0x1ff)", "them clear"),
        (unaligned, "points at an unaligned refcount block", "a cluster boundary"),
        (outside, "points past the end of the file", "a block inside the file"),
    )
    for mask, found, expected in problems:
        bad = np.flatnonzero(mask)
        walk.corruptions += bad.size
        for index in bad[: walk.rec.take("refcount", bad.size, severity)].tolist():
            walk.rec.add(
                "refcount",
                f"refcount table entry {index} ({int(reftable[index]):#x}) {found}; "
                f"expected {expected}",
                table_offset + 8 * index,
                severity,
            )

    valid = np.flatnonzero(~reserved & ~unaligned & ~outside & (offsets != 0))
    if valid.size == 0:
        return
    clusters = (offsets[valid] >> np.uint64(walk.cluster_bits)).astype(np.int64)
    before = counts.array[clusters].astype(np.int64)
    counts.add(clusters)

    # Each block sees the count as it stands after its own increment.
    order = np.argsort(clusters, kind="stable")
    ordered = clusters[order]
    group_start = np.zeros(ordered.size, dtype=np.int64)
    new_group = np.ones(ordered.size, dtype=bool)
    new_group[1:] = ordered[1:] != ordered[:-1]
    group_start[new_group] = np.flatnonzero(new_group)
    group_start = np.maximum.accumulate(group_start)
    rank = np.empty(ordered.size, dtype=np.int64)
    rank[order] = np.arange(ordered.size) - group_start
    seen = np.minimum(before + rank + 1, min(walk.refcount_max, 1 << 62))
    bad = np.flatnonzero(seen != 1)
    walk.corruptions += bad.size
    for position in bad[: walk.rec.take("refcount", bad.size, severity)].tolist():
        index = int(valid[position])
        walk.rec.add(
            "refcount",
            f"refcount block {index} at {int(offsets[index]):#x} is referenced "
            f"{int(seen[position])} times; expected once, by the refcount table "
            "only (another structure uses its cluster)",
            int(offsets[index]),
            severity,
        )


def compare(walk: Walk) -> int:
    """compare_refcounts: stored against computed; returns the image end offset."""
    stored = walk.stored
    counts = walk.counts.array
    nb_clusters = walk.file_clusters + int(counts[walk.file_clusters] > 0)
    entries = stored.block_entries
    last_block = -(-nb_clusters // entries)
    tally = _Tally(walk)

    for first_block, count, values in stored.block_runs(last_block):
        start = first_block * entries
        end = min(start + count * entries, nb_clusters)
        tally.compare(start, values[: end - start], counts[start:end])

    states = np.zeros(last_block, dtype=np.uint8)
    known = min(last_block, stored.state.size)
    states[:known] = stored.state[:known]
    for block in np.flatnonzero(states == UNREADABLE).tolist():
        start = block * entries
        end = min(start + entries, nb_clusters)
        walk.check_errors += end - start
        walk.rec.add(
            "refcount",
            f"the refcounts of clusters {start} to {end - 1} cannot be read: refcount "
            f"table entry {block} points at {int(stored.offsets[block]):#x}; "
            "expected a cluster-aligned refcount block",
            walk.header.refcount_table_offset + 8 * block,
            walk.refcount_severity,
        )

    # Clusters without a refcount block have a stored refcount of 0.
    zero_blocks = states == ZERO
    edges = np.flatnonzero(np.diff(np.concatenate(([0], zero_blocks, [0]))))
    for first, end in edges.reshape(-1, 2).tolist():
        stop = min(end * entries, nb_clusters)
        for start in range(first * entries, stop, CHUNK_CLUSTERS):
            computed = counts[start : min(start + CHUNK_CLUSTERS, stop)]
            used = np.flatnonzero(computed)
            if used.size:
                zeros = np.zeros(used.size, np.uint8)
                tally.compare(start + used, zeros, computed[used], sparse=True)

    tally.finish()
    return (tally.highest + 1) * walk.cluster_size


class _Tally:
    """Counts and lists the differences between stored and computed refcounts."""

    def __init__(self, walk: Walk) -> None:
        self.walk = walk
        self.highest = 0
        self.leaked: list[int] = []
        self.leak_count = 0

    def compare(self, start, values, computed, sparse: bool = False) -> None:
        walk = self.walk
        # Mixed dtypes compare without full-size copies: numpy casts in chunks.
        if walk.overflow:
            computed = np.minimum(computed, walk.refcount_max)

        def cluster_of(position: int) -> int:
            return int(start[position]) if sparse else start + position

        used = (values != 0) | (computed != 0)
        if used.any():
            last = used.size - 1 - int(np.argmax(used[::-1]))
            self.highest = max(self.highest, cluster_of(last))

        low = np.flatnonzero(values < computed)
        high = np.flatnonzero(values > computed)
        walk.corruptions += low.size
        walk.leaks += high.size
        severity = walk.refcount_severity
        for position in low[: walk.rec.take("refcount", low.size, severity)].tolist():
            cluster = cluster_of(position)
            walk.rec.add(
                "refcount",
                f"cluster {cluster} (offset {cluster << walk.cluster_bits:#x}) has "
                f"refcount {int(values[position])} but is referenced "
                f"{int(computed[position])} times; expected a refcount of "
                f"{int(computed[position])}",
                cluster << walk.cluster_bits,
                severity,
            )
        self.leak_count += high.size
        for position in high[: LEAKS_NAMED - len(self.leaked)].tolist():
            self.leaked.append(cluster_of(position))

    def finish(self) -> None:
        if not self.leak_count:
            return
        walk = self.walk
        named = ", ".join(
            f"{cluster} ({cluster << walk.cluster_bits:#x})" for cluster in self.leaked
        )
        more = self.leak_count - len(self.leaked)
        walk.rec.add(
            "leaked-clusters",
            f"{self.leak_count} clusters have a stored refcount higher than their "
            f"references (leaked space, which QEMU calls harmless): clusters "
            f"{named}{f' and {more} more' if more else ''}; expected equal refcounts",
            self.leaked[0] << walk.cluster_bits,
        )


def refcount_is_one(walk: Walk, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whether each cluster's stored refcount is 1, and whether it could be read."""
    return walk.stored.is_one(clusters)
