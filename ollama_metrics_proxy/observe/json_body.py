"""Single JSON replies: ``stream: false`` generations, embeddings, and /v1 replies without streaming.

The body is kept up to ``max_body`` bytes and parsed once at the end. A larger body (a big embedding batch)
is not kept: only its head and tail are, and the figures are read from those with patterns, since Ollama
writes the usage and timing fields after the large arrays.
"""

from __future__ import annotations

import re
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
    error_message,
    find_model,
    load_object,
)
from ollama_metrics_proxy.observe.observation import Observation

MAX_BODY_BYTES = 1024 * 1024
WINDOW_BYTES = 64 * 1024

_APPLY: dict[Dialect, Callable[[Observation, dict[str, Any]], None]] = {
    Dialect.NATIVE: apply_native,
    Dialect.OPENAI: apply_openai,
    Dialect.OPENAI_RESPONSES: apply_openai_response,
    Dialect.ANTHROPIC: apply_anthropic,
}
_NUMBER_FIELDS = re.compile(
    rb'"(prompt_eval_count|eval_count|load_duration|prompt_eval_duration|eval_duration|total_duration'
    rb'|prompt_tokens|completion_tokens|input_tokens|output_tokens)":(\d+)'
)
_REASON_FIELDS = re.compile(rb'"(done_reason|finish_reason|stop_reason)":"([a-z_]{1,40})"')
# One marker per embedding vector, counted on the fly so the count survives dropping the body.
_EMBEDDING_MARKERS = {Dialect.NATIVE: b"],[", Dialect.OPENAI: b'"object":"embedding"'}


class JsonBodyObserver(Observer):
    def __init__(self, dialect: Dialect, *, max_body: int = MAX_BODY_BYTES, clock: Clock = time.perf_counter):
        super().__init__(clock)
        self._dialect = dialect
        self._max_body = max_body
        self._body = bytearray()
        self._head = b""
        self._tail = b""
        self._size = 0
        self._markers = 0
        self._marker = _EMBEDDING_MARKERS.get(dialect, b"")

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self._max_body:
            self._body += chunk
            return
        if self._body:  # first time over the limit: keep only the head, count markers seen so far
            self._head = bytes(self._body[:WINDOW_BYTES])
            self._count_markers(bytes(self._body))
            self._tail = bytes(self._body[-WINDOW_BYTES:])
            self._body = bytearray()
        # Join with the old tail so markers and fields split across chunks are still seen.
        joined = self._tail[-len(self._marker) + 1 :] + chunk if self._marker else chunk
        self._count_markers(joined)
        self._tail = (self._tail + chunk)[-WINDOW_BYTES:]

    def close(self) -> Observation:
        if self._size == 0:
            return self.observation
        if self._size <= self._max_body:
            self._apply_whole(bytes(self._body))
        else:
            self._apply_windows()
        return self.observation

    def _count_markers(self, data: bytes) -> None:
        if self._marker:
            self._markers += data.count(self._marker)

    def _apply_whole(self, body: bytes) -> None:
        obs = self.observation
        obj = load_object(body)
        if obj is None:
            obs.parse_errors += 1
            return
        obs.error = error_message(obj)
        if obs.error is not None:
            return
        _APPLY[self._dialect](obs, obj)
        obs.complete = True

    def _apply_windows(self) -> None:
        obs = self.observation
        obs.model = find_model(self._head)
        numbers = {name.decode(): int(value) for name, value in _NUMBER_FIELDS.findall(self._tail)}
        reasons = [value.decode() for _, value in _REASON_FIELDS.findall(self._tail)]
        prompt = numbers.get("prompt_eval_count", numbers.get("prompt_tokens", numbers.get("input_tokens")))
        generated = numbers.get("eval_count", numbers.get("completion_tokens", numbers.get("output_tokens")))
        obs.prompt_tokens, obs.generation_tokens = prompt, generated
        for field in ("load", "prompt_eval", "eval", "total"):
            if f"{field}_duration" in numbers:
                setattr(obs, f"{field}_seconds", numbers[f"{field}_duration"] / 1e9)
        obs.finish_reason = reasons[-1] if reasons else None
        if self._marker and self._head.find(b"embedding") >= 0:
            native = self._dialect is Dialect.NATIVE
            obs.embedding_inputs = self._markers + 1 if native else self._markers
        obs.complete = self._tail.rstrip().endswith(b"}")
