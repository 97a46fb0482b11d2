"""Background polling of the upstream Ollama: is it answering, and which version is it.

The poll runs as a task on its own interval; ``/-/ready`` and the scrape only read the latest snapshot, so a
slow or dead upstream never slows them down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass

import aiohttp

log = logging.getLogger(__name__)
POLL_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class UpstreamState:
    up: bool = False
    version: str | None = None
    error: str | None = "not checked yet"
    checked_at: float | None = None  # unix time of the last poll


class OllamaStatePoller:
    def __init__(self, upstream: str, session: aiohttp.ClientSession, interval: float) -> None:
        self.upstream = upstream
        self._session = session
        self._interval = interval
        self.state = UpstreamState()
        self._task: asyncio.Task[None] | None = None
        self._announced: bool | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ollama-state-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def poll_once(self) -> UpstreamState:
        try:
            version = await self._get_version()
            self.state = UpstreamState(up=True, version=version, error=None, checked_at=time.time())
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            self.state = UpstreamState(up=False, error=_describe(exc), checked_at=time.time())
        self._announce()
        return self.state

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self._interval)

    async def _get_version(self) -> str | None:
        timeout = aiohttp.ClientTimeout(total=POLL_TIMEOUT_SECONDS)
        async with self._session.get(self.upstream + "/api/version", timeout=timeout) as response:
            if response.status != 200:
                raise ValueError(f"/api/version answered HTTP {response.status}")
            body = await response.json(content_type=None)
        version = body.get("version") if isinstance(body, dict) else None
        return version if isinstance(version, str) else None

    def _announce(self) -> None:
        """Log changes of state only, not every poll."""
        if self.state.up == self._announced:
            return
        self._announced = self.state.up
        if self.state.up:
            log.info("upstream Ollama at %s is answering (version %s)", self.upstream, self.state.version)
        else:
            log.warning(
                "upstream Ollama at %s is not answering (%s); the proxy keeps running and /-/ready reports "
                "not ready. Start Ollama (`ollama serve`) or point the proxy at it with --upstream URL or "
                "OLLAMA_METRICS_PROXY_UPSTREAM=URL", self.upstream, self.state.error)


def connection_failure(exc: aiohttp.ClientConnectorError) -> str:
    """'Connection refused' rather than aiohttp's 'Connect call failed (host, port)'."""
    error = exc.os_error
    return os.strerror(error.errno) if error.errno else str(error)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed: {connection_failure(exc)}"
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {POLL_TIMEOUT_SECONDS:g} s"
    return str(exc) or type(exc).__name__
