"""Time qcow2check against qemu-img on the same images, in one interleaved run.

Each comparison runs two commands as subprocesses, alternately (A B A B ...), so
that a noisy neighbour slows both alike; it reports the median wall time of each,
their ratio, and each one's peak resident set size (``/usr/bin/time -f %M``, else
``ru_maxrss`` from ``os.wait4``). One untimed warm-up run of each first puts the
image's metadata in the page cache for both.

    python benchmarks/compare.py                 # the full set, 5 repetitions
    python benchmarks/compare.py --markdown      # the table for the README
    python benchmarks/compare.py --smoke         # tiny images, 1 repetition

A command that fails (non-zero exit where none is expected, a traceback, no
report) is named with its stderr, and its comparison is marked ERROR; the others
still run. Exit status: 0 every target met, 1 a target missed, 2 a command failed.
"""

from __future__ import annotations

import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import build_image
import click

ROOT = build_image.ROOT
GIB = 1 << 30
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
NAMES = ("metadata-a", "metadata-b", "deep-zlib", "deep-zstd", "quick-startup")


@dataclass
class Command:
    """One side of a comparison: what runs, and how to tell that it worked."""

    argv: list[str]
    # Returns why the run failed, or None: (exit code, stdout, stderr) -> reason.
    failed: Callable[[int, str, str], str | None]
    # A file the command writes, deleted before and after every run.
    output: Path | None = None

    def __str__(self) -> str:
        return " ".join(str(part) for part in self.argv)


@dataclass
class Run:
    seconds: float
    max_rss: int  # bytes
    error: str | None = None
    stdout: str = ""


@dataclass
class Comparison:
    name: str
    image: str
    ours: Command
    reference: Command
    time_target: float
    rss_target: float | None = None
    ours_runs: list[Run] = field(default_factory=list)
    reference_runs: list[Run] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        for label, runs, command in (
            ("qcow2check", self.ours_runs, self.ours),
            ("reference", self.reference_runs, self.reference),
        ):
            for run in runs:
                if run.error:
                    return f"{label} command failed: {command}\n    {run.error}"
        return None


def run_once(command: Command, env: dict[str, str]) -> Run:
    """Run ``command`` once; its wall time and the peak RSS of the process."""
    if command.output is not None:
        command.output.unlink(missing_ok=True)
    argv = [str(part) for part in command.argv]
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as rss,
    ):
        if TIME:
            # A child's ru_maxrss starts at its parent's high-water mark (Linux
            # keeps it across fork and exec), and this process holds numpy and
            # the images' tables: let /usr/bin/time, a small process, be the
            # parent instead.
            argv = [TIME, "-f", "%M", "-o", rss.name, *argv]
        start = time.perf_counter()
        try:
            process = subprocess.Popen(
                argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env
            )
        except OSError as error:
            return Run(0.0, 0, f"cannot start: {error}")
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        # wait4 reaped it: tell Popen, or it would look for the process again.
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
        # Both in KiB; /usr/bin/time writes "Command exited with non-zero
        # status N" before the figure when the command fails.
        rss_lines = rss.read().split()
        max_rss = int(rss_lines[-1]) if TIME and rss_lines else usage.ru_maxrss
    if command.output is not None:
        command.output.unlink(missing_ok=True)
    error = command.failed(process.returncode, stdout, stderr)
    return Run(seconds, max_rss * 1024, error, stdout)


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) or "(no output)"


def exit_zero(code: int, stdout: str, stderr: str) -> str | None:
    if code != 0:
        return f"exit status {code}: {_last_lines(stderr or stdout)}"
    return None


def qcow2check_ran(code: int, stdout: str, stderr: str) -> str | None:
    """Exit 0 (accepted) and 1 (findings) both mean the check ran to the end."""
    if code not in (0, 1) or "Traceback" in stderr or not stdout.strip():
        return f"exit status {code}: {_last_lines(stderr or stdout)}"
    return None


def qcow2check_json(code: int, stdout: str, stderr: str) -> str | None:
    reason = qcow2check_ran(code, stdout, stderr)
    if reason is None:
        try:
            json.loads(stdout)
        except json.JSONDecodeError as error:
            reason = f"the output is not JSON ({error}): {_last_lines(stdout)}"
    return reason


def findings_of(report: object) -> list[dict]:
    """Every finding in a JSON report, whatever holds the list of reports."""
    if isinstance(report, list):
        return [found for item in report for found in findings_of(item)]
    if not isinstance(report, dict):
        return []
    found = [f for f in report.get("findings", []) if isinstance(f, dict)]
    for key, value in report.items():
        if key != "findings" and isinstance(value, (dict, list)):
            found += findings_of(value)
    return found


