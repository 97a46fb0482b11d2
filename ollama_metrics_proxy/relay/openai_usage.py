"""``--openai-usage inject``: exact token counts for OpenAI-compatible streams whose client did not ask for them.

The OpenAI SDK and most frameworks stream without ``stream_options.include_usage``, and then Ollama reports no
token counts at all (the proxy estimates them from content chunks). With this opt-in the proxy adds
``include_usage`` to such streamed ``/v1/chat/completions`` and ``/v1/completions`` requests, reads the figures,
and takes out of the reply exactly what the option added, so the client receives the bytes it would have received
without the proxy:

- ``/v1/chat/completions``: the one extra chunk with ``"choices":[]`` and the usage, before ``[DONE]``;
- ``/v1/completions``: that chunk too, and the ``"usage":{…}`` member Ollama then adds to every other chunk
  (``ollama:middleware/openai.go`` ``ChatWriter`` and ``CompleteWriter``; ../shared/reference/ollama-api.md §5.1,
  §5.2, §8.9).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

INJECT_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions"})
# The whole request body is needed to rewrite it; chat requests with images can be large, but not this large.
MAX_REWRITTEN_BODY = 32 * 1024 * 1024
# A top-level usage member: a flat object of counts (`,"usage":{"prompt_tokens":0,…}`). In JSON text a quote
# inside a string is escaped, so `,"usage"` can only be a key.
_USAGE_MEMBER = re.compile(rb',\s*"usage"\s*:\s*\{[^{}]*\}')
_EVENT_END = b"\n\n"


def with_include_usage(body: bytes) -> bytes | None:
    """The request body with ``stream_options.include_usage`` set, or None when nothing should change: not a
    JSON object, not streamed, or the client already asked for usage."""
    try:
        request: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(request, dict) or request.get("stream") is not True:
        return None
    options = request.get("stream_options")
    if options is None:
        options = request["stream_options"] = {}
    if not isinstance(options, dict) or options.get("include_usage") is True:
        return None
    options["include_usage"] = True
    return orjson.dumps(request)


class UsageStripper:
    """Takes out of an SSE reply what ``include_usage`` added; fed the relayed chunks, returns what to write.

    Works on whole events (``data: …\\n\\n``); the unfinished tail of a chunk waits for the next one, and
    ``close()`` returns whatever never ended (relayed as it came).
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        end = data.rfind(_EVENT_END)
        if end < 0:
            self._pending = data
            return b""
        self._pending = data[end + 2 :]
        return b"".join(_without_usage(event) for event in data[: end + 2].split(_EVENT_END)[:-1])

    def close(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest


def _without_usage(event: bytes) -> bytes:
    """One event (without its blank line) as it would be without include_usage, blank line included."""
    if b'"usage"' not in event:
        return event + _EVENT_END
    if b'"choices":[]' in event or b'"choices": []' in event:
        return b""  # the usage chunk itself
    return _USAGE_MEMBER.sub(b"", event, count=1) + _EVENT_END
