#!/usr/bin/env python3
"""Coverage-guided fuzzing of ``qcow2check.validate`` with atheris (libFuzzer).

Each input is validated at every level, from memory. Any exception, a traceback
the validator logs (the walk logs its own exceptions and reports them as findings
instead of raising), or a report that breaks the promise (a finding with an unknown
rule, a bad severity, an empty message, an offset outside 0 to 2**64, a report that
is not JSON), is a crash that libFuzzer saves as ``crash-<sha1>``. An input slower
than ``-timeout`` seconds is saved as ``timeout-<sha1>``, one above
``-rss_limit_mb`` as ``oom-<sha1>``. ``fuzz/README.md`` gives the command and says
how to move a saved input into ``tests/corpus/``.

    python fuzz/atheris_harness.py crash-1234abcd     # replay one input
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
import traceback
from pathlib import Path

import atheris


def _instrumentation():
    # atheris's comparison tracing keeps memory it never gives back (about 0.5 MB
    # per input here, on numpy-heavy code: 2 GiB within minutes) and runs three
    # times slower; a trial run without it reached the same coverage.
    if os.environ.get("QCOW2CHECK_FUZZ_TRACE_CMP"):
        return atheris.instrument_imports(include=["qcow2check"])
    from atheris.import_hook import HookManager

    return HookManager({"qcow2check"}, set(), True, trace_dataflow=False)


with _instrumentation():
    import qcow2check
    import qcow2check.walk  # imported lazily by validate(): instrument it now
    from qcow2check.findings import ERROR, RULES, SEVERITIES

# QCOW2CHECK_FUZZ_LEVELS=quick fuzzes the header checks alone.
LEVELS = tuple(
    os.environ.get("QCOW2CHECK_FUZZ_LEVELS", ",".join(qcow2check.LEVELS)).split(",")
)
# A directory: failures are saved there, at most three per place they were raised,
# and the run goes on in one process. Unset: the first failure stops the run.
KEEP_GOING = os.environ.get("QCOW2CHECK_FUZZ_KEEP_GOING")
SAVED_PER_FAILURE = 3
_seen: dict[str, int] = {}


class BrokenPromise(AssertionError):
    """A report came back, but not a sound one."""


class _Failures(logging.Handler):
    """Keeps what the validator logs with a traceback, or as an error: the walk
    turns an exception of its own into a finding and a debug record instead of
    raising it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)


LOGGED = _Failures()
logging.getLogger("qcow2check").addHandler(LOGGED)
logging.getLogger("qcow2check").setLevel(logging.DEBUG)


def check_report(report: qcow2check.Report, level: str) -> None:
    json.dumps(report.to_dict(), allow_nan=False)
    for finding in report.findings:
        offset = finding.offset
        if (
            finding.rule not in RULES
            or finding.severity not in SEVERITIES
            or not isinstance(finding.message, str)
            or not finding.message.strip()
            or not (offset is None or (type(offset) is int and 0 <= offset < 1 << 64))
        ):
            raise BrokenPromise(f"{level}: {finding!r}")
    if report.accepted != all(f.severity != ERROR for f in report.findings):
        raise BrokenPromise(f"{level}: accepted is {report.accepted}")


def test_one_input(data: bytes) -> None:
    try:
        check_input(data)
    except Exception as error:
        if not KEEP_GOING:
            raise
        keep(data, error)


def check_input(data: bytes) -> None:
    accepted = True
    for level in LEVELS:
        LOGGED.records.clear()
        report = qcow2check.validate(io.BytesIO(data), level=level)
        if LOGGED.records:
            record = LOGGED.records[0]
            raise BrokenPromise(f"{level}: logged {record.getMessage()}") from (
                record.exc_info[1] if record.exc_info else None
            )
        check_report(report, level)
        # A later level reads more: it may reject what an earlier one accepted,
        # never the reverse.
        if report.accepted and not accepted:
            raise BrokenPromise(f"{level} accepts what an earlier level rejected")
        accepted = report.accepted


def keep(data: bytes, error: Exception) -> None:
    """Save a failing input under a name that groups it with the same failure."""
    frames = traceback.extract_tb(error.__traceback__)
    cause = error.__cause__
    if cause is not None:
        frames = traceback.extract_tb(cause.__traceback__) or frames
        error = cause
    where = next(
        (
            f"{f.filename}:{f.lineno}"
            for f in reversed(frames)
            if "qcow2check" in f.filename
        ),
        "",
    )
    signature = f"{type(error).__name__} {where}"
    if isinstance(error, BrokenPromise):
        signature += f" {str(error)[:60]}"
    count = _seen.get(signature, 0)
    _seen[signature] = count + 1
    if count >= SAVED_PER_FAILURE:
        return
    directory = Path(KEEP_GOING)
    directory.mkdir(parents=True, exist_ok=True)
    group = hashlib.sha1(signature.encode()).hexdigest()[:8]
    name = f"crash-{group}-{hashlib.sha1(data).hexdigest()[:12]}"
    (directory / name).write_bytes(data)
    text = "".join(traceback.format_exception(error))
    (directory / f"{name}.txt").write_text(f"{signature}\n\n{text}")
    if count == 0:
        print(f"\n== new failure {name}: {signature}\n{text}", file=sys.stderr)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
