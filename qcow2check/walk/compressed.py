"""Compressed clusters: their descriptors, and at the deep level their data.

The descriptor checks mirror the compressed case of ``check_refcounts_l2`` in
QEMU's ``block/qcow2-refcount.c``; the byte span follows
``qcow2_parse_compressed_l2_entry``. Decoding follows ``qcow2_zlib_decompress`` and
``qcow2_zstd_decompress`` (``block/qcow2-threads.c``): the data must yield exactly
one cluster. ``qemu-img check`` never decodes, so an undecodable cluster is a
finding here but not one of QEMU's corruptions.

Decoding runs in a thread pool (zlib and zstandard release the GIL) over batches
of clusters read with a few large sequential reads, while the walk goes on.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import zstandard

from .. import layout
from .state import FLAG_METADATA, Walk, get_flags
from .tables import read_padded

log = logging.getLogger(__name__)

U = np.uint64
COPIED = U(layout.QCOW_OFLAG_COPIED)
SECTOR = 512

# Compressed bytes gathered before a batch is read and handed to the pool, and the
# largest gap between two clusters' data that one read still spans.
BATCH_BYTES = 8 << 20
READ_GAP = 64 << 10
CLUSTERS_PER_JOB = 32


def check_entries(batch, positions: np.ndarray) -> None:
    """Check the compressed entries at ``positions`` of an L2 batch."""
    walk = batch.walk
    entries = batch.entries[positions]

    copied = np.flatnonzero((entries & COPIED) != 0)
    batch.report(
        "compressed-cluster",
        positions[copied],
        lambda p: (
            f"the COPIED flag (bit 63) is set on compressed entry "
            f"{int(batch.entries[p]):#x}; expected it clear, compressed clusters are "
            "never written in place"
        ),
    )
    if walk.data_file:
        batch.report(
            "compressed-cluster",
            positions,
            lambda p: (
                "a compressed cluster in an image with an external data file; "
                "expected none, QEMU cannot store compressed data there"
            ),
        )
        return
    if batch.bitmaps is not None:
        bitmaps = batch.bitmaps[positions]
        bad = bitmaps != 0
        batch.report(
            "compressed-cluster",
            positions[bad],
            lambda p: (
                f"compressed cluster with subcluster bitmap "
                f"{int(batch.bitmaps[p]):#x}; expected 0"
            ),
        )
        positions, entries = positions[~bad], entries[~bad]
        if positions.size == 0:
            return

    offset_mask, shift = layout.compressed_descriptor_fields(walk.cluster_bits)
    sectors = ((entries >> U(shift)) & U((1 << (walk.cluster_bits - 8)) - 1)) + U(1)
    start = (entries & U(offset_mask)).astype(np.int64)
    size = sectors.astype(np.int64) * SECTOR - (start & (SECTOR - 1))

    if batch.active:
        count = positions.size * batch.weight
        walk.allocated_clusters += count
        walk.compressed_clusters += count
        # Compressed clusters are fragmented by nature (check_refcounts_l2).
        walk.fragmented_clusters += count

    past = start + size - walk.file_size >= walk.cluster_size
    if past.any():
        batch.report(
            "compressed-cluster",
            positions[past],
            lambda p: (
                f"compressed data ({_describe(batch, p)}) runs past the end of "
                f"the file at {walk.file_size:#x}; expected it inside the file"
            ),
        )
        keep = ~past
        positions, start, size = positions[keep], start[keep], size[keep]

    first = start >> walk.cluster_bits
    last = (start + size - 1) >> walk.cluster_bits
    for step in range(int((last - first).max(initial=0)) + 1):
        reach = first + step
        touched = reach[last >= reach]
        walk.counts.add(touched, batch.weight)
        meta = np.flatnonzero(get_flags(walk.flags, touched) & FLAG_METADATA)
        hit = positions[last >= reach][meta]
        for index, position in enumerate(hit[: walk.rec.take("overlap", hit.size)]):
            name, offset = batch.where(position)
            cluster = int(touched[meta[index]])
            walk.rec.add(
                "overlap",
                f"{name}: compressed data reaches host cluster "
                f"{cluster << walk.cluster_bits:#x}, which holds "
                f"{walk.registry.describe(cluster)}; expected data clusters only",
                offset,
            )

    if batch.active and walk.decoder is not None:
        tables, index = divmod(positions, batch.per_table)
        table_offsets = batch.tables.offsets[batch.rows[tables]].astype(np.int64)
        walk.decoder.add(start, size, table_offsets, index)


def _describe(batch, position: int) -> str:
    entry = int(batch.entries[position])
    offset_mask, shift = layout.compressed_descriptor_fields(batch.walk.cluster_bits)
    start = entry & offset_mask
    sectors = ((entry >> shift) & ((1 << (batch.walk.cluster_bits - 8)) - 1)) + 1
    return f"{sectors * SECTOR - start % SECTOR} bytes at {start:#x}"


def _decode_zlib(data: bytes, cluster_size: int) -> str | None:
    try:
        out = zlib.decompressobj(-15).decompress(data, cluster_size)
    except zlib.error as error:
        return f"deflate error: {error}"
    if len(out) != cluster_size:
        return f"deflate data ends after {len(out)} bytes"
    return None


_per_thread = threading.local()


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    # Making a decompressor costs more than decoding a 4 KiB cluster; one is kept
    # per decoding thread, since a decompressor must not be shared between threads.
    decompressor = getattr(_per_thread, "zstd", None)
    if decompressor is None:
        decompressor = _per_thread.zstd = zstandard.ZstdDecompressor()
    return decompressor


def _decode_zstd(data: bytes, cluster_size: int) -> str | None:
    # Stream readers bound the output: a frame header may claim any size. QEMU
    # writes one frame per cluster, which must end exactly at the cluster's end;
    # the bytes after it may be the next cluster's frame.
    decompressor = _zstd_decompressor()
    try:
        # One read stops at the end of the first frame.
        first = len(
            decompressor.stream_reader(data, read_across_frames=False).read(
                cluster_size + 1
            )
        )
        if first == cluster_size:
            return None
        if first > cluster_size:
            return "zstd frame holds more than one cluster"
        # Several frames (qcow2_zstd_decompress accepts them): read across them.
        reader = decompressor.stream_reader(data, read_across_frames=True)
        got = len(_read_up_to(reader, cluster_size))
    except zstandard.ZstdError as error:
        return f"zstd error: {error}"
    if got != cluster_size:
        return f"zstd data ends after {got} bytes"
    return None


def _read_up_to(reader, size: int) -> bytes:
    parts, got = [], 0
    while got < size:
        piece = reader.read(size - got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def _decode_job(decode, data: bytes, spans: list, cluster_size: int) -> list:
    failures = []
    for index, begin, length in spans:
        problem = decode(data[begin : begin + length], cluster_size)
        if problem is not None:
            failures.append((index, problem))
    return failures


class Decoder:
    """Decodes the active tree's compressed clusters in batches, on all cores."""

    def __init__(self, walk: Walk) -> None:
        self.walk = walk
        zstd = walk.header.compression_type == layout.QCOW2_COMPRESSION_TYPE_ZSTD
        self.decode = _decode_zstd if zstd else _decode_zlib
        self.entry_size = 16 if walk.header.extended_l2 else 8
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        self.pending: list[tuple[np.ndarray, ...]] = []
        self.pending_bytes = 0
        self.running: list[tuple[Future, np.ndarray, np.ndarray, np.ndarray]] = []
        # In an image QEMU wrote, compressed clusters do not share data, so all of
        # it fits in the file. Descriptors overlapping beyond that (the refcounts
        # catch them) would make the decoding cost grow with the claims.
        self.budget = 2 * walk.file_size + 2 * walk.cluster_size
        self.not_decoded = 0

    def add(self, start, size, table_offsets, index) -> None:
        if start.size == 0:
            return
        # Descriptors naming the same bytes decode the same: once is enough.
        order = np.lexsort((size, start))
        repeat = (np.diff(start[order]) == 0) & (np.diff(size[order]) == 0)
        if repeat.any():
            keep = np.sort(order[np.concatenate(([True], ~repeat))])
            start, size = start[keep], size[keep]
            table_offsets, index = table_offsets[keep], index[keep]
        total = int(size.sum())
        if total > self.budget:
            self.not_decoded += start.size
            return
        self.budget -= total
        self.pending.append((start, size, table_offsets, index))
        self.pending_bytes += total
        if self.pending_bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        start, size, table_offsets, index = (
            np.concatenate(column) for column in zip(*self.pending, strict=True)
        )
        self.pending, self.pending_bytes = [], 0
        order = np.argsort(start, kind="stable")
        start, size = start[order], size[order]
        table_offsets, index = table_offsets[order], index[order]

        # One batch of about BATCH_BYTES is read while the one before decodes; the
        # results of that one are taken only once this one is queued, so that the
        # workers never wait for the reader.
        total = np.cumsum(size)
        cuts = np.searchsorted(total, np.arange(BATCH_BYTES, total[-1], BATCH_BYTES))
        bounds = [0, *np.unique(cuts).tolist(), start.size]
        for first, stop in zip(bounds[:-1], bounds[1:], strict=True):
            if first == stop:
                continue
            jobs = self._read(start[first:stop], size[first:stop])
            where = (start[first:stop], table_offsets[first:stop], index[first:stop])
            for spans, data in jobs:
                future = self.pool.submit(
                    _decode_job, self.decode, data, spans, self.walk.cluster_size
                )
                self.running.append((future, *where))
            self._collect(keep=len(jobs))

    def _read(self, start, size) -> list:
        """Read the data of sorted clusters with a few large reads, in jobs."""
        end = np.maximum.accumulate(start + size)
        breaks = np.flatnonzero(start[1:] > end[:-1] + READ_GAP) + 1
        bounds = [0, *breaks.tolist(), start.size]
        jobs = []
        for first, stop in zip(bounds[:-1], bounds[1:], strict=True):
            base = int(start[first])
            data = read_padded(self.walk.image, base, int(end[stop - 1]) - base)
            spans = [
                (i, int(start[i]) - base, int(size[i])) for i in range(first, stop)
            ]
            for job in range(0, len(spans), CLUSTERS_PER_JOB):
                jobs.append((spans[job : job + CLUSTERS_PER_JOB], data))
        return jobs

    def _collect(self, keep: int = 0) -> None:
        """Record the results of all but the ``keep`` newest jobs, oldest first."""
        walk = self.walk
        done, self.running = (
            self.running[: len(self.running) - keep],
            self.running[len(self.running) - keep :],
        )
        for future, start, table_offsets, index in done:
            for position, problem in future.result():
                walk.rec.add(
                    "compressed-cluster",
                    f"L2 table at {int(table_offsets[position]):#x} entry "
                    f"{int(index[position])}: the compressed cluster at "
                    f"{int(start[position]):#x} does not decode to one cluster "
                    f"({problem}); expected exactly {walk.cluster_size} bytes, "
                    "QEMU fails reads of it with an I/O error",
                    int(table_offsets[position])
                    + int(index[position]) * self.entry_size,
                )

    def close(self) -> None:
        try:
            self.flush()
            self._collect()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.not_decoded:
            self.walk.rec.add(
                "not-checked",
                f"{self.not_decoded} compressed clusters were not decoded: the "
                "compressed data named overlaps until it is more than twice the "
                "file",
                None,
            )
