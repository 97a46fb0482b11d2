"""The observer interface: ``feed(chunk)`` for every relayed chunk, ``close()`` once at the end."""

from __future__ import annotations

import time
from collections.abc import Callable

from ollama_metrics_proxy.observe.observation import Observation

Clock = Callable[[], float]


class Observer:
    """Learns nothing: used for bodies with nothing to measure (errors, management routes, blobs)."""

    def __init__(self, clock: Clock = time.perf_counter) -> None:
        self.observation = Observation()
        self._clock = clock

    def feed(self, chunk: bytes) -> None:
        """Called right after ``chunk`` was written to the client. Must stay cheap: a few comparisons."""

    def close(self) -> Observation:
        """The body ended (or was cut off); finish parsing and return what was learned."""
        return self.observation
