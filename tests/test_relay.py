"""The API port is Ollama, byte for byte: recordings, headers, streaming, disconnects and failures."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import time
from collections.abc import Callable

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from yarl import URL

from ollama_metrics_proxy.app.server import start
from ollama_metrics_proxy.observe.ndjson import NdjsonObserver
from tests.conftest import ProxyUnderTest, config_for
from tests.fake_ollama import JSON, NOT_FOUND, ROUTES, UNKNOWN_MODEL, FakeOllama, Recording, rec

pytestmark = pytest.mark.both_loops  # the relay behaves the same on asyncio's loop and uvloop

# Headers each server sets for itself, or that legitimately differ hop by hop.
PER_HOP = {"date", "server", "connection", "keep-alive", "transfer-encoding", "x-accel-buffering"}
CASES = [(path, streamed) for path, streamed in ROUTES]


def request_for(path: str, streamed: bool) -> tuple[str, bytes | None]:
    if path in ("/api/tags", "/api/ps", "/api/version"):
        return "GET", None
    model = "all-minilm" if "embed" in path else "llama3.2"
    request: dict[str, object] = {"model": model, "stream": streamed, "prompt": "Why is the sky blue?"}
    if streamed and path.startswith("/v1/"):
        request["stream_options"] = {"include_usage": True}  # the recordings in ROUTES carry usage
    return "POST", json.dumps(request).encode()


async def fetch(http: aiohttp.ClientSession, method: str, url: str, body: bytes | None = None,
                **kwargs: object) -> tuple[int, dict[str, str], bytes]:
    async with http.request(method, url, data=body, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, dict(response.headers), await response.read()


def end_to_end(headers: dict[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items() if key.lower() not in PER_HOP}


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize(("path", "streamed"), CASES)
async def test_each_recording_reaches_the_client_unchanged(
    fake: FakeOllama, proxy: ProxyUnderTest, http: aiohttp.ClientSession, path: str, streamed: bool
) -> None:
    method, body = request_for(path, streamed)
    direct = await fetch(http, method, fake.url + path, body)
    proxied = await fetch(http, method, proxy.url + path, body)
    assert proxied[0] == direct[0] == ROUTES[(path, streamed)].status
    assert proxied[2] == direct[2] == ROUTES[(path, streamed)].body
    assert end_to_end(proxied[1]) == end_to_end(direct[1])


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/generate", json.dumps({"model": UNKNOWN_MODEL}).encode()),  # pre-stream 404 JSON
    ("GET", "/no/such/path", None),  # gin's plain-text 404
    ("GET", "/", None),  # the API port never answers / itself
    ("GET", "/metrics", None),  # nor /metrics: Ollama may grow its own
    ("DELETE", "/api/delete", b'{"model":"llama3.2"}'),  # DELETE with a body, empty 200
    ("POST", "/api/copy", b'{"source":"a","destination":"b"}'),  # empty 200
    ("HEAD", "/api/blobs/sha256:" + "a" * 64, None),  # HEAD keeps headers, no body
])
async def test_errors_empty_bodies_and_odd_methods_pass_unchanged(
    fake: FakeOllama, proxy: ProxyUnderTest, http: aiohttp.ClientSession, method: str, path: str,
    body: bytes | None,
) -> None:
    direct = await fetch(http, method, fake.url + path, body)
    seen_direct = fake.seen[-1]
    proxied = await fetch(http, method, proxy.url + path, body)
    seen_proxied = fake.seen[-1]
    assert proxied[0] == direct[0]
    assert proxied[2] == direct[2]
    assert end_to_end(proxied[1]) == end_to_end(direct[1])
    assert (seen_proxied.method, seen_proxied.path_qs, seen_proxied.body) == (
        seen_direct.method, seen_direct.path_qs, seen_direct.body)


async def test_request_line_and_headers_are_forwarded_faithfully(
    fake: FakeOllama, proxy: ProxyUnderTest,
) -> None:
    path = "/echo/api/blobs/sha256:" + "ab" * 32 + "?ts=1700000000&sig=a%2Fb%3D&empty="
    headers = {
        "Authorization": "Bearer secret", "Origin": "https://chat.example.com", "X-Custom": "kept",
        "Connection": "keep-alive, X-Conn-Scoped", "X-Conn-Scoped": "dropped", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Proxy-Authorization": "Basic eA==",
    }
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding")) as http:
        url = URL(proxy.url + path, encoded=True)  # send the bytes as written, no requoting
        async with http.post(url, data=b"x" * 10, headers=headers) as response:
            assert response.status == 200
            echoed = await response.json()
    received = {key.lower(): value for key, value in echoed["headers"].items()}
    assert echoed["raw_path"] == path
    assert received["host"] == fake.url.removeprefix("http://")  # Ollama's Host check sees itself
    assert received["authorization"] == "Bearer secret"
    assert received["origin"] == "https://chat.example.com"  # Ollama's CORS rules still decide
    assert received["x-custom"] == "kept"
    for hop in ("x-conn-scoped", "keep-alive", "te", "proxy-authorization", "user-agent", "accept-encoding"):
        assert hop not in received, hop
    assert echoed["body_length"] == 10


async def test_streamed_responses_ask_nginx_not_to_buffer(proxy: ProxyUnderTest, http: aiohttp.ClientSession) -> None:
    status, headers, _ = await fetch(http, "POST", proxy.url + "/api/generate", b'{"model":"llama3.2"}')
    assert status == 200 and headers["X-Accel-Buffering"] == "no"
    status, headers, _ = await fetch(http, "POST", proxy.url + "/api/generate",
                                     b'{"model":"llama3.2","stream":false}')
    assert "X-Accel-Buffering" not in headers


async def test_first_line_arrives_while_upstream_holds_the_rest(
    fake: FakeOllama, proxy: ProxyUnderTest, http: aiohttp.ClientSession,
) -> None:
    fake.gate = asyncio.Event()
    chunks = rec("generate_stream.ndjson").chunks
    async with http.post(proxy.url + "/api/generate", data=b'{"model":"llama3.2"}') as response:
        first = await asyncio.wait_for(response.content.readline(), timeout=5)
        assert first == chunks[0]
        assert not fake.gate.is_set()
        fake.gate.set()
        assert first + await response.read() == b"".join(chunks)


async def test_client_disconnect_mid_stream_closes_upstream_at_once(
    fake: FakeOllama, proxy: ProxyUnderTest, http: aiohttp.ClientSession,
) -> None:
    fake.gate = asyncio.Event()  # the stream would never end on its own
    response = await http.post(proxy.url + "/api/generate", data=b'{"model":"llama3.2"}')
    await response.content.readline()
    closed_at = time.perf_counter()
    response.close()
    await wait_for(lambda: bool(fake.disconnects), timeout=2)
    assert fake.disconnects[0] - closed_at < 0.1
    labels = {"endpoint": "/api/generate", "model": "llama3.2:latest"}
    await wait_for(lambda: proxy.value("ollama_requests_total", **labels, outcome="aborted") == 1)
    assert proxy.value("ollama_client_disconnects_total", **labels, phase="streaming") == 1
    # The one content chunk the client received still counts as generated work.
    assert proxy.value("ollama_generation_tokens_total", **labels) == 1
    assert proxy.value("ollama_requests_in_flight", **labels) == 0


async def test_client_disconnect_while_queued_closes_upstream(
    fake: FakeOllama, proxy: ProxyUnderTest, http: aiohttp.ClientSession,
) -> None:
    await fetch(http, "POST", proxy.url + "/api/generate", b'{"model":"llama3.2"}')  # admit the model label
    fake.headers_gate = asyncio.Event()  # Ollama is busy: no headers yet
    request = asyncio.create_task(fetch(http, "POST", proxy.url + "/api/generate", b'{"model":"llama3.2"}'))
    labels = {"endpoint": "/api/generate", "model": "llama3.2:latest"}
    await wait_for(lambda: proxy.value("ollama_requests_in_flight", **labels) == 1)
    request.cancel()
    closed_at = time.perf_counter()
    await wait_for(lambda: bool(fake.disconnects), timeout=2)
    assert fake.disconnects[0] - closed_at < 0.1
    await wait_for(lambda: proxy.value("ollama_client_disconnects_total", **labels,
                                       phase="before_first_token") == 1)
    assert proxy.value("ollama_requests_in_flight", **labels) == 0


async def test_upstream_down_answers_502_naming_it(http: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    running = await start(config_for(dead), registry=CollectorRegistry())
    proxy = ProxyUnderTest(running)
    try:
        status, headers, body = await fetch(http, "POST", proxy.url + "/api/chat", b'{"model":"llama3.2"}')
        assert status == 502
        assert headers["Content-Type"] == "application/json; charset=utf-8"
        error = json.loads(body)["error"]
        assert dead in error and "cannot reach upstream" in error
        assert proxy.value("ollama_requests_total", endpoint="/api/chat", model="other",
                           outcome="upstream_unreachable") == 1
    finally:
        await running.stop()


async def test_upstream_dying_mid_stream_breaks_the_client_connection(
    fake: FakeOllama, proxy: ProxyUnderTest, http: aiohttp.ClientSession,
) -> None:
    fake.die_after = 2
    chunks = rec("generate_stream.ndjson").chunks
    async with http.post(proxy.url + "/api/generate", data=b'{"model":"llama3.2"}') as response:
        assert response.status == 200
        received = [await response.content.readline(), await response.content.readline()]
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.content.read()
    assert received == chunks[:2]
    labels = {"endpoint": "/api/generate", "model": "llama3.2:latest"}
    await wait_for(lambda: proxy.value("ollama_requests_total", **labels, outcome="upstream_error") == 1)
    assert proxy.value("ollama_generation_tokens_total", **labels) == 2


async def test_in_band_error_line_counts_as_upstream_error(
    fake: FakeOllama, proxy: ProxyUnderTest, http: aiohttp.ClientSession,
) -> None:
    fake.override["/api/generate"] = rec("generate_midstream_error.ndjson")
    status, _, body = await fetch(http, "POST", proxy.url + "/api/generate", b'{"model":"gemma4"}')
    assert status == 200 and body == rec("generate_midstream_error.ndjson").body
    assert proxy.value("ollama_requests_total", endpoint="/api/generate", model="gemma4:latest",
                       outcome="upstream_error") == 1


async def test_openai_stream_without_done_counts_as_upstream_error(
    fake: FakeOllama, proxy: ProxyUnderTest, http: aiohttp.ClientSession,
) -> None:
    fake.override["/v1/chat/completions"] = rec("openai_chat_midstream_error.sse")
    await fetch(http, "POST", proxy.url + "/v1/chat/completions", b'{"model":"llama3.2","stream":true}')
    assert proxy.value("ollama_requests_total", endpoint="/v1/chat/completions", model="llama3.2:latest",
                       outcome="upstream_error") == 1


async def test_rejected_model_never_mints_a_label(
    proxy: ProxyUnderTest, http: aiohttp.ClientSession,
) -> None:
    for _ in range(3):
        status, _, _ = await fetch(http, "POST", proxy.url + "/api/generate",
                                   json.dumps({"model": UNKNOWN_MODEL}).encode())
        assert status == NOT_FOUND.status
    assert proxy.value("ollama_requests_total", endpoint="/api/generate", model="other",
                       outcome="client_error") == 3
    assert proxy.value("ollama_requests_total", endpoint="/api/generate", model=UNKNOWN_MODEL + ":latest",
                       outcome="client_error") == 0


async def test_model_label_stops_growing_at_the_limit(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    running = await start(config_for(fake.url, max_models=2), registry=CollectorRegistry())
    proxy = ProxyUnderTest(running)
    try:
        fake.override["/api/generate"] = rec("generate.json")
        await fetch(http, "POST", proxy.url + "/api/generate", b'{"model":"llama3.2"}')
        fake.override["/api/embed"] = rec("embed.json")
        await fetch(http, "POST", proxy.url + "/api/embed", b'{"model":"all-minilm"}')
        fake.override["/api/generate"] = rec("generate_midstream_error.ndjson")  # names gemma4: a third model
        await fetch(http, "POST", proxy.url + "/api/generate", b'{"model":"gemma4"}')
        assert proxy.value("ollama_requests_total", endpoint="/api/generate", model="other",
                           outcome="upstream_error") == 1
        assert proxy.value("ollama_metrics_proxy_label_overflows_total", label="model") == 1
    finally:
        await running.stop()


async def test_a_failing_observer_never_breaks_the_request(
    proxy: ProxyUnderTest, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(self: NdjsonObserver, chunk: bytes) -> None:
        raise RuntimeError("bug in metrics code")

    monkeypatch.setattr(NdjsonObserver, "feed", explode)
    status, _, body = await fetch(http, "POST", proxy.url + "/api/generate", b'{"model":"llama3.2"}')
    assert status == 200 and body == rec("generate_stream.ndjson").body
    assert proxy.value("ollama_metrics_proxy_internal_errors_total", stage="observe") == 1


async def test_absolute_form_targets_are_refused(proxy: ProxyUnderTest) -> None:
    port = int(proxy.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET http://example.com/api/tags HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 400")
    assert b"forwards only to its configured upstream" in reply


async def test_no_total_timeout_on_slow_replies(
    fake: FakeOllama, proxy: ProxyUnderTest, http: aiohttp.ClientSession,
) -> None:
    # The relay's upstream client times connecting only; prove a slow stream is not cut at any small bound.
    assert proxy.running.upstream.connect_timeout == proxy.running.config.connect_timeout
    fake.delay = 0.3
    status, _, body = await fetch(http, "POST", proxy.url + "/api/generate", b'{"model":"llama3.2"}')
    assert status == 200 and body == rec("generate_stream.ndjson").body



async def test_connect_timeout_answers_504_and_counts_timeout(http: aiohttp.ClientSession) -> None:
    """A listener whose accept queue is full drops new SYNs, so connecting hangs until --connect-timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the accept queue; later connection attempts get no answer
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    running = await start(config_for(f"http://127.0.0.1:{port}", connect_timeout=0.3),
                          registry=CollectorRegistry())
    proxy = ProxyUnderTest(running)
    try:
        status, _, body = await fetch(http, "POST", proxy.url + "/api/chat", b'{"model":"llama3.2"}')
        assert status == 504
        assert "timed out connecting to upstream Ollama" in json.loads(body)["error"]
        assert proxy.value("ollama_requests_total", endpoint="/api/chat", model="other", outcome="timeout") == 1
    finally:
        await running.stop()
        for sock in (*fillers, listener):
            sock.close()


