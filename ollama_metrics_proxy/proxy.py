"""The API port: every request is relayed to the upstream Ollama, byte for byte, while an observer watches.

Flow of one request (see ``Proxy.handle``): classify the endpoint → read the first request chunk (already in
the buffer for ordinary JSON bodies) to learn the model → open the upstream request, streaming the request body
→ on upstream headers, ``prepare()`` the client response at once → for each chunk: write it, then feed the
observer → ``write_eof()`` → record metrics once in ``finally``. A client that goes away cancels the handler,
which closes the upstream connection so Ollama stops generating.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final

import orjson
from aiohttp import hdrs, web

from ollama_metrics_proxy.content import CAPTURE_BYTES
from ollama_metrics_proxy.endpoints import BLOBS, classify
from ollama_metrics_proxy.exchange import Exchange, Outcome, client_left, outcome_for_response
from ollama_metrics_proxy.identity import ClientIdentity
from ollama_metrics_proxy.observe import Observation, Observer, is_streaming_type, observer_for
from ollama_metrics_proxy.observe.base import Clock
from ollama_metrics_proxy.observe.extract import find_model
from ollama_metrics_proxy.openai_usage import INJECT_ENDPOINTS, MAX_REWRITTEN_BODY, UsageStripper, with_include_usage
from ollama_metrics_proxy.recorder import Recorder
from ollama_metrics_proxy.upstream import (
    BodyFailed,
    ConnectFailed,
    ConnectTimeout,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
)

log = logging.getLogger(__name__)

# RFC 9110 §7.6.1: connection-specific headers are never forwarded. Host is set from the upstream URL, because
# Ollama on loopback rejects a foreign Host with 403; Expect is answered by this server itself.
HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})
REQUEST_ONLY_DROPPED: Final = frozenset({"host", "expect"})
MODEL_SNIFF_BYTES: Final = 64 * 1024


def forwardable(headers: Iterable[tuple[str, str]], connection: str | None,
                extra_dropped: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Copy header pairs, dropping hop-by-hop ones and any that ``connection`` (the Connection header) names.

    Keeps repeated headers and their order.
    """
    dropped = HOP_BY_HOP | extra_dropped
    if connection:
        dropped = dropped | {token.strip().lower() for token in connection.split(",")}
    return [(key, value) for key, value in headers if key.lower() not in dropped]


def json_error(status: int, message: str) -> web.Response:
    """An error in Ollama's own shape, so clients show the message as they would Ollama's."""
    return web.Response(
        status=status, body=orjson.dumps({"error": message}),
        headers={hdrs.CONTENT_TYPE: "application/json; charset=utf-8"},
    )


