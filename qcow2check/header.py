"""Read the header cluster of an image and check it as QEMU does when it opens one.

The checks follow ``qcow2_do_open`` and ``qcow2_read_extensions`` in QEMU's
``block/qcow2.c``, but collect every problem instead of stopping at the first. Only
cluster 0 is read (at most 2 MiB), whatever the header claims.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from functools import cached_property

from . import fixes, layout, limits
from .findings import Report
from .image import ImageFile

log = logging.getLogger(__name__)

# One read covers cluster 0 of most images (64 KiB is QEMU's default cluster size)
# and everything sniff needs to name another format.
FIRST_READ = 64 << 10

# Every extension record is read (QEMU reads them all, and a 2 MiB cluster 0 holds
# at most 262,144), but only this many are listed in the report's info.
MAX_LISTED_EXTENSIONS = 64

INT64_MAX = (1 << 63) - 1
INT_MAX = (1 << 31) - 1


# Compiling a Struct makes it parse four times faster, but costs about 2 ms: a
# command checking one image never earns that back, a process checking many does.
COMPILE_AFTER = 8
_compiled: dict[str, Callable] = {}
_uses: dict[str, int] = {}


def _parser(name: str) -> Callable:
    """The parse function of ``layout.<name>``: plain at first, compiled once used
    ``COMPILE_AFTER`` times."""
    parse = _compiled.get(name)
    if parse is not None:
        return parse
    uses = _uses[name] = _uses.get(name, 0) + 1
    struct_ = getattr(layout, name)
    if uses < COMPILE_AFTER:
        return struct_.parse
    parse = _compiled[name] = struct_.compile().parse
    return parse


class Header:
    """The header of a version 2 or 3 image, its extensions, and what follows.

    Attribute names are the spec's. ``geometry_valid`` is False when cluster_bits,
    refcount_order or header_length are out of range, so nothing beyond cluster 0
    can be located.
    """

    def __init__(self, fields) -> None:
        self.version = fields.version
        self.backing_file_offset = fields.backing_file_offset
        self.backing_file_size = fields.backing_file_size
        self.cluster_bits = fields.cluster_bits
        self.size = fields.size
        self.crypt_method = fields.crypt_method
        self.l1_size = fields.l1_size
        self.l1_table_offset = fields.l1_table_offset
        self.refcount_table_offset = fields.refcount_table_offset
        self.refcount_table_clusters = fields.refcount_table_clusters
        self.nb_snapshots = fields.nb_snapshots
        self.snapshots_offset = fields.snapshots_offset

        v3 = self.version >= 3
        self.incompatible_features = fields.incompatible_features if v3 else 0
        self.compatible_features = fields.compatible_features if v3 else 0
        self.autoclear_features = fields.autoclear_features if v3 else 0
        self.refcount_order = fields.refcount_order if v3 else 4
        self.header_length = fields.header_length if v3 else layout.V2_HEADER_LENGTH
        self.compression_type = fields.get("compression_type") or 0

        self.geometry_valid = True
        self.backing_file: bytes | None = None
        self.backing_format: bytes | None = None
        self.data_file: bytes | None = None
        self.feature_table_data = b""
        self.bitmaps_extension = None
        self.crypto_header = None
        self.extensions: list[dict] = []
        self.extension_count = 0

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def extended_l2(self) -> bool:
        return self.incompatible(layout.QCOW2_INCOMPAT_EXTL2_BITNR)

    @property
    def has_data_file(self) -> bool:
        return self.incompatible(layout.QCOW2_INCOMPAT_DATA_FILE_BITNR)

    @property
    def dirty(self) -> bool:
        return self.incompatible(layout.QCOW2_INCOMPAT_DIRTY_BITNR)

    @property
    def l2_entries(self) -> int:
        entry_size = (
            layout.L2E_SIZE_EXTENDED if self.extended_l2 else layout.L2E_SIZE_NORMAL
        )
        return self.cluster_size // entry_size

    def incompatible(self, bit: int) -> bool:
        return bool(self.incompatible_features >> bit & 1)

    @cached_property
    def feature_table(self) -> dict[tuple[str, int], str]:
        """(kind, bit) to name, from the feature name table extension. Parsed only
        when a set bit needs a name: most images never ask."""
        table = {}
        entry_size = layout.FEATURE_NAME_ENTRY_SIZE
        parse = _parser("feature_name_entry")
        data = self.feature_table_data
        for start in range(0, len(data) - entry_size + 1, entry_size):
            entry = parse(data[start : start + entry_size])
            kind = layout.FEATURE_TYPE_KINDS.get(entry.type)
            if kind is not None:
                name = entry.feature_name.rstrip(b"\0").decode("utf-8", "replace")
                table[kind, entry.bit_number] = name
        return table

    def feature_name(self, kind: str, bit: int) -> str:
        """The spec's name for a feature bit, else the image's own, else its number.

        The image's feature name table is consulted only for bits the spec does not
        name, so an image that sets only known bits never has it parsed."""
        known = layout.FEATURE_NAMES[kind].get(bit)
        if known is not None:
            return known
        return self.feature_table.get((kind, bit), f"unknown bit {bit}")


class ClusterZero:
    """Cluster 0, read only as far as the header needs it: the header, extensions
    and backing file name of most images fit in the first read, and a cluster can
    be 2 MiB."""

    def __init__(self, image: ImageFile, head: bytes, cluster_size: int) -> None:
        self.image = image
        self.data = head
        self.cluster_size = cluster_size

    def upto(self, end: int) -> bytes:
        """Cluster 0 with at least ``end`` bytes, unless the file or the cluster
        ends before."""
        have = len(self.data)
        if have < end and have < min(self.cluster_size, self.image.size):
            wanted = min(self.cluster_size, max(end, 2 * have))
            self.data = self.image.read_at(0, wanted)
        return self.data


def read_header(image: ImageFile, report: Report) -> Header | None:
    """Parse and check the header cluster; None when it is not QCOW2 that can be read.

    Everything found goes into ``report``, and ``report.info`` gets what was parsed.
    """
    report.info["file_size"] = image.size
    head = image.read_at(0, FIRST_READ)

    if head[:4] != layout.MAGIC:
        _identify_other_format(image, head, report)
        return None
    report.info["format"] = "qcow"

    if len(head) < 8:
        report.add(
            "invalid-header",
            f"the file is {image.size} bytes long and ends inside the 8 bytes of "
            "magic and version",
            offset=image.size,
        )
        return None
    version = struct.unpack_from(">I", head, 4)[0]
    report.info["version"] = version
    if version not in (2, 3):
        _unsupported_version(head, version, report)
        return None
    report.info["format"] = "qcow2"

    fixed = layout.V2_HEADER_LENGTH if version == 2 else layout.V3_HEADER_LENGTH
    if len(head) < fixed:
        report.add(
            "invalid-header",
            f"the file ends at byte {image.size}, inside the version {version} "
            f"header, which is {fixed} bytes long",
            offset=image.size,
        )
        return None

    if version == 2:
        header = Header(_parser("header_v2")(head))
    else:
        # Parse the fixed 104 bytes first: header_length is not checked yet, and an
        # unchecked length must not decide how much is parsed.
        header = Header(_parser("header_v3_fixed")(head))
    _check_geometry(header, report)

    cluster0 = ClusterZero(image, head, header.cluster_size)
    if version == 3 and header.geometry_valid:
        _read_additional_fields(header, cluster0, image.size, report)
    if header.geometry_valid:
        _read_extensions(header, cluster0, report)
        _read_backing_file_name(header, cluster0, image.size, report)
    _check_features(header, report)
    _check_tables(header, report)
    _record_info(header, report)
    return header


def _identify_other_format(image: ImageFile, head: bytes, report: Report) -> None:
    # Imported here: checking a QCOW2 image, the usual case, never needs it.
    from . import sniff

    tail = image.read_at(max(0, image.size - sniff.TAIL_SIZE), sniff.TAIL_SIZE)
    found = sniff.identify(head, tail, image.size)
    report.info["format"] = found.kind
    message = f"not a QCOW2 image: this is {found.description}"
    fix = None
    command_start = "qemu-img convert -f "
    if found.advice and command_start in found.advice:
        prose, _, command = found.advice.partition(command_start)
        fix = fixes.fill(command_start + command, report.fix_path)
        message += f"; {prose.rstrip(': ')}"
    elif found.advice:
        message += f"; {fixes.fill(found.advice, report.fix_path)}"
    report.add("not-qcow2", message, offset=found.offset, fix=fix)


def _unsupported_version(head: bytes, version: int, report: Report) -> None:
    if version == 1:
        what = "a QCOW version 1 image (QEMU's older qcow format)"
        if len(head) >= layout.header_v1.sizeof():
            fields = layout.header_v1.parse(head)
            report.info["virtual_size"] = fields.size
        fix = fixes.convert(report.fix_path, "v3", source_format="qcow")
    else:
        what = f"QCOW version {version}, which no QEMU release knows"
        fix = None
    report.add(
        "unsupported-version",
        f"{what}; expected version 2 or 3",
        offset=4,
        fix=fix,
    )


def _invalid(report: Report, field: str, offset: int, found: str, expected: str):
    report.add("invalid-header", f"{field} is {found}; expected {expected}", offset)


def _check_geometry(header: Header, report: Report) -> None:
    if not limits.MIN_CLUSTER_BITS <= header.cluster_bits <= limits.MAX_CLUSTER_BITS:
        _invalid(
            report,
            "cluster_bits",
            20,
            str(header.cluster_bits),
            f"{limits.MIN_CLUSTER_BITS} to {limits.MAX_CLUSTER_BITS} "
            "(512 bytes to 2 MiB clusters)",
        )
        header.geometry_valid = False

    if header.version >= 3:
        if header.header_length < layout.V3_HEADER_LENGTH:
            _invalid(
                report,
                "header_length",
                100,
                str(header.header_length),
                f"at least {layout.V3_HEADER_LENGTH} for a version 3 image",
            )
            header.geometry_valid = False
        elif header.geometry_valid and header.header_length > header.cluster_size:
            _invalid(
                report,
                "header_length",
                100,
                str(header.header_length),
                f"at most the cluster size, {header.cluster_size}",
            )
            header.geometry_valid = False

        if header.refcount_order > limits.MAX_REFCOUNT_ORDER:
            _invalid(
                report,
                "refcount_order",
                96,
                str(header.refcount_order),
                f"0 to {limits.MAX_REFCOUNT_ORDER} (refcounts of 1 to 64 bits)",
            )
            header.geometry_valid = False

    if header.geometry_valid and header.extended_l2:
        subcluster_size = header.cluster_size // layout.SUBCLUSTERS_PER_CLUSTER
        if subcluster_size < limits.MIN_SUBCLUSTER_SIZE:
            _invalid(
                report,
                "cluster_bits",
                20,
                f"{header.cluster_bits} with extended L2 entries "
                f"(subclusters of {subcluster_size} bytes)",
                "at least 14, so that each of the 32 subclusters has 512 bytes",
            )
            header.geometry_valid = False


def _read_additional_fields(
    header: Header, cluster0: ClusterZero, file_size: int, report: Report
) -> None:
    if len(cluster0.upto(header.header_length)) < header.header_length:
        report.add(
            "invalid-header",
            f"the file ends at byte {file_size}, inside the header, whose "
            f"header_length is {header.header_length}",
            offset=file_size,
        )
        return
    fields = _parser("header_v3")(cluster0.data[: header.header_length])
    header.compression_type = fields.compression_type or 0
    if fields.unknown_fields:
        header.extensions.append(
            {
                "type": None,
                "name": "unknown header fields",
                "offset": 112,
                "length": len(fields.unknown_fields),
            }
        )


def _read_extensions(header: Header, cluster0: ClusterZero, report: Report) -> None:
    # qcow2_read_extensions: the area runs from the end of the header to the backing
    # file name, or to the end of cluster 0. Each record header is read even where
    # fewer than 8 bytes of the area remain (bytes past the end of the file read as
    # zeros), and a record that does not fit is refused, the end marker included.
    end = header.backing_file_offset or header.cluster_size
    offset = header.header_length

    while offset < end:
        record_end = offset + layout.EXTENSION_HEADER_SIZE
        record_bytes = cluster0.upto(record_end)[offset:record_end]
        record = _parser("header_extension_header")(
            record_bytes.ljust(layout.EXTENSION_HEADER_SIZE, b"\0")
        )
        ext_type, length = record.type, record.length
        data_offset = offset + layout.EXTENSION_HEADER_SIZE
        if data_offset + length > end:
            name = layout.EXTENSION_NAMES.get(ext_type, f"type {ext_type:#010x}")
            report.add(
                "invalid-header",
                f"header extension {name} ({length} bytes of data at {data_offset:#x}) "
                f"runs past the end of the extension area at {end:#x}",
                offset,
            )
            return
        if ext_type == layout.QCOW2_EXT_MAGIC_END:
            return

        header.extension_count += 1
        if len(header.extensions) < MAX_LISTED_EXTENSIONS:
            header.extensions.append(
                {
                    "type": f"{ext_type:#010x}",
                    "name": layout.EXTENSION_NAMES.get(ext_type, "unknown"),
                    "offset": offset,
                    "length": length,
                }
            )
        data = cluster0.upto(data_offset + length)[data_offset : data_offset + length]
        _read_extension(header, ext_type, data, data_offset, report)
        offset = data_offset + (length + 7) // 8 * 8


def _read_extension(
    header: Header, ext_type: int, data: bytes, offset: int, report: Report
) -> None:
    if ext_type == layout.QCOW2_EXT_MAGIC_BACKING_FORMAT:
        if len(data) > limits.MAX_BACKING_FORMAT_NAME:
            _invalid(
                report,
                "the backing file format name",
                offset,
                f"{len(data)} bytes long",
                f"at most {limits.MAX_BACKING_FORMAT_NAME} bytes",
            )
        header.backing_format = data

    elif ext_type == layout.QCOW2_EXT_MAGIC_FEATURE_TABLE:
        header.feature_table_data = data

    elif ext_type == layout.QCOW2_EXT_MAGIC_BITMAPS:
        _read_bitmaps_extension(header, data, offset, report)

    elif ext_type == layout.QCOW2_EXT_MAGIC_CRYPTO_HEADER:
        _read_crypto_header_pointer(header, data, offset, report)

    elif ext_type == layout.QCOW2_EXT_MAGIC_DATA_FILE:
        header.data_file = data


def _read_bitmaps_extension(
    header: Header, data: bytes, offset: int, report: Report
) -> None:
    if len(data) != layout.BITMAPS_EXTENSION_SIZE:
        _invalid(
            report,
            "the bitmaps extension",
            offset,
            f"{len(data)} bytes long",
            f"exactly {layout.BITMAPS_EXTENSION_SIZE} bytes",
        )
        return
    if not header.autoclear_features >> layout.QCOW2_AUTOCLEAR_BITMAPS_BITNR & 1:
        # QEMU ignores the bitmaps (with a warning) when the autoclear bit is clear:
        # a program without bitmap support wrote the image since.
        report.add(
            "bitmap",
            "the bitmaps extension is present but the autoclear bitmaps bit is "
            "clear, so QEMU ignores the bitmaps; their clusters may show as leaked",
            offset,
            severity="warning",
        )
        return

    ext = _parser("bitmaps_extension")(data)
    if ext.reserved32 != 0:
        _invalid(
            report,
            "bitmaps extension reserved32",
            offset + 4,
            f"{ext.reserved32:#x}",
            "0",
        )
    if not 1 <= ext.nb_bitmaps <= limits.QCOW2_MAX_BITMAPS:
        _invalid(
            report,
            "bitmaps extension nb_bitmaps",
            offset,
            str(ext.nb_bitmaps),
            f"1 to {limits.QCOW2_MAX_BITMAPS}",
        )
    if ext.bitmap_directory_size > limits.QCOW2_MAX_BITMAP_DIRECTORY_SIZE:
        _invalid(
            report,
            "bitmap_directory_size",
            offset + 8,
            str(ext.bitmap_directory_size),
            f"at most {limits.QCOW2_MAX_BITMAP_DIRECTORY_SIZE}",
        )
    if header.geometry_valid and ext.bitmap_directory_offset % header.cluster_size:
        _invalid(
            report,
            "bitmap_directory_offset",
            offset + 16,
            f"{ext.bitmap_directory_offset:#x}",
            "a multiple of the cluster size",
        )
    header.bitmaps_extension = ext


def _read_crypto_header_pointer(
    header: Header, data: bytes, offset: int, report: Report
) -> None:
    if header.crypt_method != layout.QCOW_CRYPT_LUKS:
        _invalid(
            report,
            "a full disk encryption header pointer",
            offset,
            f"present with crypt_method {header.crypt_method}",
            "it only with LUKS encryption (crypt_method 2)",
        )
        return
    if len(data) != layout.CRYPTO_HEADER_EXTENSION_SIZE:
        _invalid(
            report,
            "the full disk encryption header pointer",
            offset,
            f"{len(data)} bytes long",
            f"exactly {layout.CRYPTO_HEADER_EXTENSION_SIZE} bytes",
        )
        return
    pointer = _parser("full_disk_encryption_header_pointer")(data)
    if pointer.offset % header.cluster_size:
        _invalid(
            report,
            "the encryption header offset",
            offset,
            f"{pointer.offset:#x}",
            "a multiple of the cluster size",
        )
    header.crypto_header = pointer


def _read_backing_file_name(
    header: Header, cluster0: ClusterZero, file_size: int, report: Report
) -> None:
    offset = header.backing_file_offset
    if offset == 0:
        return
    length = header.backing_file_size
    if offset > header.cluster_size:
        _invalid(
            report,
            "backing_file_offset",
            8,
            f"{offset:#x}",
            f"inside cluster 0 (at most {header.cluster_size:#x})",
        )
        return
    limit = min(limits.MAX_BACKING_FILE_NAME, header.cluster_size - offset)
    if length > limit:
        _invalid(
            report,
            "backing_file_size",
            16,
            str(length),
            f"at most {limit}, so that the name fits in 1023 bytes and in cluster 0",
        )
        return
    if offset + length > len(cluster0.upto(offset + length)):
        report.add(
            "invalid-header",
            f"the backing file name ({length} bytes at {offset:#x}) runs past the end "
            f"of the file at byte {file_size}",
            offset,
        )
        return
    # QEMU treats an empty name as no backing file at all.
    if length:
        header.backing_file = cluster0.data[offset : offset + length]


def _check_features(header: Header, report: Report) -> None:
    if header.version < 3:
        return

    unknown = header.incompatible_features & ~layout.QCOW2_INCOMPAT_MASK
    for bit in _set_bits(unknown):
        name = header.feature_table.get((layout.INCOMPATIBLE, bit))
        named = f" ({name})" if name else ""
        report.add(
            "unknown-feature",
            f"incompatible feature bit {bit}{named} is set; QEMU and this validator "
            f"know bits 0 to {layout.LAST_KNOWN_INCOMPATIBLE_BIT} only",
            72 + 7 - bit // 8,
        )

    if header.incompatible(layout.QCOW2_INCOMPAT_CORRUPT_BITNR):
        report.add(
            "corrupt-flag",
            "the corrupt bit (incompatible feature bit 1) is set: QEMU found "
            "inconsistent metadata and refuses to open the image for writing",
            79,
            fix=fixes.repair(report.fix_path),
        )
    if header.dirty:
        report.add(
            "dirty",
            "the dirty bit (incompatible feature bit 0) is set: the image was not "
            "closed cleanly and its refcounts may be stale",
            79,
            fix=fixes.repair(report.fix_path),
        )

    has_bit = header.incompatible(layout.QCOW2_INCOMPAT_COMPRESSION_BITNR)
    if has_bit and header.compression_type == layout.QCOW2_COMPRESSION_TYPE_ZLIB:
        _invalid(
            report,
            "the compression type feature bit (incompatible bit 3)",
            79,
            "set with compression_type 0 (zlib)",
            "it only with a non-zlib compression_type",
        )
    if not has_bit and header.compression_type != layout.QCOW2_COMPRESSION_TYPE_ZLIB:
        _invalid(
            report,
            "compression_type",
            104,
            str(header.compression_type),
            "0 (zlib) unless incompatible feature bit 3 is set",
        )
    if header.compression_type not in layout.COMPRESSION_TYPE_NAMES:
        _invalid(
            report,
            "compression_type",
            104,
            str(header.compression_type),
            "0 (zlib) or 1 (zstd)",
        )

    raw_data = header.autoclear_features >> layout.QCOW2_AUTOCLEAR_DATA_FILE_RAW_BITNR
    if raw_data & 1 and not header.has_data_file:
        _invalid(
            report,
            "the raw external data bit (autoclear bit 1)",
            95,
            "set without an external data file",
            "it only with incompatible bit 2 (external data file)",
        )


def _check_tables(header: Header, report: Report) -> None:
    if header.crypt_method not in layout.CRYPT_METHOD_NAMES:
        _invalid(
            report,
            "crypt_method",
            32,
            str(header.crypt_method),
            "0 (none), 1 (AES) or 2 (LUKS)",
        )
    if header.crypt_method == layout.QCOW_CRYPT_LUKS and header.crypto_header is None:
        _invalid(
            report,
            "the full disk encryption header pointer",
            32,
            "missing",
            "one for LUKS encryption (crypt_method 2)",
        )
    if not header.geometry_valid:
        return
    cluster_size = header.cluster_size

    if header.refcount_table_clusters == 0:
        _invalid(
            report,
            "refcount_table_clusters",
            56,
            "0",
            "at least 1: every image has a refcount table",
        )
    _check_table(
        report,
        "refcount table",
        48,
        header.refcount_table_offset,
        header.refcount_table_clusters * cluster_size,
        limits.QCOW_MAX_REFTABLE_SIZE,
        cluster_size,
    )
    if header.nb_snapshots > limits.QCOW_MAX_SNAPSHOTS:
        _invalid(
            report,
            "nb_snapshots",
            60,
            str(header.nb_snapshots),
            f"at most {limits.QCOW_MAX_SNAPSHOTS}",
        )
    else:
        _check_table(
            report,
            "snapshot table",
            64,
            header.snapshots_offset,
            header.nb_snapshots * layout.SNAPSHOT_ENTRY_FIXED_SIZE,
            limits.QCOW_MAX_SNAPSHOTS * layout.SNAPSHOT_ENTRY_FIXED_SIZE,
            cluster_size,
        )
    _check_table(
        report,
        "L1 table",
        40,
        header.l1_table_offset,
        header.l1_size * 8,
        limits.QCOW_MAX_L1_SIZE,
        cluster_size,
    )

    # qcow2_do_open: the L1 table must map the whole virtual size.
    bytes_per_l2 = header.l2_entries * cluster_size
    l1_needed = -(-header.size // bytes_per_l2)
    if l1_needed > INT_MAX:
        _invalid(
            report,
            "size",
            24,
            str(header.size),
            "a size QEMU can address (the image is too big)",
        )
    elif header.l1_size < l1_needed:
        _invalid(
            report,
            "l1_size",
            36,
            str(header.l1_size),
            f"at least {l1_needed} entries to map the virtual size {header.size}",
        )


def _check_table(
    report: Report,
    name: str,
    field_offset: int,
    offset: int,
    size: int,
    max_size: int,
    cluster_size: int,
) -> None:
    # qcow2_validate_table: size cap, no 64-bit overflow, cluster alignment.
    if size > max_size:
        _invalid(
            report,
            f"the {name} size",
            field_offset,
            f"{size} bytes",
            f"at most {max_size} bytes",
        )
    elif offset > INT64_MAX - size or offset % cluster_size:
        _invalid(
            report,
            f"the {name} offset",
            field_offset,
            f"{offset:#x}",
            "a multiple of the cluster size inside a 63-bit file",
        )


def _record_info(header: Header, report: Report) -> None:
    info = report.info
    info["virtual_size"] = header.size
    if header.geometry_valid:
        info["cluster_size"] = header.cluster_size
        info["refcount_bits"] = header.refcount_bits
    info["header_length"] = header.header_length
    info["compression_type"] = layout.COMPRESSION_TYPE_NAMES.get(
        header.compression_type, f"unknown ({header.compression_type})"
    )
    info["encryption"] = layout.CRYPT_METHOD_NAMES.get(
        header.crypt_method, f"unknown ({header.crypt_method})"
    )
    info["backing_file"] = _text(header.backing_file)
    info["backing_file_format"] = _text(header.backing_format)
    info["data_file"] = _text(header.data_file)
    info["features"] = {
        kind: [header.feature_name(kind, bit) for bit in _set_bits(bits)]
        for kind, bits in (
            (layout.INCOMPATIBLE, header.incompatible_features),
            (layout.COMPATIBLE, header.compatible_features),
            (layout.AUTOCLEAR, header.autoclear_features),
        )
    }
    info["snapshot_count"] = header.nb_snapshots
    info["header_extensions"] = header.extensions
    info["header_extension_count"] = header.extension_count


def _set_bits(bits: int) -> list[int]:
    found = []
    while bits:
        lowest = bits & -bits
        found.append(lowest.bit_length() - 1)
        bits ^= lowest
    return found


def _text(name: bytes | None) -> str | None:
    """A name from the image, for display: invalid UTF-8 is escaped, not dropped."""
    return None if name is None else name.decode("utf-8", "backslashreplace")
