"""A differential transparency suite: every method, status, body framing, keep-alive choice and HTTP version,
asked of an upstream directly and through the proxy. The status, the end-to-end headers and the body bytes must
be equal, and the connection to the proxy must serve the next request.

Where the proxy must differ, the comparison leaves out only what it has to: the hop-by-hop headers (RFC 9110
§7.6.1: ``Connection``, ``Keep-Alive``, ``Transfer-Encoding``), since the proxy frames each side of its own
connection (a body that ends with Ollama's connection goes to an HTTP/1.1 client chunked, so the client's
connection lives on), and ``X-Accel-Buffering: no``, which the proxy adds to streamed replies so that an nginx in
front of it does not buffer them. Interim ``100 Continue`` replies are skipped by both clients as HTTP requires.

The upstream is written at the byte level so that each framing is exactly what is asked for, and it answers as
Go's net/http does: no body for HEAD, 1xx, 204 and 304 (a HEAD keeps the length a GET would have), never a
chunked body to an HTTP/1.0 client.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httptools
import pytest

from ollama_metrics_proxy.app.server import build_registry, start
from tests.conftest import config_for

pytestmark = pytest.mark.both_loops

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS")
STATUSES = (100, 200, 204, 304, 400, 404, 500, 503)
FRAMINGS = ("length", "chunked", "close", "empty")
VERSIONS = ("1.1", "1.0")
KEEP_ALIVE = (True, False)
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "proxy-connection"})
ADDED_BY_THE_PROXY = frozenset({"x-accel-buffering"})
REASONS = {100: "Continue", 200: "OK", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
           404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}


def body_for(status: int) -> bytes:
    if status >= 400:
        return b'{"error":"status %d from the stand-in"}' % status
    return b'{"model":"llama3.2","pieces":["' + b'","'.join(b"piece %d" % n for n in range(40)) + b'"]}'


class RawRequest:
    """llhttp's callbacks for one request head and body."""

    def __init__(self) -> None:
        self.url = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        self.complete = True


def response_bytes(method: str, path: str, version: str, keep_alive: bool) -> tuple[bytes, bool]:
    """The reply to one request, and whether the connection stays open after it."""
    _, _, status_text, framing = path.split("/")
    status = int(status_text)
    interim = b""
    if status == 100:  # an interim 100 Continue, then the real reply
        interim, status = b"HTTP/1.1 100 Continue\r\n\r\n", 200
    body = b"" if framing == "empty" else body_for(status)
    headers = [b"Content-Type: application/json; charset=utf-8", b"Date: Thu, 03 Dec 2026 20:00:00 GMT",
               b"X-Stand-In: " + framing.encode()]
    bodiless = method == "HEAD" or status in (204, 304)
    if framing == "chunked" and version == "1.0":
        framing = "close"  # net/http never chunks to an HTTP/1.0 client
    if status == 204 or (status == 304 and framing == "chunked"):
        pass  # no framing headers at all (a 304 may carry the length a 200 would have, never a coding)
    elif framing in ("length", "empty"):
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
    stays_open = keep_alive and framing != "close"
    if not stays_open:
        headers.append(b"Connection: close")
    elif version == "1.0":
        headers.append(b"Connection: keep-alive")
    wire = interim + f"HTTP/1.1 {status} {REASONS[status]}\r\n".encode() + b"\r\n".join(headers) + b"\r\n\r\n"
    if not bodiless:
        if framing == "chunked":
            half = len(body) // 2
            wire += b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in (body[:half], body[half:]) if piece)
            wire += b"0\r\n\r\n"
        else:
            wire += body
    return wire, stays_open


async def serve_raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            request = RawRequest()
            parser = httptools.HttpRequestParser(request)
            while not request.complete:
                data = await reader.read(65536)
                if not data:
                    return
                parser.feed_data(data)
            method = parser.get_method().decode()
            wire, stays_open = response_bytes(method, request.url.decode(), parser.get_http_version(),
                                              parser.should_keep_alive())
            writer.write(wire)
            await writer.drain()
            if not stays_open:
                return
    except (ConnectionError, httptools.HttpParserError):
        return
    finally:
        writer.close()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    will_close: bool


def ask(connection: http.client.HTTPConnection, method: str, path: str, version: str, keep_alive: bool) -> Reply:
    connection._http_vsn_str = f"HTTP/{version}"  # type: ignore[attr-defined]
    connection._http_vsn = 11 if version == "1.1" else 10  # type: ignore[attr-defined]
    headers = {"Connection": "keep-alive" if keep_alive else "close"}
    body = b'{"model":"llama3.2"}' if method in ("POST", "PUT") else None
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    return Reply(response.status, tuple(response.getheaders()), data, response.will_close)


def end_to_end(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in headers
            if name.lower() not in HOP_BY_HOP | ADDED_BY_THE_PROXY]


def exchange_both(direct: tuple[str, int], proxied: tuple[str, int], method: str) -> list[str]:
    """Every case of one method, on one connection to each side while it lasts; the differences found."""
    differences: list[str] = []
    connections = {side: http.client.HTTPConnection(*address, timeout=10)
                   for side, address in (("direct", direct), ("proxied", proxied))}
    try:
        for status, framing, version, keep_alive in itertools.product(STATUSES, FRAMINGS, VERSIONS, KEEP_ALIVE):
            case = f"{method} {status} {framing} HTTP/{version} {'keep-alive' if keep_alive else 'close'}"
            path = f"/case/{status}/{framing}"
            replies = {side: ask(connection, method, path, version, keep_alive)
                       for side, connection in connections.items()}
            first, second = replies["direct"], replies["proxied"]
            if (first.status, end_to_end(first.headers), first.body) != (
                    second.status, end_to_end(second.headers), second.body):
                differences.append(f"{case}: direct {first} proxied {second}")
            if keep_alive and version == "1.1" and second.will_close:
                # Even where Ollama's connection ends with the body, the client's to the proxy need not.
                differences.append(f"{case}: the proxy closed a keep-alive connection")
            if not second.will_close:  # then it must serve the next request
                follow = ask(connections["proxied"], "GET", "/case/200/length", "1.1", True)
                if follow.status != 200 or follow.body != body_for(200):
                    differences.append(f"{case}: the next request on the proxy's connection got {follow}")
            for side, reply in replies.items():
                if reply.will_close:
                    connections[side].close()  # http.client reconnects on the next request
    finally:
        for connection in connections.values():
            connection.close()
    return differences


@pytest.fixture
async def raw_upstream() -> AsyncIterator[tuple[str, int]]:
    server = await asyncio.start_server(serve_raw, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[:2]
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("method", METHODS)
async def test_every_status_framing_and_version_reaches_the_client_as_sent(
    raw_upstream: tuple[str, int], method: str,
) -> None:
    host, port = raw_upstream
    running = await start(config_for(f"http://{host}:{port}"), registry=build_registry())
    try:
        assert running.proxy_address is not None
        differences = await asyncio.to_thread(exchange_both, (host, port),
                                              ("127.0.0.1", running.proxy_address.port), method)
    finally:
        await running.stop()
    assert differences == []
