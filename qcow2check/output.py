"""Reports as text for people and as JSON for programs."""

from __future__ import annotations

import click

from . import __version__
from .errors import ImageReadError
from .findings import ERROR, INFO, WARNING, Report
from .units import describe_size

SEVERITY_STYLES = {
    ERROR: {"fg": "red", "bold": True},
    WARNING: {"fg": "yellow"},
    INFO: {"dim": True},
}

# Verbosity 0 prints only rejected images, 1 (the default) every verdict with its
# errors and warnings, 2 adds info findings and what was parsed.
_SHOWN = {0: (ERROR,), 1: (ERROR, WARNING), 2: (ERROR, WARNING, INFO)}


def format_text(report: Report, verbosity: int = 1) -> str:
    """The verdict line, then one block per finding with its fix."""
    if verbosity < 0 or (verbosity == 0 and report.accepted):
        return ""
    shown = _SHOWN[min(verbosity, 2)]
    findings = [f for f in report.findings if f.severity in shown]

    if report.accepted:
        verdict = click.style("accepted", fg="green", bold=True)
    else:
        verdict = click.style("rejected", fg="red", bold=True)
    lines = [f"{report.path}: {verdict}{_counts(report)}{_summary(report.info)}"]

    for finding in findings:
        severity = click.style(
            f"{finding.severity:<7}", **SEVERITY_STYLES[finding.severity]
        )
        where = "" if finding.offset is None else f" at {finding.offset:#x}"
        lines.append(f"  {severity} [{finding.rule}]{where}: {finding.message}")
        if finding.fix:
            lines.append(f"          fix: {finding.fix}")

    if verbosity >= 2:
        lines.extend(f"  {key}: {value}" for key, value in report.info.items())
    return "\n".join(lines)


def _counts(report: Report) -> str:
    counts = []
    for severity in (ERROR, WARNING):
        n = sum(1 for f in report.findings if f.severity == severity)
        if n:
            counts.append(f"{n} {severity}{'s' if n > 1 else ''}")
    return f" ({', '.join(counts)})" if counts else ""


def _summary(info: dict) -> str:
    if info.get("format") != "qcow2":
        return ""
    parts = [f"QCOW2 v{info['version']}"]
    if "virtual_size" in info:
        parts.append(f"virtual size {describe_size(info['virtual_size'])}")
    cluster_size = info.get("cluster_size")
    if cluster_size:
        unit = (
            f"{cluster_size} B" if cluster_size < 1024 else f"{cluster_size >> 10} KiB"
        )
        parts.append(f"{unit} clusters")
    return " - " + ", ".join(parts)


def format_json(reports: list[Report], errors: list[ImageReadError]) -> str:
    """One document for the whole run; its schema is ``report.schema.json``."""
    import json

    document = {
        "tool": {"name": "qcow2check", "version": __version__},
        "accepted": not errors and all(r.accepted for r in reports),
        "images": [report.to_dict() for report in reports],
        "errors": [{"path": e.path, "message": e.reason} for e in errors],
    }
    return json.dumps(document, indent=2)