async def test_expect_100_continue_uploads_pass(fake: FakeOllama, proxy: ProxyUnderTest,
                                                http: aiohttp.ClientSession) -> None:
    blob = b"weights" * 1000
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    async with http.post(f"{proxy.url}/api/blobs/{digest}", data=blob, expect100=True) as response:
        assert response.status == 201
    assert fake.blob_bytes == len(blob)


async def test_malformed_request_bytes_never_break_the_proxy(
    fake: FakeOllama, proxy: ProxyUnderTest, http: aiohttp.ClientSession,
) -> None:
    garbage = b'\x00\xff{"model":"\xfe\xfd' + bytes(range(256)) * 4
    status, _, body = await fetch(http, "POST", proxy.url + "/api/chat", garbage)
    assert status == 200 and body == rec("chat_stream.ndjson").body  # relayed; Ollama decides what it means
    assert fake.seen[-1].body == garbage
    port = int(proxy.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x16\x03\x01 not http at all\r\n\r\n")  # say, a TLS hello sent to a plain-HTTP port
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    assert reply.split(b"\r\n")[0].endswith(b" 400 Bad Request")
    assert b"Received HTTPS traffic on an HTTP port" in reply  # a precise reason, from aiohttp
    status, _, _ = await fetch(http, "GET", proxy.url + "/api/tags")
    assert status == 200  # still serving


async def test_overlong_model_names_count_as_other(
    proxy: ProxyUnderTest, fake: FakeOllama, http: aiohttp.ClientSession,
) -> None:
    """A 512-character model name never becomes a label value (100 such names made /metrics 15.7 MB)."""
    for index in range(20):
        name = f"m{index}-" + "x" * 510
        reply = {"model": name, "response": "hi", "done": True, "done_reason": "stop", "eval_count": 1}
        fake.override["/api/generate"] = Recording("long.json", JSON, data=json.dumps(reply).encode())
        status, _, _ = await fetch(http, "POST", proxy.url + "/api/generate", json.dumps({"model": name}).encode())
        assert status == 200
    assert proxy.value("ollama_requests_total", endpoint="/api/generate", model="other", outcome="success") == 20
    assert proxy.value("ollama_metrics_proxy_label_overflows_total", label="model") == 20
    async with http.get(proxy.metrics_url + "/metrics") as response:
        assert "x" * 129 not in await response.text()


async def test_a_full_ollama_queue_is_the_busy_outcome(
    proxy: ProxyUnderTest, fake: FakeOllama, http: aiohttp.ClientSession,
) -> None:
    """Ollama's answer when OLLAMA_MAX_QUEUE is full: its own outcome, an error on the server's side."""
    busy = b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
    fake.override["/api/chat"] = Recording("busy.json", JSON, status=503, data=busy)
    status, _, body = await fetch(http, "POST", proxy.url + "/api/chat", b'{"model":"llama3.2"}')
    assert status == 503 and body == busy  # relayed untouched
    fake.override["/api/chat"] = Recording("other.json", JSON, status=503, data=b'{"error":"runner crashed"}')
    await fetch(http, "POST", proxy.url + "/api/chat", b'{"model":"llama3.2"}')
    labels = {"endpoint": "/api/chat", "model": "llama3.2:latest"}  # installed, so admitted by the poller
    await wait_for(lambda: proxy.value("ollama_requests_total", **labels, outcome="server_error") == 1)
    assert proxy.value("ollama_requests_total", **labels, outcome="busy") == 1
    async with http.get(proxy.metrics_url + "/-/stats") as response:
        assert (await response.json())["errors"] == 2
