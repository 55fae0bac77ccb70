"""The metadata walk (validate at level "metadata") on generated images.

One image per cluster size and table fill: 0 % (no L2 table), 50 % (every other
guest cluster allocated, so every L2 table is half full) and 100 % (metadata
preallocation). The virtual size is ``--bench-size``.
"""

from __future__ import annotations

import build_image
import pytest

from qcow2check import validate

CLUSTER_BITS = {"4k": 12, "64k": 16}
FILLS = {"0pct": 0.0, "50pct": 0.5, "100pct": 1.0}
# The generated images are sized for speed, not for the import's 1 GB minimum.
ALLOWED = {"virtual-size"}


@pytest.mark.usefixtures("walk_available")
@pytest.mark.parametrize("fill", FILLS.values(), ids=FILLS.keys())
@pytest.mark.parametrize("cluster_bits", CLUSTER_BITS.values(), ids=CLUSTER_BITS)
def test_metadata_walk(
    benchmark, image, unexpected_errors, cluster_bits: int, fill: float
) -> None:
    path = image(build_image.PREALLOCATED, cluster_bits, fill)
    report = benchmark(validate, path, level="metadata")
    assert unexpected_errors(report, ALLOWED) == []
