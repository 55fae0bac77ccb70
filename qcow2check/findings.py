"""Findings, the rules that produce them, and the report that collects them.

A finding is data: a rule id, a severity, a message that says what was found and what
was expected, and the byte offset it concerns. Rule ids are a public interface.
"""

from __future__ import annotations

ERROR = "error"
WARNING = "warning"
INFO = "info"
SEVERITIES = (ERROR, WARNING, INFO)

# The import API's own words, from Scaleway's snapshot import documentation.
API_ENCRYPTED = "The provided QCOW2 file is encrypted"
API_COMPRESSION = "The provided QCOW2 has an unsupported compression type"
API_BACKING_CHAIN = "The provided QCOW2 file has a backing chain"


class Rule:
    """One rule: its stable id, default severity and a one-line description."""

    __slots__ = ("id", "severity", "summary")

    def __init__(self, rule_id: str, severity: str, summary: str) -> None:
        self.id = rule_id
        self.severity = severity
        self.summary = summary

    def __repr__(self) -> str:
        return f"Rule({self.id!r})"


RULES = {
    rule.id: rule
    for rule in (
        Rule("not-qcow2", ERROR, "The file is not a QCOW2 image."),
        Rule("unsupported-version", ERROR, "The QCOW version is neither 2 nor 3."),
        Rule("invalid-header", ERROR, "A header value QEMU would refuse to open."),
        Rule("encrypted", ERROR, "The image is encrypted (AES or LUKS)."),
        Rule(
            "compression-type",
            ERROR,
            "The compression type is not zlib (deflate): zstd or an unknown value.",
        ),
        Rule("backing-chain", ERROR, "The image names a backing file."),
        Rule("data-file", ERROR, "The image keeps its data in an external file."),
        Rule(
            "unknown-feature",
            ERROR,
            "An incompatible feature bit that this validator does not know.",
        ),
        Rule("corrupt-flag", ERROR, "The header's corrupt bit is set."),
        Rule("virtual-size", ERROR, "The volume size is outside the accepted bounds."),
        Rule("file-size", ERROR, "The file is larger than the service's size cap."),
        Rule("dirty", WARNING, "The dirty bit is set: refcounts may be stale."),
        Rule(
            "internal-snapshots",
            WARNING,
            "The image has internal snapshots; only the active state is imported.",
        ),
        Rule("l1-table", ERROR, "An L1 table or entry is invalid."),
        Rule("l2-table", ERROR, "An L2 table or entry is invalid."),
        Rule(
            "refcount",
            ERROR,
            "A refcount table, block or count is lower than the references.",
        ),
        Rule(
            "leaked-clusters",
            WARNING,
            "Clusters whose stored refcount is higher than their references.",
        ),
        Rule("overlap", ERROR, "Two structures share a host cluster."),
        Rule("compressed-cluster", ERROR, "A compressed cluster is invalid."),
        Rule("snapshot-table", ERROR, "A snapshot table entry QEMU would refuse."),
        Rule("bitmap", ERROR, "A persistent bitmap QEMU would refuse."),
        Rule("not-checked", INFO, "Something this run did not check, and why."),
    )
}


class Finding:
    """What one rule found at one place in the image."""

    __slots__ = ("rule", "severity", "message", "offset", "fix")

    def __init__(
        self,
        rule: str,
        message: str,
        offset: int | None = None,
        fix: str | None = None,
        severity: str | None = None,
    ) -> None:
        self.rule = rule
        self.severity = severity or RULES[rule].severity
        self.message = message
        self.offset = offset
        self.fix = fix

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "offset": self.offset,
            "fix": self.fix,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Finding):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        where = "" if self.offset is None else f" at {self.offset:#x}"
        return f"<Finding {self.severity} {self.rule}{where}: {self.message}>"


class Report:
    """The verdict on one image: what was parsed, and every finding."""

    __slots__ = ("path", "fix_path", "level", "info", "findings")

    def __init__(self, path: str, level: str, fix_path: str | None = None) -> None:
        self.path = path
        # The file the fix commands name: for an object in a bucket, the copy
        # a download would make, since qemu-img cannot open the URL.
        self.fix_path = fix_path or path
        self.level = level
        self.info: dict = {}
        self.findings: list[Finding] = []

    @property
    def accepted(self) -> bool:
        return not any(finding.severity == ERROR for finding in self.findings)

    def add(
        self,
        rule: str,
        message: str,
        offset: int | None = None,
        fix: str | None = None,
        severity: str | None = None,
    ) -> Finding:
        finding = Finding(rule, message, offset, fix, severity)
        self.findings.append(finding)
        return finding

    def rules_found(self) -> set[str]:
        return {finding.rule for finding in self.findings}

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "accepted": self.accepted,
            "level": self.level,
            "info": self.info,
            "findings": [finding.to_dict() for finding in self.findings],
        }

    def __repr__(self) -> str:
        verdict = "accepted" if self.accepted else "rejected"
        return f"<Report {self.path!r} {verdict}, {len(self.findings)} findings>"
