"""Rule tests on headers built with construct, changed one field at a time."""

from __future__ import annotations

import io

import pytest

from qcow2check import layout, validate
from qcow2check.findings import API_BACKING_CHAIN, API_COMPRESSION, API_ENCRYPTED

from .conftest import CLUSTER_SIZE, GiB, build_image, error_rules, extension

LUKS_POINTER = extension(
    layout.QCOW2_EXT_MAGIC_CRYPTO_HEADER,
    (4 * CLUSTER_SIZE).to_bytes(8, "big") + (2 << 20).to_bytes(8, "big"),
)


def check(data: bytes, **options):
    return validate(io.BytesIO(data), level="quick", **options)


def messages(report, rule: str) -> str:
    return " | ".join(f.message for f in report.findings if f.rule == rule)


def test_a_plain_image_is_accepted_with_only_the_quick_level_note():
    report = check(build_image())

    assert report.accepted
    assert [f.rule for f in report.findings] == ["not-checked"]
    assert report.info["virtual_size"] == GiB
    assert report.info["cluster_size"] == CLUSTER_SIZE


# (changes to the header, expected errors and warnings, words the message must hold)
HEADER_CASES = {
    "aes": (dict(crypt_method=1), {"encrypted"}, [API_ENCRYPTED, "AES"]),
    "luks": (
        dict(crypt_method=2, extensions=(LUKS_POINTER,)),
        {"encrypted"},
        [API_ENCRYPTED, "LUKS"],
    ),
    "luks-without-pointer": (
        dict(crypt_method=2),
        {"encrypted", "invalid-header"},
        ["missing"],
    ),
    "unknown-crypt-method": (
        dict(crypt_method=3),
        {"encrypted", "invalid-header"},
        ["crypt_method is 3"],
    ),
    "zstd": (
        dict(incompatible_features=1 << 3, compression_type=1),
        {"compression-type"},
        [API_COMPRESSION, "zstd"],
    ),
    "zstd-without-feature-bit": (
        dict(compression_type=1),
        {"compression-type", "invalid-header"},
        ["incompatible feature bit 3"],
    ),
    "compression-bit-with-zlib": (
        dict(incompatible_features=1 << 3),
        {"invalid-header"},
        ["compression type feature bit"],
    ),
    "unknown-compression-type": (
        dict(incompatible_features=1 << 3, compression_type=2),
        {"compression-type", "invalid-header"},
        ["unknown value 2"],
    ),
    "version-1": (dict(version=1), {"unsupported-version"}, ["version 1"]),
    "version-4": (dict(version=4), {"unsupported-version"}, ["version 4"]),
    "cluster-bits-8": (dict(cluster_bits=8), {"invalid-header"}, ["cluster_bits is 8"]),
    "cluster-bits-22": (
        dict(cluster_bits=22),
        {"invalid-header"},
        ["cluster_bits is 22", "9 to 21"],
    ),
    "header-length-short": (
        dict(header_length=100, compression_type=None, padding=None),
        {"invalid-header"},
        ["header_length is 100", "at least 104"],
    ),
    "refcount-order-7": (
        dict(refcount_order=7),
        {"invalid-header"},
        ["refcount_order is 7", "0 to 6"],
    ),
    "l1-table-too-large": (
        dict(l1_size=0x7FFFFFFF),
        {"invalid-header"},
        ["L1 table size", "at most 33554432"],
    ),
    "l1-table-too-small": (
        dict(l1_size=0),
        {"invalid-header"},
        ["l1_size is 0", "at least 2"],
    ),
    "l1-table-unaligned": (
        dict(l1_table_offset=3 * CLUSTER_SIZE + 512),
        {"invalid-header"},
        ["L1 table offset is 0x30200"],
    ),
    "refcount-table-missing": (
        dict(refcount_table_clusters=0),
        {"invalid-header"},
        ["refcount_table_clusters is 0"],
    ),
    "refcount-table-too-large": (
        dict(refcount_table_clusters=0xFFFFFFFF),
        {"invalid-header"},
        ["refcount table size"],
    ),
    "refcount-table-overflows": (
        dict(refcount_table_offset=0xFFFFFFFFFFFF0000, refcount_table_clusters=127),
        {"invalid-header"},
        ["refcount table offset"],
    ),
    "too-many-snapshots": (
        dict(nb_snapshots=65537),
        {"invalid-header", "internal-snapshots"},
        ["nb_snapshots is 65537"],
    ),
    "snapshot-table-unaligned-even-when-empty": (
        dict(snapshots_offset=0x10200),
        {"invalid-header"},
        ["snapshot table offset is 0x10200"],
    ),
    "snapshots": (dict(nb_snapshots=2), {"internal-snapshots"}, ["2 internal"]),
    "unknown-incompatible-bit": (
        dict(incompatible_features=1 << 5),
        {"unknown-feature"},
        ["incompatible feature bit 5 is set"],
    ),
    "unknown-bit-named-by-the-image": (
        dict(
            incompatible_features=1 << 63,
            extensions=(
                extension(
                    layout.QCOW2_EXT_MAGIC_FEATURE_TABLE,
                    bytes([0, 63]) + b"teleportation".ljust(46, b"\0"),
                ),
            ),
        ),
        {"unknown-feature"},
        ["bit 63 (teleportation)"],
    ),
    "corrupt": (dict(incompatible_features=1 << 1), {"corrupt-flag"}, ["corrupt"]),
    "dirty": (dict(incompatible_features=1 << 0), {"dirty"}, ["dirty"]),
    "data-file": (
        dict(
            incompatible_features=1 << 2,
            extensions=(extension(layout.QCOW2_EXT_MAGIC_DATA_FILE, b"disk.raw"),),
        ),
        {"data-file"},
        ["'disk.raw'"],
    ),
    "data-file-unnamed": (
        dict(incompatible_features=1 << 2),
        {"data-file"},
        ["does not name"],
    ),
    "raw-data-without-data-file": (
        dict(autoclear_features=1 << 1),
        {"invalid-header"},
        ["raw external data"],
    ),
    "extended-l2-subclusters-too-small": (
        dict(incompatible_features=1 << 4, cluster_bits=13),
        {"invalid-header"},
        ["subclusters of 256 bytes"],
    ),
    "extension-overruns-its-area": (
        dict(
            extensions=(
                layout.header_extension_header.build(
                    dict(type=0x12345678, length=0x7FFFFFFF)
                ),
            )
        ),
        {"invalid-header"},
        ["type 0x12345678", "past the end of the extension area"],
    ),
    "backing-format-too-long": (
        dict(extensions=(extension(layout.QCOW2_EXT_MAGIC_BACKING_FORMAT, b"q" * 16),)),
        {"invalid-header"},
        ["16 bytes long"],
    ),
    "bitmaps-extension-wrong-length": (
        dict(
            autoclear_features=1,
            extensions=(extension(layout.QCOW2_EXT_MAGIC_BITMAPS, bytes(16)),),
        ),
        {"invalid-header"},
        ["bitmaps extension is 16 bytes long"],
    ),
    "bitmaps-extension-zero-bitmaps": (
        dict(
            autoclear_features=1,
            extensions=(extension(layout.QCOW2_EXT_MAGIC_BITMAPS, bytes(24)),),
        ),
        {"invalid-header"},
        ["nb_bitmaps is 0"],
    ),
    "crypto-pointer-without-luks": (
        dict(extensions=(LUKS_POINTER,)),
        {"invalid-header"},
        ["crypt_method 0"],
    ),
    "below-1-gb": (
        dict(size=999_999_488),
        {"virtual-size"},
        ["999999488 bytes", "below the minimum 1000000000 bytes (1 GB)"],
    ),
    "above-1-tb": (
        dict(size=10**12 + 512, l1_size=2 * 1000),
        {"virtual-size"},
        ["above the maximum 1000000000000 bytes (1 TB)"],
    ),
    "one-tib": (
        dict(size=1 << 40, l1_size=2048),
        {"virtual-size"},
        ["(1 TiB) is above the maximum", "(1 TB)"],
    ),
    "size-not-a-multiple-of-512": (
        dict(size=GiB + 1, l1_size=3),
        {"virtual-size"},
        ["not a multiple of 512"],
    ),
}


