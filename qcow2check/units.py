"""Byte sizes: decimal (GB, TB, as the import API counts) and binary (GiB, TiB)."""

from __future__ import annotations

import re

UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_DECIMAL = (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000))
_BINARY = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str) -> int:
    """Parse "1000000000", "1GB", "1 GiB" or "1.5TB" into bytes.

    A bare "G" or "T" is refused: qemu-img reads it as GiB, Scaleway's tools as GB.
    """
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a size: give bytes or a unit such as GB")
    number, unit = match.groups()
    unit = unit.upper() or "B"
    if unit not in UNITS:
        raise ValueError(
            f"unknown unit {match.group(2)!r} in {text!r}: use B, KB, MB, GB, TB "
            "(powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
        )
    value = float(number) * UNITS[unit] if "." in number else int(number) * UNITS[unit]
    if value != int(value):
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(value)


def describe_size(size: int) -> str:
    """ "1099511627776 bytes (1 TiB)": the exact count, with the unit that fits best."""
    for units in (_DECIMAL, _BINARY):
        for name, factor in units:
            if size % factor == 0 and 1 <= size // factor < 1000:
                return f"{size} bytes ({size // factor} {name})"
    for (decimal, d_factor), (binary, b_factor) in zip(_DECIMAL, _BINARY, strict=True):
        if size >= d_factor:
            return (
                f"{size} bytes ({size / d_factor:.9g} {decimal}, "
                f"{size / b_factor:.4g} {binary})"
            )
    return f"{size} bytes"
