"""Background polling of the upstream Ollama: version, loaded models (/api/ps), installed models (/api/tags).

The poll runs as a task on its own interval; ``/-/ready``, ``/-/system`` and the scrape only read the latest
snapshot, so a slow or dead upstream never slows them. Models appearing in or leaving ``/api/ps`` between
polls are counted as loads and unloads (models already loaded at start-up are not loads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import orjson

from ollama_metrics_proxy.redact import redact_url
from ollama_metrics_proxy.telemetry.sources import SourceHealth
from ollama_metrics_proxy.upstream.errors import describe_os_error

log = logging.getLogger(__name__)
POLL_TIMEOUT_SECONDS = 5.0
# /api/tags of a server with a thousand models is about 1 MiB.
MAX_POLL_BYTES = 16 * 2**20
_EXCESS_FRACTION = re.compile(r"(\.\d{6})\d+")


@dataclass(frozen=True)
class LoadedModel:
    name: str
    size_bytes: int
    vram_bytes: int
    context_length: int | None
    expires_at: float | None  # unix time; the keep-alive deadline
    digest: str = ""  # the model blob's sha256, as the runner's command line names it


@dataclass(frozen=True)
class InstalledModel:
    name: str
    size_bytes: int
    family: str
    parameter_size: str
    quantization_level: str
    capabilities: tuple[str, ...] = ()  # "completion", "embedding", "tools", "thinking", ...


@dataclass(frozen=True)
class OllamaSnapshot:
    version: str | None
    loaded: tuple[LoadedModel, ...]
    installed: tuple[InstalledModel, ...]


def connection_failure(exc: aiohttp.ClientConnectorError) -> str:
    """'Connection refused' rather than aiohttp's 'Connect call failed (host, port)'."""
    return describe_os_error(exc.os_error)


