"""Images read over the network: an object in moto's S3 server, and URLs on a local
HTTP server, get the verdict of the same file read locally, for a few ranged GETs."""

from __future__ import annotations

import importlib
import importlib.util
import socket
import sys
from pathlib import Path

import pytest

from qcow2check import ImageReadError, remote, validate
from qcow2check.image import is_remote_url
from qcow2check.remote import BLOCK_SIZE, RemoteImage, open_remote

from .remote_servers import MotoServer, ObjectServer, free_port

SAMPLES = Path(__file__).parent.parent / "samples"
SAMPLE_NAMES = sorted(
    path.name
    for path in SAMPLES.iterdir()
    if path.suffix not in (".md", ".sh") and not path.name.startswith(".")
)
BUCKET = "qcow2check-samples"
REGION = "fr-par"

validate_module = importlib.import_module("qcow2check.validate")


def validate_url(url: str, endpoint_url: str | None = None, **options):
    return validate(url, endpoint_url=endpoint_url, **options)


def same_verdict(remote_report, local_report) -> None:
    def findings(report):
        return [(f.rule, f.severity, f.offset) for f in report.findings]

    def info(report):
        return {k: v for k, v in report.info.items() if k not in ("bytes_read", "path")}

    assert remote_report.accepted == local_report.accepted
    assert findings(remote_report) == findings(local_report)
    assert info(remote_report) == info(local_report)


def needs_level(level: str) -> None:
    if level == "metadata":
        try:
            from qcow2check.walk import check_tables  # noqa: F401
        except ImportError:
            pytest.skip("the metadata level needs qcow2check.walk, not merged yet")


@pytest.fixture
def opened(monkeypatch) -> list[RemoteImage]:
    """Every RemoteImage the test opens, to count its GETs and bytes afterwards."""
    images: list[RemoteImage] = []
    original = RemoteImage.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        images.append(self)

    monkeypatch.setattr(RemoteImage, "__init__", recording_init)
    return images


def no_such_host(*args, **kwargs):
    """socket.getaddrinfo for a host no resolver knows, asking no resolver."""
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Requests to 127.0.0.1 must not go through a proxy from the environment."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")


# S3 --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto's S3 server with every sample uploaded to BUCKET, for the whole session."""
    for module in ("boto3", "moto", "flask"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install 'qcow2check[s3,test]'")
    import boto3

    with MotoServer() as server:
        client = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        for name in SAMPLE_NAMES:
            client.put_object(
                Bucket=BUCKET, Key=name, Body=(SAMPLES / name).read_bytes()
            )
        client.close()
        yield server.endpoint


@pytest.fixture
def aws(monkeypatch, tmp_path_factory, moto_endpoint) -> str:
    """Fake credentials in the environment, and no user configuration read."""
    tmp_path = tmp_path_factory.getbasetemp()
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_endpoint


@pytest.mark.parametrize("level", ["quick", "metadata"])
@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_s3_object_gets_the_verdict_of_the_local_file(aws, name, level):
    needs_level(level)
    url = f"s3://{BUCKET}/{name}"

    report = validate_url(url, endpoint_url=aws, level=level)

    assert report.path == url
    same_verdict(report, validate(SAMPLES / name, level=level))


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_quick_check_of_an_object_fetches_a_few_blocks(aws, opened, name):
    report = validate_url(f"s3://{BUCKET}/{name}", endpoint_url=aws, level="quick")

    # The header block; then the rest of a 128 KiB cluster 0, or for another format
    # the block or two that hold its last 512 bytes.
    assert report.info["bytes_read"] <= 3 * BLOCK_SIZE
    assert opened[0].requests <= 3
    assert report.info["bytes_read"] == opened[0].bytes_read


def test_quick_check_of_a_plain_image_is_one_get(aws, opened):
    report = validate_url(f"s3://{BUCKET}/ok-v3.qcow2", endpoint_url=aws, level="quick")

    assert report.accepted
    assert (opened[0].requests, report.info["bytes_read"]) == (1, BLOCK_SIZE)


def test_metadata_check_of_an_object_fetches_less_than_the_file(aws, opened):
    needs_level("metadata")
    name = "ok-data.qcow2"

    report = validate_url(f"s3://{BUCKET}/{name}", endpoint_url=aws)

    assert report.info["bytes_read"] < (SAMPLES / name).stat().st_size
    assert opened[0].requests <= 8


def test_aws_endpoint_url_in_the_environment_is_honoured(aws, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)

    with open_remote(f"s3://{BUCKET}/ok-v3.qcow2") as image:
        assert image.size == (SAMPLES / "ok-v3.qcow2").stat().st_size


def test_key_is_taken_literally(aws):
    import boto3

    client = boto3.client("s3", endpoint_url=aws)
    client.put_object(Bucket=BUCKET, Key="odd?name#1.qcow2", Body=b"QFI\xfb")
    client.close()

    with open_remote(f"s3://{BUCKET}/odd?name#1.qcow2", endpoint_url=aws) as image:
        assert image.read_at(0, 8) == b"QFI\xfb"


def test_an_empty_object_has_size_0(aws):
    with open_remote(f"s3://{BUCKET}/empty.img", endpoint_url=aws) as image:
        assert (image.size, image.read_at(0, 512), image.bytes_read) == (0, b"", 0)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"s3://{BUCKET}/missing.qcow2", "no such key"),
        ("s3://no-such-bucket/ok-v3.qcow2", "no such bucket"),
    ],
)
def test_missing_object_is_a_read_error(aws, url, reason):
    with pytest.raises(ImageReadError) as raised:
        open_remote(url, endpoint_url=aws)

    assert str(raised.value) == f"{url}: {reason}"


