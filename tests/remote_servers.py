"""Servers on 127.0.0.1 for the remote-image tests: moto's standalone S3 server in a
subprocess, and a small HTTP object server in a thread that answers ranged GETs as a
bucket behind pre-signed links does, or ignores ranges as a plain web server may."""

from __future__ import annotations

import http.server
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """``python -m moto.server`` on a free port, stopped on exit.

    ``environment`` goes to the server process only; for instance
    ``INITIAL_NO_AUTH_ACTION_COUNT=0`` makes it check access keys.
    """

    def __init__(self, **environment: str) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._environment = {**os.environ, **environment}
        self._log = tempfile.TemporaryFile()
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> MotoServer:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1"]
        self._process = subprocess.Popen(
            [*command, "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._environment,
        )
        try:
            self._wait_until_up()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()

    def _wait_until_up(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto.server exited:\n{self._output()}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(
            f"moto.server did not answer in {timeout} s:\n{self._output()}"
        )

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]


class ObjectServer:
    """Serves ``objects`` (name to bytes) at ``/<name>`` on 127.0.0.1 from a thread.

    ``ranges=False`` answers every GET with 200 and the whole body, as a server
    without range support does. ``failures`` answers that many first requests with
    503, ``stall`` waits that many seconds before answering, and ``errors`` maps a
    name to an HTTP status and body. ``requests`` lists each request's method, name
    and Range header; ``bytes_sent`` counts the body bytes handed to the socket.
    """

    def __init__(
        self,
        objects: dict[str, bytes],
        *,
        ranges: bool = True,
        failures: int = 0,
        stall: float = 0.0,
        errors: dict[str, tuple[int, bytes]] | None = None,
    ) -> None:
        self.objects = objects
        self.ranges = ranges
        self.failures = failures
        self.stall = stall
        self.errors = errors or {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.bytes_sent = 0
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), _handler_for(self)
        )
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/{name}"

    def gets(self) -> int:
        return sum(method == "GET" for method, _, _ in self.requests)

    def __enter__(self) -> ObjectServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _handler_for(server: ObjectServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def log_message(self, format: str, *args) -> None:
            pass

        def _answer(self, send_body: bool) -> None:
            name = self.path.lstrip("/").split("?")[0]
            with server._lock:
                server.requests.append((self.command, name, self.headers["Range"]))
                failing = server.failures > 0
                server.failures -= failing
            if server.stall:
                time.sleep(server.stall)
            if failing:
                return self._send(503, b"busy", send_body)
            if name in server.errors:
                status, body = server.errors[name]
                return self._send(status, body, send_body)
            if name not in server.objects:
                return self._send(404, b"no such object", send_body)

            data = server.objects[name]
            match = _RANGE.match(self.headers["Range"] or "")
            if not server.ranges or match is None:
                return self._send(200, data, send_body)
            first = int(match[1])
            last = min(int(match[2] or len(data) - 1), len(data) - 1)
            if first >= len(data):
                headers = {"Content-Range": f"bytes */{len(data)}"}
                return self._send(416, b"", send_body, headers)
            headers = {"Content-Range": f"bytes {first}-{last}/{len(data)}"}
            self._send(206, data[first : last + 1], send_body, headers)

        def _send(
            self, status: int, body: bytes, send_body: bool, headers: dict | None = None
        ) -> None:
            self.send_response(status)
            for key, value in {"Accept-Ranges": "bytes", **(headers or {})}.items():
                if server.ranges or key != "Accept-Ranges":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                # In blocks, so that a client that hangs up stops the count early.
                for start in range(0, len(body) if send_body else 0, 64 << 10):
                    self.wfile.write(body[start : start + (64 << 10)])
                    with server._lock:
                        server.bytes_sent += min(64 << 10, len(body) - start)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                server.finished.set()

    return Handler
