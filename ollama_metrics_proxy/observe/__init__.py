"""Observing: incremental parsers that read Ollama's replies as they stream by, and the record of one exchange.

- ``base`` is the observer interface (``feed(chunk)`` per relayed chunk, ``close()`` once) the others extend;
- ``observer_for`` picks an observer by the response's Content-Type and the endpoint's dialect: ``ndjson``
  (native streams and pull progress), ``sse`` (OpenAI and Anthropic), ``json_body`` (whole JSON replies);
- ``lines`` and ``toplevel`` split bytes into lines and top-level JSON fields without assuming chunk boundaries;
- ``extract`` reads tokens, timings and reasons out of one parsed object, per dialect;
- ``observation`` is what an observer learned; ``exchange`` is one request as the proxy saw it, and its outcome.

May import: the top-level helpers (``endpoints``, ``pickling``) only. Every layer above reads it.
"""

from __future__ import annotations

import time

from ollama_metrics_proxy.endpoints import PROGRESS_ENDPOINTS, Dialect, dialect_of
from ollama_metrics_proxy.observe.base import Clock, Observer
from ollama_metrics_proxy.observe.json_body import ErrorBodyObserver, JsonBodyObserver
from ollama_metrics_proxy.observe.ndjson import NdjsonObserver, ProgressObserver
from ollama_metrics_proxy.observe.observation import INTER_TOKEN_BUCKETS, GapCounts, Observation
from ollama_metrics_proxy.observe.sse import (
    AnthropicSseObserver,
    OpenAiResponsesSseObserver,
    OpenAiSseObserver,
)

__all__ = [
    "INTER_TOKEN_BUCKETS",
    "GapCounts",
    "Observation",
    "Observer",
    "is_streaming_type",
    "observer_for",
]

_SSE_OBSERVERS: dict[Dialect, type[OpenAiSseObserver | OpenAiResponsesSseObserver | AnthropicSseObserver]] = {
    Dialect.OPENAI: OpenAiSseObserver,
    Dialect.OPENAI_RESPONSES: OpenAiResponsesSseObserver,
    Dialect.ANTHROPIC: AnthropicSseObserver,
}


def media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def is_streaming_type(content_type: str) -> bool:
    return media_type(content_type) in ("application/x-ndjson", "text/event-stream")


def observer_for(endpoint: str, status: int, content_type: str, clock: Clock = time.perf_counter) -> Observer:
    """Choose by the response's Content-Type, never by the request's ``stream`` flag (Ollama answers a
    streamed request with plain JSON for model loads and errors)."""
    dialect = dialect_of(endpoint)
    if status >= 400 and media_type(content_type) == "application/json":
        return ErrorBodyObserver(clock)  # for the message: a 503 "server busy" is its own outcome
    if status >= 400 or dialect is Dialect.NONE:
        return Observer(clock)
    kind = media_type(content_type)
    if kind == "application/x-ndjson":
        return ProgressObserver(clock) if endpoint in PROGRESS_ENDPOINTS else NdjsonObserver(clock)
    if kind == "text/event-stream" and dialect in _SSE_OBSERVERS:
        return _SSE_OBSERVERS[dialect](clock)
    if kind == "application/json" and endpoint not in PROGRESS_ENDPOINTS:
        return JsonBodyObserver(dialect, clock=clock)
    return Observer(clock)
