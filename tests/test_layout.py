"""Every structure in the layout module round-trips: parse, build, the same bytes."""

from __future__ import annotations

import numpy
import pytest

from qcow2check import layout

from .conftest import header_fields, qemu_img, requires_qemu_img


def round_trip(struct_, data: bytes):
    parsed = struct_.parse(data)
    assert struct_.build(parsed) == data
    return parsed


def test_header_sizes_match_the_spec():
    assert layout.header_v2.sizeof() == 72
    assert layout.header_v3_fixed.sizeof() == 104
    assert layout.header_v1.sizeof() == 48
    assert layout.header_extension_header.sizeof() == 8
    assert layout.feature_name_entry.sizeof() == 48
    assert layout.bitmaps_extension.sizeof() == layout.BITMAPS_EXTENSION_SIZE
    assert (
        layout.full_disk_encryption_header_pointer.sizeof()
        == layout.CRYPTO_HEADER_EXTENSION_SIZE
    )


@pytest.mark.parametrize(
    ("header_length", "compression_type", "padding", "unknown_fields"),
    [
        (104, None, None, None),
        (105, 1, None, None),
        (108, 0, bytes(3), None),
        (112, 1, bytes(7), None),
        (120, 0, bytes(7), b"newfield"),
    ],
)
def test_header_v3_round_trip(header_length, compression_type, padding, unknown_fields):
    fields = header_fields(
        header_length=header_length,
        compression_type=compression_type,
        padding=padding,
        unknown_fields=unknown_fields,
    )
    data = layout.header_v3.build(fields)

    parsed = round_trip(layout.header_v3, data)

    assert len(data) == header_length
    assert parsed.compression_type == compression_type
    assert parsed.unknown_fields == unknown_fields


def test_header_v3_fields_sit_at_the_spec_offsets():
    data = layout.header_v3.build(
        header_fields(
            backing_file_offset=0x0102030405060708,
            cluster_bits=0x11,
            incompatible_features=0x8,
            refcount_order=0x5,
            compression_type=1,
        )
    )

    assert data[:4] == b"QFI\xfb"
    assert data[8:16] == bytes.fromhex("0102030405060708")
    assert data[20:24] == bytes.fromhex("00000011")
    assert data[72:80] == bytes.fromhex("0000000000000008")
    assert data[96:100] == bytes.fromhex("00000005")
    assert data[104] == 1


def test_header_v2_round_trip():
    data = layout.header_v2.build(header_fields(version=2))
    assert len(data) == 72
    assert round_trip(layout.header_v2, data).version == 2


def test_header_v1_round_trip():
    data = layout.header_v1.build(
        dict(
            magic=layout.MAGIC,
            version=1,
            backing_file_offset=0,
            backing_file_size=0,
            mtime=7,
            size=1 << 30,
            cluster_bits=12,
            l2_bits=9,
            padding=0,
            crypt_method=0,
            l1_table_offset=48,
        )
    )
    assert round_trip(layout.header_v1, data).l2_bits == 9


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 384])
def test_header_extension_round_trip_keeps_padding(length):
    data = (
        bytes.fromhex("e2792aca")
        + length.to_bytes(4, "big")
        + bytes(i % 256 for i in range(length))
        + b"\x01" * (-length % 8)
    )

    parsed = round_trip(layout.header_extension, data)

    assert parsed.type == layout.QCOW2_EXT_MAGIC_BACKING_FORMAT
    assert parsed.length == length
    assert len(parsed.padding) == -length % 8


def test_feature_name_entry_round_trip():
    data = bytes([0, 4]) + b"extended L2 entries".ljust(46, b"\0")
    parsed = round_trip(layout.feature_name_entry, data)
    assert (parsed.type, parsed.bit_number) == (0, 4)


def test_bitmaps_extension_round_trip():
    data = bytes.fromhex("00000002 00000000 0000000000000030 0000000000050000")
    parsed = round_trip(layout.bitmaps_extension, data)
    assert parsed.nb_bitmaps == 2
    assert parsed.bitmap_directory_offset == 0x50000


def test_full_disk_encryption_header_pointer_round_trip():
    data = bytes.fromhex("0000000000010000 0000000000200000")
    parsed = round_trip(layout.full_disk_encryption_header_pointer, data)
    assert (parsed.offset, parsed.length) == (0x10000, 0x200000)


