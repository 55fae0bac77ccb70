"""Read an image that sits in an S3 bucket or behind an HTTP(S) URL, without
downloading it: every read is a ranged GET, so a check costs what it reads.

``open_remote`` returns a :class:`RemoteImage`, which has the interface of
:class:`~qcow2check.image.ImageFile`. ``s3://BUCKET/KEY`` goes through boto3 (the
optional extra ``qcow2check[s3]``) with boto3's usual configuration: environment
variables, ``AWS_PROFILE``, the shared credentials and config files, and
``AWS_ENDPOINT_URL``. ``http://`` and ``https://`` URLs, such as pre-signed links,
go through ``urllib.request``. Nothing is ever written.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from .errors import ImageReadError

if TYPE_CHECKING:
    from urllib.error import HTTPError

# The network modules are imported where they are used: a check of a local file,
# which pre-commit runs on every commit, does not pay for them.

log = logging.getLogger(__name__)


# Reads shorter than a block are rounded out to whole blocks and the blocks kept, so
# that the validator's small neighbouring reads (header, extensions, tail) cost one
# round trip. Longer reads fetch exactly what was asked for.
BLOCK_SIZE = 64 << 10
CACHE_BLOCKS = 64  # 4 MiB

TIMEOUT = 30.0  # seconds, for connecting and for each read from the socket
MAX_ATTEMPTS = 3
RETRY_DELAY = 0.5  # seconds before the second attempt, doubled after each failure

IGNORES_RANGES = (
    "the server ignores HTTP range requests; download the file and check it locally"
)
NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile"
)

# S3 error codes, from an SDK's error or from the XML body of an HTTP error.
S3_REASONS = {
    "NoSuchKey": "no such key",
    "NoSuchBucket": "no such bucket",
    "AccessDenied": "access denied",
    "AllAccessDisabled": "access denied",
    "InvalidAccessKeyId": "access denied: the endpoint does not know this access key "
    "(InvalidAccessKeyId)",
    "SignatureDoesNotMatch": "access denied: the secret key does not match the access "
    "key (SignatureDoesNotMatch)",
    "ExpiredToken": "access denied: the session token has expired (ExpiredToken)",
}
HTTP_REASONS = {
    401: "authentication required",
    403: "access denied",
    404: "not found",
    410: "gone",
}

_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+)", re.IGNORECASE)
_SCALEWAY_HOST = re.compile(r"(?:^|\.)s3\.([a-z]+-[a-z]+)\.scw\.cloud$")

_SESSION_LOCK = threading.Lock()

T = TypeVar("T")


def open_remote(url: str, *, endpoint_url: str | None = None) -> RemoteImage:
    """Open ``s3://BUCKET/KEY`` or an ``http(s)://`` URL for ranged reads.

    ``endpoint_url`` (for example ``https://s3.fr-par.scw.cloud``) applies to
    ``s3://`` URLs only; without it boto3's own configuration decides. Raises
    :class:`~qcow2check.errors.ImageReadError` with a one-line reason when the object
    cannot be read: missing, access denied, no credentials, no connection.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "s3":
        return RemoteImage(url, _S3Object(url, endpoint_url))
    if scheme in ("http", "https"):
        name = _without_secrets(url)
        return RemoteImage(name, _HttpObject(url, name))
    raise ImageReadError(url, "not an s3://, http:// or https:// URL")


class _Source(Protocol):
    def get(self, start: int, stop: int) -> tuple[bytes, int, int]:
        """Bytes ``start`` to ``stop`` (exclusive), their first offset and the object
        size; an empty object answers ``(b"", 0, 0)``."""

    def close(self) -> None: ...


class RemoteImage:
    """The bytes of one remote object, read with ranged GETs; never written.

    The interface of :class:`~qcow2check.image.ImageFile`: ``read_at`` returns fewer
    bytes than asked for only at the end of the object. ``bytes_read`` counts the
    bytes fetched over the network (read-ahead included, cache hits not) and
    ``requests`` the GETs sent (retries not counted).
    """

    def __init__(self, name: str, source: _Source) -> None:
        self.name = name
        self._source = source
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        # The first read also tells the size: a pre-signed link is signed for GET
        # only, so a HEAD would be refused, and the validator reads this block first.
        try:
            first, start, self.size = source.get(0, BLOCK_SIZE)
            self._check_range(0, min(BLOCK_SIZE, self.size), first, start, self.size)
        except BaseException:
            source.close()
            raise
        self.requests = 1
        self.bytes_read = len(first)
        self._keep(0, first)

    def read_at(self, offset: int, length: int) -> bytes:
        """Read up to ``length`` bytes at ``offset``; fewer only at the end."""
        if offset >= self.size or length <= 0:
            return b""
        end = min(offset + length, self.size)
        start, stop = offset, end
        if end - offset < BLOCK_SIZE:
            start = offset - offset % BLOCK_SIZE
            stop = min(-(-end // BLOCK_SIZE) * BLOCK_SIZE, self.size)
        return self._read_range(start, stop)[offset - start : end - start]

    def close(self) -> None:
        self._cache.clear()
        self._source.close()

    def __enter__(self) -> RemoteImage:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _read_range(self, start: int, stop: int) -> bytes:
        parts = []
        missing_from = None
        position = start
        while position < stop:
            block = position // BLOCK_SIZE
            base = block * BLOCK_SIZE
            block_stop = min(base + BLOCK_SIZE, stop)
            cached = self._cache.get(block)
            if cached is None:
                if missing_from is None:
                    missing_from = position
            else:
                if missing_from is not None:
                    parts.append(self._fetch(missing_from, position))
                    missing_from = None
                self._cache.move_to_end(block)
                parts.append(cached[position - base : block_stop - base])
            position = block_stop
        if missing_from is not None:
            parts.append(self._fetch(missing_from, stop))
        return b"".join(parts)

    def _fetch(self, start: int, stop: int) -> bytes:
        log.debug("%s: GET bytes %d-%d", self.name, start, stop - 1)
        data, first, size = self._source.get(start, stop)
        self.requests += 1
        self.bytes_read += len(data)
        self._check_range(start, stop - start, data, first, size)
        # A read larger than the cache would only evict what the next reads need.
        if len(data) <= CACHE_BLOCKS * BLOCK_SIZE:
            self._keep(start, data)
        return data

    def _check_range(
        self, start: int, length: int, data: bytes, first: int, size: int
    ) -> None:
        if size != self.size:
            raise ImageReadError(
                self.name,
                f"the object changed while it was read: {self.size} bytes, then {size}",
            )
        if first != start or len(data) != length:
            raise ImageReadError(
                self.name,
                f"asked for {length} bytes at offset {start}, the server sent "
                f"{len(data)} at offset {first}",
            )

    def _keep(self, start: int, data: bytes) -> None:
        """Cache the whole blocks inside ``data``, which starts at ``start``."""
        stop = start + len(data)
        block = -(-start // BLOCK_SIZE)
        while (base := block * BLOCK_SIZE) < stop:
            block_stop = min(base + BLOCK_SIZE, self.size)
            if block_stop > stop:
                break
            self._cache[block] = data[base - start : block_stop - start]
            self._cache.move_to_end(block)
            block += 1
        while len(self._cache) > CACHE_BLOCKS:
            self._cache.popitem(last=False)


class _Transient(Exception):
    """A failure worth another attempt: a timeout, a reset, a 5xx answer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _retrying(name: str, attempt: Callable[[], T]) -> T:
    for number in range(1, MAX_ATTEMPTS + 1):
        try:
            return attempt()
        except _Transient as error:
            if number == MAX_ATTEMPTS:
                raise ImageReadError(
                    name, f"{error.reason} ({MAX_ATTEMPTS} attempts)"
                ) from error.__cause__
            delay = RETRY_DELAY * 2 ** (number - 1)
            log.info("%s: %s; trying again in %g s", name, error.reason, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class _HttpObject:
    """A URL read with ``Range`` GETs through ``urllib.request``."""

    def __init__(self, url: str, name: str) -> None:
        self._url = url
        self._name = name

    def get(self, start: int, stop: int) -> tuple[bytes, int, int]:
        return _retrying(self._name, lambda: self._get_once(start, stop))

    def close(self) -> None:
        """Nothing to close: every GET has its own connection."""

    def _get_once(self, start: int, stop: int) -> tuple[bytes, int, int]:
        import http.client
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            self._url,
            headers={"Range": f"bytes={start}-{stop - 1}", "User-Agent": "qcow2check"},
        )
        try:
            response = urllib.request.urlopen(request, timeout=TIMEOUT)
        except urllib.error.HTTPError as error:
            with error:
                content_range = _content_range(error.headers.get("Content-Range"))
                if error.code == 416 and start == 0 and content_range:
                    # Only an empty object has no byte 0.
                    return b"", 0, content_range[2]
                raise self._http_error(error) from error
        except urllib.error.URLError as error:
            raise _connection_failure(self._name, error.reason) from error
        except (OSError, http.client.HTTPException) as error:
            raise _connection_failure(self._name, error) from error

        with response:
            if response.status != 206:
                # Closing now leaves the whole body unread.
                raise ImageReadError(self._name, IGNORES_RANGES)
            first, last, size = _answered_range(
                self._name, response.headers.get("Content-Range"), start, stop
            )
            expected = last - first + 1
            try:
                data = response.read(expected)
            except (OSError, http.client.HTTPException) as error:
                raise _connection_failure(self._name, error) from error
        if len(data) < expected:
            raise _Transient(
                f"the connection closed after {len(data)} of {expected} bytes"
            )
        return data, first, size

    def _http_error(self, error: HTTPError) -> ImageReadError | _Transient:
        import http.client

        reason = HTTP_REASONS.get(error.code, error.reason or "error")
        # S3-compatible servers say why in a small XML body.
        try:
            body = error.read(4096).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            body = ""
        code = re.search(r"<Code>([^<]*)</Code>", body)
        message = re.search(r"<Message>([^<]*)</Message>", body)
        if message and "expired" in message[1].lower():
            reason = "the pre-signed link has expired"
        elif code and code[1] in S3_REASONS:
            reason = S3_REASONS[code[1]]
        elif code:
            reason = f"{code[1]}: {message[1] if message else reason}"
        reason = f"{reason} (HTTP {error.code})"
        if error.code >= 500 or error.code == 429:
            return _Transient(reason)
        return ImageReadError(self._name, reason)


class _S3Object:
    """An object in a bucket, read with ranged ``get_object`` calls through boto3."""

    def __init__(self, url: str, endpoint_url: str | None) -> None:
        self._url = url
        # The key is taken literally, "?" and "#" included, as the aws CLI takes it.
        self._bucket, _, self._key = url[len("s3://") :].partition("/")
        if not self._bucket or not self._key:
            raise ImageReadError(url, "expected s3://BUCKET/KEY")
        try:
            import boto3
            from botocore.config import Config
        except ImportError as error:
            raise ImageReadError(
                url, "reading from S3 needs boto3: install qcow2check[s3]"
            ) from error

        config = Config(
            connect_timeout=TIMEOUT,
            read_timeout=TIMEOUT,
            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        )
        settings = tuple(
            sorted(i for i in os.environ.items() if i[0].startswith("AWS_"))
        )
        # A boto3 session is not thread-safe, and the CLI checks images in threads.
        with self._errors(), _SESSION_LOCK:
            session = _boto3_session(boto3.session.Session, settings)
            region = session.region_name or _scaleway_region(endpoint_url)
            self._client = session.client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config
            )

    def get(self, start: int, stop: int) -> tuple[bytes, int, int]:
        # botocore retries the request itself; this retries a body cut off mid-way.
        return _retrying(self._url, lambda: self._get_once(start, stop))

    def close(self) -> None:
        self._client.close()

    def _get_once(self, start: int, stop: int) -> tuple[bytes, int, int]:
        from botocore.exceptions import BotoCoreError, ClientError

        with self._errors():
            try:
                response = self._client.get_object(
                    Bucket=self._bucket,
                    Key=self._key,
                    Range=f"bytes={start}-{stop - 1}",
                )
            except ClientError as error:
                if start == 0 and error.response["Error"].get("Code") == "InvalidRange":
                    # Only an empty object has no byte 0.
                    head = self._client.head_object(Bucket=self._bucket, Key=self._key)
                    return b"", 0, head["ContentLength"]
                raise
            body = response["Body"]
            try:
                if "ContentRange" not in response:
                    raise ImageReadError(self._url, IGNORES_RANGES)
                first, _, size = _answered_range(
                    self._url, response["ContentRange"], start, stop
                )
                data = body.read()
            except BotoCoreError as error:
                raise _Transient(f"the download was cut off: {error}") from error
            finally:
                body.close()
        return data, first, size

    @contextmanager
    def _errors(self) -> Iterator[None]:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ProfileNotFound,
            ReadTimeoutError,
        )

        try:
            yield
        except ClientError as error:
            raise ImageReadError(self._url, _s3_reason(error.response)) from error
        except NoCredentialsError as error:
            raise ImageReadError(self._url, NO_CREDENTIALS) from error
        except ProfileNotFound as error:
            profile = error.kwargs.get("profile")
            raise ImageReadError(
                self._url,
                f"the AWS profile {profile!r} is not in ~/.aws/credentials or "
                "~/.aws/config",
            ) from error
        except (ConnectTimeoutError, ReadTimeoutError) as error:
            raise ImageReadError(
                self._url, f"no answer within {TIMEOUT:g} s"
            ) from error
        except EndpointConnectionError as error:
            failure = _connection_failure(self._url, _os_error(error) or str(error))
            host = urlsplit(error.kwargs.get("endpoint_url", "")).netloc
            raise ImageReadError(self._url, f"{failure.reason} ({host})") from error
        except BotoCoreError as error:
            raise ImageReadError(self._url, str(error)) from error


@functools.lru_cache(maxsize=4)
def _boto3_session(session_type: type, settings: tuple[tuple[str, str], ...]):
    """One session per set of AWS_* variables: making a client parses botocore's S3
    model (about 0.1 s), which only the first client of a session pays for."""
    return session_type()


def _s3_reason(response: dict) -> str:
    error = response.get("Error", {})
    code = error.get("Code", "")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in S3_REASONS:
        return S3_REASONS[code]
    if code.isdigit() and int(code) in HTTP_REASONS:
        return f"{HTTP_REASONS[int(code)]} (HTTP {code})"
    message = error.get("Message") or "no message"
    return f"{code or 'error'}: {message} (HTTP {status})"


def _connection_failure(
    name: str, cause: BaseException | str
) -> ImageReadError | _Transient:
    """An error below HTTP: an ImageReadError, or a _Transient worth a retry."""
    import http.client
    import socket
    import ssl

    if isinstance(cause, str):
        return ImageReadError(name, cause)
    if isinstance(cause, ConnectionRefusedError):
        return ImageReadError(name, "connection refused")
    if isinstance(cause, socket.gaierror):
        return ImageReadError(name, f"cannot resolve the host name: {cause.strerror}")
    if isinstance(cause, ssl.SSLCertVerificationError):
        return ImageReadError(name, f"TLS certificate: {cause.verify_message}")
    if isinstance(cause, ssl.SSLError):
        return ImageReadError(name, f"TLS: {cause.reason or cause}")
    if isinstance(cause, TimeoutError):
        return _Transient(f"no answer within {TIMEOUT:g} s")
    if isinstance(cause, (ConnectionError, http.client.HTTPException)):
        return _Transient(f"the connection failed: {cause or type(cause).__name__}")
    return ImageReadError(name, str(cause))


def _os_error(error: BaseException) -> OSError | None:
    """The socket's own error under botocore's and urllib3's wrappers."""
    current: BaseException | None = error
    while current is not None and not isinstance(current, OSError):
        current = current.__cause__ or current.__context__
    return current


def _content_range(value: str | None) -> tuple[int, int, int] | None:
    """``bytes FIRST-LAST/SIZE`` or ``bytes */SIZE`` as (first, last, size)."""
    match = _CONTENT_RANGE.fullmatch(value.strip()) if value else None
    if match is None:
        return None
    if match[1] is None:
        return 0, -1, int(match[3])
    return int(match[1]), int(match[2]), int(match[3])


def _answered_range(
    name: str, value: str | None, start: int, stop: int
) -> tuple[int, int, int]:
    """The range a 206 answer holds, refused before its body is read when it is not
    inside the range asked for."""
    answered = _content_range(value)
    if answered is None:
        raise ImageReadError(name, f"a partial answer without a range: {value!r}")
    first, last, _ = answered
    if first != start or last >= stop:
        raise ImageReadError(
            name, f"asked for bytes {start}-{stop - 1}, the server sent {first}-{last}"
        )
    return answered


def _without_secrets(url: str) -> str:
    """The URL without its query string (a pre-signed link's signature) or password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _scaleway_region(endpoint_url: str | None) -> str | None:
    """``fr-par`` for ``https://s3.fr-par.scw.cloud``: Scaleway refuses a request
    signed for boto3's default region, us-east-1."""
    endpoint = (
        endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    match = (
        _SCALEWAY_HOST.search(urlsplit(endpoint).hostname or "") if endpoint else None
    )
    return match[1] if match else None
