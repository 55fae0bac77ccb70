"""The metadata walk: every table of an image, checked as ``qemu-img check`` does.

:func:`check_tables` reads the active L1 and L2 tables, the refcount table and
blocks, the snapshot table with each snapshot's tables, the bitmap directory and
bitmap tables, counts the references to every host cluster and compares them with
the stored refcounts (``qcow2_check_refcounts`` in QEMU's ``block/qcow2-refcount.c``).
``report.info["check"]`` gets the figures ``qemu-img check`` prints, with the same
meaning; ``corruptions`` and ``leaks`` are counted exactly as QEMU counts them.

Where qcow2check is stricter than ``qemu-img check``, the extra findings are
errors but are not added to ``corruptions``, so the counts stay comparable:

- a zero flag (bit 0) on an L2 entry of a version 2 image (``l2-table``): QEMU's
  check passes it, but a read of the cluster fails with "Zero cluster entry found
  in pre-v3 image" and marks the image corrupt;
- compressed data that does not decode to exactly one cluster, at the deep level
  (``compressed-cluster``): QEMU's check passes it, reads fail with an I/O error.
  Only the active state's clusters are decoded, the part an import reads;
- a host cluster shared by two structures, or by a structure and a data cluster
  (``overlap``): QEMU's check sees this only as refcount errors, which are
  counted; the overlap finding names both. Snapshots sharing L2 tables and data
  clusters with the active state, as QEMU makes them, are no overlap.

Where QEMU's check cannot complete (it exits 1, usually without counts), the walk
goes on and ``check_errors`` counts what stopped QEMU: unreadable refcount blocks
(one per cluster they cover, as QEMU counts), a snapshot table or bitmap directory
QEMU refuses, a bitmap table with an invalid entry. The other counts then include
what QEMU never reached. On a dirty image (lazy refcounts) refcount and COPIED
mismatches are counted as QEMU counts them but reported as warnings, since QEMU
repairs them when it opens the image.
"""

from __future__ import annotations

import logging

import numpy as np

from .. import layout, limits
from ..errors import ImageReadError
from ..findings import ERROR, Report
from ..header import Header
from ..image import ImageFile
from . import bitmaps, compressed, l1l2, metadata, refcounts, snapshots
from .state import Walk
from .tables import read_u64_table

log = logging.getLogger(__name__)

__all__ = ["check_tables"]


