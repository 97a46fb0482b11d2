"""The two listening sockets, each with a bound on what clients may hold open.

A thousand idle keep-alive connections and a few hundred half-sent request heads once used up the process's 1024
file descriptors, so ``/metrics``, ``/-/healthy`` and new API requests failed. Each listener therefore has:

- a cap on concurrent client connections: one more is answered ``503`` with ``Connection: close`` at once and
  counted, so a flood of the API port never takes the descriptors the metrics listener needs;
- a deadline for a connection's first request head (slowloris), after which the connection is closed and counted;
- the servers' idle timeout (``--idle-timeout``: ``front`` on the API port, aiohttp's keep-alive timeout on the
  metrics listener), which also closes a connection still waiting for, or midway through, its next request head.

The guard wraps either server's protocol: one extra call per read, nothing per request beyond the first head.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from collections.abc import Callable
from typing import Any, Final, cast

import orjson
from aiohttp import web

log = logging.getLogger(__name__)
RESERVED_DESCRIPTORS: Final = 256  # the metrics listener's connections, the database, NVML, the poller, logs
METRICS_MAX_CONNECTIONS: Final = 128  # scrapers, probes and dashboards: a handful at a time
ProtocolFactory = Callable[[], asyncio.Protocol]


class ConnectionGuard:
    """``evict_idle`` (the metrics listener): at the cap, the connection idle the longest is closed to make room,
    rather than the newcomer refused, so a client holding every slot with idle keep-alive connections cannot
    keep Prometheus out. The API port refuses instead: its connections are clients' generations."""

    def __init__(self, limit: int, head_timeout: float, refusal: bytes,
                 on_refused: Callable[[str], None] = lambda reason: None, *, evict_idle: bool = False) -> None:
        self.limit = limit
        self.head_timeout = head_timeout
        self.refusal = refusal
        self.on_refused = on_refused
        self.open = 0
        self.evict_idle = evict_idle
        self.connections: dict[_GuardedProtocol, None] = {}  # with evict_idle: the open ones

    def wrap(self, factory: ProtocolFactory) -> ProtocolFactory:
        return lambda: _GuardedProtocol(self, factory)

    def make_room(self) -> bool:
        """Close the connection idle the longest (no request in progress); whether there was one."""
        idle = [protocol for protocol in self.connections if not protocol.busy()]
        if not idle:
            return False
        longest = min(idle, key=lambda protocol: protocol.last_read)
        self.on_refused("evicted_idle")
        longest.evict()
        return True


class _GuardedProtocol(asyncio.Protocol):
    __slots__ = ("_counted", "_factory", "_guard", "_inner", "_started", "_tail", "_timer", "_transport",
                 "last_read")

    def __init__(self, guard: ConnectionGuard, factory: ProtocolFactory) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._started = False  # a byte other than CR or LF arrived: the first request line has begun
        self._counted = False
        self._transport: asyncio.BaseTransport | None = None
        self.last_read = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard.open >= guard.limit and not (guard.evict_idle and guard.make_room()):
            guard.on_refused("max_connections")
            cast(asyncio.Transport, transport).write(guard.refusal)  # uvloop's transports subclass none of asyncio's
            transport.close()
            return
        guard.open += 1
        self._counted = True
        if guard.evict_idle:
            self._transport = transport
            self.last_read = asyncio.get_running_loop().time()
            guard.connections[self] = None
        if guard.head_timeout > 0:
            self._timer = asyncio.get_running_loop().call_later(guard.head_timeout, self._head_late, transport)
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:  # still within the first head: has it ended?
            self._watch_first_head(data)
        if self._transport is not None:
            self.last_read = asyncio.get_running_loop().time()
        if self._inner is not None:
            self._inner.data_received(data)

    def _watch_first_head(self, data: bytes) -> None:
        """Stop the head deadline once the first head is complete. Empty lines before the request line (which
        servers ignore, RFC 9112 §2.2) are no head: counted as one, a client could send CRLF CRLF first and then
        drip its head for as long as the idle timeout allowed."""
        if not self._started:
            data = data.lstrip(b"\r\n")
            if not data:
                return
            self._started = True
        joined = self._tail + data
        if b"\r\n\r\n" in joined or b"\n\n" in joined:
            assert self._timer is not None
            self._timer.cancel()
            self._timer = None
        else:
            self._tail = joined[-3:]

    def busy(self) -> bool:
        """A request is being answered (aiohttp's handler marks it; a protocol that does not tell is idle)."""
        return bool(getattr(self._inner, "_request_in_progress", False))

    def evict(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.connections.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._guard.open -= 1
            self._counted = False
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def _head_late(self, transport: asyncio.BaseTransport) -> None:
        self._timer = None
        self._guard.on_refused("head_timeout")
        transport.close()


def refusal_response(message: str) -> bytes:
    """A complete 503 sent instead of serving a connection over the cap, in Ollama's error shape."""
    body = orjson.dumps({"error": message})
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))


class GuardedSite(web.BaseSite):
    """aiohttp's TCPSite, with the guard around each connection and optional TLS."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
                 ssl_context: ssl.SSLContext | None = None, backlog: int = 1024) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server: Any = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.wrap(server), self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=True)


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit (the common soft 1024 is far below what a proxy of
    many streams needs: two descriptors per request in flight). The hard limit is left as it is. Returns the soft
    limit before and after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
            return soft, soft
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def default_max_connections() -> int:
    """Two descriptors per proxied request (client and upstream), after a reserve for everything else."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(16, min((soft - RESERVED_DESCRIPTORS) // 2, 100_000))
