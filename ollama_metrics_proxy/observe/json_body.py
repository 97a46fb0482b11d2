"""Single JSON replies: ``stream: false`` generations, embeddings, and /v1 replies without streaming.

The body is kept up to ``max_body`` bytes and parsed once at the end. A larger body (a big embedding batch, a
generation with a long ``context``) is not kept: from then on it streams through ``TopLevelMembers``, which keeps
the small top-level members wherever they are and counts the vectors of the large ones, so the same readers
apply and nothing depends on where Ollama puts its fields or how the JSON is spaced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ollama_metrics_proxy.endpoints import Dialect
from ollama_metrics_proxy.observe.base import Clock, Observer
from ollama_metrics_proxy.observe.extract import (
    apply_anthropic,
    apply_native,
    apply_openai,
    apply_openai_response,
    count_tool_calls,
    error_message,
    load_object,
)
from ollama_metrics_proxy.observe.observation import Observation
from ollama_metrics_proxy.observe.toplevel import TopLevelMembers

MAX_BODY_BYTES = 1024 * 1024
ERROR_BODY_BYTES = 4096  # Ollama's error bodies are one short message

_APPLY: dict[Dialect, Callable[[Observation, dict[str, Any]], None]] = {
    Dialect.NATIVE: apply_native,
    Dialect.OPENAI: apply_openai,
    Dialect.OPENAI_RESPONSES: apply_openai_response,
    Dialect.ANTHROPIC: apply_anthropic,
}


class ErrorBodyObserver(Observer):
    """An error reply (4xx, 5xx): only its message is read, from at most ERROR_BODY_BYTES."""

    __slots__ = ("_body",)

    def __init__(self, clock: Clock = time.perf_counter) -> None:
        super().__init__(clock)
        self._body = bytearray()

    def feed(self, chunk: bytes) -> None:
        if len(self._body) < ERROR_BODY_BYTES:
            self._body += chunk[: ERROR_BODY_BYTES - len(self._body)]

    def close(self) -> Observation:
        obj = load_object(self._body)
        if obj is not None:
            self.observation.error = error_message(obj)
        return self.observation


class JsonBodyObserver(Observer):
    __slots__ = ("_body", "_dialect", "_max_body", "_scanner", "_size")

    def __init__(self, dialect: Dialect, *, max_body: int = MAX_BODY_BYTES, clock: Clock = time.perf_counter):
        super().__init__(clock)
        self._dialect = dialect
        self._max_body = max_body
        self._body = bytearray()
        self._size = 0
        self._scanner: TopLevelMembers | None = None

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._scanner is not None:
            self._scanner.feed(chunk)
        elif self._size <= self._max_body:
            self._body += chunk
        else:  # first time over the limit: scan what was kept, then keep nothing more
            self._scanner = TopLevelMembers()
            self._scanner.feed(bytes(self._body))
            self._scanner.feed(chunk)
            self._body = bytearray()

    def close(self) -> Observation:
        if self._size == 0:
            return self.observation
        if self._scanner is None:
            self._apply(load_object(self._body), complete=True)
        else:
            scanner = self._scanner
            self._apply(None if scanner.invalid else scanner.as_object(), complete=scanner.closed)
            if self.observation.finish_reason is None:
                self.observation.finish_reason = scanner.nested_reason
        return self.observation

    def _apply(self, obj: dict[str, Any] | None, *, complete: bool) -> None:
        obs = self.observation
        if obj is None:
            obs.parse_errors += 1
            return
        obs.error = error_message(obj)
        if obs.error is not None:
            return
        _APPLY[self._dialect](obs, obj)
        obs.tool_calls = count_tool_calls(obj)
        obs.complete = complete
