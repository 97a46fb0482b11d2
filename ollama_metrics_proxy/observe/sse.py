"""Server-sent event streams: OpenAI chat/completions, the OpenAI Responses API, and Anthropic Messages.

Lines are reassembled across chunks; ``event:`` names are tracked and each ``data:`` payload is handed to the
dialect. Blocks of whole content events take the counting fast path; only a handful of events per stream are
JSON-parsed (the first, the finish and usage events).
"""

from __future__ import annotations

import time

from ollama_metrics_proxy.observe.base import Clock, LineObserver
from ollama_metrics_proxy.observe.extract import (
    apply_anthropic,
    apply_openai,
    apply_openai_response,
    error_message,
    find_model,
    load_object,
)


class SseObserver(LineObserver):
    def __init__(self, clock: Clock = time.perf_counter) -> None:
        super().__init__(clock)
        self._event = b""

    def boundary(self, block: bytes, limit: int) -> int:
        # Only whole events may be counted: the counted part must start and end at event boundaries, so that
        # no event name carries over from or into a part read line by line.
        if self._event:
            return 0
        end = block.rfind(b"\n\n", 0, limit)
        return end + 2 if end >= 0 else 0

    def line(self, line: bytes, now: float) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            self._event = b""  # a blank line ends the event
        elif line.startswith(b"data:"):
            self.data(self._event, line[5:].lstrip(b" "), now)
        elif line.startswith(b"event:"):
            self._event = line[6:].strip()

    def data(self, event: bytes, data: bytes, now: float) -> None:
        raise NotImplementedError

    def _parse(self, data: bytes) -> dict[str, object] | None:
        obj = load_object(data)
        if obj is None:
            self.observation.parse_errors += 1
        return obj


def _openai_delta_has_content(data: bytes) -> bool:
    for marker in (b'"content":"', b'"reasoning":"', b'"text":"'):
        at = data.find(marker)
        if at >= 0 and data[at + len(marker) : at + len(marker) + 1] != b'"':
            return True
    return b'"tool_calls"' in data


class OpenAiSseObserver(SseObserver):
    """``data: {chunk}`` frames ending in ``data: [DONE]``; a stream without ``[DONE]`` did not finish.

    Usage arrives only when the client asked for ``stream_options.include_usage``; /v1/completions then sends
    zero usage on every chunk and the real figures last, so the last usage seen wins.
    """

    special = (b"[DONE]", b'"finish_reason":"', b'"choices":[]', b'"error"', b'"content":""', b'"text":""',
               b'"reasoning":""', b"event:")

    def count_content(self, block: bytes) -> int:
        return block.count(b"\ndata:") + block.startswith(b"data:")

    def data(self, event: bytes, data: bytes, now: float) -> None:
        obs = self.observation
        if data == b"[DONE]":
            obs.complete = True
            return
        if obs.model is None:
            obs.model = find_model(data)
        if b'"choices":[]' in data or b'"finish_reason":"' in data or data.startswith(b'{"error"'):
            obj = self._parse(data)
            if obj is not None:
                obs.error = error_message(obj) or obs.error
                apply_openai(obs, obj)
        if _openai_delta_has_content(data):
            obs.note_content(now)


class OpenAiResponsesSseObserver(SseObserver):
    """Typed events; the stream finishes with ``response.completed`` (or ``response.incomplete``)."""

    special = (b"event: response.created", b"event: response.completed", b"event: response.incomplete",
               b"event: response.failed", b"event: error")

    def count_content(self, block: bytes) -> int:
        return block.count(b".delta\n")

    def data(self, event: bytes, data: bytes, now: float) -> None:
        obs = self.observation
        if event.endswith(b".delta"):
            obs.note_content(now)
        elif event in (b"response.completed", b"response.incomplete"):
            obj = self._parse(data)
            response = obj.get("response") if obj else None
            if isinstance(response, dict):
                apply_openai_response(obs, response)
                obs.complete = True
        elif event in (b"response.failed", b"error"):
            obj = self._parse(data) or {}
            response = obj.get("response")
            nested = error_message(response) if isinstance(response, dict) else None
            obs.error = nested or error_message(obj) or str(obj.get("message") or "response failed")
        elif obs.model is None and event == b"response.created":
            obs.model = find_model(data)


class AnthropicSseObserver(SseObserver):
    """message_start (model, input tokens) … content_block_delta … message_delta (output tokens) … message_stop."""

    special = (b"event: message_start", b"event: message_delta", b"event: message_stop", b"event: error")

    def count_content(self, block: bytes) -> int:
        return block.count(b"event: content_block_delta")

    def data(self, event: bytes, data: bytes, now: float) -> None:
        obs = self.observation
        if event == b"content_block_delta":
            obs.note_content(now)
        elif event == b"message_start":
            obj = self._parse(data)
            message = obj.get("message") if obj else None
            if isinstance(message, dict):
                apply_anthropic(obs, message)
        elif event == b"message_delta":
            obj = self._parse(data)
            if obj is not None:
                apply_anthropic(obs, obj)
        elif event == b"message_stop":
            obs.complete = True
        elif event == b"error":
            obj = self._parse(data) or {}
            obs.error = error_message(obj) or "error"
