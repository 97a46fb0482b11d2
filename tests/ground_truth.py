"""The oracle for the ground-truth tests: what a recorded reply says, computed with ``json`` alone.

Nothing here imports the proxy: the figures the proxy exports are compared with what this module reads from the
same bytes, written from Ollama's wire format (../shared/reference/ollama-api.md), not from the observers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

NDJSON, SSE, JSON = "ndjson", "sse", "json"
LIFECYCLE = ("load", "unload")


def messages_of(body: bytes, kind: str) -> list[bytes]:
    """The reply cut into the units Ollama flushes: NDJSON lines, SSE events, or the whole JSON body."""
    if kind == NDJSON:
        return body.splitlines(keepends=True)
    if kind == SSE:
        separator = b"\r\n\r\n" if b"\r\n" in body else b"\n\n"
        return [event + separator for event in body.split(separator) if event]
    return [body]


def respace(body: bytes, kind: str, style: str) -> bytes:
    """The same reply as another server or proxy in between might write it: ``spaced`` (a space after every
    colon and comma) or ``pretty`` (indented, so SSE data spans several ``data:`` lines, with CRLF line ends)."""
    if style == "compact":
        return body

    def dump(obj: Any) -> str:
        return json.dumps(obj, indent=2) if style == "pretty" else json.dumps(obj, separators=(", ", ": "))

    if kind == NDJSON:
        return b"".join(_respace_line(line) + b"\n" for line in body.splitlines() if line.strip())
    if kind == JSON:
        return dump(json.loads(body)).encode()
    newline = "\r\n" if style == "pretty" else "\n"
    events = []
    for event in sse_events(body):
        name, data = event
        lines = [] if name is None else [f"event:{name}" if style == "pretty" else f"event: {name}"]
        text = data if data == "[DONE]" else dump(json.loads(data))
        lines += [f"data: {part}" for part in text.split("\n")]
        events.append(newline.join(lines) + newline + newline)
    return "".join(events).encode()


def _respace_line(line: bytes) -> bytes:
    try:
        return json.dumps(json.loads(line), separators=(", ", ": ")).encode()
    except ValueError:
        return line  # a line that is not JSON stays what it is


def sse_events(body: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) per dispatched event, as the SSE specification reads a stream."""
    events, name, data = [], None, None
    for raw in body.decode().split("\n"):
        line = raw.removesuffix("\r")
        if not line:
            if data is not None:
                events.append((name, "\n".join(data)))
            name, data = None, None
        elif line.startswith("data:"):
            value = line[5:].removeprefix(" ")
            data = [value] if data is None else [*data, value]
        elif line.startswith("event:"):
            name = line[6:].removeprefix(" ")
    return events


@dataclass
class Expected:
    model: str | None = None
    complete: bool = False
    error: bool = False
    prompt_tokens: int | None = None
    reported_generation: int | None = None
    content_chunks: int = 0
    finish_reason: str | None = None
    parse_errors: int = 0
    eval_seconds: float | None = None
    prompt_eval_seconds: float | None = None
    embedding_inputs: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lifecycle(self) -> bool:
        return self.finish_reason in LIFECYCLE

    @property
    def generated(self) -> int | None:
        if self.reported_generation is not None:
            return self.reported_generation
        return self.content_chunks or None

    @property
    def estimated(self) -> bool:
        return self.reported_generation is None and self.content_chunks > 0


