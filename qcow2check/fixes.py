"""The qemu-img command lines that turn a rejected image into an accepted one.

Each was verified with qemu-img 7.2 (see the README's "Fixing a rejected image"). The
output file sits next to the image, named after it with a suffix saying what changed.
"""

from __future__ import annotations

import os
import shlex


def output_path(path: str, suffix: str) -> str:
    root, _ = os.path.splitext(path)
    return f"{root}-{suffix}.qcow2"


def convert(path: str, suffix: str, source_format: str = "qcow2") -> str:
    """A plain copy into a fresh QCOW2 file: zlib, no backing file, no data file,
    no internal snapshots, no encryption."""
    target = output_path(path, suffix)
    return (
        f"qemu-img convert -f {source_format} -O qcow2 "
        f"{shlex.quote(path)} {shlex.quote(target)}"
    )


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
        f"--image-opts {shlex.quote(image_opts)} -O qcow2 {shlex.quote(target)}"
    )


def resize(path: str, new_size: int, shrink: bool) -> str:
    option = "--shrink " if shrink else ""
    return f"qemu-img resize {option}{shlex.quote(path)} {new_size}"


def repair(path: str) -> str:
    return f"qemu-img check -r all {shlex.quote(path)}"


def fill(template: str, path: str) -> str:
    """Fill a command template's ``{path}`` and ``{output}`` with quoted paths."""
    return template.format(
        path=shlex.quote(path), output=shlex.quote(output_path(path, "converted"))
    )
