"""Persistent dirty bitmaps: the bitmap directory, and each bitmap's table.

Mirrors ``bitmap_list_load``, ``check_dir_entry``, ``check_table_entry`` and
``qcow2_check_bitmaps_refcounts`` in QEMU's ``block/qcow2-bitmap.c``. QEMU loads
the directory when it opens an image, so every problem here is one it refuses.
"""

from __future__ import annotations

import struct

import numpy as np

from .. import layout, limits
from .state import FLAG_METADATA, Walk, get_flags
from .tables import read_padded, read_u64_table

SIZES = struct.Struct(">18xHI")
BME_RESERVED_FLAGS = 0xFFFFFFFF & ~(layout.BME_FLAG_IN_USE | layout.BME_FLAG_AUTO)


def _entry_parser():
    # The padding's size is a lambda, which construct cannot compile.
    return layout.bitmap_directory_entry.parse


class Bitmap:
    """One directory entry: the bitmap's name and where its table is."""

    def __init__(self, entry, entry_offset: int) -> None:
        self.name = entry.name.decode("utf-8", "backslashreplace")
        self.table_offset = entry.bitmap_table_offset
        self.table_size = entry.bitmap_table_size
        self.entry_offset = entry_offset

    def __str__(self) -> str:
        return f"bitmap {self.name!r}"


