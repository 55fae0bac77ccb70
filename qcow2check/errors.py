"""The exceptions qcow2check raises. Findings about an image's bytes are never raised:
they are :class:`~qcow2check.findings.Finding` data in the report."""

from __future__ import annotations


class Qcow2CheckError(Exception):
    """Base of every exception this package raises."""


class ImageReadError(Qcow2CheckError):
    """The image could not be read: missing, no permission, not a file, I/O error.

    ``path`` names the image and ``__cause__`` holds the original ``OSError`` when
    there is one.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