def test_unknown_access_key_is_a_read_error(aws):
    with (
        MotoServer(INITIAL_NO_AUTH_ACTION_COUNT="0") as checking,
        pytest.raises(ImageReadError, match="access denied: .*InvalidAccessKeyId"),
    ):
        open_remote(f"s3://{BUCKET}/ok-v3.qcow2", endpoint_url=checking.endpoint)


def test_no_credentials_is_a_read_error(aws, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    with pytest.raises(ImageReadError) as raised:
        open_remote(f"s3://{BUCKET}/ok-v3.qcow2", endpoint_url=aws)

    assert raised.value.reason == (
        "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
        "or a profile"
    )


def test_unknown_profile_is_a_read_error(aws, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "scaleway")

    with pytest.raises(ImageReadError, match="the AWS profile 'scaleway' is not in"):
        open_remote(f"s3://{BUCKET}/ok-v3.qcow2", endpoint_url=aws)


def test_s3_connection_refused_is_a_read_error(aws, monkeypatch):
    monkeypatch.setattr(remote, "MAX_ATTEMPTS", 1)
    port = free_port()

    with pytest.raises(ImageReadError) as raised:
        open_remote("s3://bucket/key", endpoint_url=f"http://127.0.0.1:{port}")

    assert raised.value.reason == f"connection refused (127.0.0.1:{port})"


def test_s3_unknown_host_is_a_read_error(aws, monkeypatch):
    monkeypatch.setattr(remote, "MAX_ATTEMPTS", 1)
    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)

    with pytest.raises(ImageReadError) as raised:
        open_remote("s3://bucket/key", endpoint_url="https://s3.no-such.example")

    assert raised.value.reason == (
        "cannot resolve the host name: Name or service not known (s3.no-such.example)"
    )


@pytest.mark.parametrize("url", ["s3://bucket-only", "s3://bucket/", "s3:///key"])
def test_s3_url_without_bucket_or_key_is_a_read_error(url):
    with pytest.raises(ImageReadError, match="expected s3://BUCKET/KEY"):
        open_remote(url)


def test_s3_without_boto3_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)

    with pytest.raises(ImageReadError, match=r"install qcow2check\[s3\]$"):
        open_remote("s3://bucket/key")


def test_pre_signed_link_gets_the_verdict_of_the_local_file(aws):
    import boto3

    client = boto3.client("s3", endpoint_url=aws)
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "encrypted-aes.qcow2"}
    )
    client.close()

    report = validate_url(url, level="quick")

    assert "X-Amz-Signature" in url
    assert report.path == f"{aws}/{BUCKET}/encrypted-aes.qcow2"
    same_verdict(report, validate(SAMPLES / "encrypted-aes.qcow2", level="quick"))


@pytest.mark.parametrize(
    ("endpoint", "region"),
    [
        ("https://s3.fr-par.scw.cloud", "fr-par"),
        ("https://s3.nl-ams.scw.cloud/", "nl-ams"),
        ("https://my-bucket.s3.pl-waw.scw.cloud", "pl-waw"),
        ("https://s3.amazonaws.com", None),
        (None, None),
    ],
)
def test_region_is_taken_from_a_scaleway_endpoint(monkeypatch, endpoint, region):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)

    assert remote._scaleway_region(endpoint) == region


