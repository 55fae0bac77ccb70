"""Make the seed images for the fuzzers with qemu-img and qemu-io.

Each seed is a small real image that covers one feature: version 2 and 3, zlib and
zstd compressed clusters, a snapshot, 1- and 64-bit refcounts, extended L2 entries,
a persistent bitmap, 512-byte and 64 KiB clusters, a dirty image, a backing file and
an external data file. Most use 8 KiB clusters, so the whole image (header,
refcount table and block, L1, two L2 tables, data) stays near 64 KiB, and QEMU still
writes its feature name table (it omits it for clusters of 4 KiB and less).

    python fuzz/make_seeds.py fuzz/corpus-seeds

writes the seeds cut to ``--max-bytes`` (64 KiB by default; the cut ones then lack
some tables, which a fuzzer needs to see too). ``tests/test_fuzz_properties.py``
calls :func:`make_seeds` for whole images.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

# Each recipe: the commands that make "img" in an empty directory. Names inside the
# images (backing file, data file) are relative, so the seeds hold no temporary path.
CREATE = ["qemu-img", "create", "-q", "-f", "qcow2"]
WRITES = ["-c", "write -q -P 0xab 0 8k", "-c", "write -q -P 0xcd 16M 8k"]
RECIPES: dict[str, list[list[str]]] = {
    "v3": [
        [*CREATE, "-o", "cluster_size=8192", "img", "1G"],
        ["qemu-io", "-f", "qcow2", *WRITES, "img"],
    ],
    "v2": [
        [*CREATE, "-o", "compat=0.10,cluster_size=8192", "img", "1G"],
        ["qemu-io", "-f", "qcow2", *WRITES, "img"],
    ],
    "zlib": [
        ["qemu-img", "create", "-q", "-f", "raw", "src", "1G"],
        ["qemu-io", "-f", "raw", "-c", "write -q -P 0xab 0 24k", "src"],
        ["qemu-img", "convert", "-c", "-O", "qcow2", "-o", "cluster_size=8192"]
        + ["src", "img"],
    ],
    "zstd": [
        ["qemu-img", "create", "-q", "-f", "raw", "src", "1G"],
        ["qemu-io", "-f", "raw", "-c", "write -q -P 0xab 0 24k", "src"],
        ["qemu-img", "convert", "-c", "-O", "qcow2"]
        + ["-o", "cluster_size=8192,compression_type=zstd", "src", "img"],
    ],
    "snapshot": [
        [*CREATE, "-o", "cluster_size=8192", "img", "1G"],
        ["qemu-io", "-f", "qcow2", "-c", "write -q -P 0xab 0 8k", "img"],
        ["qemu-img", "snapshot", "-c", "s0", "img"],
        ["qemu-io", "-f", "qcow2", "-c", "write -q -P 0xcd 0 8k", "img"],
    ],
    "refcount1": [
        [*CREATE, "-o", "cluster_size=8192,refcount_bits=1", "img", "1G"],
        ["qemu-io", "-f", "qcow2", *WRITES, "img"],
    ],
    "refcount64": [
        [*CREATE, "-o", "cluster_size=8192,refcount_bits=64", "img", "1G"],
        ["qemu-io", "-f", "qcow2", *WRITES, "img"],
    ],
    "extended-l2": [
        [*CREATE, "-o", "cluster_size=16384,extended_l2=on", "img", "1G"],
        ["qemu-io", "-f", "qcow2", "-c", "write -q -P 0xab 0 1k"]
        + ["-c", "write -q -P 0xcd 4k 512", "img"],
    ],
    "bitmap": [
        [*CREATE, "-o", "cluster_size=8192", "img", "1G"],
        ["qemu-img", "bitmap", "--add", "img", "b0"],
        ["qemu-io", "-f", "qcow2", "-c", "write -q -P 0xab 0 8k", "img"],
    ],
    "cluster-512": [
        [*CREATE, "-o", "cluster_size=512", "img", "64M"],
        ["qemu-io", "-f", "qcow2", "-c", "write -q -P 0xab 0 2k"]
        + ["-c", "write -q -P 0xcd 1M 512", "img"],
    ],
    "cluster-64k": [
        [*CREATE, "img", "1G"],
        ["qemu-io", "-f", "qcow2", "-c", "write -q -P 0xab 0 64k", "img"],
    ],
    "dirty": [
        [*CREATE, "-o", "cluster_size=8192,lazy_refcounts=on", "img", "1G"],
        ["qemu-io", "-f", "qcow2", "-c", "write -q -P 0xab 0 8k", "-c", "abort"]
        + ["img"],
    ],
    "backing": [
        ["qemu-img", "create", "-q", "-f", "raw", "base.raw", "1G"],
        [*CREATE, "-o", "cluster_size=8192", "-b", "base.raw", "-F", "raw", "img"],
        ["qemu-io", "-f", "qcow2", "-c", "write -q -P 0xab 0 8k", "img"],
    ],
    "data-file": [
        [*CREATE, "-o", "cluster_size=8192,data_file=data.raw", "img", "1G"],
        ["qemu-io", "-c", "write -q -P 0xab 0 8k", "img"],
    ],
}

# qemu-io's "abort" kills qemu-io on purpose, so that the dirty bit stays set.
EXPECTED_TO_FAIL = {("dirty", 1)}


def make_seeds(
    directory: str | Path,
    max_bytes: int | None = None,
    names: list[str] | None = None,
) -> dict[str, Path]:
    """Write one ``<name>.qcow2`` per recipe into ``directory``; return the paths.

    With ``max_bytes`` each image is cut to that many bytes.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    made = {}
    for name in names or RECIPES:
        with tempfile.TemporaryDirectory() as work:
            for step, command in enumerate(RECIPES[name]):
                result = subprocess.run(
                    command, cwd=work, capture_output=True, text=True
                )
                if result.returncode and (name, step) not in EXPECTED_TO_FAIL:
                    raise RuntimeError(
                        f"seed {name}: {' '.join(command)} failed: {result.stderr}"
                    )
            data = (Path(work) / "img").read_bytes()
        if max_bytes is not None:
            data = data[:max_bytes]
        path = directory / f"{name}.qcow2"
        path.write_bytes(data)
        made[name] = path
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--max-bytes", type=int, default=64 << 10)
    args = parser.parse_args()
    if shutil.which("qemu-img") is None or shutil.which("qemu-io") is None:
        parser.error("qemu-img and qemu-io are needed (Debian: apt install qemu-utils)")
    for name, path in make_seeds(args.directory, args.max_bytes).items():
        print(f"{path}: {path.stat().st_size} bytes ({name})")


if __name__ == "__main__":
    main()
