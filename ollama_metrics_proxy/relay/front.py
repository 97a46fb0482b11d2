"""The API port's HTTP/1.1 server: llhttp (``httptools``) parses the clients' requests, responses go straight
to the socket.

Why not aiohttp's server here (the metrics listener keeps it): the relay needs a request's method, target,
headers and a body stream, and a way to write a response head and then body pieces, each piece framed and
handed to the transport in one call, with the socket's flow control. aiohttp's request and response objects,
its stream writer and the task woken per piece cost about as much CPU per relayed token as the whole rest of the
proxy (benchmarks/RESULTS.md, issue 14). Everything else a server owes its clients is here:

- keep-alive and pipelining (requests on one connection are answered in order, one handler at a time);
- request bodies of any size (Content-Length or chunked) streamed with flow control: reading pauses while
  more than ``BODY_PAUSE_BYTES`` wait for the handler;
- a bound on the request head (431), a clear 400 for bytes that are not HTTP (a TLS hello named as such);
- ``--idle-timeout`` for a connection between requests (also midway through its next head);
- a client that disconnects cancels its handler, so the upstream request is closed and Ollama stops generating;
- for a graceful stop: no new connections, idle ones closed, busy ones closed after their response.

The deadline for a connection's first head and the cap on connections are the listener's
(``listener.ConnectionGuard``), which wraps this protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Final, cast

import httptools

from ollama_metrics_proxy.headers import encode_head, first_values
from ollama_metrics_proxy.relay.request import JSON_TYPE, Handler, Request, http_date, json_body, reason_phrase

log = logging.getLogger(__name__)

MAX_HEAD_BYTES: Final = 64 * 1024  # request line and headers; Ollama's clients send well under 2 KiB
MAX_PIPELINED: Final = 16  # requests parsed ahead of the one being answered before reading pauses
TLS_HANDSHAKE: Final = b"\x16\x03"


class FrontServer:
    """State shared by the connections of one listener."""

    def __init__(self, handler: Handler, idle_timeout: float) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.connections: set[FrontConnection] = set()

    def protocol(self) -> FrontConnection:
        return FrontConnection(self)

    def close_idle(self) -> None:
        """Shutting down: connections between requests close now, busy ones after their current response."""
        for connection in list(self.connections):
            connection.close_after_response()

    def close_all(self) -> None:
        for connection in list(self.connections):
            connection.close()


class FrontConnection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler for each in turn, keeps the connection alive."""

    __slots__ = (
        "_current", "_head_bytes", "_head_size", "_headers", "_idle_timer", "_in_head", "_last", "_loop",
        "_parser", "_parsing", "_pending", "_reading_paused", "_refusal", "_server", "_stopped_parsing", "_url",
        "closing", "on_writing", "remote", "transport", "writing_paused",
    )

    def __init__(self, server: FrontServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.remote = ""
        self.closing = False
        self.writing_paused = False
        self.on_writing: tuple[Callable[[], None], Callable[[], None]] | None = None
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0  # bytes read while a head was incomplete
        self._head_size = 0  # the current head's request line and headers, as parsed
        self._in_head = True
        self._parsing: Request | None = None  # the request whose head or body is being parsed
        self._pending: deque[Request] = deque()  # parsed, waiting for the handler (pipelining)
        self._current: asyncio.Task[None] | None = None
        self._last: Request | None = None  # the request whose head was parsed last
        self._idle_timer: asyncio.TimerHandle | None = None
        self._reading_paused = 0  # how many reasons hold reading: a body backlog, a pipelining backlog
        self._stopped_parsing = False
        self._refusal: tuple[int, str] | None = None  # a bad request after those in the pipeline

    # ---------------------------------------------------------------- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports subclass none of asyncio's
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._server.connections.add(self)
        self._start_idle_timer()

    def data_received(self, data: bytes) -> None:
        if self._stopped_parsing:
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade or CONNECT request: answered as an ordinary one (Upgrade is not forwarded), and as the
            # bytes after it are not HTTP, the connection closes after it.
            self._stop_parsing()
            if self._last is not None:
                self._last.keep_alive = False
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
            else:
                self._refuse(400, f"malformed HTTP request ({exc.__context__ or exc})")
        except httptools.HttpParserError as exc:
            self._refuse(400, _describe(str(exc), data))
        else:
            if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, f"request head larger than {MAX_HEAD_BYTES} bytes")

    def eof_received(self) -> bool | None:
        return None  # the client is gone: close, which cancels its handler (as aiohttp's server does)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._server.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        gone = ConnectionResetError("the client closed the connection")
        if self._parsing is not None:
            self._parsing.body.fail(gone)
        for request in self._pending:
            request.body.fail(gone)
        if self._current is not None and not self._current.done():
            self._current.cancel()  # the relay closes its upstream request: Ollama stops generating
        # No more bytes will come: let go of llhttp (which holds this connection's callbacks) and of the requests
        # (which hold this connection), cycles that only the garbage collector would free otherwise.
        self._stopped_parsing = True  # data_received, the only user of llhttp, reads nothing from now on
        if hasattr(self, "_parser"):
            del self._parser
        self._parsing = self._last = None

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.on_writing is not None:
            self.on_writing[0]()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.on_writing is not None:
            self.on_writing[1]()

    # ---------------------------------------------------------------- llhttp callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        self._headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def _count_head(self, size: int) -> None:
        """The head's size as parsed so far. (A single header still growing inside llhttp is caught by the
        check after each read in ``data_received``.)"""
        self._head_size += size
        if self._head_size > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._in_head = False
        self._head_bytes = 0
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        values = first_values(self._headers)
        chunked = "transfer-encoding" in values
        length = None if chunked or "content-length" not in values else int(values["content-length"])
        request = Request(self, parser.get_method().decode("ascii"), self._url.decode("utf-8", "surrogateescape"),
                          parser.get_http_version(), self._headers, values, parser.should_keep_alive(),
                          length, chunked or bool(length))
        if not request.body_exists:
            request.body.feed_eof()
        self._parsing = self._last = request
        self._pending.append(request)
        if len(self._pending) > MAX_PIPELINED:
            self._pause_reading()
        if self._current is None:
            self._next()

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.body.feed(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.body.feed_eof()
            self._parsing = None

    # ---------------------------------------------------------------- flow control

    def pause_reading_for_body(self) -> None:
        self._pause_reading()

    def resume_reading_for_body(self) -> None:
        self._resume_reading()

    def _pause_reading(self) -> None:
        self._reading_paused += 1
        if self._reading_paused == 1 and not self.transport.is_closing():
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused > 0:
            self._reading_paused -= 1
            if self._reading_paused == 0 and not self.transport.is_closing():
                self.transport.resume_reading()

    def call_soon(self, callback: Callable[[], None]) -> None:
        self._loop.call_soon(callback)

    # ---------------------------------------------------------------- requests in turn

    def _next(self) -> None:
        """Start the handler for the next parsed request, or wait for one (idle), or close."""
        if self._pending:
            request = self._pending.popleft()
            if len(self._pending) == MAX_PIPELINED:
                self._resume_reading()
            self._current = self._loop.create_task(self._serve(request))
        elif self._refusal is not None:
            status, message = self._refusal
            self._send_refusal(status, message)
        elif self._stopped_parsing or self.closing:
            self.close()
        else:
            self._start_idle_timer()

    async def _serve(self, request: Request) -> None:
        try:
            await self._server.handler(request)
        except asyncio.CancelledError:
            # The client left (connection_lost), or a stop cut the request after its grace: whatever was written
            # of the response stays unfinished, and the connection ends with it.
            self.close()
            return
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            if not request.started:
                request.keep_alive = False
                request.reply(500, json_body("ollama-metrics-proxy: internal error; see the proxy's log"))
            else:
                request.abort()
        self._current = None
        self.on_writing = None
        if not request.finished or not request.keep_alive or self.closing:
            self.close()
            return
        self._next()

    def _start_idle_timer(self) -> None:
        if self._idle_timer is None and not self.closing:
            self._idle_timer = self._loop.call_later(self._server.idle_timeout, self.close)

    # ---------------------------------------------------------------- ending

    def close_after_response(self) -> None:
        """Close now if between requests, else once the current response is written (``Connection: close``)."""
        self.closing = True
        if self._current is None:
            self.close()

    def close(self) -> None:
        self.closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if not self.transport.is_closing():
            self.transport.close()  # what is buffered is written first

    def _stop_parsing(self) -> None:
        """Nothing after what was parsed can be read: the requests already parsed are answered, then the
        connection closes (``_next``)."""
        self._stopped_parsing = True
        if self._parsing is not None:
            self._parsing.body.feed_eof()
            self._parsing = None

    def _refuse(self, status: int, message: str) -> None:
        """Bytes that are not a valid request: answer after the requests before them, then close."""
        if self._parsing is not None and not self._in_head:
            # Mid-body: the request cannot be answered sensibly and its body must not reach the upstream as if
            # complete. Closing cancels its handler.
            self._parsing.body.fail(ConnectionResetError(f"the request body is malformed: {message}"))
            self._parsing = None
            self._stopped_parsing = True
            self.close()
            return
        self._stop_parsing()
        self._refusal = (status, message)
        if self._current is None and not self._pending:
            self._send_refusal(status, message)

    def _send_refusal(self, status: int, message: str) -> None:
        body = json_body(f"ollama-metrics-proxy: {message}")
        self.transport.write(encode_head(f"HTTP/1.1 {status} {reason_phrase(status)}", [
            ("Date", http_date()), ("Content-Type", JSON_TYPE), ("Content-Length", str(len(body))),
            ("Connection", "close")]) + body)
        self.close()


class _HeadTooLarge(Exception):
    """Raised in a parser callback: the request head is over ``MAX_HEAD_BYTES``."""


def _describe(reason: str, data: bytes) -> str:
    if data.startswith(TLS_HANDSHAKE) or ("method" in reason.lower() and TLS_HANDSHAKE in data):
        return "Received HTTPS traffic on an HTTP port: use http:// to reach this proxy"
    return f"malformed HTTP request ({reason})"
