"""Reports for CI systems: GitHub Actions workflow commands and SARIF 2.1.0.

``format_github`` prints one workflow command per finding, which GitHub shows as an
annotation on the image file in the run summary and the pull request. ``format_sarif``
writes one SARIF log for code scanning (``github/codeql-action/upload-sarif``) and
other SARIF viewers; its layout follows the OASIS SARIF 2.1.0 standard and is tested
against the standard's JSON schema.
"""

from __future__ import annotations

import json
import os
from pathlib import PurePath
from urllib.parse import quote

from . import __version__
from .errors import ImageReadError
from .findings import ERROR, INFO, RULES, WARNING, Finding, Report

TOOL_NAME = "qcow2check"
SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/"
    "sarif-schema-2.1.0.json"
)

GITHUB_COMMANDS = {ERROR: "error", WARNING: "warning", INFO: "notice"}
SARIF_LEVELS = {ERROR: "error", WARNING: "warning", INFO: "note"}


def format_github(reports: list[Report], errors: list[ImageReadError]) -> str:
    """One GitHub Actions workflow command per finding and per unreadable image."""
    lines = []
    for report in reports:
        for finding in report.findings:
            command = GITHUB_COMMANDS[finding.severity]
            properties = _github_properties(
                file=report.path, title=f"{TOOL_NAME} {finding.rule}"
            )
            message = _github_data(_full_message(finding))
            lines.append(f"::{command} {properties}::{message}")
    for error in errors:
        properties = _github_properties(file=error.path)
        message = _github_data(f"cannot read the image: {error.reason}")
        lines.append(f"::error {properties}::{message}")
    return "\n".join(lines)


def _github_data(text: str) -> str:
    # The escapes of GitHub's own toolkit (actions/toolkit, command.ts): the runner
    # decodes exactly these, so a message keeps its line breaks and percent signs.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _github_properties(**properties: str) -> str:
    # A property value ends at a comma and the properties end at "::", so both
    # characters are escaped in values, on top of the message escapes.
    return ",".join(
        f"{name}={_github_data(value).replace(':', '%3A').replace(',', '%2C')}"
        for name, value in properties.items()
    )


def _full_message(finding: Finding) -> str:
    message = finding.message
    if finding.offset is not None:
        message += f" (at byte {finding.offset:#x})"
    if finding.fix:
        message += f"\nfix: {finding.fix}"
    return message


def format_sarif(reports: list[Report], errors: list[ImageReadError]) -> str:
    """One SARIF 2.1.0 log with one run: every rule, every finding as a result, and
    every unreadable image as an error notification of the invocation."""
    rule_ids = list(RULES)
    run = {
        "tool": {
            "driver": {
                "name": TOOL_NAME,
                "version": __version__,
                "semanticVersion": __version__,
                "rules": [_sarif_rule(rule_id) for rule_id in rule_ids],
            }
        },
        "invocations": [
            {
                # SARIF's "successful" means the tool ran to the end, whatever it
                # found: only an image it could not read makes the run fail.
                "executionSuccessful": not errors,
                "toolExecutionNotifications": [
                    _sarif_notification(error) for error in errors
                ],
            }
        ],
        "results": [
            _sarif_result(report, finding, rule_ids.index(finding.rule))
            for report in reports
            for finding in report.findings
        ],
    }
    log = {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}
    return json.dumps(log, indent=2)


def _sarif_rule(rule_id: str) -> dict:
    rule = RULES[rule_id]
    return {
        "id": rule.id,
        "shortDescription": {"text": rule.summary},
        "help": {
            "text": f"{rule.summary} Each result says what was found and where, "
            "and gives the qemu-img command that fixes it when there is one."
        },
        "defaultConfiguration": {"level": SARIF_LEVELS[rule.severity]},
    }


def _sarif_result(report: Report, finding: Finding, rule_index: int) -> dict:
    physical_location: dict = {"artifactLocation": {"uri": artifact_uri(report.path)}}
    if finding.offset is not None:
        # A byte region, as the image is a binary file: it has no lines to point at.
        physical_location["region"] = {"byteOffset": finding.offset, "byteLength": 1}
    result = {
        "ruleId": finding.rule,
        "ruleIndex": rule_index,
        "level": SARIF_LEVELS[finding.severity],
        "message": {"text": _full_message(finding)},
        "locations": [{"physicalLocation": physical_location}],
    }
    if finding.fix:
        # A SARIF "fix" object describes byte replacements in the artifact, which a
        # qemu-img command line is not; the command goes in the property bag.
        result["properties"] = {"fix": finding.fix}
    return result


def _sarif_notification(error: ImageReadError) -> dict:
    return {
        "level": "error",
        "message": {"text": f"cannot read the image: {error.reason}"},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": {"uri": artifact_uri(error.path)}
                }
            }
        ],
    }


def artifact_uri(path: str) -> str:
    """A URI reference for an image path: relative paths stay relative (code
    scanning resolves them against the checkout), absolute ones become file URIs."""
    if os.path.isabs(path):
        return PurePath(os.path.abspath(path)).as_uri()
    # quote() leaves "/" alone and escapes ":", so a first segment such as "c:x"
    # cannot be read as a URI scheme.
    return quote(path.replace(os.sep, "/"))
