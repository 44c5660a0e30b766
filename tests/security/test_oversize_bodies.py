"""Oversize bodies stop at the limit (OWASP API4): a chunked body with no Content-Length
of twice the limit is answered 413 after at most limit + 1 MiB has been read from the socket,
for the upload route and for the JSON routes; a declared Content-Length over the limit is
refused before a byte is read. (Peak RSS of a real server under a 2x-limit upload is
tests/app/test_upload_memory.py.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.helpers import CHAT_LINE, LiveServer, Tenant, make_settings

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
UPLOAD_LIMIT = 4 * MiB


class ReadCounter:
    """Outermost ASGI wrapper: how many body bytes the app pulled from the socket before it
    started its response, and which status it sent."""

    def __init__(self, app) -> None:  # noqa: ANN001
        self.app = app
        self.results: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"read": 0}

        async def counting_receive():  # noqa: ANN202
            message = await receive()
            state["read"] += len(message.get("body", b""))
            return message

        async def recording_send(message) -> None:  # noqa: ANN001
            if message["type"] == "http.response.start":
                with self.lock:
                    self.results.append((message["status"], state["read"]))
            await send(message)

        await self.app(scope, counting_receive, recording_send)


@pytest.fixture
def server(tmp_path: Path, pg_url: str) -> Iterator[tuple[str, ReadCounter]]:
    from app.main import create_app

    settings = make_settings(tmp_path, pg_url, max_upload_bytes=UPLOAD_LIMIT)
    counter = ReadCounter(create_app(settings))
    with LiveServer(counter) as live:
        yield live.url, counter


def _chunks(total: int, head: bytes = b"", tail: bytes = b"", size: int = 64 * 1024):
    yield head
    line = (CHAT_LINE + "\n").encode()
    block = line * (size // len(line))
    sent = 0
    while sent < total:
        yield block
        sent += len(block)
    yield tail


def _post(url: str, headers: dict[str, str], content) -> int | None:  # noqa: ANN001
    """The status, or None when the server closed the connection mid-body (it may answer
    413 and close before the client finished writing)."""
    try:
        with httpx.Client(timeout=60) as client:
            return client.post(url, headers=headers, content=content).status_code
    except httpx.TransportError:
        return None


def test_chunked_upload_of_twice_the_limit_stops_at_the_limit(
        server: tuple[str, ReadCounter], tenant: Tenant) -> None:
    url, counter = server
    boundary = b"oversizeBoundary"
    head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            b"fine-tune\r\n--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="big.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n')
    headers = {**tenant.headers, "content-type": f"multipart/form-data; boundary={boundary.decode()}"}
    status = _post(url + "/v1/files", headers,
                   _chunks(2 * UPLOAD_LIMIT, head, b"\r\n--" + boundary + b"--\r\n"))
    assert status in (413, None)
    (answered, read), = counter.results
    assert answered == 413
    print(f"upload limit {UPLOAD_LIMIT / MiB:.0f} MiB: 413 after reading {read / MiB:.2f} MiB "
          f"of a {2 * UPLOAD_LIMIT / MiB:.0f} MiB chunked body")
    assert UPLOAD_LIMIT < read <= UPLOAD_LIMIT + MiB


@pytest.mark.parametrize("path", ["/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/estimate",
                                  "/v1/continual/runs"])
def test_chunked_json_body_of_twice_the_cap_stops_at_the_cap(
        server: tuple[str, ReadCounter], tenant: Tenant, path: str) -> None:
    url, counter = server
    headers = {**tenant.headers, "content-type": "application/json"}
    status = _post(url + path, headers, _chunks(2 * MiB, b'{"model": "', b'"}'))
    assert status in (413, None)
    (answered, read), = counter.results
    assert answered == 413 and read <= 2 * MiB


def test_declared_oversize_is_refused_before_reading(
        server: tuple[str, ReadCounter], tenant: Tenant) -> None:
    url, counter = server
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tenant.key.encode()
            + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: "
            + str(100 * UPLOAD_LIMIT).encode() + b"\r\n\r\n" + b"x" * 1000)
        response = sock.recv(65536)
    assert response.startswith(b"HTTP/1.1 413")
    (answered, read), = counter.results
    assert (answered, read) == (413, 0)