@pytest.mark.parametrize(
    ("changes", "expected", "words"),
    HEADER_CASES.values(),
    ids=HEADER_CASES.keys(),
)
def test_one_changed_field_gives_its_rule(changes, expected, words):
    extensions = changes.pop("extensions", ())
    report = check(build_image(extensions, **changes))

    assert error_rules(report) == expected
    text = " | ".join(f.message for f in report.findings)
    for word in words:
        assert word in text


@pytest.mark.parametrize(
    ("size", "accepted"),
    [
        (10**9 - 512, False),
        (10**9, True),
        (10**12, True),
        (10**12 + 512, False),
    ],
)
def test_size_bounds_are_decimal_and_inclusive(size, accepted):
    report = check(build_image(size=size, l1_size=2000))
    assert report.accepted is accepted


def test_bounds_can_be_changed():
    image = build_image(size=1 << 40, l1_size=2048)
    assert check(image, max_size=1 << 40).accepted
    assert not check(image, max_size=(1 << 40) - 512).accepted
    assert not check(build_image(), min_size=2 * GiB).accepted


def test_requested_size_is_checked_instead_of_the_virtual_size():
    image = build_image(size=GiB)

    assert not check(image, size=2 * 10**12).accepted
    smaller = check(image, size=GiB - 512)
    assert "smaller than the virtual size" in messages(smaller, "virtual-size")
    assert check(image, size=2 * GiB).accepted


def test_requested_size_must_be_a_multiple_of_512():
    with pytest.raises(ValueError, match="multiple of 512"):
        check(build_image(), size=GiB + 1)


