"""W3C Trace Context for ``--otlp-endpoint``: each inference request becomes a span in the caller's trace.

At the request's arrival, and before anything is sent to Ollama, the relay settles the span's identity: the
caller's trace (``traceparent``; a new one without it), a new span id, and whether the span is sampled (the
caller's flag when it sent one, else ``--otlp-trace-sample-ratio`` applied to the trace id as OpenTelemetry's
``TraceIdRatioBased`` does, so every proxy of a fleet decides alike). Ollama is sent a ``traceparent`` naming that
span as the parent. The span itself is made once the request is over (``metrics.tracing``), with these ids: the
relay touches no tracing library per request, and without the flag none of this runs.
"""

from __future__ import annotations

import re
import secrets
from typing import Final

# version-traceid-parentid-flags; version ff is invalid, all-zero ids are invalid (W3C Trace Context §3.2).
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ID_MASK: Final = (1 << 64) - 1

# (trace id, this span's id, the caller's span id or 0, sampled): plain ints, so --workers can send them along.
TraceIds = tuple[int, int, int, bool]


def parse_traceparent(value: str | None) -> tuple[int, int, bool] | None:
    """The caller's (trace id, span id, sampled), or None for a missing or invalid header (then a new trace)."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip().lower())
    if match is None or match[1] == "ff" or (match[1] == "00" and match[5]):
        return None
    trace_id, span_id = int(match[2], 16), int(match[3], 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(int(match[4], 16) & 1)


class TraceStarter:
    """Settles each traced request's ids at its arrival."""

    def __init__(self, sample_ratio: float) -> None:
        self._bound = round(sample_ratio * (1 << 64))  # TraceIdRatioBased: the trace id's low 64 bits below it

    def start(self, incoming: str | None) -> TraceIds:
        parent = parse_traceparent(incoming)
        span_id = secrets.randbits(64) or 1
        if parent is not None:
            trace_id, parent_span, sampled = parent
            return trace_id, span_id, parent_span, sampled
        trace_id = secrets.randbits(128) or 1
        return trace_id, span_id, 0, (trace_id & _ID_MASK) < self._bound


def traceparent(ids: TraceIds) -> str:
    """The header sent to Ollama: this span as the parent of whatever Ollama traces."""
    trace_id, span_id, _, sampled = ids
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"
