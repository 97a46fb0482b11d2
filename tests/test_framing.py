"""Strict HTTP framing on both sides of the proxy.

From the upstream: a raw-socket server serves hostile response heads; anything invalid in a head is a 502 JSON
error before any byte reaches the client, counted upstream_error, never a 500 or a 200 cut short (RFC 9112 §6.3).
From clients: request-smuggling vectors on the API port, with an upstream that logs the exact bytes it receives:
it must see exactly one well-formed request for each request the proxy accepted, and nothing for one it refused.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from ollama_metrics_proxy.app.server import RunningProxy, start
from tests.conftest import ProxyUnderTest, config_for
from tests.test_relay import wait_for
from tests.test_upstream_client import Upstream, answer_every_request

pytestmark = pytest.mark.both_loops  # the relay behaves the same on asyncio's loop and uvloop

BODY = b'{"model":"llama3.2","response":"hello world","done":true}'


RelayTo = Callable[[bytes], Awaitable[tuple[Upstream, ProxyUnderTest]]]


@pytest.fixture
async def relay_to() -> AsyncIterator[RelayTo]:
    """Starts a proxy in front of a raw upstream answering every request with the given bytes."""
    started: list[tuple[Upstream, RunningProxy]] = []

    async def start_for(reply: bytes) -> tuple[Upstream, ProxyUnderTest]:
        upstream = Upstream(await answer_every_request(reply))
        await upstream.__aenter__()
        running = await start(config_for(upstream.url), registry=CollectorRegistry())
        started.append((upstream, running))
        return upstream, ProxyUnderTest(running)

    yield start_for
    for upstream, running in started:
        await running.stop()
        await upstream.__aexit__()


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)


async def test_content_length_with_chunked_is_dropped_and_the_body_arrives_whole(relay_to: RelayTo) -> None:
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n" + chunked(BODY))
    _, proxy = await relay_to(reply)
    async with aiohttp.ClientSession() as http, http.post(proxy.url + "/api/generate", data=b"{}") as response:
        assert response.status == 200 and "Content-Length" not in response.headers
        assert await response.read() == BODY
    await wait_for(lambda: proxy.value("ollama_requests_total", endpoint="/api/generate", model="llama3.2:latest",
                                       outcome="success") == 1)


@pytest.mark.parametrize(("head", "reason"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "transfer coding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n", "transfer coding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", "transfer coding"),
    (b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 600 High\r\nContent-Length: 0\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 200 OK\r\nX-Bad: a\rb\r\nContent-Length: 0\r\n\r\n", "control character"),
    (b"HTTP/1.1 200 OK\r\nX-Bad: a\nInjected: yes\r\nContent-Length: 0\r\n\r\n", "control character"),
    (b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 0\r\n\r\n", "control character"),
    (b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n  b\r\nContent-Length: 0\r\n\r\n", "bad header line"),
    (b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n", "bad header line"),
])
async def test_an_invalid_head_is_a_502_before_any_byte(relay_to: RelayTo, head: bytes, reason: str) -> None:
    _, proxy = await relay_to(head)
    async with aiohttp.ClientSession() as http, http.post(proxy.url + "/api/chat", data=b"{}") as response:
        status, body = response.status, await response.read()
    assert status == 502, body
    assert reason in json.loads(body)["error"]
    await wait_for(lambda: proxy.value("ollama_requests_total", endpoint="/api/chat", model="none",
                                       outcome="upstream_error") == 1)
    assert proxy.value("ollama_requests_total", endpoint="/api/chat", model="none", outcome="success") == 0


# ---------------------------------------------------------------- requests from clients


class Recorder:
    """An upstream that notes every byte it receives and answers each request head it finds with 200."""

    def __init__(self) -> None:
        self.received = bytearray()  # everything but the proxy's own polls of Ollama's state
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> Recorder:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                polled = b"User-Agent: Python" in head and head.startswith(b"GET /api/")
                received = bytearray() if polled else self.received
                received += head
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if b"transfer-encoding: chunked" in head.lower():
                    while True:
                        size_line = await reader.readuntil(b"\r\n")
                        received += size_line
                        size = int(size_line.split(b";")[0], 16)
                        data = await reader.readexactly(size + 2)
                        received += data
                        if size == 0:
                            break
                else:
                    received += await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" if not polled else
                             b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"models\":[]}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def requests(self) -> list[bytes]:
        return [b"X" for _ in range(self.received.count(b" HTTP/1.1\r\nHost: "))]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[Recorder, ProxyUnderTest]]:
    upstream = await Recorder().start()
    running = await start(config_for(upstream.url), registry=CollectorRegistry())
    yield upstream, ProxyUnderTest(running)
    await running.stop()
    await upstream.stop()


async def send_raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), timeout=3)
    finally:
        writer.close()


SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.mark.parametrize("vector", [
    # CL.TE and TE.CL: the second request hides in the body under one reading and not the other.
    b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n" + SMUGGLED,
    b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
    b"2c\r\n" + SMUGGLED + b"\r\n0\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    # obs-fold and bare LF in the head
    b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n X-Folded: 1\r\n\r\n{}" + SMUGGLED,
    b"POST /api/chat HTTP/1.1\nHost: localhost\nContent-Length: 2\n\n{}" + SMUGGLED,
    b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent-Length: 46\r\n\r\n{}" + SMUGGLED,
])
async def test_smuggling_vectors_reach_the_upstream_as_at_most_one_well_formed_request_each(
    recorded: tuple[Recorder, ProxyUnderTest], vector: bytes,
) -> None:
    upstream, proxy = recorded
    reply = await send_raw(int(proxy.url.rsplit(":", 1)[1]), vector)
    await asyncio.sleep(0.2)
    assert b"/admin" not in upstream.received, bytes(upstream.received)
    assert len(upstream.requests()) <= 1
    assert reply == b"" or reply.split(b" ", 2)[1] in (b"200", b"400")  # refused with a 400, or relayed as one


async def test_absolute_form_and_pipelined_requests(recorded: tuple[Recorder, ProxyUnderTest]) -> None:
    upstream, proxy = recorded
    port = int(proxy.url.rsplit(":", 1)[1])
    reply = await send_raw(port, b"GET http://evil.example/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400") and upstream.received == b""
    pipelined = b"".join(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}" for _ in range(3))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(pipelined)
    await writer.drain()
    replies = b""
    while replies.count(b"HTTP/1.1 200") < 3:
        replies += await asyncio.wait_for(reader.read(65536), timeout=3)
    writer.close()
    assert len(upstream.requests()) == 3
    assert upstream.received.count(b"POST /api/chat HTTP/1.1\r\n") == 3 and upstream.received.count(b"{}") == 3


async def test_a_slow_client_holds_the_upstream_back_instead_of_filling_memory() -> None:
    """64 MiB streamed as fast as the upstream can write; the client reads nothing for a while. The proxy pushes
    each piece straight to the client's socket, so once that is full it must stop reading the upstream: what the
    upstream managed to send stays within what socket buffers hold, and every byte still arrives in order."""
    piece = bytes(range(256)) * 256  # 64 KiB
    total = 1024
    sent = 0

    async def flood(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        head = await upstream.read_request(reader)
        if head is None or not head.startswith(b"POST"):  # the proxy's polls of Ollama's state
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"models\":[]}")
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(total):
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await writer.drain()
            sent += len(piece)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with Upstream(flood) as upstream:
        running = await start(config_for(upstream.url), registry=CollectorRegistry())
        try:
            async with aiohttp.ClientSession() as http, http.post(
                    f"http://127.0.0.1:{running.proxy_address.port}/api/pull", data=b"{}") as response:  # type: ignore[union-attr]
                await asyncio.sleep(1.0)  # the client reads nothing
                held_back = sent
                received = 0
                async for chunk in response.content.iter_any():
                    received += len(chunk)
            assert received == total * len(piece)
            assert held_back < 24 * 1024 * 1024, f"{held_back / 2**20:.0f} MiB read from the upstream unrelayed"
        finally:
            await running.stop()