def check_tables(
    image: ImageFile, header: Header, report: Report, *, deep: bool, progress=None
) -> None:
    """Walk every table of ``image``; findings go to ``report``.

    ``progress``, if given, is called as ``progress(done, total)`` as L2 tables
    are read. Nothing in the image's bytes makes this raise; an I/O error while
    reading does (:class:`~qcow2check.errors.ImageReadError`).
    """
    if -(-image.size // header.cluster_size) > limits.QCOW2_CHECK_MAX_CLUSTERS:
        # qcow2_check_refcounts refuses too (-EFBIG): a counter per cluster of a
        # file this large would take gigabytes.
        report.add(
            "not-checked",
            "the tables were not walked: the file has more than "
            f"{limits.QCOW2_CHECK_MAX_CLUSTERS} clusters "
            f"of {header.cluster_size} bytes, more than qemu-img check can count, "
            "so the image is not accepted unchecked",
            severity=ERROR,
        )
        return
    walk = Walk(image, header, report, deep, progress)
    image_end_offset = 0
    try:
        image_end_offset = _walk(walk)
    except ImageReadError:
        raise
    except Exception as error:  # noqa: BLE001 - a finding, never a crash
        # Fail closed: an image the walk could not finish is not accepted unread.
        log.debug("walking the tables of %s failed", image.name, exc_info=True)
        walk.rec.add(
            "not-checked",
            f"the table walk stopped early on an internal error ({error!r}), so the "
            "image is not accepted; the counts are incomplete. Please report it "
            "with the image's first clusters",
            None,
            severity=ERROR,
        )
    finally:
        if walk.decoder is not None:
            walk.decoder.pool.shutdown(wait=True, cancel_futures=True)
        walk.rec.finish()

    log.debug(
        "%s: %d corruptions, %d leaks, %d check errors",
        image.name,
        walk.corruptions,
        walk.leaks,
        walk.check_errors,
    )
    zstd = header.compression_type == layout.QCOW2_COMPRESSION_TYPE_ZSTD
    report.info["check"] = {
        "total_clusters": -(-(header.size // 512 * 512) // walk.cluster_size),
        "allocated_clusters": walk.allocated_clusters,
        "fragmented_clusters": walk.fragmented_clusters,
        "compressed_clusters": walk.compressed_clusters,
        "zstd_compressed_clusters": walk.compressed_clusters if zstd else 0,
        "zlib_compressed_clusters": 0 if zstd else walk.compressed_clusters,
        "image_end_offset": image_end_offset,
        "corruptions": walk.corruptions,
        "leaks": walk.leaks,
        "check_errors": walk.check_errors,
    }


class _Layout:
    """Where the tables are, read before anything is counted."""

    def __init__(self, walk: Walk) -> None:
        header = walk.header
        refcounts.read_stored(walk)
        self.l1 = _read_l1(
            walk, header.l1_table_offset, header.l1_size, "the active L1 table"
        )
        loaded = snapshots.load(walk)
        snapshot_list, self.snapshots_size = loaded or ([], 0)
        if loaded is not None:
            snapshot_list = snapshots.usable(walk, snapshot_list)
        self.snapshot_l1s = _read_snapshot_l1s(walk, snapshot_list)
        self.bitmaps = bitmaps.load(walk)


def _walk(walk: Walk) -> int:
    found = _Layout(walk)
    _register(walk, found)

    # Count references in qcow2_check_refcounts' order.
    header = walk.header
    walk.count_region(0, walk.cluster_size, "the header cluster")
    if walk.deep:
        walk.decoder = compressed.Decoder(walk)
    l1_size = header.l1_size if found.l1 is not None else 0
    active = _count_l1(
        walk, [(found.l1, header.l1_table_offset, l1_size, 1, "the active L1 table")]
    )
    inactive = _count_l1(
        walk,
        [
            (
                table,
                group[0].l1_table_offset,
                group[0].l1_size,
                len(group),
                _name(group),
            )
            for group, table in found.snapshot_l1s
        ],
        active=False,
    )
    total = active.offsets.size + inactive.offsets.size
    done = l1l2.walk_l2(walk, active, True, 0, total)
    l1l2.walk_l2(walk, inactive, False, done, total)
    if walk.decoder is not None:
        walk.decoder.close()
        if found.snapshot_l1s:
            walk.rec.add(
                "not-checked",
                "compressed clusters reached only from internal snapshots were not "
                "decoded: the import takes the active state only",
                None,
            )
    elif walk.compressed_clusters:
        walk.rec.add(
            "not-checked",
            f"the data of {walk.compressed_clusters} compressed clusters was not "
            "decoded (the deep level decodes it)",
            None,
        )

    walk.count_region(
        header.snapshots_offset,
        found.snapshots_size,
        "the snapshot table",
        rule="snapshot-table",
    )
    walk.count_region(
        header.refcount_table_offset, walk.stored.table_bytes, "the refcount table"
    )
    crypto = header.crypto_header
    if crypto is not None and crypto.length:
        walk.count_region(crypto.offset, crypto.length, "the encryption header")
    if found.bitmaps:
        bitmaps.count(walk, found.bitmaps)
    refcounts.count_refblocks(walk)

    _count_overflow(walk)
    return refcounts.compare(walk)


def _register(walk: Walk, found: _Layout) -> None:
    """Tell the registry where every table lives, for the overlap checks."""
    header = walk.header
    registry = walk.registry = metadata.Registry(walk)
    registry.add(0, walk.cluster_size, metadata.HEADER)
    if found.l1 is not None:
        registry.add(header.l1_table_offset, 8 * header.l1_size, metadata.ACTIVE_L1)
        registry.add_many(_l2_offsets(found.l1), metadata.L2_TABLE)
    registry.add(
        header.refcount_table_offset, walk.stored.table_bytes, metadata.REFCOUNT_TABLE
    )
    valid = walk.stored.state == refcounts.VALID
    registry.add_many(walk.stored.offsets[valid], metadata.REFCOUNT_BLOCK)
    registry.add(header.snapshots_offset, found.snapshots_size, metadata.SNAPSHOT_TABLE)
    for group, table in found.snapshot_l1s:
        registry.add(
            group[0].l1_table_offset, 8 * group[0].l1_size, metadata.SNAPSHOT_L1
        )
        registry.add_many(_l2_offsets(table), metadata.L2_TABLE)
    crypto = header.crypto_header
    if crypto is not None:
        registry.add(crypto.offset, crypto.length, metadata.ENCRYPTION_HEADER)
    if found.bitmaps:
        extension = header.bitmaps_extension
        registry.add(
            extension.bitmap_directory_offset,
            extension.bitmap_directory_size,
            metadata.BITMAP_DIRECTORY,
        )
        for bitmap in found.bitmaps:
            registry.add(
                bitmap.table_offset, 8 * bitmap.table_size, metadata.BITMAP_TABLE
            )
    registry.finish()


def _read_l1(walk: Walk, offset: int, size: int, name: str) -> np.ndarray | None:
    if size > limits.QCOW_MAX_L1_SIZE // 8:
        walk.rec.add(
            "not-checked",
            f"{name} was not read: its {size} entries are more than QEMU's limit of "
            f"{limits.QCOW_MAX_L1_SIZE // 8}",
            offset,
        )
        return None
    return read_u64_table(walk.image, offset, size)


def _read_snapshot_l1s(walk: Walk, usable: list) -> list:
    """Each distinct snapshot L1 table, read once, with the snapshots using it."""
    groups: dict[tuple[int, int], list] = {}
    for snapshot in usable:
        groups.setdefault((snapshot.l1_table_offset, snapshot.l1_size), []).append(
            snapshot
        )
    # Overlapping L1 tables of many snapshots could make the reads grow without
    # bound; real snapshot L1 tables are distinct clusters of the file.
    budget = walk.file_size + limits.QCOW_MAX_L1_SIZE
    tables = []
    for (offset, size), group in groups.items():
        budget -= 8 * size
        if budget < 0:
            walk.rec.add(
                "not-checked",
                f"the L1 tables of {_name(group)} and later snapshots were not read: "
                "together they are larger than the file",
                group[0].entry_offset,
            )
            break
        tables.append((group, read_u64_table(walk.image, offset, size)))
    return tables


def _name(group: list) -> str:
    if len(group) == 1:
        return f"the L1 table of {group[0]}"
    return f"the L1 table of {group[0]} and {len(group) - 1} more snapshots"


def _l2_offsets(l1: np.ndarray) -> np.ndarray:
    return np.unique(l1[l1 != 0] & l1l2.L1_OFFSET)


def _count_l1(walk: Walk, tables: list, active: bool = True) -> l1l2.L2Tables:
    found, names = [], []
    for table, table_offset, entries, weight, name in tables:
        if entries == 0:
            continue
        # QEMU reads and walks the table even when it runs past the end.
        walk.count_region(table_offset, 8 * entries, name, weight, "l1-table")
        found.append(l1l2.check_l1(walk, table, table_offset, weight, active, name))
        names.append(name)
    return l1l2.merge(found, names)


def _count_overflow(walk: Walk) -> None:
    """Computed refcounts above the refcount width are QEMU's "overflow" errors."""
    counts = walk.counts.array
    if int(counts.max(initial=0)) <= walk.refcount_max:
        return
    walk.overflow = True
    for start in range(0, counts.size, refcounts.CHUNK_CLUSTERS):
        chunk = counts[start : start + refcounts.CHUNK_CLUSTERS]
        over = np.flatnonzero(chunk > walk.refcount_max)
        excess = chunk[over].astype(np.int64) - walk.refcount_max
        walk.corruptions += int(excess.sum())
        listed = walk.rec.take("refcount", over.size, walk.refcount_severity)
        for position in over[:listed].tolist():
            cluster = start + position
            walk.rec.add(
                "refcount",
                f"cluster {cluster} ({cluster << walk.cluster_bits:#x}) is "
                f"referenced {int(chunk[position])} times, more than a "
                f"{walk.header.refcount_bits}-bit refcount can hold; expected at "
                f"most {walk.refcount_max}",
                cluster << walk.cluster_bits,
                walk.refcount_severity,
            )
