"""A quick check imports only what it needs: pre-commit runs it on every commit."""

from __future__ import annotations

import subprocess
import sys

from .conftest import build_image


def test_quick_check_imports_neither_numpy_nor_zstandard(tmp_path):
    path = tmp_path / "image.qcow2"
    path.write_bytes(build_image())
    code = (
        "import sys\n"
        "from qcow2check.cli import main\n"
        "try:\n"
        "    main([sys.argv[1], '--quick'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "heavy = {'numpy', 'zstandard', 'jsonschema'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )

    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)


def test_the_first_read_covers_what_sniff_needs():
    from qcow2check import header, sniff

    assert header.FIRST_READ >= sniff.HEAD_SIZE
