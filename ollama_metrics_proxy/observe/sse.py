"""Server-sent event streams: OpenAI chat/completions, the OpenAI Responses API, and Anthropic Messages.

Lines are reassembled across chunks; ``event:`` names are tracked and each ``data:`` payload is handed to the
dialect. As with NDJSON, only a handful of events per stream are JSON-parsed (the first, the finish and usage
events); content events are recognised by substring checks.
"""

from __future__ import annotations

import time

from ollama_metrics_proxy.observe.base import Clock, Observer
from ollama_metrics_proxy.observe.extract import (
    apply_anthropic,
    apply_openai,
    apply_openai_response,
    error_message,
    find_model,
    load_object,
)
from ollama_metrics_proxy.observe.lines import LineBuffer
from ollama_metrics_proxy.observe.observation import Observation


class SseObserver(Observer):
    def __init__(self, clock: Clock = time.perf_counter) -> None:
        super().__init__(clock)
        self._lines = LineBuffer()
        self._event = b""

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
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            self._event = b""  # a blank line ends the event
        elif line.startswith(b"data:"):
            self._data(self._event, line[5:].lstrip(b" "), now)
        elif line.startswith(b"event:"):
            self._event = line[6:].strip()

    def _data(self, event: bytes, data: bytes, now: float) -> None:
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

    def _data(self, event: bytes, data: bytes, now: float) -> None:
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

    def _data(self, event: bytes, data: bytes, now: float) -> None:
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

    def _data(self, event: bytes, data: bytes, now: float) -> None:
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
