"""One keep-alive connection to the upstream, as an asyncio protocol.

It feeds the bytes of the response in progress to the parser (``http1.ResponseParser``), hands the decoded body
to the relay as it arrives, pauses reading while the relay has not caught up with a slow client, and makes a
writer wait while the socket's buffer is full. A fault becomes ``ResponseFailed`` before the response head and
``BodyFailed`` after it, raised only once everything received before the fault has been handed over.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections import deque
from collections.abc import Callable
from typing import Final, cast

from ollama_metrics_proxy.upstream.errors import BodyFailed, ResponseFailed, UpstreamError
from ollama_metrics_proxy.upstream.http1 import MalformedResponse, ResponseHead, ResponseParser

READ_PAUSE_BYTES: Final = 256 * 1024  # stop reading the upstream while this much waits for a slow client


class Connection(asyncio.Protocol):
    """One upstream connection: feeds the parser of the response in progress and hands over its body."""

    __slots__ = (
        "_body",
        "_buffered",
        "_drain_waiter",
        "_error",
        "_loop",
        "_poller",
        "_read_waiter",
        "_reading_paused",
        "_sink",
        "_writing_paused",
        "closed",
        "head_at",
        "idle_since",
        "parser",
        "received_any",
        "retire_at",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None  # None while idle in the pool
        self.closed = False
        self.received_any = False  # any byte of the current response: decides whether a retry is safe
        self.idle_since = 0.0
        self.retire_at = 0.0  # loop time after which the pool no longer hands it out
        self.head_at = 0.0  # perf_counter time the current response's head was complete
        self._loop = asyncio.get_running_loop()
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._error: UpstreamError | None = None
        # The relay waits for a head or body bytes; meanwhile a streamed request body may wait for the socket.
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._sink: Callable[[bytes], None] | None = None  # push mode: where body pieces go as they are read
        self._poller: select.poll | None = None  # watches the socket for ``shows_close``; None: cannot tell

    # ---------------------------------------------------------------- protocol callbacks (event loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self._poller = _readable_poller(transport)

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
            if not self.head_at:
                self.head_at = time.perf_counter()
            if self._sink is None or parser.complete:  # pushing: the relay waits only for the end
                _wake(self._read_waiter)

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
        _wake(self._read_waiter)
        _wake(self._drain_waiter)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        _wake(self._drain_waiter)

    # ---------------------------------------------------------------- used by the client and the response

    def begin(self, parser: ResponseParser) -> None:
        self.parser = parser
        self.head_at = 0.0
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

    async def push_to(self, sink: Callable[[bytes], None]) -> None:
        """Push mode: hand each piece of the body to ``sink`` from the protocol callback that read it (no task is
        woken per piece), until the body ends; raises ``BodyFailed`` as ``read()`` does. ``sink`` must not raise.
        Meanwhile ``pause_for_client()`` and ``resume_for_client()`` stop and restart reading (the client's socket
        is full, then drained)."""
        if self._body:
            sink(self._take_body())
        self._sink = sink
        try:
            while True:
                if self._error is not None:
                    raise self._error
                if self.parser is None or self.parser.complete or self.closed:
                    return
                await self._wait_to_read()
        finally:
            self._sink = None

    def pause_for_client(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_for_client(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

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

    def shows_close(self) -> bool:
        """Whether an idle connection's socket is readable: the upstream's close (or stray bytes) arrived and the
        event loop has not run its callbacks yet. One poll of the socket, no waiting."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return True
        return self._poller is not None and bool(self._poller.poll(0))

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
        if body and self._sink is not None:
            self._sink(body)
        elif body:
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
        _wake(self._read_waiter)

    async def _wait_to_read(self) -> None:
        self._read_waiter = self._loop.create_future()
        try:
            await self._read_waiter
        finally:
            self._read_waiter = None


def _readable_poller(transport: asyncio.BaseTransport) -> select.poll | None:
    """A poll object watching the transport's socket for input, made once per connection (the descriptor stays
    the connection's until ``connection_lost``, and ``shows_close`` asks ``is_closing`` first)."""
    sock = transport.get_extra_info("socket")
    try:
        descriptor = sock.fileno() if sock is not None else -1
    except (OSError, ValueError):
        return None
    if descriptor < 0:
        return None
    poller = select.poll()
    poller.register(descriptor, select.POLLIN | select.POLLPRI)
    return poller


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
