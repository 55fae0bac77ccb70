"""The qemu-img command lines that turn a rejected image into an accepted one.

Each was verified with qemu-img 7.2 (see the README's "Fixing a rejected image"). The
output file sits next to the image, named after it with a suffix saying what changed.
"""

from __future__ import annotations

import os
import shlex


def _arg(path: str) -> str:
    """A path as one qemu-img argument. A relative path that starts with "-" would
    be read as an option, and one with "name:" before its first "/" as a protocol:
    "./" in front keeps both a file name."""
    if not os.path.isabs(path) and (path.startswith("-") or ":" in path.split("/")[0]):
        path = "./" + path
    return shlex.quote(path)


def output_path(path: str, suffix: str) -> str:
    root, _ = os.path.splitext(path)
    return f"{root}-{suffix}.qcow2"


def convert(path: str, suffix: str, source_format: str = "qcow2") -> str:
    """A plain copy into a fresh QCOW2 file: zlib, no backing file, no data file,
    no internal snapshots, no encryption."""
    target = output_path(path, suffix)
    return f"qemu-img convert -f {source_format} -O qcow2 {_arg(path)} {_arg(target)}"


def decrypt(path: str) -> str:
    # --image-opts takes a comma-separated list, in which a comma inside a value is
    # written twice.
    image_opts = (
        "driver=qcow2,file.filename="
        + path.replace(",", ",,")
        + ",encrypt.key-secret=sec0"
    )
    target = output_path(path, "decrypted")
    return (
        "qemu-img convert --object secret,id=sec0,file=PASSPHRASE_FILE "
        f"--image-opts {shlex.quote(image_opts)} -O qcow2 {_arg(target)}"
    )


def resize(path: str, new_size: int, shrink: bool) -> str:
    option = "--shrink " if shrink else ""
    return f"qemu-img resize {option}{_arg(path)} {new_size}"


def repair(path: str) -> str:
    return f"qemu-img check -r all {_arg(path)}"


def fill(template: str, path: str) -> str:
    """Fill a command template's ``{path}`` and ``{output}`` with quoted paths."""
    return template.format(path=_arg(path), output=_arg(output_path(path, "converted")))
