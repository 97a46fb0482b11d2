"""The API port: every request is relayed to the upstream Ollama, byte for byte, while an observer watches.

Flow of one request (see ``Proxy.handle``; the HTTP server is ``front``): classify the endpoint → read the first
request chunk (already in the buffer for ordinary JSON bodies) to learn the model → open the upstream request,
streaming the request body → on the upstream's response head, write the client's response head at once → each
piece of body, as the upstream connection reads it, is written to the client and fed to the observer
(``BodySink``) → the end of the body → record metrics once in ``finally``. A client that goes away cancels the
handler, which closes the upstream connection so Ollama stops generating.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final

from ollama_metrics_proxy.endpoints import BLOBS, classify, is_inference
from ollama_metrics_proxy.metrics.recorder import RequestRecorder
from ollama_metrics_proxy.observe import Observation, Observer, is_streaming_type, observer_for
from ollama_metrics_proxy.observe.base import Clock
from ollama_metrics_proxy.observe.exchange import Exchange, Outcome, client_left, outcome_for_response
from ollama_metrics_proxy.observe.extract import find_model, find_num_ctx
from ollama_metrics_proxy.relay.openai_usage import (
    INJECT_ENDPOINTS,
    MAX_REWRITTEN_BODY,
    UsageStripper,
    with_include_usage,
)
from ollama_metrics_proxy.relay.request import Request, json_body
from ollama_metrics_proxy.relay.tracecontext import TraceStarter, traceparent
from ollama_metrics_proxy.upstream import (
    BodyFailed,
    ConnectFailed,
    ConnectTimeout,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
)
from ollama_metrics_proxy.usage.content import CAPTURE_BYTES
from ollama_metrics_proxy.usage.identity import ClientIdentity

log = logging.getLogger(__name__)

# RFC 9110 §7.6.1: connection-specific headers are never forwarded. Host is set from the upstream URL, because
# Ollama on loopback rejects a foreign Host with 403; Expect is answered by this server itself (both below).
HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# What each direction drops, computed once (the relay picks one per request).
REQUEST_DROPPED: Final = HOP_BY_HOP | {"host", "expect"}
REWRITTEN_REQUEST_DROPPED: Final = REQUEST_DROPPED | {"content-length"}  # the body gets its own length
RESPONSE_DROPPED: Final = HOP_BY_HOP
STRIPPED_RESPONSE_DROPPED: Final = HOP_BY_HOP | {"content-length"}  # the body is rewritten on the way
MODEL_SNIFF_BYTES: Final = 64 * 1024


def forwardable(headers: Iterable[tuple[str, str]], connection: str | None,
                dropped: frozenset[str]) -> list[tuple[str, str]]:
    """Copy header pairs, leaving out those named in ``dropped`` (lower-case; the hop-by-hop ones among them)
    and any that ``connection`` (the Connection header) names.

    Keeps repeated headers and their order.
    """
    if connection:
        dropped = dropped | {token.strip().lower() for token in connection.split(",")}
    return [(key, value) for key, value in headers if key.lower() not in dropped]


class Proxy:
    def __init__(self, upstream: UpstreamClient, recorder: RequestRecorder,
                 clock: Clock = time.perf_counter, *, client_identity: ClientIdentity | None = None,
                 capture_content: bool = False, inject_openai_usage: bool = False,
                 host_allowed: Callable[[str | None], bool] | None = None,
                 tracing: TraceStarter | None = None) -> None:
        self._upstream = upstream
        self._tracing = tracing  # --otlp-endpoint: inference requests become spans
        self._recorder = recorder
        self._clock = clock
        self._client_identity = client_identity
        self._capture_content = capture_content
        self._inject_openai_usage = inject_openai_usage
        self._host_allowed = host_allowed
        self._handlers: set[asyncio.Task[object]] = set()  # requests in flight, for a graceful shutdown

    async def handle(self, request: Request) -> None:
        if self._host_allowed is not None and not self._host_allowed(request.header("host")):
            # Ollama's own answer to a foreign Host on loopback: 403, empty body. Nothing is forwarded.
            self._recorder.count_refused("api", "host")
            request.reply(403)
            return
        if not request.raw_path.startswith("/"):
            # An absolute-form target ("GET http://elsewhere/ HTTP/1.1") would make this an open proxy.
            request.reply(400, json_body("ollama-metrics-proxy forwards only to its configured upstream; "
                                         "send an origin-form request target such as /api/tags"))
            return
        path = request.path
        exchange = Exchange(endpoint=classify(path, request.method), method=request.method, path=path,
                            started=self._clock(), client=request.remote, wall_started=time.time())
        if self._tracing is not None and is_inference(exchange.endpoint):
            exchange.trace = self._tracing.start(request.header("traceparent"))
        if self._client_identity is not None:
            exchange.client_identity = self._client_identity(request.header(self._client_identity.header))
        if self._capture_content:  # opt-in only: --log-content
            exchange.captured_request, exchange.captured_response = bytearray(), bytearray()
        body = RequestBody(request, exchange)
        in_flight = ""
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            expect = request.header("expect")
            if expect is not None and expect.lower() == "100-continue":
                # Answered here (the header is not forwarded), so the client sends its body. Ollama itself sends
                # 100 only once it reads the body; the proxy reads it at once to stream it upstream.
                request.send_continue()
            await body.prime()
            if self._inject_openai_usage and exchange.endpoint in INJECT_ENDPOINTS:
                exchange.usage_injected = await body.add_include_usage()
            in_flight = self._recorder.start(exchange)
            await self._relay(request, exchange, body)
        except asyncio.CancelledError:
            exchange.finish(client_left(exchange), self._clock())
            raise
        except ConnectionResetError:
            # The client broke off while sending its request body: a routine event, not an error to log.
            exchange.finish(client_left(exchange), self._clock())
            request.abort()
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

    async def _relay(self, request: Request, exchange: Exchange, body: RequestBody) -> None:
        upstream_url = self._upstream.base_url
        # A rewritten body gets its own Content-Length from the upstream client.
        dropped = REWRITTEN_REQUEST_DROPPED if exchange.usage_injected else REQUEST_DROPPED
        headers = forwardable(request.headers, request.header("connection"), dropped)
        if exchange.trace is not None:  # Ollama sees this request's span as its parent, not the caller's
            headers = [(name, value) for name, value in headers if name.lower() != "traceparent"]
            headers.append(("traceparent", traceparent(exchange.trace)))
        try:
            upstream = await self._upstream.request(
                request.method, request.raw_path, headers, body.payload() if request.body_exists else None,
            )
        except ConnectTimeout as exc:
            exchange.finish(Outcome.TIMEOUT, self._clock())
            request.reply(504, json_body(f"ollama-metrics-proxy: timed out connecting to upstream Ollama at "
                                         f"{upstream_url} ({exc})"))
            return
        except ConnectFailed as exc:
            exchange.finish(Outcome.UPSTREAM_UNREACHABLE, self._clock())
            request.reply(502, json_body(f"ollama-metrics-proxy: cannot reach upstream Ollama at {upstream_url}: "
                                         f"{exc}"))
            return
        except UpstreamError as exc:
            exchange.finish(Outcome.UPSTREAM_ERROR, self._clock())
            request.reply(502, json_body(f"ollama-metrics-proxy: upstream Ollama at {upstream_url} {exc}"))
            return
        try:
            await self._relay_response(request, exchange, upstream)
        finally:
            # Back to the pool if read to the end; otherwise the socket is closed, so that Ollama sees the
            # disconnect and stops generating.
            upstream.release()

    async def _relay_response(self, request: Request, exchange: Exchange, upstream: UpstreamResponse) -> None:
        head = upstream.head
        exchange.overhead_request = max(upstream.sent_at - exchange.started, 0.0)
        exchange.status = head.status
        exchange.content_type = head.get("content-type") or ""
        exchange.streaming = is_streaming_type(exchange.content_type)
        stripper = UsageStripper() if exchange.usage_injected and exchange.streaming else None
        headers = forwardable(head.headers, head.get("connection"),
                              STRIPPED_RESPONSE_DROPPED if stripper is not None else RESPONSE_DROPPED)
        if exchange.streaming:
            headers.append(("X-Accel-Buffering", "no"))  # an nginx in front must not buffer the stream either
        request.start(head.status, head.reason, headers)
        exchange.overhead_response = max(time.perf_counter() - upstream.head_at, 0.0) if upstream.head_at else None
        sink = BodySink(request, exchange, self._observer(exchange), stripper, self._observer_failed)
        request.watch_writable(upstream.pause, upstream.resume)
        try:
            await upstream.push_to(sink)
            if stripper is not None and (rest := stripper.close()):
                sink.relay(rest)
        except BodyFailed as exc:
            exchange.finish(Outcome.UPSTREAM_ERROR, self._clock())
            log.warning("upstream broke off %s %s mid-response: it %s", request.method, exchange.path, exc)
            # Nothing more can be sent: cut the client's connection so it sees the reply end abnormally,
            # exactly as it would had it been connected to Ollama directly.
            request.abort()
            return
        finally:
            # Also on cancellation: what was relayed before the client left still counts.
            exchange.observation = self._close(sink.observer)
        request.finish()
        exchange.finish(outcome_for_response(exchange), self._clock())

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


class BodySink:
    """Where the upstream's body goes, piece by piece, called from the upstream connection's read callback: each
    piece is framed and written to the client's socket, then shown to the observer. No task is woken and nothing
    is awaited per piece; the socket's flow control holds the upstream back instead (``watch_writable``)."""

    __slots__ = ("_captured", "_exchange", "_observer_failed", "_stripper", "_write", "observer")

    def __init__(self, request: Request, exchange: Exchange, observer: Observer, stripper: UsageStripper | None,
                 observer_failed: Callable[[Observer], Observer]) -> None:
        self._write = request.write
        self._exchange = exchange
        self._captured = exchange.captured_response
        self._stripper = stripper
        self._observer_failed = observer_failed
        self.observer = observer

    def __call__(self, chunk: bytes) -> None:
        relayed = chunk if self._stripper is None else self._stripper.feed(chunk)
        if relayed:
            self.relay(relayed)
        try:
            self.observer.feed(chunk)  # the upstream's bytes: with injected usage, the figures are in them
        except Exception:
            self.observer = self._observer_failed(self.observer)

    def relay(self, data: bytes) -> None:
        self._write(data)
        self._exchange.bytes_out += len(data)
        captured = self._captured
        if captured is not None and len(captured) < CAPTURE_BYTES:
            captured += data[: CAPTURE_BYTES - len(captured)]


