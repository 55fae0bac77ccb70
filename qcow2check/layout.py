"""The QCOW2 on-disk layout, declared once with construct.

Everything here follows QEMU's ``docs/interop/qcow2.rst`` in its order and with its
field names; masks and bit numbers keep the names of ``block/qcow2.h``. All integers
on disk are big-endian. Nothing in this module reads a file or judges a value: the
readers and checks live in :mod:`qcow2check.header` and :mod:`qcow2check.walk`.
"""

from __future__ import annotations

from construct import (
    Adapter,
    Bytes,
    Const,
    GreedyBytes,
    If,
    IfThenElse,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    Struct,
    this,
)

MAGIC = b"QFI\xfb"

# --- Header (qcow2.rst "Header") ---------------------------------------------------

V2_HEADER_LENGTH = 72
V3_HEADER_LENGTH = 104

# Bytes 0-71: the whole version 2 header, and the start of every version 3 header.
header_common = Struct(
    "magic" / Const(MAGIC),
    "version" / Int32ub,
    "backing_file_offset" / Int64ub,
    "backing_file_size" / Int32ub,
    "cluster_bits" / Int32ub,
    "size" / Int64ub,
    "crypt_method" / Int32ub,
    "l1_size" / Int32ub,
    "l1_table_offset" / Int64ub,
    "refcount_table_offset" / Int64ub,
    "refcount_table_clusters" / Int32ub,
    "nb_snapshots" / Int32ub,
    "snapshots_offset" / Int64ub,
)

header_v2 = header_common

# Bytes 72-103, present from version 3 on.
header_v3_fields = Struct(
    "incompatible_features" / Int64ub,
    "compatible_features" / Int64ub,
    "autoclear_features" / Int64ub,
    "refcount_order" / Int32ub,
    "header_length" / Int32ub,
)

# The fixed part of a version 3 header, bytes 0-103.
header_v3_fixed = Struct(*header_common.subcons, *header_v3_fields.subcons)

# Bytes 104 to header_length, the "additional fields": compression_type exists only
# when header_length > 104, bytes 105-111 are padding, and anything beyond is a field
# from a newer spec, kept as bytes so that a round trip loses nothing. These fields
# refer to header_length, so they are parsed as part of header_v3.
header_v3_additional = Struct(
    "compression_type" / If(this.header_length > V3_HEADER_LENGTH, Int8ub),
    "padding"
    / If(
        this.header_length > 105,
        IfThenElse(
            this.header_length >= 112, Bytes(7), Bytes(this.header_length - 105)
        ),
    ),
    "unknown_fields" / If(this.header_length > 112, Bytes(this.header_length - 112)),
)

header_v3 = Struct(*header_v3_fixed.subcons, *header_v3_additional.subcons)

# QCOW version 1 (QEMU block/qcow.c, QCowHeader): recognised only to name it.
header_v1 = Struct(
    "magic" / Const(MAGIC),
    "version" / Int32ub,
    "backing_file_offset" / Int64ub,
    "backing_file_size" / Int32ub,
    "mtime" / Int32ub,
    "size" / Int64ub,
    "cluster_bits" / Int8ub,
    "l2_bits" / Int8ub,
    "padding" / Int16ub,
    "crypt_method" / Int32ub,
    "l1_table_offset" / Int64ub,
)

# --- crypt_method values -------------------------------------------------------

QCOW_CRYPT_NONE = 0
QCOW_CRYPT_AES = 1
QCOW_CRYPT_LUKS = 2
CRYPT_METHOD_NAMES = {
    QCOW_CRYPT_NONE: "none",
    QCOW_CRYPT_AES: "aes",
    QCOW_CRYPT_LUKS: "luks",
}

# --- compression_type values ---------------------------------------------------

QCOW2_COMPRESSION_TYPE_ZLIB = 0
QCOW2_COMPRESSION_TYPE_ZSTD = 1
COMPRESSION_TYPE_NAMES = {
    QCOW2_COMPRESSION_TYPE_ZLIB: "zlib",
    QCOW2_COMPRESSION_TYPE_ZSTD: "zstd",
}

# --- Feature bits (qcow2.rst header bytes 72-95; block/qcow2.h) ------------------

QCOW2_INCOMPAT_DIRTY_BITNR = 0
QCOW2_INCOMPAT_CORRUPT_BITNR = 1
QCOW2_INCOMPAT_DATA_FILE_BITNR = 2
QCOW2_INCOMPAT_COMPRESSION_BITNR = 3
QCOW2_INCOMPAT_EXTL2_BITNR = 4
QCOW2_COMPAT_LAZY_REFCOUNTS_BITNR = 0
QCOW2_AUTOCLEAR_BITMAPS_BITNR = 0
QCOW2_AUTOCLEAR_DATA_FILE_RAW_BITNR = 1