def qcow2check_argv() -> list[str]:
    """The installed entry point, else ``python -m qcow2check`` from this checkout."""
    installed = shutil.which("qcow2check")
    return [installed] if installed else [sys.executable, "-m", "qcow2check"]


def comparisons(smoke: bool, names: tuple[str, ...] = ()) -> list[Comparison]:
    """The comparisons named (all by default), their images built or cached."""
    if smoke:
        sizes = {"a": 64 << 20, "b": 64 << 20, "c": 8 << 20}
    else:
        sizes = {"a": 1 << 40, "b": 64 * GIB, "c": 1 * GIB}
    selected = set(names or NAMES)
    qcow2check = qcow2check_argv()

    def image(kind: str, size: int, cluster_bits: int) -> Path:
        return build_image.cached_image(
            kind,
            size,
            cluster_bits,
            on_build=lambda path: click.echo(f"building {path}, once", err=True),
        )

    found = []
    for name, label, size, cluster_bits, target in (
        ("metadata-a", "(a)", sizes["a"], 16, 0.7),
        ("metadata-b", "(b)", sizes["b"], 12, 0.5),
    ):
        if name in selected:
            path = image(build_image.PREALLOCATED, size, cluster_bits)
            found.append(
                Comparison(
                    name,
                    f"{label} {_size(size)} preallocated, "
                    f"{(1 << cluster_bits) >> 10} KiB clusters",
                    Command([*qcow2check, "--format", "json", path], qcow2check_json),
                    Command(["qemu-img", "check", path], exit_zero),
                    time_target=target,
                    rss_target=2.0,
                )
            )
    raw_out = build_image.bench_dir() / "convert-out.raw"
    for compression in (build_image.ZLIB, build_image.ZSTD):
        if f"deep-{compression}" in selected:
            path = image(compression, sizes["c"], 16)
            found.append(
                Comparison(
                    f"deep-{compression}",
                    f"(c) {_size(sizes['c'])} of text, {compression}, 64 KiB clusters",
                    Command([*qcow2check, "--deep", path], qcow2check_ran),
                    Command(
                        ["qemu-img", "convert", "-O", "raw", path, raw_out],
                        exit_zero,
                        output=raw_out,
                    ),
                    time_target=0.5,
                )
            )
    if "quick-startup" in selected:
        path = image(build_image.PREALLOCATED, 64 << 20, 16)
        found.append(
            Comparison(
                "quick-startup",
                f"{_size(64 << 20)} image, header only",
                Command([*qcow2check, "--quick", path], qcow2check_ran),
                Command([sys.executable, "-c", "import click, construct"], exit_zero),
                time_target=1.3,
            )
        )
    return found


def revision(root: Path) -> str:
    """Which qcow2check is measured: the commit of ``root`` and whether it is dirty."""
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "qcow2check"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{root} (not a git checkout)"
    return f"{root} at {commit}" + (" with uncommitted changes" if dirty else "")


def _size(nbytes: int) -> str:
    for unit, factor in (("TiB", 1 << 40), ("GiB", GIB), ("MiB", 1 << 20)):
        if nbytes >= factor:
            return f"{nbytes / factor:g} {unit}"
    return f"{nbytes} B"


def measure(
    selected: list[Comparison], repeat: int, warmup: int, progress: bool
) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")])
    )
    # An installed package has its bytecode compiled; the checkout measured here
    # must have it too, or every run would pay for compiling it from source.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    compileall.compile_dir(ROOT / "qcow2check", quiet=1)
    for comparison in selected:
        for index in range(warmup + repeat):
            ours = run_once(comparison.ours, env)
            reference = run_once(comparison.reference, env)
            if progress:
                run = "warm-up" if index < warmup else f"run {index + 1 - warmup}"
                click.echo(
                    f"  {comparison.name} {run}: "
                    f"{ours.seconds:.3f} s vs {reference.seconds:.3f} s",
                    err=True,
                )
            if index >= warmup or ours.error or reference.error:
                comparison.ours_runs.append(ours)
                comparison.reference_runs.append(reference)
            if ours.error or reference.error:
                break


def _median(runs: list[Run], attribute: str) -> float:
    return statistics.median(getattr(run, attribute) for run in runs)


