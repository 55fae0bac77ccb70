"""The snapshot table: its entries as QEMU reads them, and each snapshot's L1 table.

Mirrors ``qcow2_do_read_snapshots`` and ``qcow2_check_read_snapshot_table``
(``block/qcow2-snapshot.c``) and the snapshot part of ``calculate_refcounts``
(``block/qcow2-refcount.c``). Entries start on 8-byte boundaries.
"""

from __future__ import annotations

import struct

from .. import layout, limits
from .state import Walk
from .tables import INT64_MAX, read_padded

# The sizes in an entry's fixed part, read before the entry is parsed whole.
SIZES = struct.Struct(">12xHH20xI")
WINDOW = 1 << 20


def _entry_parser():
    # The padding's size is a lambda, which construct cannot compile.
    return layout.snapshot_table_entry.parse


class Snapshot:
    """One snapshot table entry: where its L1 table is, and what it is called."""

    def __init__(self, index: int, entry_offset: int, entry) -> None:
        self.index = index
        self.entry_offset = entry_offset
        self.l1_table_offset = entry.l1_table_offset
        self.l1_size = entry.l1_size
        self.extra_data_size = entry.extra_data_size
        self.id_str = entry.unique_id.decode("utf-8", "backslashreplace")
        self.name = entry.name.decode("utf-8", "backslashreplace")

    def __str__(self) -> str:
        return f"snapshot {self.id_str} ({self.name!r})"


class _Window:
    """Reads the table piece by piece, so a claimed size costs nothing up front."""

    def __init__(self, walk: Walk) -> None:
        self.walk = walk
        self.start = 0
        self.data = b""

    def get(self, offset: int, length: int) -> bytes:
        if not self.start <= offset <= offset + length <= self.start + len(self.data):
            self.start = offset
            self.data = read_padded(self.walk.image, offset, max(length, WINDOW))
        begin = offset - self.start
        return self.data[begin : begin + length]


def load(walk: Walk) -> tuple[list[Snapshot], int] | None:
    """The snapshot entries and the table's size; None when QEMU could not read it.

    A table QEMU cannot read makes ``qemu-img check`` fail (a check error).
    """
    header = walk.header
    count, table_offset = header.nb_snapshots, header.snapshots_offset
    if count == 0:
        return [], 0
    fixed = layout.SNAPSHOT_ENTRY_FIXED_SIZE
    if (
        count > limits.QCOW_MAX_SNAPSHOTS
        or table_offset % walk.cluster_size
        or table_offset > INT64_MAX - count * fixed
    ):
        walk.check_errors += 1
        walk.rec.add(
            "snapshot-table",
            f"the snapshot table ({count} entries at {table_offset:#x}) cannot be "
            "read: expected at most 65536 entries at a cluster-aligned offset",
            60,
        )
        return None

    window = _Window(walk)
    snapshots = []
    offset = table_offset
    for index in range(count):
        offset = -(-offset // 8) * 8
        entry_offset = offset
        if offset >= walk.file_size:
            _zero_entries(walk, index, count - index, offset)
            offset += (count - index) * fixed
            break
        id_size, name_size, extra_size = SIZES.unpack(window.get(offset, fixed))
        if extra_size > limits.QCOW_MAX_SNAPSHOT_EXTRA_DATA:
            walk.check_errors += 1
            walk.rec.add(
                "snapshot-table",
                f"snapshot table entry {index} has {extra_size} bytes of extra data; "
                f"expected at most {limits.QCOW_MAX_SNAPSHOT_EXTRA_DATA} (QEMU: "
                '"Too much extra metadata in snapshot table entry")',
                entry_offset + 36,
            )
            return None
        length = fixed + extra_size + id_size + name_size
        entry = _entry_parser()(window.get(offset, -(-length // 8) * 8))
        offset += length
        if offset - table_offset > limits.QCOW_MAX_SNAPSHOTS_SIZE:
            walk.check_errors += 1
            walk.rec.add(
                "snapshot-table",
                f"the snapshot table is larger than "
                f"{limits.QCOW_MAX_SNAPSHOTS_SIZE} bytes at entry {index}; expected "
                'at most that (QEMU: "Snapshot table is too big")',
                entry_offset,
            )
            return None
        snapshot = Snapshot(index, entry_offset, entry)
        snapshots.append(snapshot)

        if header.version >= 3 and extra_size < layout.SNAPSHOT_EXTRA_DATA_MIN_V3:
            walk.corruptions += 1
            walk.rec.add(
                "snapshot-table",
                f"{snapshot}, table entry {index}, has {extra_size} bytes of extra "
                f"data; expected at least {layout.SNAPSHOT_EXTRA_DATA_MIN_V3} in a "
                'version 3 image (QEMU: "snapshot table entry is incomplete")',
                entry_offset + 36,
            )
    if offset - table_offset > limits.QCOW_MAX_SNAPSHOTS_SIZE:
        walk.check_errors += 1
        return None
    return snapshots, offset - table_offset


def _zero_entries(walk: Walk, first: int, count: int, offset: int) -> None:
    """Entries past the end of the file, which read as zeros: an empty snapshot
    each, incomplete in a version 3 image. Counted at once, not parsed one by one.
    """
    if walk.header.version < 3:
        return
    walk.corruptions += count
    walk.rec.add(
        "snapshot-table",
        f"snapshot table entries {first} to {first + count - 1} lie past the end of "
        f"the file at {walk.file_size:#x} and read as zeros; expected entries with "
        f"at least {layout.SNAPSHOT_EXTRA_DATA_MIN_V3} bytes of extra data",
        offset,
    )


def usable(walk: Walk, snapshots: list[Snapshot]) -> list[Snapshot]:
    """The snapshots whose L1 table QEMU walks; the others are corruptions.

    Call it only with a table that could be read.
    """
    if walk.header.nb_snapshots and walk.data_file:
        walk.corruptions += 1
        walk.rec.add(
            "snapshot-table",
            f"the image has {walk.header.nb_snapshots} snapshots and an external "
            "data file; "
            "expected no snapshots, QEMU cannot keep them with a data file",
            60,
        )
    good = []
    for snapshot in snapshots:
        problem = None
        if snapshot.l1_table_offset % walk.cluster_size:
            problem = (
                f"its L1 table offset {snapshot.l1_table_offset:#x} is not cluster "
                "aligned; expected a multiple of the cluster size"
            )
        elif snapshot.l1_size > limits.QCOW_MAX_L1_SIZE // 8:
            problem = (
                f"its l1_size {snapshot.l1_size} is too large; expected at most "
                f"{limits.QCOW_MAX_L1_SIZE // 8}"
            )
        if problem is None:
            good.append(snapshot)
            continue
        walk.corruptions += 1
        walk.rec.add("snapshot-table", f"{snapshot}: {problem}", snapshot.entry_offset)
    return good
