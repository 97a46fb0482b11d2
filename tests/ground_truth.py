"""The oracle for the ground-truth tests: what a recorded reply says, computed with ``json`` alone.

Nothing here imports the proxy: the figures the proxy exports are compared with what this module reads from the
same bytes, written from Ollama's wire format (../shared/reference/ollama-api.md), not from the observers.
"""

from __future__ import annotations

import json
import re
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
    cached_tokens: int | None = None
    reported_generation: int | None = None
    content_chunks: int = 0
    finish_reason: str | None = None
    parse_errors: int = 0
    eval_seconds: float | None = None
    prompt_eval_seconds: float | None = None
    embedding_inputs: int | None = None
    thinking_chunks: int = 0  # content chunks carrying only thinking
    tool_calls: int = 0
    gaps: int = 0  # inter-token samples: content chunks after the first, except those carrying a tool call
    answered: bool = False  # an answer chunk (text or a tool call) was streamed
    remote: bool = False  # a line named a remote_host: an Ollama cloud model
    extra: dict[str, Any] = field(default_factory=dict)

    def piece(self, *, thinking: bool, calls: int, tool_arguments: bool = False) -> None:
        """One streamed chunk with generated content: thinking only, or an answer with ``calls`` new tool calls
        (or a tool call's arguments). The silence before a tool call is not an inter-token gap."""
        if self.content_chunks and not calls and not tool_arguments:
            self.gaps += 1
        self.content_chunks += 1
        self.thinking_chunks += thinking
        self.answered = self.answered or not thinking
        self.tool_calls += calls

    @property
    def lifecycle(self) -> bool:
        return self.finish_reason in LIFECYCLE

    @property
    def cloud(self) -> bool:
        """Ollama's cloud models: a remote_host in the reply, or a tag of `cloud` or ending `-cloud`."""
        return self.remote or bool(re.search(r":(?:[^/:]*-)?cloud$", self.model or ""))

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
        expected.remote = expected.remote or bool(obj.get("remote_host"))
        if _has_error(obj):
            expected.error = True
            continue
        message = obj.get("message") or {}
        calls = obj.get("tool_calls") or message.get("tool_calls") or []
        answer = obj.get("response") or message.get("content") or calls
        if kind != JSON and (answer or obj.get("thinking") or message.get("thinking")):
            expected.piece(thinking=not answer, calls=len(calls))
        elif kind == JSON:
            expected.tool_calls += len(calls)
        if obj.get("done") is True or kind == JSON:
            expected.complete = True
            expected.finish_reason = obj.get("done_reason")
            expected.prompt_tokens = obj.get("prompt_eval_count")
            expected.cached_tokens = obj.get("prompt_eval_cached_count")
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
            new_calls = [call for call in delta.get("tool_calls") or [] if call.get("id")]
            answer = choice.get("text") or delta.get("content") or delta.get("tool_calls")
            if kind != JSON and (answer or delta.get("reasoning") or delta.get("reasoning_content")):
                expected.piece(thinking=not answer, calls=len(new_calls))
            elif kind == JSON:
                expected.tool_calls += len((choice.get("message") or {}).get("tool_calls") or [])
        usage = obj.get("usage")
        # Ollama's /v1/completions chunks carry a usage of zeros until the real one: a placeholder, not a count.
        if isinstance(usage, dict) and any(usage.get(name) for name in ("prompt_tokens", "completion_tokens")):
            expected.prompt_tokens = usage.get("prompt_tokens")
            expected.reported_generation = usage.get("completion_tokens")
            expected.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
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
        expected.tool_calls = sum(block.get("type") == "tool_use" for block in obj.get("content") or [])
        return expected
    for name, data in sse_events(body):
        obj = _load(data)
        if obj is None:
            expected.parse_errors += 1
            continue
        if name == "content_block_delta":
            delta_type = (obj.get("delta") or {}).get("type")
            expected.piece(thinking=delta_type == "thinking_delta", calls=0,
                           tool_arguments=delta_type == "input_json_delta")
        elif name == "content_block_start":
            expected.tool_calls += (obj.get("content_block") or {}).get("type") == "tool_use"
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
            expected.piece(thinking=name.startswith("response.reasoning"), calls=0,
                           tool_arguments=name == "response.function_call_arguments.delta")
        elif name == "response.output_item.added":
            expected.tool_calls += (obj.get("item") or {}).get("type") == "function_call"
        elif name in ("response.completed", "response.incomplete"):
            response = obj["response"]
            usage = response.get("usage") or {}
            expected.complete = True
            expected.prompt_tokens, expected.reported_generation = usage.get("input_tokens"), usage.get(
                "output_tokens")
            expected.cached_tokens = (usage.get("input_tokens_details") or {}).get("cached_tokens")
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