def parse_time(text: Any) -> float | None:
    """Ollama's RFC 3339 timestamps carry nanoseconds; Python reads at most microseconds."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(_EXCESS_FRACTION.sub(r"\1", text.replace("Z", "+00:00"))).timestamp()
    except ValueError:
        return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _models(body: Any) -> list[dict[str, Any]]:
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, list):
        raise ValueError("the reply has no 'models' list")
    return [model for model in models if isinstance(model, dict) and isinstance(model.get("name"), str)]


def parse_ps(body: Any) -> tuple[LoadedModel, ...]:
    return tuple(
        LoadedModel(
            name=model["name"], size_bytes=_int(model.get("size")), vram_bytes=_int(model.get("size_vram")),
            context_length=_int(model.get("context_length")) or None, expires_at=parse_time(model.get("expires_at")),
            digest=model["digest"] if isinstance(model.get("digest"), str) else "",
        )
        for model in _models(body)
    )


def parse_tags(body: Any) -> tuple[InstalledModel, ...]:
    def detail(model: dict[str, Any], key: str) -> str:
        details = model.get("details")
        value = details.get(key) if isinstance(details, dict) else None
        return value if isinstance(value, str) else ""

    return tuple(
        InstalledModel(name=model["name"], size_bytes=_int(model.get("size")), family=detail(model, "family"),
                       parameter_size=detail(model, "parameter_size"),
                       quantization_level=detail(model, "quantization_level"),
                       capabilities=tuple(c for c in model.get("capabilities") or () if isinstance(c, str)))
        for model in _models(body)
    )


class OllamaStatePoller:
    def __init__(self, upstream: str, session: aiohttp.ClientSession, interval: float,
                 on_installed: Callable[[Iterable[str]], None] = lambda names: None) -> None:
        self._base_url = upstream  # with any credentials, which aiohttp sends as Basic authentication
        self.upstream = redact_url(upstream)  # as shown in logs, /-/ready and /-/system
        self.health = SourceHealth("ollama", subject=f"upstream Ollama at {self.upstream}")
        self.snapshot: OllamaSnapshot | None = None
        self.checked_at: float | None = None
        self.loads: dict[str, int] = {}
        self.unloads: dict[str, int] = {}
        self._session = session
        self._interval = interval
        self._on_installed = on_installed
        self._previously_loaded: set[str] | None = None
        self._last_expiry: dict[str, float] = {}  # each model's keep-alive deadline when last seen loaded
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def context_length(self, model: str) -> int | None:
        """The context window a loaded model runs with (/api/ps ``context_length``), None when not loaded."""
        snapshot = self.snapshot
        for loaded in snapshot.loaded if snapshot is not None else ():
            if loaded.name == model:
                return loaded.context_length
        return None

    def loaded_models(self) -> tuple[LoadedModel, ...]:
        snapshot = self.snapshot
        return snapshot.loaded if snapshot is not None else ()

    def installed_models(self) -> tuple[InstalledModel, ...]:
        """The installed models as last polled (none before the first poll or while Ollama is down)."""
        snapshot = self.snapshot
        return snapshot.installed if snapshot is not None else ()

    @property
    def up(self) -> bool:
        return self.health.status.up

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="ollama-state-poller")

    async def stop(self) -> None:
        """Stop polling. The flag, not only the cancellation, ends the loop: a cancellation that lands while
        aiohttp's own timeout is firing comes out of the request as a TimeoutError, which ``poll_once`` reports
        as a failed poll; the loop would then go on sleeping and polling, and the proxy's stop would wait forever
        (seen about once in ten stops right after start-up, with Ollama down)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def poll_once(self) -> None:
        try:
            version, ps, tags = await asyncio.gather(
                self._get("/api/version"), self._get("/api/ps"), self._get("/api/tags"))
            snapshot = OllamaSnapshot(
                version=version.get("version") if isinstance(version, dict) else None,
                loaded=parse_ps(ps), installed=parse_tags(tags))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.snapshot = None
            reason, detail = _describe(exc)
            self.health.failed(reason, detail, hint=(
                "; it is not answering, so /-/ready reports not ready while the proxy keeps running. Start "
                "Ollama (`ollama serve`) or point the proxy at it with --upstream URL or "
                "OLLAMA_METRICS_PROXY_UPSTREAM=URL"))
            self.checked_at = time.time()
            return
        self._count_loads(snapshot.loaded)
        self._on_installed(model.name for model in snapshot.installed)
        self.snapshot = snapshot
        if not self.health.status.up:
            log.info("upstream Ollama at %s is answering (version %s)", self.upstream, snapshot.version)
            self.health.reset_log()
        self.health.succeeded()
        self.checked_at = time.time()

    def model_state(self, model: str) -> tuple[str, int | None]:
        """Whether a model is loaded now, as the last poll saw it: ``("loaded", its context length)``,
        ``("expired", None)`` (it was unloaded after its keep-alive ran out, or is past it), ``("absent", None)``
        (not loaded, or evicted), or ``("unknown", None)`` before any poll succeeded."""
        snapshot = self.snapshot
        if snapshot is None:
            return "unknown", None
        now = time.time()
        for loaded in snapshot.loaded:
            if loaded.name == model:
                expired = loaded.expires_at is not None and loaded.expires_at <= now
                return ("expired", None) if expired else ("loaded", loaded.context_length)
        expiry = self._last_expiry.get(model)
        return ("expired", None) if expiry is not None and expiry <= now else ("absent", None)

    def _count_loads(self, loaded: Iterable[LoadedModel]) -> None:
        loaded = tuple(loaded)
        for model in loaded:
            if model.expires_at is not None:
                self._last_expiry[model.name] = model.expires_at
        current = {model.name for model in loaded}
        if self._previously_loaded is not None:
            for name in current - self._previously_loaded:
                self.loads[name] = self.loads.get(name, 0) + 1
            for name in self._previously_loaded - current:
                self.unloads[name] = self.unloads.get(name, 0) + 1
        self._previously_loaded = current

    async def _run(self) -> None:
        while not self._stopping:
            await self.poll_once()
            if not self._stopping:
                await asyncio.sleep(self._interval)

    async def _get(self, path: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=POLL_TIMEOUT_SECONDS)
        async with self._session.get(self._base_url + path, timeout=timeout) as response:
            if response.status != 200:
                raise ValueError(f"{path} answered HTTP {response.status}")
            return orjson.loads(await read_bounded(response, path))


async def read_bounded(response: aiohttp.ClientResponse, path: str) -> bytes:
    """The body, up to ``MAX_POLL_BYTES``: an upstream whose reply never ends (or claims gigabytes) fails the
    poll instead of taking the proxy's memory (one such reply took it from 95 MiB to 2.4 GB in 6 s)."""
    too_large = ValueError(f"{path} sent more than {MAX_POLL_BYTES // 2**20} MiB, more than any Ollama reply")
    if (response.content_length or 0) > MAX_POLL_BYTES:
        raise too_large
    body = bytearray()
    async for piece in response.content.iter_any():
        body += piece
        if len(body) > MAX_POLL_BYTES:
            raise too_large
    return bytes(body)


def _describe(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "unreachable", f"connection failed: {connection_failure(exc)}"
    if isinstance(exc, TimeoutError):
        return "timeout", f"no answer within {POLL_TIMEOUT_SECONDS:g} s"
    if isinstance(exc, ValueError):
        return "bad_response", str(exc)
    return "error", str(exc) or type(exc).__name__