class RequestBody:
    """Streams the client's request body upstream, reading its first chunk early to learn the model."""

    __slots__ = ("_exchange", "_first", "_request", "_rewritten")

    def __init__(self, request: Request, exchange: Exchange) -> None:
        self._request = request
        self._exchange = exchange
        self._first = b""
        self._rewritten: bytes | None = None

    async def prime(self) -> None:
        if not self._request.body_exists:
            return
        # A small body usually arrived with the headers: take it without a trip through the event loop.
        self._first = self._request.body.read_nowait() or await self._request.body.readany()
        self._note(self._first)
        if self._exchange.endpoint != BLOBS:  # uploads are model weights, not JSON
            self._exchange.request_model = find_model(self._first[:MODEL_SNIFF_BYTES])
            self._exchange.request_num_ctx = find_num_ctx(self._first)

    async def add_include_usage(self) -> bool:
        """``--openai-usage inject``: ask a streamed OpenAI request for usage; True when the body was rewritten.

        Needs the whole body, so only one of known, bounded length is considered."""
        length = self._request.content_length
        if not self._request.body_exists or length is None or length > MAX_REWRITTEN_BODY:
            return False
        body = bytearray(self._first)  # one growing buffer: a large chat body arrives in many pieces
        while len(body) < length and not self._request.body.at_eof():
            chunk = await self._request.body.readany()
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
                self._request.content_length == len(self._first) and self._request.body.at_eof()):
            return self._first
        return self.stream()

    async def stream(self) -> AsyncIterator[bytes]:
        if self._first:
            yield self._first
        async for chunk in self._request.body.iter_any():
            self._note(chunk)
            yield chunk

    def _note(self, chunk: bytes) -> None:
        self._exchange.bytes_in += len(chunk)
        captured = self._exchange.captured_request
        if captured is not None and len(captured) < CAPTURE_BYTES:
            captured += chunk[: CAPTURE_BYTES - len(captured)]
