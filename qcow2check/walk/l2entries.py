"""The entries of a batch of L2 tables, checked together with numpy.

One batch is a run of neighbouring L2 tables read at once, reshaped to (tables,
entries). Every check is a mask over the whole batch; Python only loops over the
few entries it lists in findings. Mirrors ``check_refcounts_l2`` and the L2 half of
``check_oflag_copied`` in QEMU's ``block/qcow2-refcount.c``.
"""

from __future__ import annotations

import numpy as np

from .. import layout
from . import compressed
from .refcounts import refcount_is_one
from .state import FINDINGS_PER_RULE, FLAG_METADATA, Walk

U = np.uint64
COPIED = U(layout.QCOW_OFLAG_COPIED)
COMPRESSED = U(layout.QCOW_OFLAG_COMPRESSED)
ZERO = U(layout.QCOW_OFLAG_ZERO)
L2_RESERVED = U(layout.L2E_STD_RESERVED_MASK)
L2_OFFSET = U(layout.L2E_OFFSET_MASK)
ALL_ALLOC = U(layout.QCOW_L2_BITMAP_ALL_ALLOC)


class Batch:
    """Neighbouring L2 tables, all reached ``weight`` times."""

    def __init__(self, walk: Walk, tables, rows, entries, bitmaps, weight, active):
        self.walk = walk
        self.tables = tables
        self.rows = rows
        self.entries = entries.reshape(-1)
        self.bitmaps = None if bitmaps is None else bitmaps.reshape(-1)
        self.per_table = entries.shape[1]
        self.weight = weight
        self.active = active
        self.check_copied = active
        self.entry_size = 8 if bitmaps is None else 16

    def where(self, position: int) -> tuple[str, int]:
        """Name an entry, and give its offset in the file."""
        table, index = divmod(int(position), self.per_table)
        row = int(self.rows[table])
        offset = int(self.tables.offsets[row]) + index * self.entry_size
        return f"{self.tables.describe(row)} entry {index}", offset

    def report(self, rule, positions, text, counted=True, severity=None) -> None:
        """List the first findings at ``positions``; ``text(position)`` says what."""
        walk = self.walk
        if counted:
            walk.corruptions += positions.size * self.weight
        listed = walk.rec.take(rule, positions.size, severity or "error")
        for position in positions[:listed].tolist():
            name, offset = self.where(position)
            walk.rec.add(rule, f"{name}: {text(position)}", offset, severity)

    def check(self) -> None:
        walk = self.walk
        entries = self.entries
        extended = self.bitmaps is not None

        # Most tables hold only unallocated entries and aligned data clusters.
        if not extended and not walk.data_file:
            scratch = walk.scratch
            work = scratch.get("offsets", entries.size, np.uint64)
            special = COMPRESSED | L2_RESERVED | ZERO | U(walk.cluster_size - 512)
            if not np.bitwise_and(entries, special, out=work).any():
                offsets = np.bitwise_and(entries, L2_OFFSET, out=work)
                normal = np.not_equal(
                    offsets, 0, out=scratch.get("normal", entries.size, bool)
                )
                self._check_normal(normal, offsets, None, aligned=True)
                return

        compressed_mask = (entries & COMPRESSED) != 0
        any_compressed = bool(compressed_mask.any())
        standard = ~compressed_mask if any_compressed else None
        offsets = entries & L2_OFFSET

        reserved = (entries & L2_RESERVED) != 0
        if any_compressed:
            reserved &= standard
        if reserved.any():
            self.report(
                "l2-table",
                np.flatnonzero(reserved),
                lambda p: (
                    f"reserved bits set in {int(entries[p]):#x} (mask "
                    f"{layout.L2E_STD_RESERVED_MASK:#x}); expected them clear"
                ),
            )

        zero = None if extended else (entries & ZERO) != 0
        normal = offsets != 0
        if any_compressed:
            normal &= standard
        if walk.data_file:
            # With an external data file, offset 0 is a valid data cluster when
            # COPIED says so (qcow2_get_cluster_type).
            plain = (offsets == 0) & ((entries & COPIED) != 0)
            if any_compressed:
                plain &= standard
            if zero is not None:
                plain &= ~zero
            normal |= plain

        if zero is not None and walk.header.version == 2 and zero.any():
            where = zero if standard is None else zero & standard
            self.report(
                "l2-table",
                np.flatnonzero(where),
                lambda p: (
                    f"the zero flag (bit 0) is set in {int(entries[p]):#x} in "
                    "a version 2 image; expected it clear, as QEMU refuses to read "
                    'such a cluster ("Zero cluster entry found in pre-v3 image")'
                ),
                counted=False,
            )

        if extended:
            unallocated = ~normal if standard is None else ~normal & standard
            wrong = unallocated & ((self.bitmaps & ALL_ALLOC) != 0)
            if wrong.any():
                self.report(
                    "l2-table",
                    np.flatnonzero(wrong),
                    lambda p: (
                        "an unallocated cluster has allocation bits set in its "
                        f"subcluster bitmap {int(self.bitmaps[p]):#x}; expected "
                        "bits 0-31 clear"
                    ),
                )

        self._check_normal(normal, offsets, zero)
        if any_compressed:
            compressed.check_entries(self, np.flatnonzero(compressed_mask))

    def _check_normal(self, normal, offsets, zero, aligned: bool = False) -> None:
        walk = self.walk
        entries = self.entries
        cluster_size = walk.cluster_size
        if normal.all():
            positions = None
            found = offsets
            count = offsets.size
        else:
            positions = np.flatnonzero(normal)
            found = offsets[positions]
            count = positions.size
        if count == 0:
            return

        def at(p):
            return p if positions is None else positions[p]

        unaligned = None if aligned else (found & U(cluster_size - 1)) != 0
        if unaligned is not None and unaligned.any():
            bad = np.flatnonzero(unaligned)
            chosen = at(bad)
            if self.bitmaps is not None:
                data = (self.bitmaps[chosen] & ALL_ALLOC) != 0
            else:
                data = ~zero[chosen]
            for mask, what in ((data, "data"), (~data, "preallocated zero")):
                self.report(
                    "l2-table",
                    chosen[mask],
                    lambda p, what=what: (
                        f"the {what} cluster offset "
                        f"{int(offsets[p]):#x} is not cluster aligned; expected a "
                        "multiple of the cluster size"
                    ),
                )

        if self.bitmaps is not None:
            bitmaps = self.bitmaps if positions is None else self.bitmaps[positions]
            clash = ((bitmaps >> U(32)) & bitmaps & ALL_ALLOC) != 0
            if clash.any():
                self.report(
                    "l2-table",
                    at(np.flatnonzero(clash)),
                    lambda p: (
                        f"subcluster bitmap {int(self.bitmaps[p]):#x} marks "
                        "subclusters both allocated and zero; expected at most one of "
                        "bit i and bit 32+i"
                    ),
                )

        if self.active:
            walk.allocated_clusters += count * self.weight
            if positions is None:
                grid = found.reshape(-1, self.per_table)
                shape = (grid.shape[0], grid.shape[1] - 1)
                size = shape[0] * shape[1]
                following = np.add(
                    grid[:, :-1],
                    U(cluster_size),
                    out=walk.scratch.get("clusters", size, np.uint64).reshape(shape),
                )
                breaks = np.not_equal(
                    grid[:, 1:],
                    following,
                    out=walk.scratch.get("breaks", size, bool).reshape(shape),
                )
                walk.fragmented_clusters += int(np.count_nonzero(breaks)) * self.weight
            else:
                table = positions // self.per_table
                breaks = (found[1:] != found[:-1] + U(cluster_size)) & (
                    table[1:] == table[:-1]
                )
                walk.fragmented_clusters += int(np.count_nonzero(breaks)) * self.weight

        if walk.data_file:
            if self.check_copied:
                copied = (entries if positions is None else entries[positions]) & COPIED
                self.report(
                    "refcount",
                    at(np.flatnonzero(copied == 0)),
                    lambda p: (
                        "the COPIED flag (bit 63) is clear on a data cluster in "
                        "an external data file, whose refcount is always 1; "
                        "expected it set (QEMU: OFLAG_COPIED)"
                    ),
                    severity=walk.refcount_severity,
                )
            return
        self._count(positions, found, unaligned)

    def _count(self, positions, found, unaligned) -> None:
        walk = self.walk
        entries = self.entries if positions is None else self.entries[positions]
        inside = None
        if int(found.max()) >= walk.file_size:
            past = found >= U(walk.file_size)
            bad = np.flatnonzero(past)
            chosen = bad if positions is None else positions[bad]
            self.report(
                "l2-table",
                chosen,
                lambda p: (
                    f"the data cluster at {int(self.entries[p] & L2_OFFSET):#x} "
                    f"lies past the end of the file at {walk.file_size:#x}; "
                    "expected it inside the file (a truncated image?)"
                ),
            )
            inside = np.flatnonzero(~past)
            if self.check_copied:
                self._check_copied(chosen, entries[bad])
            found, entries = found[inside], entries[inside]
            if unaligned is not None:
                unaligned = unaligned[inside]
            if found.size == 0:
                return

        # Offsets are below 2**56: the int64 view needs no copy for indexing.
        scratch = walk.scratch
        size = found.size
        clusters = np.right_shift(
            found, U(walk.cluster_bits), out=scratch.get("clusters", size, np.uint64)
        ).view(np.int64)
        walk.counts.add(clusters, self.weight, scratch)
        if unaligned is not None and unaligned.any():
            walk.counts.add(clusters[unaligned] + 1, self.weight)

        flags = np.take(walk.flags, clusters, out=scratch.get("flags", size, np.uint8))
        if self.check_copied:
            copied = np.greater_equal(
                entries, COPIED, out=scratch.get("copied", size, bool)
            ).view(np.uint8)
            odd = np.flatnonzero(
                np.not_equal(flags, copied, out=scratch.get("odd", size, bool))
            )
        else:
            odd = np.flatnonzero(flags & FLAG_METADATA)
        if odd.size == 0:
            return

        def original(p):
            if inside is not None:
                p = inside[p]
            return p if positions is None else positions[p]

        meta = odd[(flags[odd] & FLAG_METADATA) != 0]
        for position in meta[: walk.rec.take("overlap", meta.size)].tolist():
            name, offset = self.where(original(position))
            cluster = int(clusters[position])
            walk.rec.add(
                "overlap",
                f"{name} points at host cluster {cluster << walk.cluster_bits:#x}, "
                f"which holds {walk.registry.describe(cluster)}; expected a data "
                "cluster of its own",
                offset,
            )
        if self.check_copied:
            self._check_copied(original(odd), entries[odd])

    def _check_copied(self, positions, entries) -> None:
        """check_oflag_copied: COPIED must be set exactly when the refcount is 1."""
        walk = self.walk
        if positions.size == 0:
            return
        clusters = (entries & L2_OFFSET) >> U(walk.cluster_bits)
        one, known = refcount_is_one(walk, clusters)
        copied = (entries & COPIED) != 0
        wrong = np.flatnonzero(known & (one != copied))
        chosen = positions[wrong]
        # Only the listed findings need the flag's value in their message.
        named = FINDINGS_PER_RULE
        flag = dict(
            zip(chosen[:named].tolist(), copied[wrong[:named]].tolist(), strict=True)
        )
        self.report(
            "refcount",
            chosen,
            lambda p: (
                f"the COPIED flag (bit 63) is {'set' if flag[p] else 'clear'} but the "
                f"data cluster's refcount is {'not ' if flag[p] else ''}1; expected "
                "it set exactly when the refcount is 1 (QEMU: OFLAG_COPIED)"
            ),
            severity=walk.refcount_severity,
        )
