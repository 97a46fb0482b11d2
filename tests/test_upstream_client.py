"""The relay's upstream client against scripted raw-TCP upstreams: pooling, retries, flow control, failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from ollama_metrics_proxy.app.server import start
from ollama_metrics_proxy.upstream import (
    BodyFailed,
    ConnectFailed,
    ResponseFailed,
    UpstreamClient,
    UpstreamResponse,
)
from ollama_metrics_proxy.upstream import client as upstream_client
from tests.conftest import ProxyUnderTest, config_for
from tests.test_relay import wait_for

pytestmark = pytest.mark.both_loops  # the relay behaves the same on asyncio's loop and uvloop

Script = Callable[["Upstream", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Upstream:
    """A raw TCP server on port 0 that runs ``script`` for each connection and notes what it saw."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.connections = 0
        self.heads: list[bytes] = []
        self.closed_by_client = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request head, its Content-Length body skipped; None when the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.closed_by_client.set()
            return None
        self.heads.append(head)
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                await reader.readexactly(int(line.split(b":")[1]))
        return head


async def answer_every_request(reply: bytes) -> Script:
    async def script(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await upstream.read_request(reader) is not None:
            writer.write(reply)
            await writer.drain()
    return script


async def body_of(response: UpstreamResponse) -> bytes:
    pieces = []
    while chunk := await response.read():
        pieces.append(chunk)
    response.release()
    return b"".join(pieces)


@contextlib.asynccontextmanager
async def client_for(url: str) -> AsyncIterator[UpstreamClient]:
    client = UpstreamClient(url, connect_timeout=2)
    try:
        yield client
    finally:
        client.close()


async def test_connections_are_reused_while_the_upstream_keeps_them() -> None:
    async with Upstream(await answer_every_request(OK)) as upstream, client_for(upstream.url) as client:
        for _ in range(3):
            assert await body_of(await client.request("POST", "/api/chat", [], b"{}")) == b"ok"
        assert upstream.connections == 1 and len(upstream.heads) == 3


async def test_a_connection_the_upstream_closes_is_not_reused() -> None:
    reply = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    async with Upstream(await answer_every_request(reply)) as upstream, client_for(upstream.url) as client:
        for _ in range(2):
            assert await body_of(await client.request("GET", "/api/tags", [])) == b"ok"
        assert upstream.connections == 2


async def test_an_unfinished_response_closes_its_connection() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"
    async with Upstream(await answer_every_request(reply)) as upstream, client_for(upstream.url) as client:
        response = await client.request("POST", "/api/generate", [], b"{}")
        assert await response.read() == b"partial"
        response.release()  # the relay gave up on it (the client left): Ollama must see the close
        await asyncio.wait_for(upstream.closed_by_client.wait(), timeout=2)


async def idle_close_on_second_request(upstream: Upstream, reader: asyncio.StreamReader,
                                       writer: asyncio.StreamWriter) -> None:
    """Answers the first request of the first connection, then closes it when the next request arrives (an
    upstream whose idle timeout fired as the request was sent); later connections answer everything."""
    first_connection = upstream.connections == 1
    while await upstream.read_request(reader) is not None:
        if first_connection and len(upstream.heads) == 2:
            return
        writer.write(OK)
        await writer.drain()


async def test_a_get_on_a_pooled_connection_closed_under_it_is_sent_again() -> None:
    async with Upstream(idle_close_on_second_request) as upstream, client_for(upstream.url) as client:
        assert await body_of(await client.request("GET", "/api/tags", [])) == b"ok"
        assert await body_of(await client.request("GET", "/api/tags", [])) == b"ok"
        assert upstream.connections == 2 and len(upstream.heads) == 3


@pytest.mark.parametrize("path", ["/api/pull", "/api/generate", "/api/create"])
async def test_a_post_is_never_sent_twice(path: str) -> None:
    """The upstream read the POST and closed without answering: it may have started a pull or a generation, so
    the request fails instead of running again (it did run twice: the upstream logged a POST /api/pull twice)."""
    async with Upstream(idle_close_on_second_request) as upstream, client_for(upstream.url) as client:
        assert await body_of(await client.request("POST", path, [], b"{}")) == b"ok"
        with pytest.raises(ResponseFailed, match="closed the connection"):
            await client.request("POST", path, [], b"{}")
        assert [head.split(b" ")[0] for head in upstream.heads] == [b"POST", b"POST"]  # once each, not thrice


async def test_a_post_with_an_idempotency_key_may_be_sent_again() -> None:
    async with Upstream(idle_close_on_second_request) as upstream, client_for(upstream.url) as client:
        key = [("Idempotency-Key", "a1b2")]
        assert await body_of(await client.request("POST", "/api/chat", key, b"{}")) == b"ok"
        assert await body_of(await client.request("POST", "/api/chat", key, b"{}")) == b"ok"
        assert upstream.connections == 2


async def close_after_answering(upstream: Upstream, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
    """Claims keep-alive but closes right after each answer (an idle timeout of zero, in effect)."""
    if await upstream.read_request(reader) is not None:
        writer.write(OK)
        await writer.drain()


async def test_a_pooled_connection_the_upstream_already_closed_is_not_used() -> None:
    """The close arrives with the answer; the next request, sent at once, must not go out on that socket."""
    async with Upstream(close_after_answering) as upstream, client_for(upstream.url) as client:
        for _ in range(5):
            assert await body_of(await client.request("POST", "/api/generate", [], b"{}")) == b"ok"
        assert upstream.connections == 5 and len(upstream.heads) == 5


async def test_connections_retire_before_the_upstreams_keep_alive_timeout() -> None:
    reply = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 2\r\n\r\nok"
    async with Upstream(await answer_every_request(reply)) as upstream, client_for(upstream.url) as client:
        assert await body_of(await client.request("POST", "/api/chat", [], b"{}")) == b"ok"
        await asyncio.sleep(0.05)  # timeout=1 minus the one-second margin: not to be reused at all
        assert await body_of(await client.request("POST", "/api/chat", [], b"{}")) == b"ok"
        assert upstream.connections == 2


async def test_a_streamed_body_is_never_sent_twice() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"{}"

    async with Upstream(idle_close_on_second_request) as upstream, client_for(upstream.url) as client:
        assert await body_of(await client.request("POST", "/api/chat", [], b"{}")) == b"ok"
        with pytest.raises(ResponseFailed, match="before sending a complete response head"):
            await client.request("POST", "/api/blobs/sha256:00", [], body())
        assert upstream.connections == 1


async def test_idle_connections_are_closed_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream_client, "IDLE_SECONDS", 0.1)
    async with Upstream(await answer_every_request(OK)) as upstream, client_for(upstream.url) as client:
        assert await body_of(await client.request("GET", "/api/ps", [])) == b"ok"
        await asyncio.wait_for(upstream.closed_by_client.wait(), timeout=2)


async def test_cancelling_while_waiting_for_the_answer_closes_the_connection() -> None:
    async def never_answer(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        await upstream.read_request(reader)  # returns None once the client closes

    async with Upstream(never_answer) as upstream, client_for(upstream.url) as client:
        request = asyncio.create_task(client.request("POST", "/api/generate", [], b"{}"))
        await wait_for(lambda: bool(upstream.heads))
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await asyncio.wait_for(upstream.closed_by_client.wait(), timeout=2)


async def test_reading_pauses_while_the_relay_has_not_caught_up() -> None:
    size = 64 * 1024 * 1024
    buffered_at_upstream: list[int] = []

    async def flood(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + bytes(size))
        await asyncio.sleep(0.5)  # the relay is not reading meanwhile
        buffered_at_upstream.append(writer.transport.get_write_buffer_size())
        await writer.drain()

    async with Upstream(flood) as upstream, client_for(upstream.url) as client:
        response = await client.request("GET", "/api/blobs/sha256:00", [])
        await asyncio.sleep(0.7)
        # Most of the body is still at the upstream: the client read no more than its pause threshold plus
        # what the kernel's socket buffers hold.
        assert buffered_at_upstream and buffered_at_upstream[0] > size // 2
        assert len(await body_of(response)) == size


async def test_an_early_answer_to_an_upload_is_relayed() -> None:
    async def refuse_upload(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!")
        await writer.drain()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield bytes(65536)
            await asyncio.sleep(0)

    async with Upstream(refuse_upload) as upstream, client_for(upstream.url) as client:
        response = await client.request("POST", "/api/blobs/sha256:00", [], endless())
        assert response.head.status == 413 and await body_of(response) == b"big!"


async def test_credentials_and_path_prefix_of_the_upstream_url() -> None:
    async with Upstream(await answer_every_request(OK)) as upstream:
        base = upstream.url.replace("http://", "http://user:p%40ss@") + "/ollama"
        async with client_for(base) as client:
            await body_of(await client.request("GET", "/api/tags?x=1", []))
            await body_of(await client.request("GET", "/api/tags", [("Authorization", "Bearer mine")]))
    first, second = upstream.heads
    host = upstream.url.removeprefix("http://")
    assert first.startswith(f"GET /ollama/api/tags?x=1 HTTP/1.1\r\nHost: {host}\r\n".encode())
    assert b"Authorization: Basic dXNlcjpwQHNz\r\n" in first  # user:p@ss
    assert b"Authorization: Bearer mine\r\n" in second and b"Basic" not in second


async def test_connect_failure_names_the_reason() -> None:
    async with Upstream(await answer_every_request(OK)) as upstream:
        url = upstream.url
    async with client_for(url) as client:
        with pytest.raises(ConnectFailed, match="Connection refused"):
            await client.request("GET", "/api/tags", [])


async def test_an_https_upstream_is_verified(self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    async with Upstream(await answer_every_request(OK), tls=tls) as upstream:
        async with client_for(upstream.url) as client:  # a certificate nobody vouches for
            with pytest.raises(ConnectFailed, match="TLS certificate verification failed: self-signed certificate"):
                await client.request("GET", "/api/tags", [])
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now trusted, as a private CA would be
        async with client_for(upstream.url) as client:
            assert await body_of(await client.request("GET", "/api/tags", [])) == b"ok"


async def test_garbage_mid_body_fails_the_body_after_what_came_before() -> None:
    async def garbage(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\nnot-hex\r\n")
        await writer.drain()
        await upstream.read_request(reader)  # until the client closes

    async with Upstream(garbage) as upstream, client_for(upstream.url) as client:
        response = await client.request("POST", "/api/generate", [], b"{}")
        assert await response.read() == b"first"
        with pytest.raises(BodyFailed, match="bad chunk-size line"):
            await response.read()
        response.release()


# ---------------------------------------------------------------- through the proxy


async def test_a_malformed_upstream_answer_is_a_502_that_says_why(http: aiohttp.ClientSession) -> None:
    async with Upstream(await answer_every_request(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")) as upstream:
        running = await start(config_for(upstream.url), registry=CollectorRegistry())
        proxy = ProxyUnderTest(running)
        try:
            async with http.post(proxy.url + "/api/chat", data=b'{"model":"llama3.2"}') as response:
                status, error = response.status, json.loads(await response.read())["error"]
        finally:
            await running.stop()
    assert status == 502
    assert error.startswith(f"ollama-metrics-proxy: upstream Ollama at {upstream.url} sent a bad status line")
    assert proxy.value("ollama_requests_total", endpoint="/api/chat", model="other", outcome="upstream_error") == 1


async def test_a_malformed_stream_breaks_the_client_connection(http: aiohttp.ClientSession) -> None:
    line = b'{"model":"llama3.2","response":"Hi","done":false}\n'

    async def garbage(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"%x\r\n%b\r\nxyz\r\n" % (len(line), line))
        await writer.drain()
        await upstream.read_request(reader)  # until the client closes

    async with Upstream(garbage) as upstream:
        running = await start(config_for(upstream.url), registry=CollectorRegistry())
        proxy = ProxyUnderTest(running)
        try:
            async with http.post(proxy.url + "/api/generate", data=b'{"model":"llama3.2"}') as response:
                assert await response.content.readline() == line
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.content.read()
            labels = {"endpoint": "/api/generate", "model": "llama3.2:latest"}
            await wait_for(lambda: proxy.value("ollama_requests_total", **labels, outcome="upstream_error") == 1)
            assert proxy.value("ollama_generation_tokens_total", **labels) == 1  # the line before the fault
        finally:
            await running.stop()
