"""validate(): one image in, one report out."""

from __future__ import annotations

import logging
import os
from typing import BinaryIO

from .findings import Report
from .header import read_header
from .image import ImageFile
from .policy import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE, SECTOR_SIZE, check_import_rules

log = logging.getLogger(__name__)

QUICK = "quick"
METADATA = "metadata"
DEEP = "deep"
LEVELS = (QUICK, METADATA, DEEP)


def validate(
    source: str | os.PathLike | BinaryIO,
    *,
    level: str = METADATA,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    size: int | None = None,
    progress=None,
) -> Report:
    """Check one image and return its report.

    ``source`` is a path or a readable, seekable binary file object (left open).
    ``level`` is "quick" (the header cluster only), "metadata" (also every table)
    or "deep" (also every compressed cluster decoded). ``min_size`` and ``max_size``
    bound the volume size in bytes, both inclusive; ``size`` is the import request's
    optional size, which then is the size checked.

    Nothing in the image's bytes makes this raise: every problem is a finding. An
    image that cannot be read raises :class:`~qcow2check.errors.ImageReadError`; a
    bad argument raises ``ValueError``.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    if size is not None and (size <= 0 or size % SECTOR_SIZE):
        raise ValueError(f"size must be a positive multiple of {SECTOR_SIZE}: {size}")
    if min_size > max_size:
        raise ValueError(f"min_size {min_size} is above max_size {max_size}")

    if isinstance(source, (str, os.PathLike)):
        image = ImageFile.open(source)
    else:
        image = ImageFile.wrap(source, getattr(source, "name", "<stream>"))
    with image:
        report = Report(image.name, level)
        _check(image, report, level, min_size, max_size, size, progress)
        report.info["bytes_read"] = image.bytes_read
    log.debug(
        "%s: %d findings, %d bytes read",
        image.name,
        len(report.findings),
        image.bytes_read,
    )
    return report


def _check(image, report, level, min_size, max_size, size, progress) -> None:
    header = read_header(image, report)
    if header is None:
        return
    check_import_rules(header, report, min_size, max_size, size)

    if level == QUICK:
        report.add(
            "not-checked",
            "the L1, L2, refcount and snapshot tables were not read (level quick)",
        )
        return
    if not header.geometry_valid:
        report.add(
            "not-checked",
            "the tables were not read: the header does not say where they are",
        )
        return

    from .walk import check_tables

    check_tables(image, header, report, deep=level == DEEP, progress=progress)