@pytest.mark.parametrize(
    ("extra", "unique_id", "name"),
    [
        (bytes(24), b"1", b"snap1"),
        (bytes(16), b"12", b""),
        (b"", b"", b"x" * 13),
    ],
)
def test_snapshot_table_entry_round_trip(extra, unique_id, name):
    fixed = (
        (0x50000).to_bytes(8, "big")
        + (2).to_bytes(4, "big")
        + len(unique_id).to_bytes(2, "big")
        + len(name).to_bytes(2, "big")
        + bytes(16)
        + bytes(4)
        + len(extra).to_bytes(4, "big")
    )
    body = fixed + extra + unique_id + name
    data = body + bytes(-len(body) % 8)

    parsed = round_trip(layout.snapshot_table_entry, data)

    assert parsed.name == name
    assert parsed.unique_id == unique_id
    assert len(data) % 8 == 0


def test_snapshot_extra_data_reads_icount_only_when_present():
    data = (7).to_bytes(8, "big") + (1 << 30).to_bytes(8, "big")
    parsed = layout.snapshot_extra_data.parse(data, extra_data_size=16)
    assert parsed.disk_size == 1 << 30
    assert parsed.icount is None
    longer = data + (5).to_bytes(8, "big")
    assert layout.snapshot_extra_data.parse(longer, extra_data_size=24).icount == 5


def test_bitmap_directory_entry_round_trip():
    name = b"bitmap0"
    body = (
        (0x60000).to_bytes(8, "big")
        + (1).to_bytes(4, "big")
        + (2).to_bytes(4, "big")
        + bytes([1, 16])
        + len(name).to_bytes(2, "big")
        + bytes(4)
        + name
    )
    data = body + bytes(-len(body) % 8)

    parsed = round_trip(layout.bitmap_directory_entry, data)

    assert parsed.name == name
    assert parsed.granularity_bits == 16


def test_big_endian_table_round_trip():
    table = layout.BigEndianTable(3)
    data = bytes.fromhex("8000000000030000 0000000000000000 00000000000a0001")

    parsed = table.parse(data)

    assert isinstance(parsed, numpy.ndarray)
    assert parsed.tolist() == [0x8000000000030000, 0, 0xA0001]
    assert table.build(parsed) == data


@pytest.mark.parametrize(("cluster_bits", "offset_bits"), [(9, 61), (16, 54), (21, 49)])
def test_compressed_descriptor_split_follows_the_spec(cluster_bits, offset_bits):
    mask, shift = layout.compressed_descriptor_fields(cluster_bits)
    assert mask == (1 << offset_bits) - 1
    assert shift == offset_bits


def test_feature_names_fall_back_to_the_bit_number():
    names = layout.feature_names(layout.INCOMPATIBLE, 0b1000001)
    assert names == ["dirty bit", "unknown bit 6"]


@requires_qemu_img
@pytest.mark.parametrize(
    "options",
    ["compat=1.1", "compat=0.10", "compression_type=zstd", "cluster_size=512"],
)
def test_qemu_img_header_cluster_round_trips(tmp_path, options):
    path = tmp_path / "t.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", options, str(path), "1G")
    data = path.read_bytes()
    struct_ = layout.header_v2 if options == "compat=0.10" else layout.header_v3
    header_end = struct_.sizeof() if options == "compat=0.10" else None

    if header_end is None:
        header_end = int.from_bytes(data[100:104], "big")
    parsed = round_trip(struct_, data[:header_end])

    assert parsed.size == 1 << 30


@pytest.mark.parametrize(
    "name", ["header_v2", "header_v3_fixed", "header_v3", "header_extension_header"]
)
def test_compiled_and_plain_structs_agree(name):
    # header.py switches to compiled parsers once a process has parsed a few images.
    struct_ = getattr(layout, name)
    data = layout.header_v3.build(
        header_fields(header_length=120, unknown_fields=b"newfield")
    ) + bytes(64)

    plain = struct_.parse(data)
    compiled = struct_.compile().parse(data)

    assert {k: v for k, v in plain.items() if not k.startswith("_")} == {
        k: v for k, v in compiled.items() if not k.startswith("_")
    }
