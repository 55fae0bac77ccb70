"""Decoding compressed clusters: the codecs alone, then the deep walk.

The codec benchmarks give the floor the deep walk cannot beat: one cluster of text
decompressed by zlib (raw deflate, as QEMU writes it) or zstd. The walk benchmarks
run validate at level "deep" on a ``--bench-size`` image of compressed text.
"""

from __future__ import annotations

import zlib

import build_image
import pytest
import zstandard

from qcow2check import validate

CLUSTER_BITS = {"4k": 12, "64k": 16}
# One decompression context for every call, as a tight decoding loop would keep.
_ZSTD = zstandard.ZstdDecompressor()
CODECS = {
    build_image.ZLIB: lambda data, size: zlib.decompressobj(
        build_image.ZLIB_WBITS
    ).decompress(data, size),
    build_image.ZSTD: lambda data, size: _ZSTD.decompress(data, max_output_size=size),
}
# zstd is refused by the import rules; the images are below the 1 GB minimum.
ALLOWED = {"compression-type", "virtual-size"}


@pytest.mark.parametrize("compression", sorted(CODECS))
@pytest.mark.parametrize("cluster_bits", CLUSTER_BITS.values(), ids=CLUSTER_BITS)
def test_decode_cluster(benchmark, compression: str, cluster_bits: int) -> None:
    size = 1 << cluster_bits
    cluster = build_image.text(0, size)
    compressed = build_image.compress_cluster(cluster, compression)
    benchmark.extra_info["ratio"] = round(len(compressed) / size, 3)
    assert benchmark(CODECS[compression], compressed, size) == cluster


@pytest.mark.usefixtures("walk_available")
@pytest.mark.parametrize("compression", sorted(CODECS))
@pytest.mark.parametrize("cluster_bits", CLUSTER_BITS.values(), ids=CLUSTER_BITS)
def test_deep_walk(
    benchmark, image, unexpected_errors, compression: str, cluster_bits: int
) -> None:
    path = image(compression, cluster_bits)
    report = benchmark(validate, path, level="deep")
    assert unexpected_errors(report, ALLOWED) == []
