"""The snapshot-import rules: what the import API refuses in an image it can read.

Scaleway's Instances and Block Storage APIs refuse encrypted images, compression
other than zlib, backing chains, and volumes outside 1 GB to 1 TB, counted in decimal
units. The messages start with the API's own words.
"""

from __future__ import annotations

from . import fixes, layout
from .findings import API_BACKING_CHAIN, API_COMPRESSION, API_ENCRYPTED, Report
from .header import Header
from .units import describe_size

GB = 1000**3
TB = 1000**4
DEFAULT_MIN_SIZE = GB
DEFAULT_MAX_SIZE = TB
SECTOR_SIZE = 512


def check_import_rules(
    header: Header,
    report: Report,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    size: int | None = None,
) -> None:
    """Add a finding for every import rule the image breaks."""
    path = report.fix_path

    if header.crypt_method != layout.QCOW_CRYPT_NONE:
        method = {
            layout.QCOW_CRYPT_AES: "AES-CBC, crypt_method 1",
            layout.QCOW_CRYPT_LUKS: "LUKS, crypt_method 2",
        }.get(header.crypt_method, f"unknown crypt_method {header.crypt_method}")
        report.add(
            "encrypted",
            f"{API_ENCRYPTED} ({method})",
            offset=32,
            fix=fixes.decrypt(path),
        )

    if header.compression_type != layout.QCOW2_COMPRESSION_TYPE_ZLIB:
        name = layout.COMPRESSION_TYPE_NAMES.get(
            header.compression_type, f"unknown value {header.compression_type}"
        )
        report.add(
            "compression-type",
            f"{API_COMPRESSION} (compression_type {header.compression_type}: {name}; "
            "expected 0, zlib)",
            offset=104,
            fix=fixes.convert(path, "zlib"),
        )

    if header.backing_file is not None:
        name = header.backing_file.decode("utf-8", "backslashreplace")
        message = f"{API_BACKING_CHAIN} (backing file {name!r}"
        if header.backing_format is not None:
            backing_format = header.backing_format.decode("utf-8", "backslashreplace")
            message += f", format {backing_format!r}"
        report.add(
            "backing-chain",
            message + ")",
            offset=header.backing_file_offset,
            fix=fixes.convert(path, "standalone"),
        )

    if header.has_data_file:
        if header.data_file is not None:
            name = header.data_file.decode("utf-8", "backslashreplace")
            where = f"in the external data file {name!r}"
        else:
            where = "in an external data file the image does not name"
        report.add(
            "data-file",
            f"the guest data is kept {where}, not in this file, so an upload of "
            "this file alone carries no data",
            offset=79,
            fix=fixes.convert(path, "standalone"),
        )

    if header.nb_snapshots:
        plural = "s" if header.nb_snapshots != 1 else ""
        report.add(
            "internal-snapshots",
            f"the image holds {header.nb_snapshots} internal snapshot{plural}; only "
            "the active state is imported",
            offset=60,
            fix=fixes.convert(path, "flat"),
        )

    check_volume_size(header.size, report, min_size, max_size, size)


def check_volume_size(
    virtual_size: int,
    report: Report,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    size: int | None = None,
) -> None:
    """Check the size the import would create: ``size`` if given, else the image's."""
    if virtual_size % SECTOR_SIZE:
        report.add(
            "virtual-size",
            f"the virtual size {virtual_size} is not a multiple of {SECTOR_SIZE}; "
            f"QEMU rounds it down to {virtual_size // SECTOR_SIZE * SECTOR_SIZE}",
            offset=24,
            severity="warning",
        )

    if size is not None and size < virtual_size:
        report.add(
            "virtual-size",
            f"the requested size {describe_size(size)} is smaller than the virtual "
            f"size {describe_size(virtual_size)}",
            offset=24,
        )
        return
    checked = virtual_size if size is None else size
    what = "virtual size" if size is None else "requested size"

    if checked < min_size:
        report.add(
            "virtual-size",
            f"the {what} {describe_size(checked)} is below the minimum "
            f"{describe_size(min_size)}",
            offset=24,
            fix=fixes.resize(report.fix_path, min_size, shrink=False),
        )
    elif checked > max_size:
        report.add(
            "virtual-size",
            f"the {what} {describe_size(checked)} is above the maximum "
            f"{describe_size(max_size)}; shrink the partitions and file systems "
            "inside the guest first",
            offset=24,
            fix=fixes.resize(report.fix_path, max_size, shrink=True),
        )
