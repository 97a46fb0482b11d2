"""Prompt and response text for the request log; used only when the user turned on --log-content.

Runs in the writer thread on bounded captures of the bodies. Whatever cannot be parsed (a capture cut short,
a format we do not know) is stored as the raw text, truncated, rather than lost.
"""

from __future__ import annotations

from typing import Any

import orjson

from ollama_metrics_proxy.observe import media_type

CAPTURE_BYTES = 1024 * 1024  # raw bytes kept per body while relaying, before extraction


def _truncate(text: str, limit: int) -> str:
    encoded = text.encode()
    return text if len(encoded) <= limit else encoded[:limit].decode("utf-8", "ignore") + "…"


def _load(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _message_text(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI / Anthropic content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def prompt_text(body: bytes, limit: int) -> str:
    request = _load(body)
    if not isinstance(request, dict):
        return _truncate(body.decode("utf-8", "replace"), limit)
    for key in ("prompt", "input"):
        value = request.get(key)
        if isinstance(value, str):
            return _truncate(value, limit)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return _truncate("\n".join(value), limit)
    messages = request.get("messages")
    if isinstance(messages, list):
        return _truncate("\n".join(f"{m.get('role', '')}: {_message_text(m)}" for m in messages
                                   if isinstance(m, dict)), limit)
    return _truncate(body.decode("utf-8", "replace"), limit)


def _piece(event: Any) -> str:
    """The generated text in one native, OpenAI or Anthropic object."""
    if not isinstance(event, dict):
        return ""
    if isinstance(event.get("response"), str):
        return str(event["response"])
    if isinstance(event.get("message"), dict):
        return _message_text(event["message"])
    pieces = []
    for choice in event.get("choices") or ():
        if isinstance(choice, dict):
            delta = choice.get("delta") or choice.get("message") or {}
            pieces.append(_message_text(delta) if isinstance(delta, dict) else "")
            if isinstance(choice.get("text"), str):
                pieces.append(choice["text"])
    delta = event.get("delta")
    if isinstance(delta, dict) and isinstance(delta.get("text"), str):  # Anthropic text_delta
        pieces.append(delta["text"])
    elif isinstance(delta, str) and event.get("type") == "response.output_text.delta":
        pieces.append(delta)
    if isinstance(event.get("content"), list):  # Anthropic whole message
        pieces.append(_message_text(event))
    return "".join(pieces)


def response_text(body: bytes, content_type: str, limit: int) -> str:
    kind = media_type(content_type)
    if kind == "application/x-ndjson":
        events = [_load(line) for line in body.splitlines() if line.strip()]
    elif kind == "text/event-stream":
        events = [_load(line[5:].strip()) for line in body.splitlines() if line.startswith(b"data:")]
    else:
        events = [_load(body)]
    if all(event is None for event in events):
        return _truncate(body.decode("utf-8", "replace"), limit)
    return _truncate("".join(_piece(event) for event in events), limit)
