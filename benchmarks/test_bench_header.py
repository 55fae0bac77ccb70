"""The header cluster: parse, QEMU's open-time checks and the import rules.

Run on whole images held in memory, so that no file system is involved; the target
is under 100 µs per image.
"""

from __future__ import annotations

import io

import build_image
import pytest

from qcow2check import validate
from qcow2check.findings import Report
from qcow2check.header import read_header
from qcow2check.image import ImageFile
from qcow2check.policy import check_import_rules

GIB = 1 << 30

# name: (kind, cluster_bits, virtual size); a fill of 0 keeps each file to its
# header, refcount structures and L1 table, as a fresh qemu-img create does.
IMAGES = {
    "64k": (build_image.PREALLOCATED, 16, 10 * GIB),
    "4k": (build_image.PREALLOCATED, 12, 10 * GIB),
    "2m": (build_image.PREALLOCATED, 21, 10 * GIB),
    "zstd-64k": (build_image.ZSTD, 16, 1 << 20),
}
# zstd is refused by the import rules, and a 1 MiB volume is below the minimum.
ALLOWED = {"compression-type", "virtual-size"}


def quick_validate(data: io.BytesIO) -> Report:
    return validate(data, level="quick")


def header_and_rules(data: io.BytesIO) -> Report:
    report = Report("<memory>", "quick")
    with ImageFile.wrap(data, "<memory>") as image:
        header = read_header(image, report)
    check_import_rules(header, report)
    return report


STEPS = {"validate-quick": quick_validate, "read-header+rules": header_and_rules}


@pytest.fixture(scope="module", params=sorted(IMAGES))
def image_bytes(request: pytest.FixtureRequest, image) -> io.BytesIO:
    kind, cluster_bits, size = IMAGES[request.param]
    path = image(kind, cluster_bits, fill=0.0, size=size)
    return io.BytesIO(path.read_bytes())


@pytest.mark.parametrize("step", sorted(STEPS))
def test_header(
    benchmark, image_bytes: io.BytesIO, step: str, unexpected_errors
) -> None:
    benchmark.extra_info["target_us"] = 100
    report = benchmark(STEPS[step], image_bytes)
    assert report.info.get("format") == "qcow2"
    assert unexpected_errors(report, ALLOWED) == []
