"""Read tokens, timings and reasons out of one parsed response object, per wire dialect.

Every function tolerates missing or mistyped fields (Ollama omits zero values, and a misbehaving upstream may
send anything): a field that is not the expected type is ignored rather than raising.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ollama_metrics_proxy.observe.observation import Observation

NANOSECONDS = 1e9
_TOOL_CALL_HOLDERS = frozenset({"tool_calls", "choices", "content", "output"})
_NUM_CTX_FIELD = re.compile(rb'"num_ctx"\s*:\s*(\d{1,9})\b')
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.){1,512})"')


def normalize_model(name: str) -> str:
    """``llama3.2`` and ``llama3.2:latest`` are the same model to Ollama, so they share one label value."""
    name = name.strip()
    last_segment = name.rsplit("/", 1)[-1]
    return name if ":" in last_segment else f"{name}:latest"


def find_num_ctx(data: bytes | bytearray) -> int | None:
    """``options.num_ctx`` from a request's raw JSON bytes (a runner option: a different one reloads the model)."""
    if b'"num_ctx"' not in data:
        return None
    match = _NUM_CTX_FIELD.search(data)
    return int(match.group(1)) if match else None


def find_model(data: bytes | bytearray) -> str | None:
    """The first ``"model":"…"`` string value in raw JSON bytes, without parsing the whole document.

    Inside JSON strings every quote is escaped, so a raw ``"model"`` followed by a colon can only be a key.
    Plain ``find`` calls (C speed) do the work; a regular expression runs only for unusual spacing.
    """
    at = data.find(b'"model":"')
    if at < 0:
        match = _MODEL_FIELD.search(data)  # "model" : "…" with whitespace, or an escaped value
        return _decode_model(match.group(1)) if match else None
    start = at + 9
    end = data.find(b'"', start, start + 513)
    if end <= start:
        return None
    raw = bytes(data[start:end])
    if raw.endswith(b"\\"):  # an escaped quote inside the name: let the pattern sort it out
        match = _MODEL_FIELD.search(data, at)
        return _decode_model(match.group(1)) if match else None
    return _decode_model(raw)


def _decode_model(raw: bytes) -> str | None:
    if b"\\" in raw:
        try:
            decoded = orjson.loads(b'"' + raw + b'"')
        except orjson.JSONDecodeError:
            return None
        return decoded if isinstance(decoded, str) else None
    return raw.decode("utf-8", "replace")


def load_object(data: bytes | bytearray) -> dict[str, Any] | None:
    """Parse one JSON object; None when it is not valid JSON or not an object."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _seconds(value: Any) -> float | None:
    count = _int(value)
    return None if count is None else count / NANOSECONDS


def text(value: Any) -> str | None:
    """A non-empty string value, else None."""
    return value if isinstance(value, str) and value else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def error_message(obj: dict[str, Any]) -> str | None:
    """The message of a native ``{"error": "..."}`` or wrapped ``{"error": {"message": ...}}`` object."""
    error = obj.get("error")
    if isinstance(error, str):
        return error or "error"
    if isinstance(error, dict):
        return text(error.get("message")) or "error"
    return None


def is_cloud_model(name: str | None) -> bool:
    """Ollama's cloud models: the tag is ``cloud`` or ends ``-cloud`` (``gpt-oss:120b-cloud``,
    ``kimi-k2:1t-cloud``, ``minimax-m2:cloud``); ollama:internal/modelref/modelref.go."""
    if not name or not name.endswith("cloud"):  # the usual answer, without splitting the name
        return False
    tag = name.rsplit("/", 1)[-1].partition(":")[2]
    return tag == "cloud" or tag.endswith("-cloud")


def apply_native(obs: Observation, obj: dict[str, Any]) -> None:
    """A ``done: true`` object from /api/generate or /api/chat, or an /api/embed(dings) reply."""
    obs.model = text(obj.get("model")) or obs.model
    obs.remote = obs.remote or bool(obj.get("remote_host"))
    obs.finish_reason = text(obj.get("done_reason")) or obs.finish_reason
    obs.prompt_tokens = _int(obj.get("prompt_eval_count"))
    obs.cached_tokens = _int(obj.get("prompt_eval_cached_count"))  # Ollama 0.33+, a 0 included
    obs.generation_tokens = _int(obj.get("eval_count"))
    obs.load_seconds = _seconds(obj.get("load_duration"))
    obs.prompt_eval_seconds = _seconds(obj.get("prompt_eval_duration"))
    obs.eval_seconds = _seconds(obj.get("eval_duration"))
    obs.total_seconds = _seconds(obj.get("total_duration"))
    if isinstance(obj.get("embeddings"), list):
        obs.embedding_inputs = len(obj["embeddings"])
    elif isinstance(obj.get("embedding"), list):
        obs.embedding_inputs = 1


def note_native_content(obs: Observation, obj: dict[str, Any], now: float) -> None:
    """A native object's generated piece, if it carries one: thinking, answer text or tool calls."""
    message = _dict(obj.get("message"))
    calls = obj.get("tool_calls") or message.get("tool_calls")
    answer = obj.get("response") or message.get("content") or calls
    if answer or obj.get("thinking") or message.get("thinking"):
        obs.tool_calls += len(calls) if isinstance(calls, list) else 0
        obs.note_content(now, thinking=not answer, tool_call=bool(calls))