def load(walk: Walk) -> list[Bitmap] | None:
    """Read the bitmap directory; None when QEMU would refuse it."""
    extension = walk.header.bitmaps_extension
    if extension is None or extension.nb_bitmaps == 0:
        return []
    directory_offset = extension.bitmap_directory_offset
    directory_size = extension.bitmap_directory_size
    if (
        directory_size > limits.QCOW2_MAX_BITMAP_DIRECTORY_SIZE
        or directory_offset % walk.cluster_size
        or extension.nb_bitmaps > limits.QCOW2_MAX_BITMAPS
    ):
        # The header check has reported the extension itself.
        walk.check_errors += 1
        return None

    if directory_offset + directory_size > walk.file_size:
        # The missing bytes would read as zeros, which no entry survives.
        return _refuse(
            walk,
            directory_offset,
            f"the bitmap directory ({directory_size} bytes at {directory_offset:#x}) "
            f"runs past the end of the file at {walk.file_size:#x}",
        )
    directory = read_padded(walk.image, directory_offset, directory_size)
    bitmaps = []
    position = 0
    fixed = layout.BITMAP_DIRECTORY_ENTRY_FIXED_SIZE
    while position < directory_size:
        where = directory_offset + position
        if position + fixed > directory_size:
            return _refuse(walk, where, "the bitmap directory ends inside an entry")
        if len(bitmaps) == extension.nb_bitmaps:
            return _refuse(
                walk,
                where,
                f"the bitmap directory holds more entries than nb_bitmaps "
                f"({extension.nb_bitmaps}) says",
            )
        name_size, extra_size = SIZES.unpack_from(directory, position)
        length = -(-(fixed + extra_size + name_size) // 8) * 8
        if position + length > directory_size:
            return _refuse(walk, where, "the bitmap directory ends inside an entry")
        entry = _entry_parser()(directory[position : position + length])
        problem = _check_entry(walk, entry)
        if problem:
            name = entry.name.decode("utf-8", "backslashreplace")
            return _refuse(walk, where, f"bitmap {name!r}: {problem}")
        bitmaps.append(Bitmap(entry, where))
        position += length
    if len(bitmaps) != extension.nb_bitmaps:
        return _refuse(
            walk,
            directory_offset,
            f"the bitmap directory holds {len(bitmaps)} entries; expected "
            f"nb_bitmaps, {extension.nb_bitmaps}",
        )
    return bitmaps


def _refuse(walk: Walk, offset: int, message: str) -> None:
    # qcow2_check_bitmaps_refcounts: a directory QEMU cannot load is one corruption
    # and ends the check.
    walk.corruptions += 1
    walk.check_errors += 1
    walk.rec.add("bitmap", f"{message}; QEMU refuses to load the bitmaps", offset)
    return None


def _check_entry(walk: Walk, entry) -> str | None:
    """check_dir_entry and bitmap_list_load: what QEMU requires of an entry."""
    cluster_size = walk.cluster_size
    table_bytes = entry.bitmap_table_size * cluster_size
    if entry.extra_data_size:
        return f"extra_data_size is {entry.extra_data_size}; expected 0"
    if not 1 <= entry.bitmap_table_size <= limits.BME_MAX_TABLE_SIZE:
        return (
            f"bitmap_table_size is {entry.bitmap_table_size}; expected 1 to "
            f"{limits.BME_MAX_TABLE_SIZE}"
        )
    if entry.bitmap_table_offset == 0 or entry.bitmap_table_offset % cluster_size:
        return (
            f"bitmap_table_offset is {entry.bitmap_table_offset:#x}; expected a "
            "non-zero multiple of the cluster size"
        )
    granularity = entry.granularity_bits
    if (
        not limits.BME_MIN_GRANULARITY_BITS
        <= granularity
        <= (limits.BME_MAX_GRANULARITY_BITS)
    ):
        return (
            f"granularity_bits is {granularity}; expected "
            f"{limits.BME_MIN_GRANULARITY_BITS} to {limits.BME_MAX_GRANULARITY_BITS}"
        )
    if entry.flags & BME_RESERVED_FLAGS:
        return f"flags are {entry.flags:#x}; expected only bits 0 (in_use) and 1 (auto)"
    if entry.name_size > limits.BME_MAX_NAME_SIZE:
        return f"name_size is {entry.name_size}; expected at most 1023"
    if entry.type != layout.BME_TYPE_DIRTY_TRACKING:
        return f"type is {entry.type}; expected 1 (dirty tracking)"
    if table_bytes > limits.BME_MAX_PHYS_SIZE:
        return (
            f"the bitmap takes {table_bytes} bytes; expected at most "
            f"{limits.BME_MAX_PHYS_SIZE}"
        )
    covered = (table_bytes * 8) << granularity
    if not entry.flags & layout.BME_FLAG_IN_USE and walk.header.size > covered:
        return (
            f"its table covers {covered} bytes of the disk; expected at least the "
            f"virtual size, {walk.header.size}"
        )
    return None


def count(walk: Walk, bitmaps: list[Bitmap]) -> None:
    """qcow2_check_bitmaps_refcounts: the directory, tables and bitmap data."""
    extension = walk.header.bitmaps_extension
    walk.count_region(
        extension.bitmap_directory_offset,
        extension.bitmap_directory_size,
        "the bitmap directory",
        rule="bitmap",
    )
    reserved = np.uint64(layout.BME_TABLE_ENTRY_RESERVED_MASK)
    offset_mask = np.uint64(layout.BME_TABLE_ENTRY_OFFSET_MASK)
    for bitmap in bitmaps:
        walk.count_region(
            bitmap.table_offset,
            bitmap.table_size * 8,
            f"the table of {bitmap}",
            rule="bitmap",
        )
        table = read_u64_table(walk.image, bitmap.table_offset, bitmap.table_size)
        offsets = table & offset_mask
        bad = ((table & reserved) != 0) | (
            (offsets != 0)
            & (
                ((table & np.uint64(layout.BME_TABLE_ENTRY_FLAG_ALL_ONES)) != 0)
                | (offsets % np.uint64(walk.cluster_size) != 0)
            )
        )
        wrong = np.flatnonzero(bad)
        if wrong.size:
            # QEMU counts one corruption for the table and stops the check.
            walk.corruptions += 1
            walk.check_errors += 1
            for index in wrong[: walk.rec.take("bitmap", wrong.size)].tolist():
                walk.rec.add(
                    "bitmap",
                    f"the table of {bitmap} at {bitmap.table_offset:#x}, entry "
                    f"{index}, is {int(table[index]):#x}; expected a cluster-aligned "
                    "offset in bits 9-55, other bits clear, and bit 0 only with "
                    "offset 0",
                    bitmap.table_offset + 8 * index,
                )
            return
        used = np.flatnonzero(offsets)
        data = offsets[used]
        past = data >= np.uint64(walk.file_size)
        used = used[~past]
        for offset in data[past].tolist():
            walk.count_region(
                offset, walk.cluster_size, f"data of {bitmap}", rule="bitmap"
            )
        clusters = (data[~past] >> np.uint64(walk.cluster_bits)).astype(np.intp)
        walk.counts.add(clusters)
        meta = np.flatnonzero(get_flags(walk.flags, clusters) & FLAG_METADATA)
        for position in meta[: walk.rec.take("overlap", meta.size)].tolist():
            cluster = int(clusters[position])
            index = int(used[position])
            walk.rec.add(
                "overlap",
                f"the table of {bitmap}, entry {index}, points at host cluster "
                f"{cluster << walk.cluster_bits:#x}, which holds "
                f"{walk.registry.describe(cluster)}; expected a data cluster of its "
                "own",
                bitmap.table_offset + 8 * index,
            )
