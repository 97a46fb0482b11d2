"""Server-sent event streams: OpenAI chat/completions, the OpenAI Responses API, and Anthropic Messages.

Lines are reassembled across chunks and events assembled as the SSE specification says: ``event:`` names the
event, ``data:`` lines (several are joined with newlines) carry its payload, and a blank line dispatches it to
the dialect. Blocks of whole content events in the exact shape Ollama writes take the counting fast path; every
other event is parsed as JSON, so the figures hold for spaced JSON, CRLF line ends and multi-line data too.
"""

from __future__ import annotations

import time

from ollama_metrics_proxy.observe.base import Clock, LineObserver
from ollama_metrics_proxy.observe.extract import (
    apply_anthropic,
    apply_openai,
    apply_openai_response,
    error_message,
    load_object,
    note_openai_content,
    text,
)


def _field_value(line: bytes, name_length: int) -> bytes:
    value = line[name_length:]
    return value[1:] if value[:1] == b" " else value  # one leading space is part of the syntax, not the value


class SseObserver(LineObserver):
    __slots__ = ("_data", "_event")

    # Lines per event in the shape Ollama writes: `data: {…}` (OpenAI) or `event: name` + `data: {…}` (typed).
    lines_per_event = 2

    def __init__(self, clock: Clock = time.perf_counter) -> None:
        super().__init__(clock)
        self._event = b""
        self._data: bytes | None = None

    def boundary(self, block: bytes, limit: int) -> int:
        # Only whole events may be counted: the counted part must start and end at event boundaries, so that
        # no event carries over from or into a part read line by line.
        if self._event or self._data is not None:
            return 0
        end = block.rfind(b"\n\n", 0, limit)
        return end + 2 if end >= 0 else 0

    def counts_exactly(self, part: bytes) -> int | None:
        """Every event exactly `[event: name\\n]data: {…}\\n\\n`."""
        first = b"data: {" if self.lines_per_event == 1 else b"event: "
        if not part.startswith(first) or not part.endswith(b"}\n\n"):
            return None
        newlines = part.count(b"\n")
        if newlines == self.lines_per_event + 1:  # one event, the usual read
            if self.lines_per_event == 2 and b"\ndata: {" not in part:
                return None
            return self.content_events(part, 1)
        events = part.count(b"\n\n")
        if (
            newlines != (self.lines_per_event + 1) * events
            or part.count(b"\n\n" + first) != events - 1
            or part.count(b"}\n\n") != events
            or (self.lines_per_event == 2 and part.count(b"\ndata: {") != events)
        ):
            return None
        return self.content_events(part, events)

    def content_events(self, part: bytes, events: int) -> int | None:
        raise NotImplementedError

    def line(self, line: bytes, now: float) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            self._dispatch(now)
        elif line.startswith(b"data:"):
            value = _field_value(line, 5)
            self._data = value if self._data is None else self._data + b"\n" + value
        elif line.startswith(b"event:"):
            self._event = _field_value(line, 6)
        # Comments (`: keep-alive`), `id:` and `retry:` carry nothing to measure.

    def pending(self) -> bool:
        return self._data is not None

    def end_of_stream(self, now: float) -> None:
        self._dispatch(now)  # a last event without its blank line: read it all the same

    def _dispatch(self, now: float) -> None:
        event, data = self._event, self._data
        self._event, self._data = b"", None
        if data is not None:
            self.data(event, data, now)

    def data(self, event: bytes, data: bytes, now: float) -> None:
        raise NotImplementedError

    def _parse(self, data: bytes) -> dict[str, object] | None:
        obj = load_object(data)
        if obj is None:
            self.observation.parse_errors += 1
        return obj


# In a chunk free of the special markers below, each of these starts a non-empty piece of generated content.
_OPENAI_CONTENT = (b'"content":"', b'"text":"')