def _load(text: str | bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _has_error(obj: dict[str, Any]) -> bool:
    return isinstance(obj.get("error"), str | dict)


def native(body: bytes, kind: str) -> Expected:
    """/api/generate, /api/chat, /api/embed(dings): NDJSON lines ending in done:true, or one JSON object."""
    expected = Expected()
    lines = [body] if kind == JSON else [line for line in body.splitlines() if line.strip()]
    for line in lines:
        obj = _load(line)
        if obj is None:
            expected.parse_errors += 1
            continue
        expected.model = expected.model or obj.get("model")
        if _has_error(obj):
            expected.error = True
            continue
        message = obj.get("message") or {}
        if kind != JSON and any((obj.get("response"), obj.get("thinking"), obj.get("tool_calls"),
                                 message.get("content"), message.get("thinking"), message.get("tool_calls"))):
            expected.content_chunks += 1
        if obj.get("done") is True or kind == JSON:
            expected.complete = True
            expected.finish_reason = obj.get("done_reason")
            expected.prompt_tokens = obj.get("prompt_eval_count")
            expected.reported_generation = obj.get("eval_count")
            if "eval_duration" in obj:
                expected.eval_seconds = obj["eval_duration"] / 1e9
            if "prompt_eval_duration" in obj:
                expected.prompt_eval_seconds = obj["prompt_eval_duration"] / 1e9
            if isinstance(obj.get("embeddings"), list):
                expected.embedding_inputs = len(obj["embeddings"])
            elif isinstance(obj.get("embedding"), list):
                expected.embedding_inputs = 1
    return expected


def progress(body: bytes) -> Expected:
    expected = Expected()
    for line in body.splitlines():
        if not line.strip():
            continue
        obj = _load(line)
        if obj is None:
            expected.parse_errors += 1
        elif _has_error(obj):
            expected.error = True
        elif obj.get("status") == "success":
            expected.complete = True
    return expected


def openai(body: bytes, kind: str) -> Expected:
    """OpenAI chat/completions/embeddings: SSE chunks ending in [DONE], or one JSON object."""
    expected = Expected()
    payloads = [body.decode()] if kind == JSON else [data for _, data in sse_events(body)]
    for data in payloads:
        if data.strip() == "[DONE]":
            expected.complete = True
            continue
        obj = _load(data)
        if obj is None:
            expected.parse_errors += 1
            continue
        expected.model = expected.model or obj.get("model") or None
        expected.error = expected.error or _has_error(obj)
        for choice in obj.get("choices") or []:
            delta = choice.get("delta") or {}
            if choice.get("finish_reason"):
                expected.finish_reason = choice["finish_reason"]
            if kind != JSON and any((choice.get("text"), delta.get("content"), delta.get("reasoning"),
                                     delta.get("reasoning_content"), delta.get("tool_calls"))):
                expected.content_chunks += 1
        if isinstance(obj.get("usage"), dict):
            expected.prompt_tokens = obj["usage"].get("prompt_tokens")
            expected.reported_generation = obj["usage"].get("completion_tokens")
        if obj.get("object") == "list" and isinstance(obj.get("data"), list):
            expected.embedding_inputs = len(obj["data"])
        if kind == JSON and not _has_error(obj):
            expected.complete = True
    return expected


def anthropic(body: bytes, kind: str) -> Expected:
    """Anthropic Messages: message_start (provisional usage) … message_delta (usage) … message_stop."""
    expected = Expected()
    if kind == JSON:
        obj = _load(body)
        if obj is None:
            expected.parse_errors += 1
            return expected
        usage = obj.get("usage") or {}
        expected.complete = True
        expected.model = obj.get("model")
        expected.prompt_tokens, expected.reported_generation = usage.get("input_tokens"), usage.get("output_tokens")
        expected.finish_reason = obj.get("stop_reason")
        return expected
    for name, data in sse_events(body):
        obj = _load(data)
        if obj is None:
            expected.parse_errors += 1
            continue
        if name == "content_block_delta":
            expected.content_chunks += 1
        elif name == "message_start":
            message = obj["message"]
            expected.model = message.get("model")
            if expected.prompt_tokens is None:
                expected.prompt_tokens = (message.get("usage") or {}).get("input_tokens")
        elif name == "message_delta":
            usage = obj.get("usage") or {}
            if "input_tokens" in usage:
                expected.prompt_tokens = usage["input_tokens"]
            if "output_tokens" in usage:
                expected.reported_generation = usage["output_tokens"]
            expected.finish_reason = (obj.get("delta") or {}).get("stop_reason") or expected.finish_reason
        elif name == "message_stop":
            expected.complete = True
        elif name == "error":
            expected.error = True
    return expected


def responses(body: bytes, kind: str) -> Expected:
    """OpenAI Responses API: typed events; usage on the response of response.completed."""
    expected = Expected()
    for name, data in sse_events(body):
        obj = _load(data)
        if obj is None:
            expected.parse_errors += 1
            continue
        if name and name.endswith(".delta"):
            expected.content_chunks += 1
        elif name in ("response.completed", "response.incomplete"):
            response = obj["response"]
            usage = response.get("usage") or {}
            expected.complete = True
            expected.prompt_tokens, expected.reported_generation = usage.get("input_tokens"), usage.get(
                "output_tokens")
            expected.finish_reason = "stop" if response.get("status") == "completed" else "incomplete"
        elif name in ("response.failed", "error"):
            expected.error = True
    return expected


ORACLES = {"/api/generate": native, "/api/chat": native, "/api/embed": native, "/api/embeddings": native,
           "/v1/chat/completions": openai, "/v1/completions": openai, "/v1/embeddings": openai,
           "/v1/messages": anthropic, "/v1/responses": responses}


def expected_for(endpoint: str, body: bytes, kind: str) -> Expected:
    if endpoint == "/api/pull":
        return progress(body)
    return ORACLES[endpoint](body, kind)
