"""The relay's HTTP/1.1 client for its one upstream: a pool of keep-alive connections and nothing more.

Why not aiohttp's ``ClientSession`` (which the Ollama poller still uses): profiled under many small requests it
spent about 50 µs of CPU on each, building request objects, payload wrappers, auto headers, cookie and tracing
hooks and timers, none of which a transparent relay to one fixed origin needs; the whole relay of a small
request costs less than that here. See benchmarks/RESULTS.md for the before and after.

What it does: connections to the upstream are opened with a connect timeout (no read or total timeout: a
generation may take an hour), reused while the upstream keeps them alive, closed after a while idle, and
closed at once when the relay gives up on a response (so Ollama sees the client leave). Request bodies are
written as they arrive, with the socket's flow control; response bodies are delivered as they are read, and
reading pauses while the relay has not caught up. Failures are translated at this boundary into the
``UpstreamError`` subclasses below, each with a message for the user.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, cast
from urllib.parse import unquote, urlsplit

from ollama_metrics_proxy.upstream.http1 import MalformedResponse, ResponseHead, ResponseParser, request_head

IDLE_SECONDS: Final = 15.0  # aiohttp's keep-alive default; Ollama itself never closes idle connections
READ_PAUSE_BYTES: Final = 256 * 1024  # stop reading the upstream while this much waits for a slow client
Body = bytes | AsyncIterator[bytes] | None


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange; ``str()`` is a message for the user."""


class ConnectFailed(UpstreamError):
    """No TCP (or TLS) connection could be made."""


class ConnectTimeout(UpstreamError):
    """Connecting took longer than the connect timeout."""


class ResponseFailed(UpstreamError):
    """The upstream closed the connection or sent something invalid before a complete response head."""


class BodyFailed(UpstreamError):
    """The response head was fine, but the body broke off or was invalid."""