class OpenAiSseObserver(SseObserver):
    """``data: {chunk}`` frames ending in ``data: [DONE]``; a stream without ``[DONE]`` did not finish.

    Usage arrives only when the client asked for ``stream_options.include_usage``; /v1/completions then sends
    zero usage on every chunk and the real figures last, so the last usage seen wins.
    """

    __slots__ = ()

    lines_per_event = 1
    # Reasoning and tool calls are read event by event too: thinking is told apart from the answer, and calls
    # are counted.
    special = (b"[DONE]", b'"finish_reason":"', b'"choices":[]', b'"error"', b'"content":""', b'"text":""',
               b'"reasoning', b'"tool_calls"', b"event:")

    def content_events(self, part: bytes, events: int) -> int | None:
        # Exactly one content marker per event, or the part is parsed event by event.
        content, text_ = _OPENAI_CONTENT
        if events == 1:  # the usual read; written out, as a generator costs more than the searches
            return 1 if content in part or text_ in part else None
        return events if part.count(content) + part.count(text_) == events else None

    def data(self, event: bytes, data: bytes, now: float) -> None:
        obs = self.observation
        if data.strip() == b"[DONE]":
            obs.complete = True
            return
        obj = self._parse(data)
        if obj is None:
            return
        obs.model = obs.model or text(obj.get("model"))
        obs.error = error_message(obj) or obs.error
        apply_openai(obs, obj)
        note_openai_content(obs, obj, now)


class OpenAiResponsesSseObserver(SseObserver):
    """Typed events; the stream finishes with ``response.completed`` (or ``response.incomplete``)."""

    __slots__ = ()

    special = (b"event: response.created", b"event: response.completed", b"event: response.incomplete",
               b"event: response.failed", b"event: error", b"event: response.reasoning",
               b"event: response.output_item.added", b"event: response.function_call_arguments.delta")

    def content_events(self, part: bytes, events: int) -> int:
        return part.count(b".delta\n")

    def data(self, event: bytes, data: bytes, now: float) -> None:
        obs = self.observation
        if event.endswith(b".delta"):
            obs.note_content(now, thinking=event.startswith(b"response.reasoning"),
                             tool_call=event == b"response.function_call_arguments.delta")
        elif event == b"response.output_item.added":
            obj = self._parse(data)
            item = obj.get("item") if obj else None
            if isinstance(item, dict) and item.get("type") == "function_call":
                obs.tool_calls += 1
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
            obj = self._parse(data)
            response = obj.get("response") if obj else None
            if isinstance(response, dict):
                obs.model = text(response.get("model"))


class AnthropicSseObserver(SseObserver):
    """message_start (model, provisional usage) … content_block_delta … message_delta (usage) … message_stop."""

    __slots__ = ()

    special = (b"event: message_start", b"event: message_delta", b"event: message_stop", b"event: error",
               b"thinking_delta", b"input_json_delta", b'"tool_use"')

    def content_events(self, part: bytes, events: int) -> int:
        return part.count(b"event: content_block_delta\n")

    def data(self, event: bytes, data: bytes, now: float) -> None:
        obs = self.observation
        if event == b"content_block_delta":
            delta = _delta_type(self._parse(data)) if b"thinking_delta" in data or b"input_json_delta" in data else ""
            obs.note_content(now, thinking=delta == "thinking_delta", tool_call=delta == "input_json_delta")
        elif event == b"content_block_start":
            obj = self._parse(data) if b"tool_use" in data else None
            block = obj.get("content_block") if obj else None
            if isinstance(block, dict) and block.get("type") == "tool_use":
                obs.tool_calls += 1
        elif event == b"message_start":
            obj = self._parse(data)
            message = obj.get("message") if obj else None
            if isinstance(message, dict):
                apply_anthropic(obs, message, provisional=True)
        elif event == b"message_delta":
            obj = self._parse(data)
            if obj is not None:
                apply_anthropic(obs, obj)
        elif event == b"message_stop":
            obs.complete = True
        elif event == b"error":
            obj = self._parse(data) or {}
            obs.error = error_message(obj) or "error"


def _delta_type(obj: dict[str, object] | None) -> str:
    delta = obj.get("delta") if obj else None
    return str(delta.get("type") or "") if isinstance(delta, dict) else ""
