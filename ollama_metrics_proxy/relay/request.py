"""One client request on the API port and the means to answer it: the request head, its body as it arrives
(``IncomingBody``, with flow control back to the connection), and the response written straight to the socket,
framed by Content-Length, chunked, or by the connection's end.

The connection protocol that parses requests and hands them out is ``front.FrontConnection``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote

import orjson

from ollama_metrics_proxy.headers import encode_head, first_value

if TYPE_CHECKING:
    from ollama_metrics_proxy.relay.front import FrontConnection

BODY_PAUSE_BYTES: Final = 256 * 1024  # stop reading a client while this much of its body waits for the handler
SMALL_PIECE: Final = 4096  # body pieces up to this size are framed by copying; larger ones by a vectored write
BODILESS_STATUSES: Final = frozenset({204, 304})
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
        self.start(status, reason or reason_phrase(status), headers)
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


_REASONS: Final = {
    200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 413: "Content Too Large", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")
