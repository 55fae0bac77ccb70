"""Settings from ``[tool.qcow2check]`` in the nearest pyproject.toml that has them.

The search walks up from the working folder, as ruff and other Python tools do.
Command-line options win over what the file says.
"""

from __future__ import annotations

import os
import sys

# Keys of [tool.qcow2check], spelled as the long options are.
KEYS = frozenset(
    {"profile", "level", "format", "min-size", "max-size", "ignore", "warn", "jobs"}
)
TABLE = "tool.qcow2check"


class ConfigError(ValueError):
    """The configuration table cannot be used: unreadable TOML or unknown keys."""


def find_config(start: str | None = None) -> tuple[str, dict] | None:
    """The nearest pyproject.toml above ``start`` with a [tool.qcow2check] table."""
    folder = os.path.abspath(start or os.getcwd())
    while True:
        path = os.path.join(folder, "pyproject.toml")
        table = _read_table(path)
        if table is not None:
            return path, _normalise(path, table)
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _read_table(path: str) -> dict | None:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror}") from error
    # Most projects have no such table: skip the TOML parser, which the pre-commit
    # hook would otherwise import on every commit.
    if TABLE.encode() not in data:
        return None

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: {error}") from error
    return document.get("tool", {}).get("qcow2check")


def _normalise(path: str, table: dict) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{TABLE}] is not a table")
    settings = {key.replace("_", "-"): value for key, value in table.items()}
    unknown = settings.keys() - KEYS
    if unknown:
        raise ConfigError(
            f"{path}: unknown keys in [{TABLE}]: {', '.join(sorted(unknown))}"
            f" (known: {', '.join(sorted(KEYS))})"
        )
    return settings