# HTTP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_server():
    objects = {name: (SAMPLES / name).read_bytes() for name in SAMPLE_NAMES}
    with ObjectServer(objects) as server:
        yield server


@pytest.mark.parametrize("level", ["quick", "metadata"])
@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_url_gets_the_verdict_of_the_local_file(sample_server, name, level):
    needs_level(level)

    report = validate_url(sample_server.url(name), level=level)

    same_verdict(report, validate(SAMPLES / name, level=level))


def test_fixes_of_a_url_name_the_downloaded_file(sample_server):
    report = validate_url(sample_server.url("zstd-data.qcow2"), level="quick")

    (finding,) = [f for f in report.findings if f.rule == "compression-type"]
    assert (
        finding.fix == "qemu-img convert -f qcow2 -O qcow2 zstd-data.qcow2 "
        "zstd-data-zlib.qcow2"
    )


def test_quick_check_of_a_url_is_one_ranged_get():
    data = (SAMPLES / "ok-v3.qcow2").read_bytes()
    with ObjectServer({"disk.qcow2": data}) as server:
        report = validate_url(server.url("disk.qcow2"), level="quick")

    assert report.accepted
    assert server.requests == [("GET", "disk.qcow2", f"bytes=0-{BLOCK_SIZE - 1}")]
    assert server.bytes_sent == report.info["bytes_read"] == BLOCK_SIZE


def test_server_that_ignores_ranges_is_refused_before_the_body_is_sent():
    body = (SAMPLES / "ok-v3.qcow2").read_bytes().ljust(32 << 20, b"\0")
    with ObjectServer({"disk.qcow2": body}, ranges=False) as server:
        with pytest.raises(ImageReadError) as raised:
            open_remote(server.url("disk.qcow2"))
        assert server.finished.wait(10)

    assert raised.value.reason == (
        "the server ignores HTTP range requests; download the file and check it locally"
    )
    assert server.bytes_sent < len(body) // 4


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (404, b"gone fishing", "not found (HTTP 404)"),
        (403, b"", "access denied (HTTP 403)"),
        (
            403,
            b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message>",
            "the pre-signed link has expired (HTTP 403)",
        ),
        (
            404,
            b"<Error><Code>NoSuchKey</Code><Message>The key does not exist</Message>",
            "no such key (HTTP 404)",
        ),
        (
            400,
            b"<Error><Code>InvalidArgument</Code><Message>Bad date</Message>",
            "InvalidArgument: Bad date (HTTP 400)",
        ),
    ],
)
def test_http_error_is_a_read_error(status, body, reason):
    with ObjectServer({}, errors={"disk.qcow2": (status, body)}) as server:
        url = server.url("disk.qcow2")
        with pytest.raises(ImageReadError) as raised:
            open_remote(url + "?X-Amz-Signature=secret")

    assert str(raised.value) == f"{url}: {reason}"


def test_unavailable_server_is_tried_again(monkeypatch):
    monkeypatch.setattr(remote, "RETRY_DELAY", 0.01)
    data = (SAMPLES / "ok-v3.qcow2").read_bytes()
    with ObjectServer({"disk.qcow2": data}, failures=2) as server:
        with open_remote(server.url("disk.qcow2")) as image:
            assert image.size == len(data)

    assert server.gets() == 3


def test_retries_are_bounded(monkeypatch):
    monkeypatch.setattr(remote, "RETRY_DELAY", 0.01)
    with ObjectServer({}, failures=10) as server:
        with pytest.raises(ImageReadError, match=r"\(HTTP 503\) \(3 attempts\)$"):
            open_remote(server.url("disk.qcow2"))

    assert server.gets() == 3


def test_silent_server_times_out(monkeypatch):
    monkeypatch.setattr(remote, "TIMEOUT", 0.2)
    monkeypatch.setattr(remote, "MAX_ATTEMPTS", 1)
    with ObjectServer({"disk.qcow2": b"QFI\xfb"}, stall=1.0) as server:
        with pytest.raises(ImageReadError, match=r"no answer within 0\.2 s"):
            open_remote(server.url("disk.qcow2"))


