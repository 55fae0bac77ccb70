"""Every file in samples/ gets the verdict and rules its README table documents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qcow2check import validate

from .conftest import error_rules

SAMPLES = Path(__file__).parent.parent / "samples"
ROW = re.compile(r"^\| `(?P<file>[^`]+)` \|(?P<verdict>[^|]+)\|(?P<rules>[^|]*)\|")


def documented_samples() -> list[tuple[str, str, set[str]]]:
    rows = []
    for line in (SAMPLES / "README.md").read_text().splitlines():
        match = ROW.match(line)
        if match and match["verdict"].strip() in ("accepted", "rejected"):
            rules = set(re.findall(r"`([a-z0-9-]+)`", match["rules"]))
            rows.append((match["file"], match["verdict"].strip(), rules))
    return rows


def test_the_table_lists_every_sample():
    listed = {row[0] for row in documented_samples()}
    auxiliary = {"backing-base.raw", "data-file.raw"}
    on_disk = {
        path.name
        for path in SAMPLES.iterdir()
        if path.suffix not in (".md", ".sh") and not path.name.startswith(".")
    }
    assert listed == on_disk - auxiliary


@pytest.mark.parametrize(
    ("name", "verdict", "rules"), documented_samples(), ids=lambda v: str(v)
)
def test_sample_gets_its_documented_verdict(name, verdict, rules):
    report = validate(SAMPLES / name)

    assert ("accepted" if report.accepted else "rejected") == verdict
    assert rules <= error_rules(report)
