"""The command line: verdicts, exit status, options, JSON output and its schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from qcow2check import __version__
from qcow2check.cli import main

from .conftest import build_image

SCHEMA = json.loads(
    resources.files("qcow2check").joinpath("report.schema.json").read_text()
)


@pytest.fixture
def images(tmp_path):
    """An accepted image, a rejected (AES-encrypted) one, and a 2 TB one."""
    paths = {
        "good": build_image(),
        "encrypted": build_image(crypt_method=1),
        "huge": build_image(size=2 * 10**12, l1_size=4000),
    }
    for name, data in paths.items():
        (tmp_path / f"{name}.qcow2").write_bytes(data)
    return {name: str(tmp_path / f"{name}.qcow2") for name in paths}


def run(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def test_accepted_image_exits_0(images):
    result = run("--quick", images["good"])
    assert result.exit_code == 0
    assert result.output.startswith(f"{images['good']}: accepted")


def test_rejected_image_exits_1_with_finding_and_fix(images):
    result = run("--quick", images["encrypted"])

    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{images['encrypted']}: rejected (1 error)")
    assert "[encrypted] at 0x20: The provided QCOW2 file is encrypted" in lines[1]
    assert lines[2].strip().startswith("fix: qemu-img convert --object secret")


def test_every_image_is_checked_in_order(images):
    result = run("--quick", images["encrypted"], images["good"], images["huge"])

    assert result.exit_code == 1
    verdicts = [
        line
        for line in result.output.splitlines()
        if ": " in line and not line.startswith(" ")
    ]
    assert [v.split(":")[0] for v in verdicts] == [
        images["encrypted"],
        images["good"],
        images["huge"],
    ]


def test_unreadable_image_exits_2_and_the_others_are_still_checked(images, tmp_path):
    missing = str(tmp_path / "missing.qcow2")

    result = CliRunner().invoke(main, ["--quick", missing, images["good"]])

    assert result.exit_code == 2
    assert f"qcow2check: error: {missing}: No such file or directory" in result.output
    assert f"{images['good']}: accepted" in result.output


def test_directory_is_an_error_of_the_run(tmp_path):
    result = run("--quick", str(tmp_path))
    assert result.exit_code == 2
    assert "is a directory" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "1000000001"], "not a multiple of 512"),
        (["--min-size", "1G"], "unknown unit 'G'"),
        (["--min-size", "2TB", "--max-size", "1TB"], "above --max-size"),
        (["--format", "xml"], "xml"),
        ([], "Missing argument"),
    ],
)
def test_usage_errors_exit_2(images, args, message):
    image_args = [images["good"]] if args else []
    result = CliRunner().invoke(main, [*args, *image_args])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(
    ("args", "exit_code"),
    [
        (["--max-size", "2TB"], 0),
        (["--max-size", "2000GB"], 0),
        (["--max-size", "1TiB"], 1),
        (["--max-size", "1999999999488"], 1),
    ],
)
def test_size_bounds_take_bytes_or_units(images, args, exit_code):
    assert run("--quick", *args, images["huge"]).exit_code == exit_code


def test_requested_size_is_checked_against_the_bounds(images):
    assert run("--quick", "--size", "2TB", images["good"]).exit_code == 1
    assert run("--quick", "--size", "2GB", images["good"]).exit_code == 0


def test_quiet_prints_only_rejected_images(images):
    result = run("--quick", "-q", images["good"], images["encrypted"])
    assert images["good"] not in result.output
    assert images["encrypted"] in result.output
    assert run("--quick", "-qq", images["encrypted"]).output == ""


def test_verbose_shows_info_findings_and_what_was_parsed(images):
    result = run("--quick", "-v", images["good"])
    assert "[not-checked]" in result.output
    assert "virtual_size: 1073741824" in result.output


@pytest.mark.parametrize(("color", "escapes"), [("always", True), ("never", False)])
def test_color_option(images, color, escapes):
    result = CliRunner().invoke(
        main, ["--quick", "--color", color, images["encrypted"]], color=True
    )
    assert ("\x1b[" in result.output) is escapes


def test_json_output_follows_its_schema(images, tmp_path):
    missing = str(tmp_path / "missing.qcow2")

    result = CliRunner().invoke(
        main,
        ["--quick", "--format", "json", images["good"], images["encrypted"], missing],
    )

    assert result.exit_code == 2
    document = json.loads(result.stdout)
    jsonschema.validate(document, SCHEMA)
    assert document["accepted"] is False
    good, encrypted = document["images"]
    assert good["accepted"] is True and encrypted["accepted"] is False
    assert encrypted["findings"][0] == {
        "rule": "encrypted",
        "severity": "error",
        "message": "The provided QCOW2 file is encrypted (AES-CBC, crypt_method 1)",
        "offset": 32,
        "fix": encrypted["findings"][0]["fix"],
    }
    assert document["errors"] == [
        {"path": missing, "message": "No such file or directory"}
    ]


def test_schema_rejects_a_finding_without_its_rule(images):
    document = json.loads(
        run("--quick", "--format", "json", images["encrypted"]).stdout
    )
    del document["images"][0]["findings"][0]["rule"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, SCHEMA)


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert __version__ in result.output


def test_python_dash_m_runs_the_same_command(images):
    result = subprocess.run(
        [sys.executable, "-m", "qcow2check", "--quick", images["encrypted"]],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 1
    assert "[encrypted]" in result.stdout


def test_github_format_annotates_each_finding(images):
    result = run("--quick", "--format", "github", images["encrypted"], images["good"])

    assert result.exit_code == 1
    lines = result.output.splitlines()
    errors = [line for line in lines if line.startswith("::error ")]
    assert len(errors) == 1
    assert f"file={images['encrypted']}" in errors[0]
    assert "The provided QCOW2 file is encrypted" in errors[0]


def test_sarif_format_has_one_result_per_finding(images):
    result = run("--quick", "--format", "sarif", images["encrypted"], images["huge"])

    document = json.loads(result.output)
    results = document["runs"][0]["results"]
    assert sorted(r["ruleId"] for r in results if r["level"] == "error") == [
        "encrypted",
        "virtual-size",
    ]


def test_library_debug_messages_only_with_two_v(images):
    quiet = CliRunner().invoke(main, ["--quick", images["good"]])
    chatty = CliRunner().invoke(main, ["--quick", "-vv", images["good"]])

    assert "qcow2check: DEBUG:" not in quiet.output
    assert "qcow2check: DEBUG:" in chatty.output


def _stderr_of_cli(args, tty: bool) -> str:
    import pty

    if not tty:
        result = subprocess.run(
            [sys.executable, "-m", "qcow2check", *args], capture_output=True
        )
        return result.stderr.decode()
    reader, writer = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "qcow2check", *args],
        stdout=subprocess.DEVNULL,
        stderr=writer,
    )
    os.close(writer)
    chunks = []
    while True:
        try:
            chunk = os.read(reader, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=60)
    os.close(reader)
    return b"".join(chunks).decode()


def test_progress_bar_only_on_a_terminal():
    sample = str(Path(__file__).parent.parent / "samples" / "ok-data.qcow2")

    assert "100.0% " in _stderr_of_cli([sample], tty=True)
    assert _stderr_of_cli([sample], tty=False) == ""
    assert _stderr_of_cli(["--quick", sample], tty=True) == ""