def test_connection_refused_is_a_read_error():
    url = f"http://127.0.0.1:{free_port()}/disk.qcow2"

    with pytest.raises(ImageReadError) as raised:
        open_remote(url)

    assert str(raised.value) == f"{url}: connection refused"


def test_unknown_host_is_a_read_error(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)

    with pytest.raises(ImageReadError, match="cannot resolve the host name: Name"):
        open_remote("https://no-such-host.example/disk.qcow2")


def test_unsupported_scheme_is_a_read_error():
    with pytest.raises(ImageReadError, match="not an s3://, http:// or https:// URL"):
        open_remote("ftp://host/disk.qcow2")


@pytest.mark.parametrize(
    ("source", "remote_url"),
    [
        ("s3://bucket/key", True),
        ("HTTPS://host/disk.qcow2", True),
        ("http://host/disk.qcow2", True),
        ("disk.qcow2", False),
        ("s3:disk.qcow2", False),
        (Path("s3://bucket/key"), False),
    ],
)
def test_is_remote_url(source, remote_url):
    assert is_remote_url(source) is remote_url


# Read-ahead and cache --------------------------------------------------------------


class FakeSource:
    """An object in memory that records the ranges asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.gets: list[tuple[int, int]] = []

    def get(self, start: int, stop: int) -> tuple[bytes, int, int]:
        self.gets.append((start, stop))
        return self.data[start:stop], start, len(self.data)

    def close(self) -> None:
        pass


def patterned(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def test_small_neighbouring_reads_share_one_get():
    source = FakeSource(patterned(10 * BLOCK_SIZE))
    image = RemoteImage("fake", source)

    pieces = [image.read_at(3 * BLOCK_SIZE + offset, 512) for offset in (0, 4096, 8)]

    assert source.gets == [(0, BLOCK_SIZE), (3 * BLOCK_SIZE, 4 * BLOCK_SIZE)]
    assert pieces[1] == source.data[3 * BLOCK_SIZE + 4096 :][:512]
    assert image.bytes_read == 2 * BLOCK_SIZE


def test_large_read_fetches_exactly_what_is_missing():
    source = FakeSource(patterned(10 * BLOCK_SIZE))
    image = RemoteImage("fake", source)

    data = image.read_at(100, 3 * BLOCK_SIZE)

    assert data == source.data[100 : 100 + 3 * BLOCK_SIZE]
    assert source.gets[1:] == [(BLOCK_SIZE, 100 + 3 * BLOCK_SIZE)]
    assert image.bytes_read == 100 + 3 * BLOCK_SIZE


def test_read_past_the_end_is_short():
    source = FakeSource(patterned(BLOCK_SIZE + 100))
    image = RemoteImage("fake", source)

    assert image.read_at(BLOCK_SIZE + 50, 512) == source.data[BLOCK_SIZE + 50 :]
    assert image.read_at(BLOCK_SIZE + 100, 1) == b""
    assert image.read_at(0, 0) == b""
    assert source.gets[1:] == [(BLOCK_SIZE, BLOCK_SIZE + 100)]


def test_cache_holds_a_bounded_number_of_blocks():
    blocks = remote.CACHE_BLOCKS + 10
    source = FakeSource(patterned(blocks * BLOCK_SIZE))
    image = RemoteImage("fake", source)

    for block in range(blocks):
        image.read_at(block * BLOCK_SIZE, 8)
    image.read_at(0, 8)

    assert len(image._cache) == remote.CACHE_BLOCKS
    assert source.gets[-1] == (0, BLOCK_SIZE)


@pytest.mark.parametrize(
    ("content_range", "message"),
    [
        (None, "a partial answer without a range: None"),
        ("bytes 0-99/100", "asked for bytes 65536-131071, the server sent 0-99"),
        ("bytes 65536-200000/300000", "the server sent 65536-200000"),
    ],
)
def test_answer_outside_the_range_asked_for_is_a_read_error(content_range, message):
    with pytest.raises(ImageReadError, match=message):
        remote._answered_range("url", content_range, BLOCK_SIZE, 2 * BLOCK_SIZE)


def test_object_that_changes_size_is_a_read_error():
    source = FakeSource(patterned(4 * BLOCK_SIZE))
    image = RemoteImage("fake", source)
    source.data += b"more"

    with pytest.raises(ImageReadError, match="changed while it was read"):
        image.read_at(2 * BLOCK_SIZE, 8)