def test_backing_file_is_named_with_its_format():
    image = build_image(
        extensions=(extension(layout.QCOW2_EXT_MAGIC_BACKING_FORMAT, b"raw"),),
        backing_file=b"../base image.raw",
    )

    report = check(image)

    assert error_rules(report) == {"backing-chain"}
    text = messages(report, "backing-chain")
    assert text.startswith(API_BACKING_CHAIN)
    assert "'../base image.raw'" in text and "format 'raw'" in text
    assert report.info["backing_file"] == "../base image.raw"
    finding = next(f for f in report.findings if f.rule == "backing-chain")
    assert image[finding.offset : finding.offset + 5] == b"../ba"


def test_empty_backing_file_name_is_no_backing_file():
    # QEMU reads a zero-length name as "no backing file".
    image = build_image(backing_file=b"")
    assert check(image).accepted


def test_backing_file_name_longer_than_1023_bytes_is_refused():
    image = build_image(backing_file=b"b" * 1024)
    report = check(image)
    assert error_rules(report) == {"invalid-header"}
    assert "backing_file_size is 1024" in messages(report, "invalid-header")


def test_backing_file_outside_cluster_0_is_refused():
    image = build_image(backing_file_offset=CLUSTER_SIZE + 8, backing_file_size=4)
    report = check(image)
    assert "inside cluster 0" in messages(report, "invalid-header")


def test_unknown_extension_is_kept_in_info():
    image = build_image(extensions=(extension(0x12345678, b"future"),))

    report = check(image)

    assert report.accepted
    kept = report.info["header_extensions"]
    assert kept == [
        {"type": "0x12345678", "name": "unknown", "offset": 112, "length": 6}
    ]


def test_version_2_header_is_read_and_has_no_features():
    report = check(build_image(version=2))
    assert report.accepted
    assert report.info["version"] == 2
    assert report.info["refcount_bits"] == 16


def test_feature_names_are_reported():
    image = build_image(incompatible_features=0b10001, compatible_features=1)
    features = check(image).info["features"]
    assert features["incompatible"] == ["dirty bit", "extended L2 entries"]
    assert features["compatible"] == ["lazy refcounts"]


@pytest.mark.parametrize("length", [4, 8, 50, 71])
def test_a_file_too_short_for_its_header_is_a_finding(length):
    report = check(build_image()[:length])

    assert error_rules(report) == {"invalid-header"}
    finding = report.findings[0]
    assert finding.offset == length
    assert f"{length}" in finding.message


def test_header_length_past_the_end_of_a_short_file():
    image = build_image(
        header_length=4096, padding=bytes(7), unknown_fields=bytes(4096 - 112)
    )[:1000]
    report = check(image)
    assert "inside the header" in messages(report, "invalid-header")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", ["empty"]),
        (b"\x1f\x8b\x08" + bytes(100), ["gzip", "decompress"]),
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:"
            + b"0" * 64
            + b"\nsize 10\n",
            ["git lfs pull"],
        ),
        (b"KDMV" + bytes(1020), ["VMDK"]),
        (bytes(4096), ["raw"]),
    ],
)
def test_other_formats_are_named(data, words):
    report = check(data)

    assert error_rules(report) == {"not-qcow2"}
    finding = report.findings[0]
    text = finding.message + (finding.fix or "")
    for word in words:
        assert word in text


def test_conversion_advice_is_filled_with_the_image_path(tmp_path):
    path = tmp_path / "my disk.vmdk"
    path.write_bytes(b"KDMV" + bytes(1020))

    report = validate(path, level="quick")

    fix = report.findings[0].fix
    assert fix.startswith("qemu-img convert -f vmdk -O qcow2 ")
    assert f"'{path}'" in fix


def test_quick_level_reads_a_bounded_number_of_bytes():
    # A header claiming the largest tables still costs one read of cluster 0.
    image = build_image(l1_size=0x400000, refcount_table_clusters=128, clusters=1)
    report = check(image)
    assert report.info["bytes_read"] <= 64 << 10


def test_a_2_mib_cluster_0_is_read_only_as_far_as_needed():
    two_mib = dict(
        cluster_bits=21, l1_table_offset=3 << 21, refcount_table_offset=1 << 21
    )

    plain = check(build_image(**two_mib))

    assert plain.accepted
    assert plain.info["bytes_read"] == 64 << 10


def test_a_backing_file_name_beyond_the_first_read_is_found():
    image = bytearray(
        build_image(
            cluster_bits=21, l1_table_offset=3 << 21, refcount_table_offset=1 << 21
        )
    )
    name = b"far/away/base.qcow2"
    offset = 1 << 20
    image[8:16] = offset.to_bytes(8, "big")
    image[16:20] = len(name).to_bytes(4, "big")
    image[offset : offset + len(name)] = name

    report = check(bytes(image))

    assert error_rules(report) == {"backing-chain"}
    assert report.info["backing_file"] == "far/away/base.qcow2"
