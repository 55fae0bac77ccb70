"""What one walk carries: the computed refcounts, the counters, and the findings.

``Counts`` is QEMU's in-memory refcount table (``qcow2_inc_refcounts_imrt`` in
``block/qcow2-refcount.c``): one counter per host cluster, one byte wide until a
count needs more. ``Recorder`` lists the first findings of each rule one by one and
summarises the rest, while the counters stay exact.
"""

from __future__ import annotations

import numpy as np

from ..findings import ERROR, INFO, WARNING, Report
from ..header import Header
from ..image import ImageFile

# Findings listed one by one per rule; the rest are summed up in one finding.
FINDINGS_PER_RULE = 20

FLAG_REFCOUNT_ONE = 1
FLAG_METADATA = 2

_WIDER = {np.uint8: np.uint16, np.uint16: np.uint32, np.uint32: np.uint64}
_RANK = {INFO: 0, WARNING: 1, ERROR: 2}


class Counts:
    """References per host cluster, for clusters 0 to ``size - 1``."""

    def __init__(self, size: int, cluster_bits: int) -> None:
        self.array = np.zeros(size, dtype=np.uint8)
        self.cluster_bits = cluster_bits

    def add(self, clusters: np.ndarray, weight: int = 1, scratch=None) -> None:
        """Add ``weight`` references to each of ``clusters`` (repeats count twice)."""
        if clusters.size == 0 or weight == 0:
            return
        if clusters.size > 1:
            rising = np.greater(
                clusters[1:],
                clusters[:-1],
                out=None
                if scratch is None
                else scratch.get("rising", clusters.size - 1, bool),
            )
            if not rising.all():
                unique, repeats = np.unique(clusters, return_counts=True)
                amount = repeats.astype(np.uint64) * np.uint64(weight)
                self._add_unique(unique, amount)
                return
        self._add_unique(clusters, weight, scratch)

    def add_amounts(self, clusters: np.ndarray, amounts: np.ndarray) -> None:
        """Add ``amounts[i]`` references to each of the distinct, sorted clusters."""
        if clusters.size:
            self._add_unique(clusters, amounts.astype(np.uint64))

    def _add_unique(self, clusters: np.ndarray, amount, scratch=None) -> None:
        while True:
            out = None
            if scratch is not None:
                out = scratch.get("current", clusters.size, self.array.dtype)
            current = np.take(self.array, clusters, out=out)
            highest = int(current.max()) + int(np.max(amount))
            if highest <= np.iinfo(self.array.dtype).max:
                break
            self.array = self.array.astype(_WIDER[self.array.dtype.type])
        np.add(current, np.asarray(amount, dtype=self.array.dtype), out=current)
        self.array[clusters] = current

    def add_region(self, offset: int, size: int, weight: int = 1) -> None:
        """Count every cluster the byte range touches; the caller checked the end."""
        first = offset >> self.cluster_bits
        last = (offset + size - 1) >> self.cluster_bits
        self.add(np.arange(first, last + 1, dtype=np.int64), weight)


class Scratch:
    """Work arrays reused from one batch to the next.

    A fresh megabyte-sized numpy temporary per batch is a fresh mmap, and its
    pages fault in again every time; reusing a few buffers keeps them mapped.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, count: int, dtype) -> np.ndarray:
        buffer = self.buffers.get(name)
        if buffer is None or buffer.size < count or buffer.dtype != dtype:
            buffer = self.buffers[name] = np.empty(max(count, 1), dtype=dtype)
        return buffer[:count]


class Recorder:
    """Adds findings to the report, at most FINDINGS_PER_RULE per rule."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.listed: dict[str, int] = {}
        self.unlisted: dict[str, tuple[int, str]] = {}

    def room(self, rule: str) -> int:
        """How many more findings of ``rule`` will be listed."""
        return FINDINGS_PER_RULE - self.listed.get(rule, 0)

    def add(
        self, rule: str, message: str, offset: int | None, severity: str | None = None
    ) -> None:
        if self.room(rule) > 0:
            self.listed[rule] = self.listed.get(rule, 0) + 1
            self.report.add(rule, message, offset, severity=severity)
        else:
            self.skip(rule, 1, severity or ERROR)

    def take(self, rule: str, count: int, severity: str = ERROR) -> int:
        """Of ``count`` new findings, how many to list; the rest are counted."""
        listed = min(count, self.room(rule))
        self.skip(rule, count - listed, severity)
        return listed

    def skip(self, rule: str, count: int, severity: str = ERROR) -> None:
        """Count ``count`` findings of ``rule`` that are not listed."""
        if count <= 0:
            return
        before, worst = self.unlisted.get(rule, (0, INFO))
        if _RANK[severity] > _RANK[worst]:
            worst = severity
        self.unlisted[rule] = (before + count, worst)

    def finish(self) -> None:
        for rule, (count, severity) in self.unlisted.items():
            self.report.add(
                rule,
                f"... and {count} more {rule} findings like the ones above, not "
                "listed one by one",
                None,
                severity=severity,
            )
        self.unlisted.clear()