def rows(selected: list[Comparison]) -> list[dict[str, str]]:
    table = []
    for comparison in selected:
        row = {
            "comparison": comparison.name,
            "image": comparison.image,
            "qcow2check s": "-",
            "reference s": "-",
            "ratio": "-",
            "target": f"≤ {comparison.time_target:g}",
            "qcow2check RSS MiB": "-",
            "reference RSS MiB": "-",
            "RSS ratio": "-",
            "RSS target": "-"
            if comparison.rss_target is None
            else f"≤ {comparison.rss_target:g}",
            "result": "ERROR",
        }
        if comparison.error is None and comparison.ours_runs:
            ours = _median(comparison.ours_runs, "seconds")
            reference = _median(comparison.reference_runs, "seconds")
            ours_rss = _median(comparison.ours_runs, "max_rss")
            reference_rss = _median(comparison.reference_runs, "max_rss")
            ratio, rss_ratio = ours / reference, ours_rss / reference_rss
            met = ratio <= comparison.time_target and (
                comparison.rss_target is None or rss_ratio <= comparison.rss_target
            )
            row.update(
                {
                    "qcow2check s": f"{ours:.3f}",
                    "reference s": f"{reference:.3f}",
                    "ratio": f"{ratio:.2f}",
                    "qcow2check RSS MiB": f"{ours_rss / (1 << 20):.0f}",
                    "reference RSS MiB": f"{reference_rss / (1 << 20):.0f}",
                    "RSS ratio": f"{rss_ratio:.2f}",
                    "result": "PASS" if met else "FAIL",
                }
            )
        table.append(row)
    return table


def format_text(table: list[dict[str, str]]) -> str:
    columns = list(table[0])
    widths = {c: max(len(c), *(len(row[c]) for row in table)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines.append("  ".join("-" * widths[c] for c in columns))
    lines += ["  ".join(row[c].ljust(widths[c]) for c in columns) for row in table]
    return "\n".join(lines)


def format_markdown(table: list[dict[str, str]]) -> str:
    columns = list(table[0])
    lines = ["| " + " | ".join(columns) + " |"]
    lines.append("|" + "|".join(" --- " for _ in columns) + "|")
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in table]
    return "\n".join(lines)


def _findings_note(comparison: Comparison) -> str | None:
    if not comparison.ours_runs or comparison.error:
        return None
    try:
        report = json.loads(comparison.ours_runs[-1].stdout)
    except json.JSONDecodeError:
        return None
    rules = sorted({f.get("rule", "?") for f in findings_of(report)})
    return f"{comparison.name}: qcow2check findings: {', '.join(rules) or 'none'}"


@click.command()
@click.option("--repeat", "-n", default=5, show_default=True, help="Timed runs.")
@click.option("--warmup", default=1, show_default=True, help="Untimed runs first.")
@click.option("--smoke", is_flag=True, help="Tiny images, one run, no warm-up.")
@click.option("--markdown", is_flag=True, help="Print the table in Markdown.")
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(NAMES),
    help="Run only this comparison (repeatable).",
)
@click.option("--quiet", "-q", is_flag=True, help="No per-run progress on stderr.")
def main(
    repeat: int, warmup: int, smoke: bool, markdown: bool, only: tuple, quiet: bool
) -> None:
    """Time qcow2check against qemu-img and print medians, ratios and peak RSS."""
    if smoke:
        repeat, warmup = 1, 0
    if shutil.which("qemu-img") is None:
        raise click.ClickException("qemu-img is not installed")
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    selected = comparisons(smoke, only)
    measure(selected, repeat, warmup, progress=not quiet)

    table = rows(selected)
    click.echo(format_markdown(table) if markdown else format_text(table))
    click.echo(
        f"\n{started}; median of {repeat} run(s) each, interleaved, after {warmup} "
        "warm-up run(s); ratio = qcow2check / reference"
        + ("; smoke run: the figures mean nothing" if smoke else "")
    )
    click.echo(f"qcow2check: {' '.join(qcow2check_argv())}, code in {revision(ROOT)}")
    for comparison in selected:
        note = _findings_note(comparison)
        if note:
            click.echo(note)
    click.echo("\ncommands:")
    for comparison in selected:
        click.echo(f"  {comparison.name}: {comparison.ours}")
        click.echo(f"  {' ' * len(comparison.name)}  vs {comparison.reference}")
    errors = [c.error for c in selected if c.error]
    for error in errors:
        click.echo(f"\nERROR {error}", err=True)
    if errors:
        sys.exit(2)
    if any(row["result"] != "PASS" for row in table):
        sys.exit(1)


if __name__ == "__main__":
    main()
