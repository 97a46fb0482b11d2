"""The side-by-side benchmark (``python -m benchmarks.run``) and the servers it runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def use_uvloop() -> None:
    """Every Python process of the benchmark runs on uvloop when it is installed, as the proxy does."""
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


async def serve_forever(protocol: Callable[[], asyncio.Protocol], port: int) -> None:
    """A loopback listener with a backlog deep enough for the 1,024-stream workload."""
    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()
