"""Settings from ``[tool.qcow2check]`` in the nearest pyproject.toml that has them.

The search walks up from the working folder, as ruff and other Python tools do.
Command-line options win over what the file says.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# Keys of [tool.qcow2check], spelled as the long options are.
KEYS = frozenset(
    {"profile", "level", "format", "min-size", "max-size", "ignore", "warn", "jobs"}
)


class ConfigError(ValueError):
    """The configuration table cannot be used: unreadable TOML or unknown keys."""


def find_config(start: Path | None = None) -> tuple[Path, dict] | None:
    """The nearest pyproject.toml above ``start`` with a [tool.qcow2check] table."""
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        path = candidate / "pyproject.toml"
        if not path.is_file():
            continue
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"{path}: {error}") from error
        table = document.get("tool", {}).get("qcow2check")
        if table is not None:
            return path, _normalise(path, table)
    return None


def _normalise(path: Path, table: dict) -> dict:
    settings = {key.replace("_", "-"): value for key, value in table.items()}
    unknown = settings.keys() - KEYS
    if unknown:
        raise ConfigError(
            f"{path}: unknown keys in [tool.qcow2check]: {', '.join(sorted(unknown))}"
            f" (known: {', '.join(sorted(KEYS))})"
        )
    return settings
