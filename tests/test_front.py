"""The API port's own HTTP/1.1 server (``front``), as clients other than aiohttp's see it: raw sockets speaking
HTTP/1.0, HEAD, Upgrade, oversized heads, broken chunked bodies, handler faults and idle connections."""

from __future__ import annotations

import asyncio
import json
from email.utils import parsedate_to_datetime

import pytest
from prometheus_client import CollectorRegistry

from ollama_metrics_proxy.app.server import start
from ollama_metrics_proxy.relay.front import MAX_HEAD_BYTES
from ollama_metrics_proxy.relay.proxy import Proxy
from tests.conftest import ProxyUnderTest, config_for
from tests.fake_ollama import FakeOllama, rec
from tests.test_relay import wait_for

pytestmark = pytest.mark.both_loops  # the relay behaves the same on asyncio's loop and uvloop

GENERATE = b'{"model":"llama3.2","prompt":"Why is the sky blue?"}'
TAGS_AND_CLOSE = b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def port_of(proxy: ProxyUnderTest) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


async def exchange_raw(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send ``data``, read until the proxy closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout=timeout)
    finally:
        writer.close()


def split_response(reply: bytes) -> tuple[bytes, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def dechunk(body: bytes) -> bytes:
    """Chunked transfer coding, decoded independently of the code under test."""
    out, rest = b"", body
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out += rest[:size]
        assert rest[size:size + 2] == b"\r\n"
        rest = rest[size + 2:]


async def test_an_http_1_0_client_gets_the_stream_delimited_by_the_close(fake: FakeOllama,
                                                                        proxy: ProxyUnderTest) -> None:
    request = b"POST /api/generate HTTP/1.0\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%b" % (
        len(GENERATE), GENERATE)
    status, headers, body = split_response(await exchange_raw(port_of(proxy), request))
    assert status == b"HTTP/1.1 200 OK"
    assert "transfer-encoding" not in headers and "content-length" not in headers  # HTTP/1.0 has no chunks
    assert headers["connection"] == "close"
    assert body == rec("generate_stream.ndjson").body
    await wait_for(lambda: proxy.value("ollama_requests_total", endpoint="/api/generate", model="llama3.2:latest",
                                       outcome="success") == 1)


async def test_keep_alive_requests_are_answered_in_order_with_exact_chunked_bodies(
    fake: FakeOllama, proxy: ProxyUnderTest,
) -> None:
    one = b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%b" % (
        len(GENERATE), GENERATE)
    head = b"HEAD /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n"
    last = b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    reply = await exchange_raw(port_of(proxy), one + head + last)
    first, rest = reply.split(b"0\r\n\r\n", 1)
    status, headers, body = split_response(first + b"0\r\n\r\n")
    assert status == b"HTTP/1.1 200 OK" and headers["transfer-encoding"] == "chunked"
    assert dechunk(body) == rec("generate_stream.ndjson").body
    head_status, _, after_head = split_response(rest)
    assert head_status == b"HTTP/1.1 200 OK"  # a reply to HEAD carries no body: the next reply follows at once
    tags_status, tags_headers, tags_body = split_response(after_head)
    assert tags_status == b"HTTP/1.1 200 OK" and tags_headers["connection"] == "close"
    assert tags_body == rec("tags.json").body
    assert int(tags_headers["content-length"]) == len(tags_body)


