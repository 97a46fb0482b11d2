"""Background sources of telemetry: each refreshes a snapshot on its own schedule; scrapes only read it.

A source that fails keeps the proxy running: it publishes no snapshot, reports itself down with a short,
bounded reason (``ollama_metrics_proxy_source_up`` and ``..._source_errors_total``), and logs each new reason
once instead of on every cycle.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class SourceUnavailable(Exception):
    """The source cannot be read right now. ``reason`` is a fixed token used as a label value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SourceStatus:
    up: bool
    reason: str | None = None  # bounded token, e.g. "library_not_found", "unreachable"
    detail: str | None = None  # human-readable, for logs and /-/system


class SourceHealth:
    """Status, error counts and log-once bookkeeping shared by every source."""

    def __init__(self, name: str, subject: str = "") -> None:
        self.name = name
        self.subject = subject or f"{name} metrics"
        self.status = SourceStatus(up=False, reason="not_started", detail="no sample taken yet")
        self.errors: dict[str, int] = {}
        self._logged: str | None = None
        self._lock = threading.Lock()

    def succeeded(self) -> None:
        if self._logged is not None:
            log.info("%s: available again", self.subject)
        self._logged = None
        self.status = SourceStatus(up=True)

    def reset_log(self) -> None:
        """The caller announced the recovery itself."""
        self._logged = None

    def failed(self, reason: str, detail: str, *, hint: str = "") -> None:
        with self._lock:
            self.errors[reason] = self.errors.get(reason, 0) + 1
        self.status = SourceStatus(up=False, reason=reason, detail=detail)
        if self._logged != reason:
            self._logged = reason
            log.warning("%s: unavailable (%s): %s%s", self.subject, reason, detail, hint)

    def error_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.errors)


class ThreadedSampler(Generic[T]):
    """Runs ``sample()`` in a named daemon thread every ``interval`` seconds, keeping the latest snapshot.

    Reading hardware (NVML) or the process table (psutil) blocks; a thread keeps that off the event loop.
    """

    hint = ""  # appended to the one log line written when the source goes down

    def __init__(self, name: str, interval: float) -> None:
        self.health = SourceHealth(name)
        self.snapshot: T | None = None
        self.sampled_at: float | None = None
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-sampler", daemon=True)

    def sample(self) -> T:
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``sample`` acquired; runs in the sampler thread when it stops."""

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        elif self._thread.ident is None:
            self.close()  # never started, but may hold what initialisation acquired

    def sample_once(self) -> None:
        try:
            snapshot = self.sample()
        except SourceUnavailable as exc:
            self.snapshot = None
            self.health.failed(exc.reason, exc.detail, hint=self.hint)
        except Exception as exc:  # a bug or an unexpected library error: count it, log it once, go on
            self.snapshot = None
            if self.health.status.reason != "error":
                log.exception("%s sampler failed", self.health.name)
            self.health.failed("error", f"{type(exc).__name__}: {exc}")
        else:
            self.snapshot = snapshot
            self.sampled_at = time.time()
            self.health.succeeded()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self.sample_once()
                self._stopping.wait(self._interval)
        finally:
            self.close()
