"""Read-only access to the bytes of an image, with every read bounded and counted."""

from __future__ import annotations

import io
import os
import stat
from typing import BinaryIO

from .errors import ImageReadError

# A character device (/dev/zero, /dev/urandom) has no size: it is checked as if it
# were a file of this many bytes, so that a header pointing anywhere stays bounded.
CHARACTER_DEVICE_READ_LIMIT = 64 << 20

# Sources read with range requests by qcow2check.remote rather than opened here.
REMOTE_PREFIXES = ("s3://", "http://", "https://")


def is_remote_url(source: object) -> bool:
    """True for a ``str`` that names an object to read remotely, not a local path."""
    return isinstance(source, str) and source[:8].lower().startswith(REMOTE_PREFIXES)


class ImageFile:
    """The bytes of one image, opened read-only; never written, never extended.

    ``read_at`` returns fewer bytes than asked for only at the end of the file, so a
    short read always means "past the end". ``bytes_read`` counts what was read.
    """

    def __init__(self, name: str, file: BinaryIO, size: int, owned: bool) -> None:
        self.name = name
        self.size = size
        self.bytes_read = 0
        self._file = file
        self._owned = owned
        self._fd = _fileno(file)

    @classmethod
    def open(cls, path: str | os.PathLike) -> ImageFile:
        name = os.fspath(path)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer.
            fd = os.open(
                name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
            )
        except OSError as error:
            raise ImageReadError(name, error.strerror or str(error)) from error
        try:
            size = _usable_size(name, fd)
            os.set_blocking(fd, True)
            file = os.fdopen(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        return cls(name, file, size, owned=True)

    @classmethod
    def wrap(cls, file: BinaryIO, name: str = "<stream>") -> ImageFile:
        """Use a caller's readable, seekable binary file object, which stays open."""
        try:
            size = file.seek(0, io.SEEK_END)
        except (OSError, ValueError) as error:
            raise ImageReadError(name, f"cannot seek: {error}") from error
        return cls(name, file, size, owned=False)

    def read_at(self, offset: int, length: int) -> bytes:
        """Read up to ``length`` bytes at ``offset``; fewer only at the end of file."""
        if offset >= self.size or length <= 0:
            return b""
        length = min(length, self.size - offset)
        try:
            if self._fd is not None:
                data = _pread_fully(self._fd, length, offset)
            else:
                self._file.seek(offset)
                data = self._file.read(length)
        except OSError as error:
            raise ImageReadError(self.name, error.strerror or str(error)) from error
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        if self._owned:
            self._file.close()

    def __enter__(self) -> ImageFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _usable_size(name: str, fd: int) -> int:
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return os.fstat(fd).st_size
    if stat.S_ISBLK(mode):
        return os.lseek(fd, 0, os.SEEK_END)
    if stat.S_ISCHR(mode):
        return CHARACTER_DEVICE_READ_LIMIT
    kind = (
        "a directory"
        if stat.S_ISDIR(mode)
        else "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    raise ImageReadError(name, f"is {kind}, not an image file")


def _fileno(file: BinaryIO) -> int | None:
    try:
        fd = file.fileno()
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None
    return fd if hasattr(os, "pread") else None


def _pread_fully(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)
