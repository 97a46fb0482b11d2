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

Only the plain case is rewritten, and then by inserting ``"stream_options":{"include_usage":true},`` after the
body's opening brace, every other byte kept as sent (no re-serialisation: numbers beyond 64 bits, ``1E0`` and
key order reach Ollama unchanged). A body over ``MAX_REWRITTEN_BODY``, nested too deep to read, one that already
has ``stream_options`` (Ollama, not the proxy, then judges it: ``include_usage: "yes"`` is its 400), or one whose
keys Go would read differently (it matches JSON keys without regard to case: ``Stream_Options``, a repeated
``stream``) is forwarded untouched. The reply is never held back: a stream not framed as Ollama frames it (CR
in its line ends, or an event longer than ``MAX_PENDING_EVENT``) is relayed as it comes from then on.
"""

from __future__ import annotations

import json
import re
from typing import Any

INJECT_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions"})
# The whole request body is read to decide: a chat request with text fits many times over; larger ones (images)
# are forwarded as they stream in, without exact counts, rather than held in memory.
MAX_REWRITTEN_BODY = 1024 * 1024
MAX_PENDING_EVENT = 1024 * 1024  # an SSE event longer than this is not Ollama's: stop stripping
INSERTED = b'"stream_options":{"include_usage":true},'
# Keys Go would map onto the fields the rewrite reads or writes (encoding/json matches them without regard to case).
_WATCHED_KEYS = ("stream", "stream_options")
# A top-level usage member: a flat object of counts (`,"usage":{"prompt_tokens":0,…}`). In JSON text a quote
# inside a string is escaped, so `,"usage"` can only be a key.
_USAGE_MEMBER = re.compile(rb',\s*"usage"\s*:\s*\{[^{}]*\}')
_EVENT_END = b"\n\n"


def with_include_usage(body: bytes) -> bytes | None:
    """The request body with ``stream_options.include_usage`` set, or None when it is to be forwarded untouched:
    not the plain case (a JSON object with ``"stream": true`` once, no ``stream_options``, no key that Go would
    read as either) or too large."""
    if len(body) > MAX_REWRITTEN_BODY:
        return None
    members = top_level_members(body)
    if members is None:
        return None
    watched = [(key, value) for key, value in members if key.lower() in _WATCHED_KEYS]
    if len(watched) != 1 or watched[0][0] != "stream" or watched[0][1] is not True:
        return None
    start = body.index(b"{") + 1
    return body[:start] + INSERTED + body[start:]


def top_level_members(body: bytes) -> list[tuple[str, Any]] | None:
    """The members of a JSON object body in order, repeats kept; None for anything else, or JSON nested too deep
    for the parser (forwarded untouched: Ollama answers it)."""
    last: list[tuple[str, Any]] = []

    def keep_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        last[:] = pairs  # called innermost first: the top-level object's pairs come last
        return dict(pairs)

    try:
        document = json.loads(body, object_pairs_hook=keep_pairs)
    except (ValueError, RecursionError):
        return None
    return list(last) if isinstance(document, dict) else None


class UsageStripper:
    """Takes out of an SSE reply what ``include_usage`` added; fed the relayed chunks, returns what to write.

    Works on whole events (``data: …\\n\\n``); the unfinished tail of a chunk waits for the next one, and
    ``close()`` returns whatever never ended (relayed as it came).
    """

    def __init__(self) -> None:
        self._pending = b""
        self._passing = False  # the stream is not framed as Ollama frames it: relayed as it comes

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        if self._passing or b"\r" in chunk or len(data) > MAX_PENDING_EVENT:
            self._passing, self._pending = True, b""
            return data
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