class Proxy:
    def __init__(self, upstream: UpstreamClient, recorder: Recorder,
                 clock: Clock = time.perf_counter, *, client_identity: ClientIdentity | None = None,
                 capture_content: bool = False, inject_openai_usage: bool = False,
                 host_allowed: Callable[[str | None], bool] | None = None) -> None:
        self._upstream = upstream
        self._recorder = recorder
        self._clock = clock
        self._client_identity = client_identity
        self._capture_content = capture_content
        self._inject_openai_usage = inject_openai_usage
        self._host_allowed = host_allowed
        self._handlers: set[asyncio.Task[object]] = set()  # requests in flight, for a graceful shutdown

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self._host_allowed is not None and not self._host_allowed(request.headers.get(hdrs.HOST)):
            # Ollama's own answer to a foreign Host on loopback: 403, empty body. Nothing is forwarded.
            self._recorder.metrics.refused.labels("api", "host").inc()
            return web.Response(status=403)
        if not request.raw_path.startswith("/"):
            # An absolute-form target ("GET http://elsewhere/ HTTP/1.1") would make this an open proxy.
            return json_error(400, "ollama-metrics-proxy forwards only to its configured upstream; "
                                   "send an origin-form request target such as /api/tags")
        exchange = Exchange(endpoint=classify(request.path), method=request.method, path=request.path,
                            started=self._clock(), client=request.remote or "", wall_started=time.time())
        if self._client_identity is not None:
            exchange.client_identity = self._client_identity(request.headers.get(self._client_identity.header))
        if self._capture_content:  # opt-in only: --log-content
            exchange.captured_request, exchange.captured_response = bytearray(), bytearray()
        body = RequestBody(request, exchange)
        in_flight = ""
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
                await _continue(request)
            await body.prime()
            if self._inject_openai_usage and exchange.endpoint in INJECT_ENDPOINTS:
                exchange.usage_injected = await body.add_include_usage()
            in_flight = self._recorder.start(exchange)
            return await self._relay(request, exchange, body)
        except asyncio.CancelledError:
            exchange.finish(client_left(exchange), self._clock())
            raise
        except ConnectionResetError:
            # The client left while headers or the last chunk were being written. A routine event, not an
            # error to log with a traceback: hand aiohttp a response it will find it cannot send.
            exchange.finish(client_left(exchange), self._clock())
            return web.Response(status=499)
        finally:
            exchange.finish(Outcome.SUCCESS, self._clock())
            self._recorder.finish(exchange, in_flight)
            self._handlers.discard(task)

    @property
    def in_flight(self) -> int:
        return len(self._handlers)

    async def drain(self, grace: float, cancel_wait: float) -> None:
        """Shutting down: wait up to ``grace`` seconds for the requests in flight, then cancel the rest (each is
        recorded as aborted, unless its reply was already complete) and give them ``cancel_wait`` to do so."""
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=grace)
        left = set(self._handlers)
        if left:
            log.warning("shutdown grace over: cutting %d requests still in flight", len(left))
            for task in left:
                task.cancel()
            await asyncio.wait(left, timeout=cancel_wait)

    async def _relay(self, request: web.BaseRequest, exchange: Exchange, body: RequestBody) -> web.StreamResponse:
        upstream_url = self._upstream.base_url
        # A rewritten body gets its own Content-Length from the upstream client.
        dropped = REQUEST_ONLY_DROPPED | {"content-length"} if exchange.usage_injected else REQUEST_ONLY_DROPPED
        try:
            upstream = await self._upstream.request(
                request.method, request.raw_path,
                forwardable(request.headers.items(), request.headers.get(hdrs.CONNECTION), dropped),
                body.payload() if request.body_exists else None,
            )
        except ConnectTimeout as exc:
            exchange.finish(Outcome.TIMEOUT, self._clock())
            return json_error(504, f"ollama-metrics-proxy: timed out connecting to upstream Ollama at "
                                   f"{upstream_url} ({exc})")
        except ConnectFailed as exc:
            exchange.finish(Outcome.UPSTREAM_UNREACHABLE, self._clock())
            return json_error(502, f"ollama-metrics-proxy: cannot reach upstream Ollama at {upstream_url}: {exc}")
        except UpstreamError as exc:
            exchange.finish(Outcome.UPSTREAM_ERROR, self._clock())
            return json_error(502, f"ollama-metrics-proxy: upstream Ollama at {upstream_url} {exc}")
        try:
            return await self._relay_response(request, exchange, upstream)
        finally:
            # Back to the pool if read to the end; otherwise the socket is closed, so that Ollama sees the
            # disconnect and stops generating.
            upstream.release()

    async def _relay_response(self, request: web.BaseRequest, exchange: Exchange,
                              upstream: UpstreamResponse) -> web.StreamResponse:
        head = upstream.head
        exchange.overhead_request = max(upstream.sent_at - exchange.started, 0.0)
        exchange.status = head.status
        exchange.content_type = head.get(hdrs.CONTENT_TYPE) or ""
        exchange.streaming = is_streaming_type(exchange.content_type)
        headers = forwardable(head.headers, head.get(hdrs.CONNECTION))
        if exchange.streaming:
            headers.append(("X-Accel-Buffering", "no"))  # an nginx in front must not buffer the stream either
        response = web.StreamResponse(status=head.status, reason=head.reason, headers=headers)
        await response.prepare(request)
        exchange.overhead_response = max(time.perf_counter() - upstream.head_at, 0.0) if upstream.head_at else None
        observer = self._observer(exchange)
        captured = exchange.captured_response
        read = upstream.read
        stripper = UsageStripper() if exchange.usage_injected and exchange.streaming else None
        try:
            while chunk := await read():
                relayed = chunk if stripper is None else stripper.feed(chunk)
                try:
                    if relayed:
                        await response.write(relayed)
                except ConnectionResetError:
                    exchange.finish(client_left(exchange, observer.observation), self._clock())
                    return response  # aiohttp notices the closed transport itself
                exchange.bytes_out += len(relayed)
                if captured is not None and len(captured) < CAPTURE_BYTES:
                    captured += relayed[: CAPTURE_BYTES - len(captured)]
                try:
                    observer.feed(chunk)  # the upstream's bytes: with injected usage, the figures are in them
                except Exception:
                    observer = self._observer_failed(observer)
            if stripper is not None and (rest := stripper.close()):
                await response.write(rest)
                exchange.bytes_out += len(rest)
        except BodyFailed as exc:
            exchange.finish(Outcome.UPSTREAM_ERROR, self._clock())
            log.warning("upstream broke off %s %s mid-response: it %s", request.method, request.path, exc)
            # Nothing more can be sent: cut the client's connection so it sees the reply end abnormally,
            # exactly as it would had it been connected to Ollama directly.
            _abort(request)
            return response
        finally:
            # Also on cancellation: what was relayed before the client left still counts.
            exchange.observation = self._close(observer)
        await response.write_eof()
        exchange.finish(outcome_for_response(exchange), self._clock())
        return response

    def _observer(self, exchange: Exchange) -> Observer:
        try:
            return observer_for(exchange.endpoint, exchange.status, exchange.content_type, self._clock)
        except Exception:
            self._recorder.count_internal_error("observe")
            return Observer(self._clock)

    def _observer_failed(self, observer: Observer) -> Observer:
        """An observer bug must not stop the relay: keep what it learned so far and stop observing."""
        self._recorder.count_internal_error("observe")
        replacement = Observer(self._clock)
        replacement.observation = observer.observation
        return replacement

    def _close(self, observer: Observer) -> Observation:
        try:
            return observer.close()
        except Exception:
            self._recorder.count_internal_error("observe")
            return observer.observation


