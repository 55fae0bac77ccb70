"""Profiles: which rules apply, for which import service.

``scaleway`` (the default) mirrors Scaleway's snapshot import. ``openstack`` mirrors
what OpenStack's image service refuses (its format inspector's safety checks and its
default image size cap); it allows encryption and zstd. ``structure`` checks only
that the file is valid QCOW2 that QEMU opens and reads.
"""

from __future__ import annotations

from .findings import RULES, WARNING, Report

# Rules about the file being valid QCOW2, whatever service imports it.
STRUCTURE_RULES = frozenset(
    {
        "not-qcow2",
        "unsupported-version",
        "invalid-header",
        "unknown-feature",
        "corrupt-flag",
        "dirty",
        "l1-table",
        "l2-table",
        "refcount",
        "leaked-clusters",
        "overlap",
        "compressed-cluster",
        "snapshot-table",
        "bitmap",
        "not-checked",
    }
)

# glance/common/config.py image_size_cap: 1 TiB by default.
OPENSTACK_IMAGE_SIZE_CAP = 1 << 40


class Profile:
    """A named set of rules, and the file size cap some services add."""

    __slots__ = ("name", "rules", "max_file_size")

    def __init__(
        self, name: str, rules: frozenset[str], max_file_size: int | None = None
    ) -> None:
        unknown = rules - RULES.keys()
        assert not unknown, unknown
        self.name = name
        self.rules = rules
        self.max_file_size = max_file_size


PROFILES = {
    profile.name: profile
    for profile in (
        Profile("scaleway", frozenset(RULES) - {"file-size"}),
        Profile(
            "openstack",
            STRUCTURE_RULES | {"backing-chain", "data-file", "file-size"},
            max_file_size=OPENSTACK_IMAGE_SIZE_CAP,
        ),
        Profile("structure", STRUCTURE_RULES),
    )
}
DEFAULT_PROFILE = "scaleway"


def apply_profile(
    report: Report,
    profile: Profile,
    ignore: frozenset[str] = frozenset(),
    warn: frozenset[str] = frozenset(),
) -> None:
    """Drop the findings of rules the profile or ``ignore`` leaves out, and make
    those named in ``warn`` warnings."""
    size = report.info.get("file_size")
    if profile.max_file_size is not None and size and size > profile.max_file_size:
        report.add(
            "file-size",
            f"the file is {size} bytes, above the {profile.name} image size cap of "
            f"{profile.max_file_size} bytes",
            offset=None,
        )

    kept = []
    for finding in report.findings:
        if finding.rule not in profile.rules or finding.rule in ignore:
            continue
        if finding.rule in warn and finding.severity == "error":
            finding.severity = WARNING
        kept.append(finding)
    report.findings[:] = kept
