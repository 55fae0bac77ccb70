"""validate(): one image in, one report out."""

from __future__ import annotations

import logging
import os
import posixpath
import urllib.parse
from collections.abc import Iterable
from typing import BinaryIO

from .findings import RULES, Report
from .header import read_header
from .image import ImageFile, is_remote_url
from .policy import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE, SECTOR_SIZE, check_import_rules
from .profiles import DEFAULT_PROFILE, PROFILES, apply_profile

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
    profile: str = DEFAULT_PROFILE,
    ignore: Iterable[str] = (),
    warn: Iterable[str] = (),
    endpoint_url: str | None = None,
    progress=None,
) -> Report:
    """Check one image and return its report.

    ``source`` is a path, an ``s3://BUCKET/KEY`` or ``https://`` URL (read with
    range requests; ``endpoint_url`` names a non-AWS S3 service), or a readable,
    seekable binary file object (left open). ``level`` is "quick" (the header
    cluster only), "metadata" (also every table) or "deep" (also every compressed
    cluster decoded). ``min_size`` and ``max_size`` bound the volume size in bytes,
    both inclusive; ``size`` is the import request's optional size, which then is
    the size checked. ``profile`` names the rules that apply (see
    :mod:`qcow2check.profiles`); rules named in ``ignore`` are left out and those
    in ``warn`` only warn.

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
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}: {profile!r}")
    unknown = (set(ignore) | set(warn)) - RULES.keys()
    if unknown:
        raise ValueError(f"unknown rule ids: {', '.join(sorted(unknown))}")

    with _open(source, endpoint_url) as image:
        report = Report(image.name, level, _fix_path(source))
        _check(image, report, level, min_size, max_size, size, progress)
        report.info["bytes_read"] = image.bytes_read
    apply_profile(report, PROFILES[profile], frozenset(ignore), frozenset(warn))
    log.debug(
        "%s: %d findings, %d bytes read",
        image.name,
        len(report.findings),
        image.bytes_read,
    )
    return report


def _open(source, endpoint_url: str | None):
    if is_remote_url(source):
        from .remote import open_remote

        return open_remote(source, endpoint_url=endpoint_url)
    if isinstance(source, (str, os.PathLike)):
        return ImageFile.open(source)
    return ImageFile.wrap(source, str(getattr(source, "name", "<stream>")))


def _fix_path(source) -> str | None:
    if not is_remote_url(source):
        return None
    return posixpath.basename(urllib.parse.urlsplit(source).path) or "image.qcow2"


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