async def _continue(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue`` here (the header is not forwarded), so the client sends its body.

    Ollama itself sends 100 only once it reads the body; the proxy reads it at once to stream it upstream.
    """
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the interim response is not part of the reply's size


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


class RequestBody:
    """Streams the client's request body upstream, reading its first chunk early to learn the model."""

    def __init__(self, request: web.BaseRequest, exchange: Exchange) -> None:
        self._request = request
        self._exchange = exchange
        self._first = b""
        self._rewritten: bytes | None = None

    async def prime(self) -> None:
        if not self._request.body_exists:
            return
        # A small body usually arrived with the headers: take it without a trip through the event loop.
        self._first = self._request.content.read_nowait() or await self._request.content.readany()
        self._note(self._first)
        if self._exchange.endpoint != BLOBS:  # uploads are model weights, not JSON
            self._exchange.request_model = find_model(self._first[:MODEL_SNIFF_BYTES])

    async def add_include_usage(self) -> bool:
        """``--openai-usage inject``: ask a streamed OpenAI request for usage; True when the body was rewritten.

        Needs the whole body, so only one of known, bounded length is considered."""
        length = self._request.content_length
        if not self._request.body_exists or length is None or length > MAX_REWRITTEN_BODY:
            return False
        body = bytearray(self._first)  # one growing buffer: a large chat body arrives in many pieces
        while len(body) < length and not self._request.content.at_eof():
            chunk = await self._request.content.readany()
            if not chunk:
                break
            self._note(chunk)
            body += chunk
        self._first = bytes(body)
        rewritten = with_include_usage(self._first) if len(self._first) == length else None
        if rewritten is None:
            return False
        self._first = self._rewritten = rewritten
        return True

    def payload(self) -> bytes | AsyncIterator[bytes]:
        """The whole body when its first read already held all of it (the usual small JSON request): sent in
        one write with the headers. Otherwise a stream, so uploads of any size pass with flat memory."""
        if self._rewritten is not None or (
                self._request.content_length == len(self._first) and self._request.content.at_eof()):
            return self._first
        return self.stream()

    async def stream(self) -> AsyncIterator[bytes]:
        if self._first:
            yield self._first
        async for chunk in self._request.content.iter_any():
            self._note(chunk)
            yield chunk

    def _note(self, chunk: bytes) -> None:
        self._exchange.bytes_in += len(chunk)
        captured = self._exchange.captured_request
        if captured is not None and len(captured) < CAPTURE_BYTES:
            captured += chunk[: CAPTURE_BYTES - len(captured)]