INCOMPATIBLE = "incompatible"
COMPATIBLE = "compatible"
AUTOCLEAR = "autoclear"

FEATURE_NAMES = {
    INCOMPATIBLE: {
        QCOW2_INCOMPAT_DIRTY_BITNR: "dirty bit",
        QCOW2_INCOMPAT_CORRUPT_BITNR: "corrupt bit",
        QCOW2_INCOMPAT_DATA_FILE_BITNR: "external data file",
        QCOW2_INCOMPAT_COMPRESSION_BITNR: "compression type",
        QCOW2_INCOMPAT_EXTL2_BITNR: "extended L2 entries",
    },
    COMPATIBLE: {QCOW2_COMPAT_LAZY_REFCOUNTS_BITNR: "lazy refcounts"},
    AUTOCLEAR: {
        QCOW2_AUTOCLEAR_BITMAPS_BITNR: "bitmaps",
        QCOW2_AUTOCLEAR_DATA_FILE_RAW_BITNR: "raw external data",
    },
}

# The highest incompatible bit the spec defines; every bit above it is reserved.
LAST_KNOWN_INCOMPATIBLE_BIT = QCOW2_INCOMPAT_EXTL2_BITNR
QCOW2_INCOMPAT_MASK = (1 << (LAST_KNOWN_INCOMPATIBLE_BIT + 1)) - 1


def feature_names(kind: str, bits: int) -> list[str]:
    """Name every set bit of a feature field, "unknown bit N" for the rest."""
    known = FEATURE_NAMES[kind]
    return [
        known.get(bit, f"unknown bit {bit}") for bit in range(64) if bits >> bit & 1
    ]


# --- Header extensions (qcow2.rst "Header extensions") --------------------------

QCOW2_EXT_MAGIC_END = 0x00000000
QCOW2_EXT_MAGIC_BACKING_FORMAT = 0xE2792ACA
QCOW2_EXT_MAGIC_FEATURE_TABLE = 0x6803F857
QCOW2_EXT_MAGIC_BITMAPS = 0x23852875
QCOW2_EXT_MAGIC_CRYPTO_HEADER = 0x0537BE77
QCOW2_EXT_MAGIC_DATA_FILE = 0x44415441

EXTENSION_NAMES = {
    QCOW2_EXT_MAGIC_END: "end of header extensions",
    QCOW2_EXT_MAGIC_BACKING_FORMAT: "backing file format name",
    QCOW2_EXT_MAGIC_FEATURE_TABLE: "feature name table",
    QCOW2_EXT_MAGIC_BITMAPS: "bitmaps",
    QCOW2_EXT_MAGIC_CRYPTO_HEADER: "full disk encryption header pointer",
    QCOW2_EXT_MAGIC_DATA_FILE: "external data file name",
}

EXTENSION_HEADER_SIZE = 8

# One record: type, length, data, then padding up to a multiple of 8 bytes. Padding
# is kept as bytes (it should be zero) so that a round trip is exact.
header_extension_header = Struct(
    "type" / Int32ub,
    "length" / Int32ub,
)

header_extension = Struct(
    *header_extension_header.subcons,
    "data" / Bytes(this.length),
    "padding" / Bytes(-this.length % 8),
)

FEATURE_NAME_ENTRY_SIZE = 48
FEATURE_TYPE_KINDS = {0: INCOMPATIBLE, 1: COMPATIBLE, 2: AUTOCLEAR}

feature_name_entry = Struct(
    "type" / Int8ub,
    "bit_number" / Int8ub,
    "feature_name" / Bytes(46),
)

BITMAPS_EXTENSION_SIZE = 24

bitmaps_extension = Struct(
    "nb_bitmaps" / Int32ub,
    "reserved32" / Int32ub,
    "bitmap_directory_size" / Int64ub,
    "bitmap_directory_offset" / Int64ub,
)

CRYPTO_HEADER_EXTENSION_SIZE = 16

full_disk_encryption_header_pointer = Struct(
    "offset" / Int64ub,
    "length" / Int64ub,
)

# The backing file format and the data file name are plain byte strings, not NUL
# terminated; the backing file name (at backing_file_offset) is the same.
backing_file_name = GreedyBytes

# --- Cluster mapping (qcow2.rst "Cluster mapping") --------------------------------

