"""CI output: GitHub Actions workflow commands and SARIF 2.1.0 checked against the
standard's schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from qcow2check import RULES, __version__, validate
from qcow2check.ci_formats import artifact_uri, format_github, format_sarif
from qcow2check.errors import ImageReadError
from qcow2check.findings import Report
from qcow2check.layout import (
    QCOW2_INCOMPAT_COMPRESSION_BITNR,
    QCOW2_INCOMPAT_DIRTY_BITNR,
)

from .conftest import GiB, build_image

SARIF_SCHEMA = json.loads(
    (Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text()
)
MISSING = ImageReadError("missing.qcow2", "No such file or directory")


@pytest.fixture
def mixed(tmp_path, monkeypatch):
    """A report with an error (zstd), a warning (dirty) and an info (not-checked)
    finding, and one for an accepted image, both under relative paths."""
    monkeypatch.chdir(tmp_path)
    incompatible = (
        1 << QCOW2_INCOMPAT_DIRTY_BITNR | 1 << QCOW2_INCOMPAT_COMPRESSION_BITNR
    )
    Path("zstd-dirty.qcow2").write_bytes(
        build_image(incompatible_features=incompatible, compression_type=1)
    )
    Path("good.qcow2").write_bytes(build_image(size=GiB))
    return [
        validate("zstd-dirty.qcow2", level="quick"),
        validate("good.qcow2", level="quick"),
    ]


def report_with(path: str, *findings: tuple) -> Report:
    report = Report(path, "quick")
    for rule, message, offset, fix in findings:
        report.add(rule, message, offset=offset, fix=fix)
    return report


def unescape_github(text: str) -> str:
    return re.sub(r"%(25|0D|0A|3A|2C)", lambda m: chr(int(m.group(1), 16)), text)


def test_mixed_report_has_each_severity(mixed):
    severities = {f.rule: f.severity for f in mixed[0].findings}
    assert severities == {
        "compression-type": "error",
        "dirty": "warning",
        "not-checked": "info",
    }


def test_github_one_command_per_finding_and_per_unreadable_image(mixed):
    lines = format_github(mixed, [MISSING]).splitlines()

    assert len(lines) == 5
    zstd, dirty, zstd_info, good_info = (
        next(line for line in lines if f"{path},title=qcow2check {rule}::" in line)
        for path, rule in [
            ("zstd-dirty.qcow2", "compression-type"),
            ("zstd-dirty.qcow2", "dirty"),
            ("zstd-dirty.qcow2", "not-checked"),
            ("good.qcow2", "not-checked"),
        ]
    )
    assert zstd.startswith(
        "::error file=zstd-dirty.qcow2,title=qcow2check compression-type::"
        "The provided QCOW2 has an unsupported compression type"
    )
    assert "(at byte 0x68)%0Afix: qemu-img convert -f qcow2 -O qcow2 " in zstd
    assert dirty.startswith("::warning file=zstd-dirty.qcow2,")
    assert zstd_info.startswith("::notice file=zstd-dirty.qcow2,")
    assert good_info == (
        "::notice file=good.qcow2,title=qcow2check not-checked::"
        "the L1, L2, refcount and snapshot tables were not read (level quick)"
    )
    assert lines[-1] == (
        "::error file=missing.qcow2::cannot read the image: No such file or directory"
    )


def test_github_escapes_message_and_properties():
    path = "dir,1/a:b%20.qcow2"
    report = report_with(
        path, ("dirty", "100% sure\r\nsecond line: a, b", 79, "qemu-img check x")
    )

    (line,) = format_github([report], []).splitlines()

    head, message = line.split("::")[1:]
    assert head == "warning file=dir%2C1/a%3Ab%2520.qcow2,title=qcow2check dirty"
    assert message == (
        "100%25 sure%0D%0Asecond line: a, b (at byte 0x4f)%0Afix: qemu-img check x"
    )
    assert unescape_github(head.split(",")[0]) == f"warning file={path}"


def test_github_prints_nothing_for_nothing():
    assert format_github([], []) == ""


def validate_sarif(text: str) -> dict:
    log = json.loads(text)
    # FormatChecker() holds every format jsonschema can check, including the
    # uri-reference of artifactLocation.uri, which draft-04 itself does not name.
    jsonschema.Draft4Validator(
        SARIF_SCHEMA, format_checker=jsonschema.FormatChecker()
    ).validate(log)
    return log


def test_uri_reference_is_really_checked():
    # jsonschema checks uri-reference only with this package (the test extra).
    pytest.importorskip("rfc3986_validator")
    with pytest.raises(jsonschema.ValidationError):
        validate_sarif(
            json.dumps(
                {
                    "version": "2.1.0",
                    "runs": [
                        {
                            "tool": {"driver": {"name": "x"}},
                            "artifacts": [{"location": {"uri": "a b%zz"}}],
                        }
                    ],
                }
            )
        )


def test_sarif_validates_against_the_schema(mixed):
    validate_sarif(format_sarif(mixed, [MISSING]))


def test_sarif_validates_with_no_images():
    log = validate_sarif(format_sarif([], []))
    assert log["runs"][0]["results"] == []
    assert log["runs"][0]["invocations"][0]["executionSuccessful"] is True


def test_sarif_driver_lists_every_rule_with_its_level(mixed):
    driver = json.loads(format_sarif(mixed, []))["runs"][0]["tool"]["driver"]

    assert driver["name"] == "qcow2check"
    assert driver["version"] == __version__
    assert [rule["id"] for rule in driver["rules"]] == list(RULES)
    levels = {r["id"]: r["defaultConfiguration"]["level"] for r in driver["rules"]}
    assert levels["encrypted"] == "error"
    assert levels["dirty"] == "warning"
    assert levels["not-checked"] == "note"
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] == RULES[rule["id"]].summary
        assert rule["help"]["text"].startswith(RULES[rule["id"]].summary)


def test_sarif_results_carry_rule_level_location_and_fix(mixed):
    run = json.loads(format_sarif(mixed, []))["runs"][0]
    results = {result["ruleId"]: result for result in run["results"]}

    zstd = results["compression-type"]
    assert run["tool"]["driver"]["rules"][zstd["ruleIndex"]]["id"] == "compression-type"
    assert zstd["level"] == "error"
    location = zstd["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {"uri": "zstd-dirty.qcow2"}
    assert location["region"] == {"byteOffset": 104, "byteLength": 1}
    fix = "qemu-img convert -f qcow2 -O qcow2 zstd-dirty.qcow2 zstd-dirty-zlib.qcow2"
    assert zstd["properties"] == {"fix": fix}
    assert zstd["message"]["text"].endswith(f"\nfix: {fix}")

    assert results["dirty"]["level"] == "warning"
    assert [r["level"] for r in run["results"] if r["ruleId"] == "not-checked"] == [
        "note",
        "note",
    ]
    assert "region" not in results["not-checked"]["locations"][0]["physicalLocation"]
    assert "properties" not in results["not-checked"]


def test_sarif_unreadable_image_is_a_failed_invocation(mixed):
    invocation = json.loads(format_sarif(mixed, [MISSING]))["runs"][0]["invocations"][0]

    assert invocation["executionSuccessful"] is False
    (notification,) = invocation["toolExecutionNotifications"]
    assert notification["level"] == "error"
    assert notification["message"]["text"] == (
        "cannot read the image: No such file or directory"
    )
    location = notification["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": "missing.qcow2"}


@pytest.mark.parametrize(
    "path, uri",
    [
        ("disk.qcow2", "disk.qcow2"),
        ("images/disk 1.qcow2", "images/disk%201.qcow2"),
        ("c:disk.qcow2", "c%3Adisk.qcow2"),
        ("100%.qcow2", "100%25.qcow2"),
        ("/srv/images/disk #1.qcow2", "file:///srv/images/disk%20%231.qcow2"),
    ],
)
def test_artifact_uri(path, uri):
    assert artifact_uri(path) == uri


def test_sarif_with_odd_paths_validates():
    reports = [
        report_with(path, ("dirty", "x", 79, None))
        for path in ("a b/c:d%.qcow2", "/abs/with space.qcow2", "ü.qcow2")
    ]
    validate_sarif(format_sarif(reports, [ImageReadError("x y:z", "gone")]))