def note_openai_content(obs: Observation, obj: dict[str, Any], now: float) -> None:
    """An OpenAI chunk's generated piece, if it carries one: reasoning, text or tool calls (each new call has
    an ``id``; a call's later argument pieces do not)."""
    answer = thinking = False
    calls = 0
    for choice in obj.get("choices") or ():
        choice = _dict(choice)
        delta = _dict(choice.get("delta")) or _dict(choice.get("message"))
        deltas = delta.get("tool_calls")
        if isinstance(deltas, list) and deltas:
            calls += sum(1 for call in deltas if _dict(call).get("id")) if "delta" in choice else len(deltas)
            answer = True
        answer = answer or bool(choice.get("text") or delta.get("content"))
        thinking = thinking or bool(delta.get("reasoning") or delta.get("reasoning_content"))
    obs.tool_calls += calls
    if answer or thinking:
        obs.note_content(now, thinking=not answer, tool_call=calls > 0)


def count_tool_calls(obj: dict[str, Any]) -> int:
    """Tool calls in a whole reply: native ``message.tool_calls`` (or generate's ``tool_calls``), OpenAI
    ``choices[].message.tool_calls``, Anthropic ``tool_use`` blocks, Responses ``function_call`` items."""
    if not (obj.keys() & _TOOL_CALL_HOLDERS) and "tool_calls" not in _dict(obj.get("message")):
        return 0  # the usual reply: no member that can hold a call
    found = [obj.get("tool_calls"), _dict(obj.get("message")).get("tool_calls")]
    found += [_dict(_dict(choice).get("message")).get("tool_calls") for choice in obj.get("choices") or ()]
    total = sum(len(calls) for calls in found if isinstance(calls, list))
    for items, kind in ((obj.get("content"), "tool_use"), (obj.get("output"), "function_call")):
        if isinstance(items, list):
            total += sum(1 for item in items if _dict(item).get("type") == kind)
    return total


def is_placeholder_usage(usage: dict[str, Any]) -> bool:
    """Ollama puts ``usage`` of all zeros on every /v1/completions chunk until the real one comes last: a stream
    cut short before it must not read as 0 prompt and 0 generated tokens. A real usage always counts at least
    the prompt's tokens (a template adds some to an empty prompt)."""
    return not any(usage.get(name) for name in ("prompt_tokens", "completion_tokens", "total_tokens"))


def apply_openai(obs: Observation, obj: dict[str, Any]) -> None:
    """An OpenAI chat/completions/embeddings object: a whole reply, a finish chunk or a usage chunk."""
    obs.model = text(obj.get("model")) or obs.model
    for choice in obj.get("choices") or ():
        reason = text(_dict(choice).get("finish_reason"))
        if reason:
            obs.finish_reason = reason
    usage = _dict(obj.get("usage"))
    if usage and not is_placeholder_usage(usage):
        obs.prompt_tokens = _int(usage.get("prompt_tokens"))
        obs.generation_tokens = _int(usage.get("completion_tokens"))
        cached = _int(_dict(usage.get("prompt_tokens_details")).get("cached_tokens"))
        obs.cached_tokens = cached if cached is not None else obs.cached_tokens
    if obj.get("object") == "list" and isinstance(obj.get("data"), list):
        obs.embedding_inputs = len(obj["data"])


def apply_openai_response(obs: Observation, response: dict[str, Any]) -> None:
    """An OpenAI Responses API ``response`` object (the whole reply, or the one in response.completed)."""
    obs.model = text(response.get("model")) or obs.model
    usage = _dict(response.get("usage"))
    if usage:
        obs.prompt_tokens = _int(usage.get("input_tokens"))
        obs.generation_tokens = _int(usage.get("output_tokens"))
        obs.cached_tokens = _int(_dict(usage.get("input_tokens_details")).get("cached_tokens"))
    status = response.get("status")
    if status == "completed":
        obs.finish_reason = "stop"
    elif status == "incomplete":
        obs.finish_reason = text(_dict(response.get("incomplete_details")).get("reason")) or "incomplete"


def apply_anthropic(obs: Observation, obj: dict[str, Any], *, provisional: bool = False) -> None:
    """An Anthropic message (the whole reply, or message_start's ``message``) or a message_delta event.

    message_start's usage is ``provisional``: Ollama sends ``output_tokens`` 0 there and fills
    ``input_tokens`` properly only in message_delta, so message_start gives the prompt figure only until a
    later event reports one, and never a generated count (a stream cut short falls back to its content chunks).
    """
    obs.model = text(obj.get("model")) or obs.model
    usage = _dict(obj.get("usage"))
    if "input_tokens" in usage and (not provisional or obs.prompt_tokens is None):
        obs.prompt_tokens = _int(usage.get("input_tokens"))
    if "output_tokens" in usage and not provisional:
        obs.generation_tokens = _int(usage.get("output_tokens"))
    if "cache_read_input_tokens" in usage:
        obs.cached_tokens = _int(usage.get("cache_read_input_tokens"))
    reason = text(obj.get("stop_reason")) or text(_dict(obj.get("delta")).get("stop_reason"))
    if reason:
        obs.finish_reason = reason