async def test_an_oversized_request_head_is_refused_with_431(fake: FakeOllama, proxy: ProxyUnderTest) -> None:
    big = b"X-Filler: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n"
    reply = await exchange_raw(port_of(proxy), b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n" + big + b"\r\n")
    status, _, body = split_response(reply)
    assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert "request head larger than" in json.loads(body)["error"]
    assert not any("X-Filler" in seen.headers for seen in fake.seen)  # nothing was forwarded
    reply = await exchange_raw(port_of(proxy), TAGS_AND_CLOSE)
    assert reply.startswith(b"HTTP/1.1 200 OK")


async def test_an_upgrade_request_is_relayed_without_the_upgrade_and_the_connection_closes(
    fake: FakeOllama, proxy: ProxyUnderTest,
) -> None:
    request = (b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
               b"GET /api/version?after=upgrade HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, headers, body = split_response(await exchange_raw(port_of(proxy), request))
    assert status == b"HTTP/1.1 200 OK" and headers["connection"] == "close"
    assert body == rec("tags.json").body  # and nothing after it: bytes after an upgrade request are not HTTP
    assert not any("after=upgrade" in seen.path_qs for seen in fake.seen)
    assert not any("upgrade" in {name.lower() for name in seen.headers} for seen in fake.seen)


async def test_a_chunked_body_that_breaks_off_malformed_closes_the_connection_and_is_recorded(
    fake: FakeOllama, proxy: ProxyUnderTest,
) -> None:
    request = (b"POST /api/blobs/sha256:" + b"0" * 64 + b" HTTP/1.1\r\nHost: localhost\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\nzz\r\n")
    reply = await exchange_raw(port_of(proxy), request)
    assert b"500" not in reply.split(b"\r\n", 1)[0]
    await wait_for(lambda: proxy.value("ollama_requests_total", endpoint="/api/blobs", model="none",
                                       outcome="aborted") == 1)
    reply = await exchange_raw(port_of(proxy), TAGS_AND_CLOSE)
    assert reply.startswith(b"HTTP/1.1 200 OK")  # still serving


async def test_a_fault_in_the_handler_is_a_500_in_ollamas_shape_without_a_traceback(
    fake: FakeOllama, proxy: ProxyUnderTest, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Proxy, "_relay", broken)
    reply = await exchange_raw(port_of(proxy), b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, headers, body = split_response(reply)
    assert status == b"HTTP/1.1 500 Internal Server Error" and headers["connection"] == "close"
    assert parsedate_to_datetime(headers["date"]).tzinfo is not None  # RFC 9110 §6.6.1, in GMT
    assert json.loads(body) == {"error": "ollama-metrics-proxy: internal error; see the proxy's log"}
    assert b"Traceback" not in reply and b"a bug" not in reply


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(fake: FakeOllama) -> None:
    running = await start(config_for(fake.url, idle_timeout=0.3), registry=CollectorRegistry())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.proxy_address.port
                                                       if running.proxy_address else 0)
        writer.write(b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), timeout=3)  # returns once the proxy closes
        writer.close()
        status, _, body = split_response(reply)
        assert status == b"HTTP/1.1 200 OK" and body == rec("tags.json").body
    finally:
        await running.stop()


async def test_garbage_after_a_pipelined_request_is_answered_400_after_it(fake: FakeOllama,
                                                                          proxy: ProxyUnderTest) -> None:
    request = b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n\x16\x03\x01 not http\r\n\r\n"
    reply = await exchange_raw(port_of(proxy), request)
    status, headers, rest = split_response(reply)
    assert status == b"HTTP/1.1 200 OK"
    length = int(headers["content-length"])
    assert rest[:length] == rec("tags.json").body
    refusal_status, refusal_headers, refusal_body = split_response(rest[length:])
    assert refusal_status == b"HTTP/1.1 400 Bad Request" and refusal_headers["connection"] == "close"
    assert "Received HTTPS traffic on an HTTP port" in json.loads(refusal_body)["error"]


async def test_a_stop_closes_idle_connections_and_busy_ones_after_their_response(fake: FakeOllama) -> None:
    running = await start(config_for(fake.url), registry=CollectorRegistry())
    port = running.proxy_address.port if running.proxy_address else 0
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    idle_writer.write(b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await idle_writer.drain()
    first = await asyncio.wait_for(idle_reader.readuntil(b"\r\n\r\n"), timeout=3)
    assert first.startswith(b"HTTP/1.1 200 OK")
    fake.delay = 0.05  # a stream that takes a while
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
    busy_writer.write(b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%b" % (
        len(GENERATE), GENERATE))
    await busy_writer.drain()
    head = await asyncio.wait_for(busy_reader.readuntil(b"\r\n\r\n"), timeout=3)
    assert head.startswith(b"HTTP/1.1 200 OK")
    await running.stop(grace=10)
    assert await asyncio.wait_for(idle_reader.read(), timeout=3) == rec("tags.json").body  # then closed
    assert dechunk(await asyncio.wait_for(busy_reader.read(), timeout=10)) == rec("generate_stream.ndjson").body
    idle_writer.close()
    busy_writer.close()
