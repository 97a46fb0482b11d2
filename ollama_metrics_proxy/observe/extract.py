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
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.){1,512})"')


def normalize_model(name: str) -> str:
    """``llama3.2`` and ``llama3.2:latest`` are the same model to Ollama, so they share one label value."""
    name = name.strip()
    last_segment = name.rsplit("/", 1)[-1]
    return name if ":" in last_segment else f"{name}:latest"


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


def apply_native(obs: Observation, obj: dict[str, Any]) -> None:
    """A ``done: true`` object from /api/generate or /api/chat, or an /api/embed(dings) reply."""
    obs.model = text(obj.get("model")) or obs.model
    obs.finish_reason = text(obj.get("done_reason")) or obs.finish_reason
    obs.prompt_tokens = _int(obj.get("prompt_eval_count"))
    obs.generation_tokens = _int(obj.get("eval_count"))
    obs.load_seconds = _seconds(obj.get("load_duration"))
    obs.prompt_eval_seconds = _seconds(obj.get("prompt_eval_duration"))
    obs.eval_seconds = _seconds(obj.get("eval_duration"))
    obs.total_seconds = _seconds(obj.get("total_duration"))
    if isinstance(obj.get("embeddings"), list):
        obs.embedding_inputs = len(obj["embeddings"])
    elif isinstance(obj.get("embedding"), list):
        obs.embedding_inputs = 1


def native_has_content(obj: dict[str, Any]) -> bool:
    """Whether a native object carries generated text, thinking or tool calls."""
    message = _dict(obj.get("message"))
    return bool(
        obj.get("response") or obj.get("thinking") or obj.get("tool_calls")
        or message.get("content") or message.get("thinking") or message.get("tool_calls")
    )


def openai_has_content(obj: dict[str, Any]) -> bool:
    """Whether an OpenAI chunk carries generated text, reasoning or tool calls (not a bare finish or usage)."""
    for choice in obj.get("choices") or ():
        choice = _dict(choice)
        delta = _dict(choice.get("delta"))
        if (choice.get("text") or delta.get("content") or delta.get("reasoning")
                or delta.get("reasoning_content") or delta.get("tool_calls")):
            return True
    return False


def apply_openai(obs: Observation, obj: dict[str, Any]) -> None:
    """An OpenAI chat/completions/embeddings object: a whole reply, a finish chunk or a usage chunk."""
    obs.model = text(obj.get("model")) or obs.model
    for choice in obj.get("choices") or ():
        reason = text(_dict(choice).get("finish_reason"))
        if reason:
            obs.finish_reason = reason
    usage = _dict(obj.get("usage"))
    if usage:
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
