"""Check a QCOW2 image against cloud snapshot-import rules before uploading it.

>>> report = qcow2check.validate("disk.qcow2")
>>> report.accepted, [f.rule for f in report.findings]
"""

from .errors import ImageReadError, Qcow2CheckError
from .findings import RULES, Finding, Report
from .validate import LEVELS, validate

__version__ = "0.1.0"
__all__ = [
    "LEVELS",
    "RULES",
    "Finding",
    "ImageReadError",
    "Qcow2CheckError",
    "Report",
    "__version__",
    "validate",
]
