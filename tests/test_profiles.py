"""Profiles, rule overrides and [tool.qcow2check] configuration."""

from __future__ import annotations

import io

import pytest
from click.testing import CliRunner

from qcow2check import validate
from qcow2check.cli import main

from .conftest import build_image, error_rules

ZSTD_AES_2TB = dict(
    incompatible_features=1 << 3,
    compression_type=1,
    crypt_method=1,
    size=2 * 10**12,
    l1_size=4000,
)


def check(data: bytes, **options):
    return validate(io.BytesIO(data), level="quick", **options)


def test_scaleway_profile_is_the_default():
    report = check(build_image(**ZSTD_AES_2TB))
    assert error_rules(report) == {"encrypted", "compression-type", "virtual-size"}


def test_openstack_profile_allows_encryption_zstd_and_large_volumes():
    report = check(build_image(**ZSTD_AES_2TB), profile="openstack")
    assert report.accepted
    assert error_rules(report) == set()


def test_openstack_profile_refuses_backing_files_and_unknown_features():
    report = check(
        build_image(backing_file=b"base.qcow2", incompatible_features=1 << 9),
        profile="openstack",
    )
    assert error_rules(report) == {"backing-chain", "unknown-feature"}


def test_openstack_profile_caps_the_file_size():
    # A stream whose reported size is over 1 TiB: only its head is ever read.
    class Huge(io.BytesIO):
        def seek(self, offset, whence=0):
            if whence == io.SEEK_END:
                return (1 << 40) + 1
            return super().seek(offset, whence)

    report = validate(Huge(build_image()), level="quick", profile="openstack")

    assert error_rules(report) == {"file-size"}


def test_structure_profile_checks_validity_only():
    image = build_image(
        backing_file=b"base",
        incompatible_features=1 << 1,
        **{k: v for k, v in ZSTD_AES_2TB.items() if k != "incompatible_features"},
    )
    report = check(image, profile="structure")
    assert error_rules(report) == {"corrupt-flag", "invalid-header"}


def test_ignore_and_warn_change_rules():
    image = build_image(crypt_method=1, size=500 * 10**6)

    assert error_rules(check(image, ignore=["encrypted"])) == {"virtual-size"}
    warned = check(image, warn=["encrypted", "virtual-size"])
    assert warned.accepted
    assert {f.severity for f in warned.findings if f.rule != "not-checked"} == {
        "warning"
    }


def test_unknown_rule_id_is_a_value_error():
    with pytest.raises(ValueError, match="no-such-rule"):
        check(build_image(), ignore=["no-such-rule"])


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with a 2 TB image, worked in from a subfolder."""
    (tmp_path / "huge.qcow2").write_bytes(build_image(size=2 * 10**12, l1_size=4000))
    subfolder = tmp_path / "images" / "nested"
    subfolder.mkdir(parents=True)
    monkeypatch.chdir(subfolder)
    return tmp_path


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_configuration_is_found_above_the_working_folder(project):
    image = str(project / "huge.qcow2")
    assert run("--quick", image).exit_code == 1

    (project / "pyproject.toml").write_text(
        '[tool.qcow2check]\nmax-size = "3TB"\nlevel = "quick"\n'
    )

    result = run(image)
    assert result.exit_code == 0, result.output
    assert "[not-checked]" in run("-v", image).output


def test_command_line_wins_over_configuration(project):
    (project / "pyproject.toml").write_text(
        '[tool.qcow2check]\nmax-size = "3TB"\nignore = ["virtual-size"]\n'
    )
    image = str(project / "huge.qcow2")

    assert run("--quick", "--max-size", "1TB", image).exit_code == 0
    assert (
        run("--quick", "--max-size", "1TB", "--ignore", "dirty", image).exit_code == 1
    )


def test_configuration_profile_and_format(project):
    (project / "pyproject.toml").write_text(
        '[tool.qcow2check]\nprofile = "openstack"\nformat = "json"\n'
    )
    result = run("--quick", str(project / "huge.qcow2"))
    assert result.exit_code == 0
    assert result.output.lstrip().startswith("{")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("colour = 'never'", "unknown keys in [tool.qcow2check]: colour"),
        ("max-size = '3 parsecs'", "max-size"),
        ("level = 'thorough'", "level must be one of"),
        ("profile = 'aws'", "profile"),
    ],
)
def test_bad_configuration_is_a_usage_error(project, table, message):
    (project / "pyproject.toml").write_text(f"[tool.qcow2check]\n{table}\n")
    result = run("--quick", str(project / "huge.qcow2"))
    assert result.exit_code == 2
    assert message in result.output


def test_a_pyproject_without_the_table_is_passed_over(project):
    (project / "images" / "pyproject.toml").write_text("[tool.other]\nx = 1\n")
    (project / "pyproject.toml").write_text('[tool.qcow2check]\nmax-size = "3TB"\n')
    assert run("--quick", str(project / "huge.qcow2")).exit_code == 0


def test_jobs_keep_the_order_of_the_images(tmp_path):
    paths = []
    for index in range(12):
        path = tmp_path / f"image-{index:02}.qcow2"
        path.write_bytes(build_image(crypt_method=index % 2))
        paths.append(str(path))

    result = run("--quick", "--jobs", "4", *paths)

    verdict_lines = [line for line in result.output.splitlines() if line[:1] != " "]
    assert [line.split(":")[0] for line in verdict_lines] == paths
    assert [("accepted" in line) for line in verdict_lines] == [
        index % 2 == 0 for index in range(12)
    ]
