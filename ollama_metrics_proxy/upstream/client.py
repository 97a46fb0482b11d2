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
``UpstreamError`` subclasses (``errors``), each with a message for the user.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final
from urllib.parse import unquote, urlsplit

from ollama_metrics_proxy.redact import redact_url
from ollama_metrics_proxy.upstream.connection import Connection
from ollama_metrics_proxy.upstream.errors import ConnectFailed, ConnectTimeout, ResponseFailed, describe_os_error
from ollama_metrics_proxy.upstream.http1 import ResponseHead, ResponseParser, request_head

IDLE_SECONDS: Final = 15.0  # aiohttp's keep-alive default; Ollama itself never closes idle connections
# A request on a pooled connection that the upstream closed without answering is sent again only when sending it
# twice is harmless: the methods Go's net/http and urllib3 replay, or a request carrying an idempotency key.
# A POST may have started a generation, a pull or a create before the connection died.
REPLAYABLE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
IDEMPOTENCY_HEADERS: Final = frozenset({"idempotency-key", "x-idempotency-key"})
KEEP_ALIVE_MARGIN_SECONDS: Final = 1.0  # retire a connection this long before the upstream's announced timeout
Body = bytes | AsyncIterator[bytes] | None


class UpstreamResponse:
    """A response whose head has arrived. ``read()`` the body to its end, then ``release()`` (always, also on
    failure or cancellation): the connection goes back to the pool only if the exchange ended cleanly."""

    __slots__ = ("_client", "_connection", "_released", "_sender", "head", "head_at", "pause", "push_to", "read",
                 "resume", "sent_at")

    def __init__(self, client: UpstreamClient, connection: Connection, head: ResponseHead,
                 sender: asyncio.Task[None] | None) -> None:
        self.head = head  # status, reason and headers as the upstream sent them
        # The body bytes read since the last call, b"" at the end; raises BodyFailed if the body broke off.
        # The connection's own method, so that relaying a chunk costs no extra call.
        self.read: Callable[[], Awaitable[bytes]] = connection.read
        # Or push mode: each piece handed to a callback as it is read (``Connection.push_to``); ``pause`` and
        # ``resume`` hold the upstream back while the client's socket is full.
        self.push_to: Callable[[Callable[[bytes], None]], Awaitable[None]] = connection.push_to
        self.pause: Callable[[], None] = connection.pause_for_client
        self.resume: Callable[[], None] = connection.resume_for_client
        self._client = client
        self._connection = connection
        self._sender = sender
        self._released = False
        # perf_counter times, for the proxy's own overhead: the request (its head) written upstream, and the
        # response head read from upstream.
        self.sent_at = 0.0
        self.head_at = 0.0

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
    """Requests to the one upstream the proxy was configured with, over a pool of keep-alive connections."""

    def __init__(self, base_url: str, connect_timeout: float | None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = redact_url(base_url)  # for messages: credentials never shown
        self.connect_timeout = connect_timeout
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._host_header = parts.netloc.rpartition("@")[2]
        self._path_prefix = parts.path.rstrip("/")
        self._authorization = _basic_auth(parts.username, parts.password)
        self._idle: list[Connection] = []
        self._sweeper: asyncio.TimerHandle | None = None

    async def request(self, method: str, target: str, headers: list[tuple[str, str]],
                      body: Body = None) -> UpstreamResponse:
        """Send a request (``target`` as the client sent it: path and raw query) and wait for the response
        head. ``headers`` are forwarded as given; Host, framing and the URL's credentials are added here."""
        names = {name.lower() for name, _ in headers}
        headers, chunked = self._complete_headers(headers, names, body)
        head = request_head(method, self._path_prefix + target, self._host_header, headers)
        retry_allowed = not isinstance(body, AsyncIterator) and (  # a streamed body cannot be sent twice
            method in REPLAYABLE_METHODS or not names.isdisjoint(IDEMPOTENCY_HEADERS))
        while True:
            connection, reused = await self._acquire()
            connection.begin(ResponseParser(head_request=method == "HEAD"))
            sender = None
            try:
                if isinstance(body, AsyncIterator):
                    await connection.send(head)
                    sent_at = time.perf_counter()
                    sender = asyncio.create_task(_send_stream(connection, body, chunked=chunked))
                    sender.add_done_callback(_retrieve)
                else:
                    await connection.send(head + body if body else head)
                    sent_at = time.perf_counter()
                response_head = await connection.head()
            except (ResponseFailed, ConnectionResetError) as exc:
                connection.close()
                if sender is not None:
                    sender.cancel()
                if reused and retry_allowed and not connection.received_any:
                    continue  # the upstream closed this idle connection as we sent: send it again
                if isinstance(exc, ResponseFailed):
                    raise
                raise ResponseFailed("closed the connection before answering") from exc
            except BaseException:  # cancelled (the client left) or worse: never reuse a half-used connection
                connection.close()
                if sender is not None:
                    sender.cancel()
                raise
            response = UpstreamResponse(self, connection, response_head, sender)
            response.sent_at, response.head_at = sent_at, connection.head_at
            return response

    def put_back(self, connection: Connection) -> None:
        head = connection.parser.head if connection.parser is not None else None
        now = asyncio.get_running_loop().time()
        connection.parser = None
        connection.idle_since = now
        connection.retire_at = now + _idle_allowance(head)
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

    def _complete_headers(self, headers: list[tuple[str, str]], names: set[str], body: Body
                          ) -> tuple[list[tuple[str, str]], bool]:
        """Adds what the relay does not copy: credentials from the URL (unless the client sent its own) and
        framing for a body whose length the client did not give. ``names`` are the headers' names, lower-cased.
        Returns the headers and whether the body goes chunked."""
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

    async def _acquire(self) -> tuple[Connection, bool]:
        """A pooled connection that is still good, else a new one. Stale ones are avoided rather than retried:
        one past the upstream's keep-alive timeout, or whose socket already shows the upstream's close."""
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely to have been closed
            if connection.retire_at > now and not connection.shows_close():
                return connection, True
            connection.close()
        return await self._connect(), False

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    Connection, self._host, self._port, ssl=self._ssl,
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
        now = asyncio.get_running_loop().time()
        for connection in self._idle:
            if connection.idle_since < deadline or connection.closed or connection.retire_at <= now:
                connection.close()
            else:
                keep.append(connection)
        self._idle = keep
        if keep:
            self._sweeper = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._sweep)


async def _send_stream(connection: Connection, body: AsyncIterator[bytes], *, chunked: bool) -> None:
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


def _idle_allowance(head: ResponseHead | None) -> float:
    """How long a connection may wait in the pool: IDLE_SECONDS, or less when the upstream (or a proxy in front
    of it) announced ``Keep-Alive: timeout=N``."""
    for item in head.values("keep-alive") if head is not None else ():
        name, _, value = item.partition("=")
        if name.strip() == "timeout":
            try:
                return max(min(float(value) - KEEP_ALIVE_MARGIN_SECONDS, IDLE_SECONDS), 0.0)
            except ValueError:
                break
    return IDLE_SECONDS


def _basic_auth(username: str | None, password: str | None) -> str | None:
    if not username:
        return None
    credentials = f"{unquote(username)}:{unquote(password or '')}".encode()
    return "Basic " + base64.b64encode(credentials).decode("ascii")
