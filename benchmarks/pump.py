"""The floor for any relay on this event loop: a TCP byte pump (uvloop protocols, no HTTP, no parsing).

    python -m benchmarks.pump LISTEN_PORT UPSTREAM_URL

Each client connection gets its own upstream connection and bytes are copied both ways as they are read, with
the transports' flow control. It is not a usable proxy (it cannot tell one request from the next, so it can
neither measure nor pool); it shows what the event loop and the system calls alone cost per relayed chunk, which
no Python relay can go below.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

from benchmarks import serve_forever, use_uvloop


class Half(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self.pending: list[bytes] = []
        self.connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class ClientSide(Half):
    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host, self.port = host, port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.connecting = asyncio.ensure_future(self.connect())

    async def connect(self) -> None:
        _, upstream = await asyncio.get_running_loop().create_connection(Half, self.host, self.port)
        upstream.peer, self.peer = self, upstream
        if self.pending:
            upstream.transport.write(b"".join(self.pending))  # type: ignore[union-attr]
            self.pending.clear()


def main() -> None:
    host, _, upstream_port = sys.argv[2].removeprefix("http://").partition(":")
    use_uvloop()
    asyncio.run(serve_forever(lambda: ClientSide(host, int(upstream_port)), int(sys.argv[1])))


if __name__ == "__main__":
    main()
