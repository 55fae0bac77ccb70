"""Where the metadata lives, and which host clusters two structures share.

QEMU guards every write with ``qcow2_check_metadata_overlap`` (``block/
qcow2-refcount.c``); ``qemu-img check`` sees a shared cluster only as a refcount
that is too low. Here each table is registered by kind before the walk counts
anything, so that a data cluster or another table landing on it is named. The
same L2 table reached from the active L1 table and from a snapshot's is one kind
of structure used twice, which QEMU does on purpose: that is no overlap.
"""

from __future__ import annotations

import numpy as np

from .state import FLAG_METADATA, Walk, set_flag_at

HEADER = "the header cluster"
ACTIVE_L1 = "the active L1 table"
L2_TABLE = "an L2 table"
REFCOUNT_TABLE = "the refcount table"
REFCOUNT_BLOCK = "a refcount block"
SNAPSHOT_TABLE = "the snapshot table"
SNAPSHOT_L1 = "a snapshot's L1 table"
BITMAP_DIRECTORY = "the bitmap directory"
BITMAP_TABLE = "a bitmap table"
ENCRYPTION_HEADER = "the encryption header"


class Registry:
    """Metadata regions by kind, each clipped to the clusters of the file."""

    def __init__(self, walk: Walk) -> None:
        self.walk = walk
        self.kinds: list[str] = []
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.first = self.last = self.kind = self.offset = np.zeros(0, np.int64)

    def add(self, offset: int, size: int, kind: str) -> None:
        if size > 0:
            self._add(np.array([offset], dtype=np.uint64), size, kind)

    def add_many(self, offsets: np.ndarray, kind: str) -> None:
        self._add(offsets.astype(np.uint64), self.walk.cluster_size, kind)

    def _add(self, offsets: np.ndarray, size: int, kind: str) -> None:
        walk = self.walk
        offsets = offsets[offsets < np.uint64(walk.file_size)]
        if kind not in self.kinds:
            self.kinds.append(kind)
        bits = np.uint64(walk.cluster_bits)
        first = (offsets >> bits).astype(np.int64)
        last = np.minimum(
            ((offsets + np.uint64(size - 1)) >> bits).astype(np.int64),
            walk.file_clusters,
        )
        code = np.full(offsets.size, self.kinds.index(kind), dtype=np.int64)
        self.parts.append((first, last, code, offsets.astype(np.int64)))

    def describe(self, cluster: int) -> str:
        """Name a structure that lives in ``cluster``."""
        hits = np.flatnonzero((self.first <= cluster) & (self.last >= cluster))
        if hits.size == 0:
            return "metadata"
        index = int(hits[0])
        return f"{self.kinds[self.kind[index]]} at {int(self.offset[index]):#x}"

    def finish(self) -> None:
        """Flag the metadata clusters and report clusters of two kinds at once."""
        walk = self.walk
        if not self.parts:
            return
        self.first, self.last, self.kind, self.offset = (
            np.concatenate(column) for column in zip(*self.parts, strict=True)
        )
        self.parts = []
        lengths = self.last - self.first + 1
        owner = np.repeat(np.arange(lengths.size), lengths)
        clusters = np.repeat(self.first, lengths) + (
            np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )

        set_flag_at(walk.flags, clusters, FLAG_METADATA)

        order = np.lexsort((self.kind[owner], clusters))
        clusters, owner = clusters[order], owner[order]
        same_cluster = clusters[1:] == clusters[:-1]
        other_kind = self.kind[owner[1:]] != self.kind[owner[:-1]]
        clash = np.flatnonzero(same_cluster & other_kind)
        if clash.size:
            # One finding per cluster, however many kinds meet there.
            clash = clash[np.concatenate(([True], np.diff(clusters[clash]) != 0))]
        for position in clash[: walk.rec.take("overlap", clash.size)].tolist():
            cluster = int(clusters[position])
            a, b = int(owner[position]), int(owner[position + 1])
            walk.rec.add(
                "overlap",
                f"host cluster {cluster} ({cluster << walk.cluster_bits:#x}) holds "
                f"both {self.kinds[self.kind[a]]} at {int(self.offset[a]):#x} and "
                f"{self.kinds[self.kind[b]]} at {int(self.offset[b]):#x}; expected "
                "each structure in clusters of its own",
                cluster << walk.cluster_bits,
            )
