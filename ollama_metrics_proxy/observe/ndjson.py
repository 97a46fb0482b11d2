"""Ollama's native NDJSON streams: /api/generate, /api/chat, and pull/push/create progress.

Per line only substring checks run; JSON is parsed once for the final ``done: true`` line and for error lines.
A raw ``"done":true`` or ``"error"`` can also appear nested (inside tool-call arguments), so the parse confirms
that the key is top-level before acting on it.
"""

from __future__ import annotations

import time

from ollama_metrics_proxy.observe.base import Clock, Observer
from ollama_metrics_proxy.observe.extract import (
    apply_native,
    error_message,
    find_model,
    load_object,
    native_has_content,
)
from ollama_metrics_proxy.observe.lines import LineBuffer
from ollama_metrics_proxy.observe.observation import Observation

_EMPTY_MARKERS = (b'"response":""', b'"content":""')
_RICH_MARKERS = (b'"thinking":"', b'"tool_calls"')


def _native_line_has_content(line: bytes) -> bool:
    """Cheap test for an intermediate line carrying text, thinking or a tool call.

    Go writes fields in struct order and compact, so an empty piece is exactly ``"response":""`` (generate)
    or ``"content":""`` (chat).
    """
    if _EMPTY_MARKERS[0] in line or _EMPTY_MARKERS[1] in line:
        return _RICH_MARKERS[0] in line or _RICH_MARKERS[1] in line
    return True


class NdjsonObserver(Observer):
    def __init__(self, *, progress: bool = False, clock: Clock = time.perf_counter) -> None:
        super().__init__(clock)
        self._progress = progress
        self._lines = LineBuffer()

    def feed(self, chunk: bytes) -> None:
        lines = self._lines.feed(chunk)
        if lines:
            now = self._clock()
            for line in lines:
                self._line(line, now)

    def close(self) -> Observation:
        rest = self._lines.close()
        if rest:
            self._line(rest, self._clock())
        self.observation.parse_errors += self._lines.oversized
        return self.observation

    def _line(self, line: bytes, now: float) -> None:
        obs = self.observation
        if not line.strip():
            return
        if obs.model is None:
            obs.model = find_model(line)
        if b'"error"' in line and self._error_line(line):
            return
        if self._progress:
            if b'"status":"success"' in line:
                obs.complete = True
            return
        if b'"done":true' in line and self._final_line(line, now):
            return
        if _native_line_has_content(line):
            obs.note_content(now)

    def _error_line(self, line: bytes) -> bool:
        obj = load_object(line)
        message = None if obj is None else error_message(obj)
        if message is None:
            return False
        self.observation.error = message
        return True

    def _final_line(self, line: bytes, now: float) -> bool:
        obj = load_object(line)
        if obj is None:
            self.observation.parse_errors += 1
            return True
        if obj.get("done") is not True:
            return False
        apply_native(self.observation, obj)
        self.observation.complete = True
        if native_has_content(obj):
            self.observation.note_content(now)
        return True
