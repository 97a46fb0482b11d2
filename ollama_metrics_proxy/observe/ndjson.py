"""Ollama's native NDJSON streams: /api/generate, /api/chat, and pull/push/create progress.

Blocks of plain token lines are only counted; JSON is parsed once for the final ``done: true`` line and for
error lines. A raw ``"done":true`` or ``"error"`` can also appear nested (inside tool-call arguments), so the
parse confirms that the key is top-level before acting on it.
"""

from __future__ import annotations

from ollama_metrics_proxy.observe.base import LineObserver
from ollama_metrics_proxy.observe.extract import (
    apply_native,
    error_message,
    find_model,
    load_object,
    native_has_content,
)

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


class NdjsonObserver(LineObserver):
    # Anything but ordinary token lines: errors, the final object, empty pieces, blank lines.
    special: tuple[bytes, ...] = (b'"error"', b'"done":true', *_EMPTY_MARKERS, b"\n\n")

    def count_content(self, block: bytes) -> int:
        return block.count(b"\n")

    def line(self, line: bytes, now: float) -> None:
        obs = self.observation
        if not line or line.isspace():
            return
        if obs.model is None:
            obs.model = find_model(line)
        if b'"error"' in line and self._error_line(line):
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


class ProgressObserver(NdjsonObserver):
    """/api/pull, /api/push, /api/create: no generated content; done at ``{"status":"success"}``."""

    special = (b'"error"', b'"status":"success"')

    def count_content(self, block: bytes) -> int:
        return 0

    def line(self, line: bytes, now: float) -> None:
        if b'"error"' in line and self._error_line(line):
            return
        if b'"status":"success"' in line:
            self.observation.complete = True
