"""Options and images shared by the pytest-benchmark suite in this folder.

The images are built by :mod:`build_image` and cached under
``$QCOW2CHECK_BENCH_DIR``. Their virtual size comes from ``--bench-size`` or
``$QCOW2CHECK_BENCH_SIZE`` (default 32MiB, so that a ``--benchmark-disable`` run in
CI takes seconds); run by hand with ``--bench-size 4GiB`` for figures that mean
something.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

import build_image
import pytest

from qcow2check.findings import ERROR, Finding, Report
from qcow2check.units import parse_size

SIZE_ENV = "QCOW2CHECK_BENCH_SIZE"
DEFAULT_SIZE = "32MiB"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-size",
        default=os.environ.get(SIZE_ENV, DEFAULT_SIZE),
        help=f"virtual size of the generated images (default ${SIZE_ENV}, else "
        f"{DEFAULT_SIZE})",
    )


@pytest.fixture(scope="session")
def bench_size(request: pytest.FixtureRequest) -> int:
    return parse_size(request.config.getoption("--bench-size"))


@pytest.fixture(scope="session")
def image(bench_size: int) -> Callable[..., Path]:
    """image(kind, cluster_bits=16, fill=1.0, size=None): a cached image's path."""

    def make(
        kind: str, cluster_bits: int = 16, fill: float = 1.0, size: int | None = None
    ) -> Path:
        return build_image.cached_image(kind, size or bench_size, cluster_bits, fill)

    return make


@pytest.fixture(scope="session")
def walk_available() -> None:
    """Skip the walk benchmarks until qcow2check.walk provides check_tables."""
    try:
        walk = import_module("qcow2check.walk")
    except ImportError as error:
        pytest.skip(f"qcow2check.walk cannot be imported: {error}")
    if not hasattr(walk, "check_tables"):
        pytest.skip("qcow2check.walk has no check_tables yet")


def _unexpected_errors(report: Report, allowed: set[str]) -> list[Finding]:
    return [
        finding
        for finding in report.findings
        if finding.severity == ERROR and finding.rule not in allowed
    ]


@pytest.fixture(scope="session")
def unexpected_errors() -> Callable[[Report, set[str]], list[Finding]]:
    """unexpected_errors(report, allowed): its error findings of other rules."""
    return _unexpected_errors
