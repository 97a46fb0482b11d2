"""``--otlp-endpoint``: a span per inference request, pushed to ``<collector>/v1/traces`` over OTLP/HTTP.

The span's ids were settled when the request arrived (``relay.tracecontext``: the caller's trace, this span, the
sampled flag); here, once the request is over, the SDK makes the span with exactly those ids, as a child of the
caller's span, and Ollama's phases as child spans placed from the durations Ollama reported (it measures them
up to its final chunk, which is the end of the request as the proxy saw it): the wait for the model (load,
scheduler queue included), the wait for a slot (what is left of Ollama's total), prompt evaluation, thinking
(streamed: first chunk to the first answer chunk) and decoding. Names and attributes follow the GenAI semantic
conventions. Unsampled requests make no span.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ollama_metrics_proxy.metrics.otel import OPERATIONS, PROVIDER, MissingPackage, signal_target
from ollama_metrics_proxy.observe.exchange import Exchange, Outcome

NANOSECONDS = 1_000_000_000


class RequestTracer:
    def __init__(self, endpoint: str, headers: Mapping[str, str]) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.id_generator import IdGenerator
        except ImportError as exc:
            raise MissingPackage("--otlp-endpoint needs the OpenTelemetry SDK and OTLP exporter: "
                                 "pip install 'ollama-metrics-proxy[otel]'") from exc
        from ollama_metrics_proxy import __version__

        class SettledIds(IdGenerator):
            """Hands the SDK the ids the relay settled at arrival, for the span being made right now."""

            def __init__(self) -> None:
                self.ids = threading.local()

            def generate_span_id(self) -> int:
                span_id: int = getattr(self.ids, "span", 0)
                self.ids.span = 0
                return span_id or RandomIds.generate_span_id()

            def generate_trace_id(self) -> int:
                trace_id: int = getattr(self.ids, "trace", 0)
                return trace_id or RandomIds.generate_trace_id()

        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        RandomIds = RandomIdGenerator()
        self._trace = trace
        self._ids = SettledIds()
        url, push_headers = signal_target(endpoint, headers, "/v1/traces")
        resource = Resource.create({"service.name": "ollama-metrics-proxy", "service.version": __version__})
        self._provider = TracerProvider(resource=resource, id_generator=self._ids)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url, headers=push_headers)))
        self._tracer = self._provider.get_tracer("ollama_metrics_proxy", __version__)

    def record(self, exchange: Exchange, model: str) -> None:
        ids = exchange.trace
        operation = OPERATIONS.get(exchange.endpoint)
        if ids is None or operation is None or not ids[3]:
            return
        trace_id, span_id, parent_span_id, _ = ids
        trace = self._trace
        context = None
        if parent_span_id:
            parent = trace.SpanContext(trace_id, parent_span_id, is_remote=True,
                                       trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
            context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
        offset = exchange.wall_started - exchange.started  # perf_counter seconds -> unix seconds
        start, end = _ns(exchange.started + offset), _ns(max(exchange.ended, exchange.started) + offset)
        self._ids.ids.trace, self._ids.ids.span = trace_id, span_id
        span = self._tracer.start_span(f"{operation} {model}", context=context, kind=trace.SpanKind.CLIENT,
                                       attributes=_attributes(exchange, operation, model), start_time=start)
        self._ids.ids.trace = 0
        outcome = exchange.outcome or Outcome.SUCCESS
        if outcome is not Outcome.SUCCESS:
            span.set_status(trace.Status(trace.StatusCode.ERROR, exchange.observation.error or outcome.value))
        child_context = trace.set_span_in_context(span)
        for name, phase_start, phase_end in _phases(exchange, offset, end):
            self._tracer.start_span(name, context=child_context, start_time=phase_start).end(end_time=phase_end)
        span.end(end_time=end)

    def shutdown(self) -> None:
        self._provider.shutdown()


def _ns(seconds: float) -> int:
    return int(seconds * NANOSECONDS)


def _attributes(exchange: Exchange, operation: str, model: str) -> dict[str, Any]:
    obs = exchange.observation
    attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.provider.name": PROVIDER,
                                  "gen_ai.request.model": model, "gen_ai.response.model": model}
    generated, _ = obs.generated()
    if obs.prompt_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = obs.prompt_tokens
    if generated is not None:
        attributes["gen_ai.usage.output_tokens"] = generated
    if obs.cached_tokens is not None:
        attributes["gen_ai.usage.cache_read.input_tokens"] = obs.cached_tokens
    if obs.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [obs.finish_reason]
    outcome = exchange.outcome or Outcome.SUCCESS
    if outcome is not Outcome.SUCCESS:
        attributes["error.type"] = outcome.value
    return attributes


def _phases(exchange: Exchange, offset: float, end: int) -> list[tuple[str, int, int]]:
    """Ollama's phases as (name, start, end) in unix nanoseconds, from its durations, ending with the request."""
    obs = exchange.observation
    phases = []
    if obs.total_seconds is not None:
        cursor = end - _ns(obs.total_seconds)  # Ollama's handler entry
        wait = obs.queue_wait_estimate()
        for name, seconds in (("ollama.load", obs.load_seconds), ("ollama.queue_wait", wait),
                              ("ollama.prompt_eval", obs.prompt_eval_seconds)):
            if seconds:
                phases.append((name, cursor, cursor + _ns(seconds)))
                cursor += _ns(seconds)
    if exchange.streaming and obs.first_content_at is not None and obs.first_answer_at is not None \
            and obs.first_answer_at > obs.first_content_at:
        phases.append(("ollama.thinking", _ns(obs.first_content_at + offset), _ns(obs.first_answer_at + offset)))
    if obs.eval_seconds:
        phases.append(("ollama.decode", end - _ns(obs.eval_seconds), end))
    return phases