L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L1E_RESERVED_MASK = 0x7F000000000001FF
QCOW_OFLAG_COPIED = 1 << 63
QCOW_OFLAG_COMPRESSED = 1 << 62
QCOW_OFLAG_ZERO = 1 << 0
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_STD_RESERVED_MASK = 0x3F000000000001FE
# Extended L2 entries (incompatible bit 4): 16 bytes, the second word a bitmap with
# "allocated" in bits 0-31 and "reads as zero" in bits 32-63.
L2E_SIZE_NORMAL = 8
L2E_SIZE_EXTENDED = 16
SUBCLUSTERS_PER_CLUSTER = 32
QCOW_L2_BITMAP_ALL_ALLOC = (1 << 32) - 1
# Host offsets must stay below 2^56 (block/qcow2.h QCOW_MAX_CLUSTER_OFFSET).
QCOW_MAX_CLUSTER_OFFSET = (1 << 56) - 1


def compressed_descriptor_fields(cluster_bits: int) -> tuple[int, int]:
    """Return (offset mask, sector-count shift) of a compressed cluster descriptor.

    qcow2.rst "Compressed Clusters Descriptor": x = 62 - (cluster_bits - 8); bits 0 to
    x-1 hold the host byte offset, bits x to 61 the number of additional sectors.
    """
    shift = 62 - (cluster_bits - 8)
    return (1 << shift) - 1, shift


# --- Refcounts (qcow2.rst "Host cluster management") ------------------------------

REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
REFT_RESERVED_MASK = 0x1FF

# --- Snapshots (qcow2.rst "Snapshots") --------------------------------------------

SNAPSHOT_ENTRY_FIXED_SIZE = 40

snapshot_table_entry = Struct(
    "l1_table_offset" / Int64ub,
    "l1_size" / Int32ub,
    "id_str_size" / Int16ub,
    "name_size" / Int16ub,
    "date_sec" / Int32ub,
    "date_nsec" / Int32ub,
    "vm_clock_nsec" / Int64ub,
    "vm_state_size" / Int32ub,
    "extra_data_size" / Int32ub,
    "extra_data" / Bytes(this.extra_data_size),
    "unique_id" / Bytes(this.id_str_size),
    "name" / Bytes(this.name_size),
    "padding"
    / Bytes(
        lambda ctx: (
            -(
                SNAPSHOT_ENTRY_FIXED_SIZE
                + ctx.extra_data_size
                + ctx.id_str_size
                + ctx.name_size
            )
            % 8
        )
    ),
)

# Version 3 entries carry at least the first two fields.
SNAPSHOT_EXTRA_DATA_MIN_V3 = 16

snapshot_extra_data = Struct(
    "vm_state_size_large" / Int64ub,
    "disk_size" / Int64ub,
    "icount" / If(lambda ctx: ctx._.extra_data_size >= 24, Int64ub),
)

# --- Bitmaps (qcow2.rst "Bitmaps") ------------------------------------------------

BITMAP_DIRECTORY_ENTRY_FIXED_SIZE = 24
BME_FLAG_IN_USE = 1 << 0
BME_FLAG_AUTO = 1 << 1
BME_TYPE_DIRTY_TRACKING = 1
BME_TABLE_ENTRY_OFFSET_MASK = 0x00FFFFFFFFFFFE00
BME_TABLE_ENTRY_RESERVED_MASK = 0xFF000000000001FE
BME_TABLE_ENTRY_FLAG_ALL_ONES = 1

bitmap_directory_entry = Struct(
    "bitmap_table_offset" / Int64ub,
    "bitmap_table_size" / Int32ub,
    "flags" / Int32ub,
    "type" / Int8ub,
    "granularity_bits" / Int8ub,
    "name_size" / Int16ub,
    "extra_data_size" / Int32ub,
    "extra_data" / Bytes(this.extra_data_size),
    "name" / Bytes(this.name_size),
    "padding"
    / Bytes(
        lambda ctx: (
            -(BITMAP_DIRECTORY_ENTRY_FIXED_SIZE + ctx.extra_data_size + ctx.name_size)
            % 8
        )
    ),
)


# --- Tables of big-endian integers ----------------------------------------------


class BigEndianTable(Adapter):
    """A run of big-endian unsigned 64-bit entries, decoded in bulk with numpy.

    Used for L1, L2, refcount and bitmap tables, which can hold millions of entries:
    one ``numpy.frombuffer`` call replaces a per-entry loop.
    """

    def __init__(self, count):
        super().__init__(
            Bytes(lambda ctx: 8 * (count(ctx) if callable(count) else count))
        )

    def _decode(self, obj, context, path):
        import numpy

        return numpy.frombuffer(obj, dtype=">u8")

    def _encode(self, obj, context, path):
        import numpy

        return numpy.asarray(obj, dtype=">u8").tobytes()
