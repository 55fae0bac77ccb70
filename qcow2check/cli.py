"""The ``qcow2check`` command: check images, print verdicts, exit 0, 1 or 2."""

from __future__ import annotations

import logging
import os
import sys

import click
from click.core import ParameterSource

from . import __version__
from .config import ConfigError, find_config
from .errors import ImageReadError
from .findings import RULES
from .policy import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE
from .profiles import DEFAULT_PROFILE, PROFILES
from .units import parse_size
from .validate import DEEP, LEVELS, METADATA, QUICK, validate

EXIT_ACCEPTED = 0
EXIT_REJECTED = 1
EXIT_ERROR = 2
FORMATS = ("text", "json", "github", "sarif")


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
RULE = click.Choice(sorted(RULES))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", nargs=-1, required=True)
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
    "--profile",
    type=click.Choice(sorted(PROFILES)),
    default=DEFAULT_PROFILE,
    show_default=True,
    help="Whose import rules apply; 'structure' checks QCOW2 validity only.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text for people, json for programs, github or sarif for CI.",
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
@click.option(
    "--ignore", type=RULE, multiple=True, help="Leave out a rule (repeatable)."
)
@click.option(
    "--warn",
    type=RULE,
    multiple=True,
    help="Make a rule's errors warnings (repeatable).",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Images checked at once.  [default: the number of cores]",
)
@click.option(
    "--endpoint-url",
    default=None,
    help="S3 endpoint for s3:// images, e.g. https://s3.fr-par.scw.cloud.",
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
@click.pass_context
def main(ctx, images, **options):
    """Check QCOW2 IMAGEs against the snapshot-import rules before uploading them.

    An IMAGE is a path, an s3://BUCKET/KEY object or an https:// URL. Options can
    also be set in [tool.qcow2check] of pyproject.toml; the command line wins.

    Exit status: 0 when every image is accepted, 1 when any is rejected, 2 for a
    usage error or an image that cannot be read.
    """
    _apply_config(ctx, options)
    _configure_logging(1 + options["verbose"] - options["quiet"])
    if options["size"] is not None and options["size"] % 512:
        raise click.BadParameter(
            f"{options['size']} is not a multiple of 512", param_hint="--size"
        )
    if options["min_size"] > options["max_size"]:
        raise click.BadParameter(
            f"--min-size {options['min_size']} is above --max-size "
            f"{options['max_size']}",
            param_hint="--min-size",
        )

    jobs = min(options["jobs"] or os.cpu_count() or 1, len(images))
    show_progress = jobs == 1 and options["level"] != QUICK and sys.stderr.isatty()

    def check(path):
        progress = _ProgressBar(path) if show_progress else None
        try:
            return validate(
                path,
                level=options["level"],
                min_size=options["min_size"],
                max_size=options["max_size"],
                size=options["size"],
                profile=options["profile"],
                ignore=options["ignore"],
                warn=options["warn"],
                endpoint_url=options["endpoint_url"],
                progress=progress,
            )
        except ImageReadError as error:
            return error
        finally:
            if progress is not None:
                progress.close()

    reports, errors = [], []
    for result in _in_order(check, images, jobs):
        if isinstance(result, ImageReadError):
            errors.append(result)
            click.echo(f"qcow2check: error: {result}", err=True)
        else:
            reports.append(result)
            _print_text(result, options)

    _print_document(reports, errors, options["output_format"])
    if errors:
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_ACCEPTED if all(r.accepted for r in reports) else EXIT_REJECTED)


def _in_order(check, images, jobs: int):
    """Results in the order the images were given, ``jobs`` images at a time."""
    if jobs == 1:
        yield from map(check, images)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        yield from pool.map(check, images)


def _configure_logging(verbosity: int) -> None:
    """Library messages on stderr: warnings by default, everything from -vv on."""
    logger = logging.getLogger("qcow2check")
    for handler in logger.handlers[:]:
        if getattr(handler, "qcow2check_cli", False):
            logger.removeHandler(handler)
    # The stream is looked up now, so that a test runner's captured stderr is used.
    handler = logging.StreamHandler(sys.stderr)
    handler.qcow2check_cli = True
    handler.setFormatter(logging.Formatter("qcow2check: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbosity >= 3 else logging.WARNING)
    logger.propagate = False


def _apply_config(ctx: click.Context, options: dict) -> None:
    """Fill every option left at its default from [tool.qcow2check]."""
    try:
        found = find_config()
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    if found is None:
        return
    path, settings = found
    params = {param.name: param for param in ctx.command.params}
    names = {"format": "output_format", "min-size": "min_size", "max-size": "max_size"}

    for key, value in settings.items():
        name = names.get(key, key)
        if key == "level":
            if value not in LEVELS:
                raise click.UsageError(
                    f"{path}: level must be one of {', '.join(LEVELS)}, not {value!r}"
                )
        else:
            param = params[name]
            try:
                if param.multiple:
                    values = [value] if isinstance(value, str) else value
                    value = tuple(param.type.convert(v, param, ctx) for v in values)
                else:
                    value = param.type.convert(value, param, ctx)
            except click.BadParameter as error:
                raise click.UsageError(f"{path}: {key}: {error.message}") from error
        # Checked even when unused, so a typo in the file never goes unnoticed.
        if ctx.get_parameter_source(name) == ParameterSource.DEFAULT:
            options[name] = value


def _print_text(report, options: dict) -> None:
    if options["output_format"] != "text":
        return
    from .output import format_text

    text = format_text(report, 1 + options["verbose"] - options["quiet"])
    if text:
        color = {"auto": None, "always": True, "never": False}[options["color"]]
        click.echo(text, color=color)


def _print_document(reports, errors, output_format: str) -> None:
    if output_format == "json":
        from .output import format_json

        click.echo(format_json(reports, errors))
    elif output_format == "github":
        from .ci_formats import format_github

        text = format_github(reports, errors)
        if text:
            click.echo(text, nl=False)
    elif output_format == "sarif":
        from .ci_formats import format_sarif

        click.echo(format_sarif(reports, errors))


class _ProgressBar:
    """A one-line bar on stderr; only made when stderr is a terminal."""

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
