"""The ``qcow2check`` command: check images, print verdicts, exit 0, 1 or 2."""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import ImageReadError
from .policy import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE
from .units import parse_size
from .validate import DEEP, METADATA, QUICK, validate

EXIT_ACCEPTED = 0
EXIT_REJECTED = 1
EXIT_ERROR = 2


class SizeType(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


SIZE = SizeType()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option(
    "--quick",
    "level",
    flag_value=QUICK,
    help="Read only the header cluster (fast; for pre-commit hooks).",
)
@click.option(
    "--metadata",
    "level",
    flag_value=METADATA,
    default=True,
    help="Also walk every table (the default).",
)
@click.option(
    "--deep", "level", flag_value=DEEP, help="Also decode every compressed cluster."
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--min-size",
    type=SIZE,
    default=DEFAULT_MIN_SIZE,
    show_default="1GB",
    help="Smallest accepted volume size: bytes, or a unit (GB, GiB, TB, TiB).",
)
@click.option(
    "--max-size",
    type=SIZE,
    default=DEFAULT_MAX_SIZE,
    show_default="1TB",
    help="Largest accepted volume size: bytes, or a unit (GB, GiB, TB, TiB).",
)
@click.option(
    "--size",
    type=SIZE,
    default=None,
    help="The size the import request will ask for: a multiple of 512, at least "
    "the virtual size; checked against the bounds instead of the virtual size.",
)
@click.option("-q", "--quiet", count=True, help="Say less (twice: nothing).")
@click.option("-v", "--verbose", count=True, help="Say more (info findings, details).")
@click.option(
    "--color",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Colour the text output.",
)
@click.version_option(__version__, "--version", prog_name="qcow2check")
def main(images, level, output_format, min_size, max_size, size, quiet, verbose, color):
    """Check QCOW2 IMAGEs against the snapshot-import rules before uploading them.

    Exit status: 0 when every image is accepted, 1 when any is rejected, 2 for a
    usage error or an image that cannot be read.
    """
    if size is not None and size % 512:
        raise click.BadParameter(
            f"{size} is not a multiple of 512", param_hint="--size"
        )
    if min_size > max_size:
        raise click.BadParameter(
            f"--min-size {min_size} is above --max-size {max_size}",
            param_hint="--min-size",
        )
    verbosity = 1 + verbose - quiet
    use_color = {"auto": None, "always": True, "never": False}[color]

    reports = []
    errors = []
    for path in images:
        progress = _progress_bar(path) if level != QUICK else None
        try:
            report = validate(
                path,
                level=level,
                min_size=min_size,
                max_size=max_size,
                size=size,
                progress=progress,
            )
        except ImageReadError as error:
            errors.append(error)
            click.echo(f"qcow2check: error: {error}", err=True)
            continue
        finally:
            if progress is not None:
                progress.close()
        reports.append(report)
        if output_format == "text":
            from .output import format_text

            text = format_text(report, verbosity)
            if text:
                click.echo(text, color=use_color)

    if output_format == "json":
        from .output import format_json

        click.echo(format_json(reports, errors))

    if errors:
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_ACCEPTED if all(r.accepted for r in reports) else EXIT_REJECTED)


class _ProgressBar:
    """A one-line bar on stderr, drawn only when stderr is a terminal."""

    WIDTH = 30

    def __init__(self, label: str) -> None:
        self.label = label
        self.drawn = False
        self.last_permille = -1

    def __call__(self, done: int, total: int) -> None:
        permille = 1000 * done // total if total else 1000
        if permille == self.last_permille:
            return
        self.last_permille = permille
        filled = self.WIDTH * permille // 1000
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        click.echo(f"\r[{bar}] {permille / 10:5.1f}% {self.label}", nl=False, err=True)
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            click.echo("\r\033[K", nl=False, err=True)


def _progress_bar(path: str) -> _ProgressBar | None:
    return _ProgressBar(path) if sys.stderr.isatty() else None