class _Connection(asyncio.Protocol):
    """One upstream connection: feeds the parser of the response in progress and hands over its body."""

    __slots__ = (
        "_body",
        "_buffered",
        "_drain_waiter",
        "_error",
        "_loop",
        "_read_waiter",
        "_reading_paused",
        "_writing_paused",
        "closed",
        "idle_since",
        "parser",
        "received_any",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None  # None while idle in the pool
        self.closed = False
        self.received_any = False  # any byte of the current response: decides whether a retry is safe
        self.idle_since = 0.0
        self._loop = asyncio.get_running_loop()
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._error: UpstreamError | None = None
        # The relay waits for a head or body bytes; meanwhile a streamed request body may wait for the socket.
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False

    # ---------------------------------------------------------------- protocol callbacks (event loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # bytes while idle: the connection is out of step, never reuse it
            self.close()
            return
        self.received_any = True
        try:
            body = parser.feed(data)
        except MalformedResponse as exc:
            self._deliver(exc.body)  # what came before the fault is valid: relay it, then fail
            self._fail(exc)
            self.close()
            return
        self._deliver(body)
        if parser.head is not None:
            self._wake_reader()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        parser = self.parser
        if parser is not None and not parser.complete:
            try:
                parser.eof()
            except MalformedResponse as malformed:
                self._fail(malformed)
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_writer()

    # ---------------------------------------------------------------- used by the client and the response

    def begin(self, parser: ResponseParser) -> None:
        self.parser = parser
        self.received_any = False
        self._error = None

    async def head(self) -> ResponseHead:
        parser = self.parser
        assert parser is not None
        while parser.head is None:
            if self._error is not None:
                raise self._error
            await self._wait_to_read()
        return parser.head

    async def read(self) -> bytes:
        """The body bytes read since the last call, b"" at the end; raises ``BodyFailed`` if it broke off (after
        handing over everything that arrived before the break)."""
        while True:
            if self._body:
                return self._take_body()
            if self._error is not None:
                raise self._error
            if self.parser is None or self.parser.complete:
                return b""
            await self._wait_to_read()

    async def send(self, *pieces: bytes) -> None:
        """Write, waiting while the socket's buffer is over its high-water mark (large uploads). Several pieces
        go out in one vectored write, without being joined into a copy first."""
        if self.closed or self.transport is None:
            raise ConnectionResetError("the upstream connection is closed")
        if len(pieces) == 1:
            self.transport.write(pieces[0])
        else:
            self.transport.writelines(pieces)
        while self._writing_paused and not self.closed:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def reusable(self) -> bool:
        parser = self.parser
        return (not self.closed and parser is not None and parser.complete and parser.keep_alive
                and not parser.extra_bytes and not self._body)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _take_body(self) -> bytes:
        chunk = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunk

    def _deliver(self, body: bytes) -> None:
        if body:
            self._body.append(body)
            self._buffered += len(body)
            if self._buffered > READ_PAUSE_BYTES and not self._reading_paused and self.transport is not None:
                self._reading_paused = True
                self.transport.pause_reading()

    def _fail(self, exc: MalformedResponse) -> None:
        if self._error is None:
            parser = self.parser
            failure = ResponseFailed if parser is None or parser.head is None else BodyFailed
            self._error = failure(str(exc))
        self._wake_reader()

    async def _wait_to_read(self) -> None:
        self._read_waiter = self._loop.create_future()
        try:
            await self._read_waiter
        finally:
            self._read_waiter = None

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class UpstreamResponse:
    """A response whose head has arrived. ``read()`` the body to its end, then ``release()`` (always, also on
    failure or cancellation): the connection goes back to the pool only if the exchange ended cleanly."""

    __slots__ = ("_client", "_connection", "_released", "_sender", "head", "headers", "read", "reason", "status")

    def __init__(self, client: UpstreamClient, connection: _Connection, head: ResponseHead,
                 sender: asyncio.Task[None] | None) -> None:
        self.head = head
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        # The body bytes read since the last call, b"" at the end; raises BodyFailed if the body broke off.
        # The connection's own method, so that relaying a chunk costs no extra call.
        self.read: Callable[[], Awaitable[bytes]] = connection.read
        self._client = client
        self._connection = connection
        self._sender = sender
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        sender, connection = self._sender, self._connection
        request_sent = sender is None or (sender.done() and not sender.cancelled() and sender.exception() is None)
        if sender is not None and not sender.done():
            sender.cancel()
        if request_sent and connection.reusable():
            self._client.put_back(connection)
        else:
            connection.close()  # Ollama sees the client leave and stops generating


class UpstreamClient:
    def __init__(self, base_url: str, connect_timeout: float | None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url
        self.connect_timeout = connect_timeout
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._host_header = parts.netloc.rpartition("@")[2]
        self._path_prefix = parts.path.rstrip("/")
        self._authorization = _basic_auth(parts.username, parts.password)
        self._idle: list[_Connection] = []
        self._sweeper: asyncio.TimerHandle | None = None

    async def request(self, method: str, target: str, headers: list[tuple[str, str]],
                      body: Body = None) -> UpstreamResponse:
        """Send a request (``target`` as the client sent it: path and raw query) and wait for the response
        head. ``headers`` are forwarded as given; Host, framing and the URL's credentials are added here."""
        headers, chunked = self._complete_headers(headers, body)
        head = request_head(method, self._path_prefix + target, self._host_header, headers)
        retry_allowed = not isinstance(body, AsyncIterator)  # a streamed body cannot be sent twice
        while True:
            connection, reused = await self._acquire()
            connection.begin(ResponseParser(head_request=method == "HEAD"))
            sender = None
            try:
                if isinstance(body, AsyncIterator):
                    await connection.send(head)
                    sender = asyncio.create_task(_send_stream(connection, body, chunked=chunked))
                    sender.add_done_callback(_retrieve)
                else:
                    await connection.send(head + body if body else head)
                response_head = await connection.head()
            except (ResponseFailed, ConnectionResetError) as exc:
                connection.close()
                if sender is not None:
                    sender.cancel()
                if reused and retry_allowed and not connection.received_any:
                    continue  # the upstream closed this idle connection as we sent: try once on a new one
                if isinstance(exc, ResponseFailed):
                    raise
                raise ResponseFailed("closed the connection before answering") from exc
            except BaseException:  # cancelled (the client left) or worse: never reuse a half-used connection
                connection.close()
                if sender is not None:
                    sender.cancel()
                raise
            return UpstreamResponse(self, connection, response_head, sender)

    def put_back(self, connection: _Connection) -> None:
        connection.parser = None
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.append(connection)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._sweep)

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # ---------------------------------------------------------------- internals

    def _complete_headers(self, headers: list[tuple[str, str]], body: Body
                          ) -> tuple[list[tuple[str, str]], bool]:
        """Adds what the relay does not copy: credentials from the URL (unless the client sent its own) and
        framing for a body whose length the client did not give. Returns the headers and whether the body
        goes chunked."""
        names = {name.lower() for name, _ in headers}
        extra = []
        chunked = False
        if self._authorization and "authorization" not in names:
            extra.append(("Authorization", self._authorization))
        if isinstance(body, bytes) and "content-length" not in names:
            extra.append(("Content-Length", str(len(body))))
        elif isinstance(body, AsyncIterator) and "content-length" not in names:
            extra.append(("Transfer-Encoding", "chunked"))
            chunked = True
        return (headers + extra if extra else headers), chunked

    async def _acquire(self) -> tuple[_Connection, bool]:
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely to have been closed
            if not connection.closed:
                return connection, True
        return await self._connect(), False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    _Connection, self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None)
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {self.connect_timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(describe_os_error(exc)) from None
        return connection

    def _sweep(self) -> None:
        """Close connections idle for longer than IDLE_SECONDS; runs only while some are idle."""
        self._sweeper = None
        deadline = asyncio.get_running_loop().time() - IDLE_SECONDS
        keep = []
        for connection in self._idle:
            if connection.idle_since < deadline or connection.closed:
                connection.close()
            else:
                keep.append(connection)
        self._idle = keep
        if keep:
            self._sweeper = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._sweep)


async def _send_stream(connection: _Connection, body: AsyncIterator[bytes], *, chunked: bool) -> None:
    async for chunk in body:
        if chunk:
            if chunked:
                await connection.send(b"%x\r\n" % len(chunk), chunk, b"\r\n")
            else:
                await connection.send(chunk)
    if chunked:
        await connection.send(b"0\r\n\r\n")


def _retrieve(task: asyncio.Task[None]) -> None:
    """A failed body upload shows up as the response failing; do not also log it as unretrieved."""
    if not task.cancelled():
        task.exception()


def _basic_auth(username: str | None, password: str | None) -> str | None:
    if not username:
        return None
    credentials = f"{unquote(username)}:{unquote(password or '')}".encode()
    return "Basic " + base64.b64encode(credentials).decode("ascii")


def describe_os_error(exc: BaseException) -> str:
    """'Connection refused' rather than '[Errno 111] Connect call failed ('127.0.0.1', 11434)'."""
    if isinstance(exc, ssl.SSLCertVerificationError):  # its errno is OpenSSL's, not the OS's
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    return str(exc) or type(exc).__name__
