"""Ollama's native NDJSON streams: /api/generate, /api/chat, and pull/push/create progress.

Blocks of plain token lines in Ollama's own compact shape are only counted; every other line (the first, the
final ``done`` object, errors, empty pieces, anything spaced or unusual) is parsed as JSON, so the figures never
depend on how the upstream spaces its JSON. A line that is not a JSON object is a parse error, never a token.
"""

from __future__ import annotations

from ollama_metrics_proxy.observe.base import LineObserver
from ollama_metrics_proxy.observe.extract import (
    apply_native,
    error_message,
    load_object,
    note_native_content,
    text,
)

# Go writes fields in struct order and compact: an empty piece is exactly `"response":""` (generate) or
# `"content":""` (chat); the final object has `"done":true`.
_CONTENT_MARKERS = (b'"response":"', b'"content":"')


class NdjsonObserver(LineObserver):
    __slots__ = ()

    # Anything but ordinary token lines: errors, the final object, empty pieces, blank lines.
    special: tuple[bytes, ...] = (b'"error"', b'"done":true', b'"response":""', b'"content":""', b"\n\n")

    def counts_exactly(self, part: bytes) -> int | None:
        """Every line a JSON object carrying one text piece: `{…"response":"x"…}` or `{…"content":"x"…}`."""
        if not part.startswith(b"{") or not part.endswith(b"}\n"):
            return None
        if part.find(b"\n") == len(part) - 1:  # one line, the usual read: checks that cost no scan of the line
            return 1 if _CONTENT_MARKERS[0] in part or _CONTENT_MARKERS[1] in part else None
        lines = part.count(b"\n")
        if (
            part.count(b"}\n") != lines
            or part.count(b"\n{") != lines - 1
            or part.count(_CONTENT_MARKERS[0]) + part.count(_CONTENT_MARKERS[1]) != lines
        ):
            return None
        return lines

    def line(self, line: bytes, now: float) -> None:
        if not line.strip():
            return
        obj = load_object(line)
        obs = self.observation
        if obj is None:
            obs.parse_errors += 1
            return
        if obs.model is None:
            obs.model = text(obj.get("model"))
            obs.remote = bool(obj.get("remote_host"))
        message = error_message(obj)
        if message is not None:
            obs.error = message
            return
        if obj.get("done") is True:
            apply_native(obs, obj)
            obs.complete = True
        note_native_content(obs, obj, now)


class ProgressObserver(LineObserver):
    """/api/pull, /api/push, /api/create: no generated content; done at ``{"status":"success"}``.

    Progress lines come a few per second, so each is parsed; no fast path is needed.
    """

    __slots__ = ()

    def boundary(self, block: bytes, limit: int) -> int:
        return 0

    def line(self, line: bytes, now: float) -> None:
        if not line.strip():
            return
        obj = load_object(line)
        if obj is None:
            self.observation.parse_errors += 1
            return
        message = error_message(obj)
        if message is not None:
            self.observation.error = message
        elif obj.get("status") == "success":
            self.observation.complete = True
