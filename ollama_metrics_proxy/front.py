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
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from typing import Final, cast
from urllib.parse import unquote

import httptools
import orjson

from ollama_metrics_proxy.headers import encode_head, first_value, first_values

log = logging.getLogger(__name__)

MAX_HEAD_BYTES: Final = 64 * 1024  # request line and headers; Ollama's clients send well under 2 KiB
BODY_PAUSE_BYTES: Final = 256 * 1024  # stop reading a client while this much of its body waits for the handler
MAX_PIPELINED: Final = 16  # requests parsed ahead of the one being answered before reading pauses
SMALL_PIECE: Final = 4096  # body pieces up to this size are framed by copying; larger ones by a vectored write
BODILESS_STATUSES: Final = frozenset({204, 304})
TLS_HANDSHAKE: Final = b"\x16\x03"
JSON_TYPE: Final = "application/json; charset=utf-8"  # Ollama's own, for the proxy's errors


def http_date() -> str:
    """The Date header (RFC 9110 §6.6.1) for the proxy's own replies; relayed ones carry Ollama's."""
    return _date_of(int(time.time()))


@functools.lru_cache(maxsize=1)
def _date_of(second: int) -> str:  # formatted once per second
    return formatdate(second, usegmt=True)


def json_body(message: str) -> bytes:
    """An error in Ollama's own shape, so clients show the message as they would Ollama's."""
    return orjson.dumps({"error": message})