class Walk:
    """The state shared by the parts of one walk over an image's tables."""

    def __init__(
        self, image: ImageFile, header: Header, report: Report, deep: bool, progress
    ) -> None:
        self.image = image
        self.header = header
        self.report = report
        self.deep = deep
        self.progress = progress
        self.rec = Recorder(report)

        self.cluster_bits = header.cluster_bits
        self.cluster_size = header.cluster_size
        self.file_size = image.size
        self.file_clusters = -(-image.size // self.cluster_size)
        # A reference may reach less than one cluster past the end of the file
        # (qcow2_inc_refcounts_imrt), so one more counter than there are clusters.
        self.counts = Counts(self.file_clusters + 1, self.cluster_bits)
        self.refcount_max = (1 << header.refcount_bits) - 1
        # Set when some cluster is referenced more often than a refcount can say.
        self.overflow = False
        self.data_file = header.has_data_file

        self.corruptions = 0
        self.leaks = 0
        self.check_errors = 0
        self.allocated_clusters = 0
        self.fragmented_clusters = 0
        self.compressed_clusters = 0

        # Refcount mismatches on a dirty image are repaired by QEMU on open.
        self.refcount_severity = WARNING if header.dirty else ERROR

        # Per cluster: FLAG_REFCOUNT_ONE (the stored refcount is 1, for the COPIED
        # check) and FLAG_METADATA (a table lives there, for overlaps). One byte
        # each: a single gather per L2 entry checks both.
        self.flags = np.zeros(self.file_clusters + 1, dtype=np.uint8)
        self.stored = None
        self.scratch = Scratch()
        self.registry = None
        self.decoder = None

    def past_end(self, offset: int, size: int) -> bool:
        """qcow2_inc_refcounts_imrt: a region may end less than a cluster past EOF."""
        return offset + size - self.file_size >= self.cluster_size

    def count_region(
        self, offset: int, size: int, what: str, weight: int = 1, rule: str = "refcount"
    ) -> bool:
        """Count references to a region as QEMU does; False if it lies past the end."""
        if size <= 0:
            return True
        if self.past_end(offset, size):
            self.corruptions += weight
            self.rec.add(
                rule,
                f"{what} at {offset:#x} ({size} bytes) lies past the end of the file "
                f"at {self.file_size:#x}; expected it inside the file (a truncated "
                "image?)",
                offset,
            )
            return False
        self.counts.add_region(offset, size, weight)
        return True

    def tick(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)


def set_flags(flags: np.ndarray, first: int, values: np.ndarray, flag: int) -> None:
    """OR ``flag`` into the clusters from ``first`` where ``values`` is true."""
    end = min(len(values), len(flags) - first)
    if end > 0:
        flags[first : first + end] |= values[:end].astype(np.uint8) * np.uint8(flag)


def set_flag_at(flags: np.ndarray, clusters: np.ndarray, flag: int) -> None:
    """OR ``flag`` into each of ``clusters`` (below ``len(flags)``)."""
    flags[clusters] |= np.uint8(flag)


def get_flags(flags: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """The flag bits of each cluster (all below ``len(flags)``)."""
    return flags[clusters]