class IncomingBody:
    """The body of one request as it arrives: pieces are handed out as they came, with flow control."""

    __slots__ = ("_connection", "_eof", "_error", "_paused", "_pieces", "_size", "_waiter")

    def __init__(self, connection: FrontConnection) -> None:
        self._connection = connection
        self._pieces: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False  # this body has paused reading the connection

    # ---------------------------------------------------------------- from the connection

    def feed(self, data: bytes) -> None:
        self._pieces.append(data)
        self._size += len(data)
        if self._size > BODY_PAUSE_BYTES and not self._paused:
            self._paused = True
            self._connection.pause_reading_for_body()
        self._wake()

    def feed_eof(self) -> None:
        if self._error is None:  # a body that broke off stays broken: never relayed as if complete
            self._eof = True
            self._wake()

    def fail(self, error: BaseException) -> None:
        if not self._eof:
            self._error = error
            self._wake()

    # ---------------------------------------------------------------- for the handler

    def at_eof(self) -> bool:
        return self._eof and not self._pieces

    @property
    def complete(self) -> bool:
        """The whole body has arrived (it may still be waiting to be read)."""
        return self._eof

    def read_nowait(self) -> bytes:
        """Whatever has arrived and not been read yet, b"" if nothing."""
        if not self._pieces:
            return b""
        pieces = self._pieces
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self._size = 0
        if self._paused:
            self._paused = False
            self._connection.resume_reading_for_body()
        return data

    async def readany(self) -> bytes:
        """The next bytes of the body, b"" at its end. Raises ``ConnectionResetError`` if the client broke off."""
        while not self._pieces and not self._eof:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.read_nowait()

    async def iter_any(self) -> AsyncIterator[bytes]:
        while chunk := await self.readany():
            yield chunk

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Request:
    """One client request, and the means to answer it: ``reply()`` a whole response, or ``start()`` one, then
    ``write()`` body pieces and ``finish()``."""

    __slots__ = (
        "_chunked",
        "_connection",
        "_first_values",
        "_head",
        "_transport",
        "body",
        "body_exists",
        "content_length",
        "finished",
        "headers",
        "keep_alive",
        "method",
        "raw_path",
        "remote",
        "started",
        "version",
    )

    def __init__(self, connection: FrontConnection, method: str, raw_path: str, version: str,
                 headers: list[tuple[str, str]], first_values: dict[str, str], keep_alive: bool,
                 content_length: int | None, body_exists: bool) -> None:
        self._connection = connection
        self._transport = connection.transport
        self.method = method
        self.raw_path = raw_path  # the request target exactly as sent: path and raw query
        self.version = version
        self.headers = headers  # as received: names keep their case, repeats and order are kept
        self._first_values = first_values  # each header's first value, by lower-cased name
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.body_exists = body_exists
        self.body = IncomingBody(connection)
        self.remote = connection.remote
        self.started = False  # the response was begun (its head is written, or about to be: ``start``)
        self.finished = False  # the whole response was written
        self._chunked = False
        self._head: bytes | None = None  # a head held back until the first body bytes or the loop's next turn

    @property
    def path(self) -> str:
        """The path, percent-decoded, without the query."""
        return unquote(self.raw_path.partition("?")[0])

    def header(self, name: str) -> str | None:
        """The first value of a header, by case-insensitive name."""
        return self._first_values.get(name.lower())

    # ---------------------------------------------------------------- answering

    def send_continue(self) -> None:
        """The interim ``100 Continue`` for a client that sent ``Expect: 100-continue``."""
        if not self.started:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def reply(self, status: int, body: bytes = b"", content_type: str = JSON_TYPE,
              reason: str = "") -> None:
        """A complete response with a body of known length (the proxy's own answers and errors)."""
        headers = [("Date", http_date())]
        if body:
            headers.append(("Content-Type", content_type))
        headers.append(("Content-Length", str(len(body))))
        self.start(status, reason or _reason(status), headers)
        self._write(body)
        self.finished = True

    def start(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        """Write the response head. The body is framed by its Content-Length if ``headers`` give one; else it is
        chunked (HTTP/1.1 clients) or ends with the connection (HTTP/1.0). Replies to HEAD, 1xx, 204 and 304 have
        no body."""
        if not self.body.complete:  # answered before the client sent its whole body: the rest is not read
            self.keep_alive = False
        if self._connection.closing:
            self.keep_alive = False
        bodiless = self.method == "HEAD" or status in BODILESS_STATUSES or status < 200
        framing: list[tuple[str, str]] = []
        if not bodiless and first_value(headers, "content-length") is None:
            if self.version == "1.1":
                self._chunked = True
                framing.append(("Transfer-Encoding", "chunked"))
            else:
                self.keep_alive = False  # the body ends where the connection does
        if not self.keep_alive:
            framing.append(("Connection", "close"))
        elif self.version == "1.0":
            framing.append(("Connection", "keep-alive"))
        self.started = True
        # Held back until the body's first bytes (one write, one system call and one segment for both, as the
        # upstream usually sends them together) or, at the latest, the event loop's next turn.
        self._head = encode_head(f"HTTP/1.1 {status} {reason}", [*headers, *framing])
        self._connection.call_soon(self.flush_head)

    def write(self, data: bytes) -> None:
        """One piece of the body, framed and handed to the socket at once (never waits: see ``watch_writable``)."""
        transport = self._transport
        if transport.is_closing():
            return  # the client left; its handler is being cancelled
        head = self._head
        if head is not None:
            self._head = None
        if not self._chunked:
            if head is None:
                transport.write(data)
            else:
                transport.writelines((head, data))
        elif len(data) <= SMALL_PIECE:
            framed = b"%x\r\n%b\r\n" % (len(data), data)
            transport.write(framed if head is None else head + framed)
        elif head is None:
            transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            transport.writelines((head, b"%x\r\n" % len(data), data, b"\r\n"))

    def flush_head(self) -> None:
        """Write the head now if it is still held back."""
        head = self._head
        if head is not None:
            self._head = None
            self._write(head)

    def finish(self) -> None:
        """The end of the body."""
        if self._chunked:
            self._write(b"0\r\n\r\n")
        else:
            self.flush_head()
        self.finished = True

    def abort(self) -> None:
        """Cut the connection: the client sees the response end abnormally."""
        self.keep_alive = False
        self._head = None
        self._transport.abort()

    def watch_writable(self, paused: Callable[[], None], resumed: Callable[[], None]) -> None:
        """Call ``paused`` when the client's socket buffer fills and ``resumed`` when it drains (the relay holds
        the upstream back meanwhile), until the response ends."""
        self._connection.on_writing = (paused, resumed)
        if self._connection.writing_paused:
            paused()

    def _write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        if not self._transport.is_closing():
            self._transport.write(data)


Handler = Callable[[Request], Awaitable[None]]


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
        self.transport.write(encode_head(f"HTTP/1.1 {status} {_reason(status)}", [
            ("Date", http_date()), ("Content-Type", JSON_TYPE), ("Content-Length", str(len(body))),
            ("Connection", "close")]) + body)
        self.close()


class _HeadTooLarge(Exception):
    """Raised in a parser callback: the request head is over ``MAX_HEAD_BYTES``."""


def _describe(reason: str, data: bytes) -> str:
    if data.startswith(TLS_HANDSHAKE) or ("method" in reason.lower() and TLS_HANDSHAKE in data):
        return "Received HTTPS traffic on an HTTP port: use http:// to reach this proxy"
    return f"malformed HTTP request ({reason})"


_REASONS: Final = {
    200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 413: "Content Too Large", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


def _reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")
