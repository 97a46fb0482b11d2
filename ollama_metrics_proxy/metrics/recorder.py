"""Turns a finished ``Exchange`` into metric updates, once per request.

Everything here runs in the handler's ``finally``; an exception is logged and counted, never raised, so a bug
in metrics code cannot break a request that has already been relayed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from ollama_metrics_proxy.endpoints import is_inference
from ollama_metrics_proxy.metrics.families import ModelSeries, TrafficMetrics
from ollama_metrics_proxy.metrics.labels import NO_MODEL, OTHER, ModelLabels, finish_reason_label
from ollama_metrics_proxy.metrics.loads import load_cause
from ollama_metrics_proxy.metrics.otel import GenAiMetrics
from ollama_metrics_proxy.metrics.slo import ServiceLevel
from ollama_metrics_proxy.metrics.tracing import RequestTracer
from ollama_metrics_proxy.observe import Observation
from ollama_metrics_proxy.observe.exchange import Exchange, Outcome
from ollama_metrics_proxy.observe.extract import normalize_model
from ollama_metrics_proxy.usage.live_stats import LiveStats
from ollama_metrics_proxy.usage.request_log import RequestLog

log = logging.getLogger("ollama_metrics_proxy.requests")

# Error statuses with a meaning of their own for Ollama (and its cloud models); any other is "other".
ERROR_STATUSES = frozenset({400, 401, 403, 404, 405, 413, 429, 499, 500, 502, 503, 504})


class RequestRecorder(Protocol):
    """What the relay reports, once per request: ``Recorder`` in the process that owns the metrics, or a relay
    worker's ``workers.RemoteRecorder``, which sends the same reports to that process (``--workers``)."""

    def start(self, exchange: Exchange) -> str: ...

    def finish(self, exchange: Exchange, in_flight_label: str) -> None: ...

    def count_internal_error(self, stage: str) -> None: ...

    def count_refused(self, listener: str, reason: str) -> None: ...


class Recorder:
    def __init__(self, metrics: TrafficMetrics, models: ModelLabels, live: LiveStats | None = None,
                 request_log: RequestLog | None = None, otel: GenAiMetrics | None = None,
                 service_level: ServiceLevel | None = None,
                 context_length: Callable[[str], int | None] = lambda model: None,
                 model_state: Callable[[str], tuple[str, int | None]] = lambda model: ("unknown", None),
                 tracer: RequestTracer | None = None) -> None:
        self.metrics = metrics
        self.context_length = context_length  # of a loaded model, by its label: Ollama's state poller
        self.model_state = model_state  # loaded (with its context length), expired, absent: the same poller
        self.service_level = service_level or ServiceLevel()
        self.models = models
        self.live = live if live is not None else LiveStats()
        self.request_log = request_log
        self.otel = otel  # --otlp-endpoint: None, and never touched, unless asked for
        self.tracer = tracer  # likewise: a span per sampled inference request
        self._located: set[str] = set()  # model labels whose location series is set (bounded as the labels are)

    def start(self, exchange: Exchange) -> str:
        """Count the request in flight; returns the model label used, to pass back to ``finish``.

        Only the request is known here, so a model the guard has not admitted yet shows as ``other``.
        """
        try:
            label = self.models.resolve(exchange.request_model, may_add=False)
            self.metrics.series(exchange.endpoint, label).in_flight.inc()
            if exchange.request_model and is_inference(exchange.endpoint):
                exchange.model_state = self.model_state(normalize_model(exchange.request_model))
            self.live.request_started(exchange)
            return label
        except Exception:
            self._internal_error("start")
            return ""

    def finish(self, exchange: Exchange, in_flight_label: str) -> None:
        try:
            if in_flight_label:
                self.metrics.series(exchange.endpoint, in_flight_label).in_flight.dec()
            model = self._record(exchange)
            self.live.request_finished(exchange, model)
        except Exception:
            self._internal_error("record")
            model = ""
        if self.otel is not None and model:
            try:
                self.otel.record(exchange, model)
            except Exception:
                self._internal_error("otel")
        if self.tracer is not None and model and exchange.trace is not None:
            try:
                self.tracer.record(exchange, model)
            except Exception:
                self._internal_error("tracing")
        if self.request_log is not None:
            try:
                self.request_log.submit(exchange)
            except Exception:
                self._internal_error("request_log")

    def count_internal_error(self, stage: str) -> None:
        self._internal_error(stage)

    def count_refused(self, listener: str, reason: str) -> None:
        self.metrics.refused.labels(listener, reason).inc()

    def _internal_error(self, stage: str) -> None:
        log.exception("metrics failed at stage %s; the request itself was not affected", stage)
        try:
            self.metrics.internal_errors.labels(stage).inc()
        except Exception:  # the counter itself failing must not escalate either
            log.exception("could not count an internal error")

    def _record(self, exchange: Exchange) -> str:
        """Update every traffic metric; returns the model label used."""
        m, obs, endpoint = self.metrics, exchange.observation, exchange.endpoint
        outcome = exchange.outcome or Outcome.SUCCESS
        admitted = 200 <= exchange.status < 400
        model = self.models.resolve(exchange.model, may_add=admitted)
        series = m.series(endpoint, model)
        m.requests.labels(endpoint, model, outcome.value).inc()
        if exchange.status >= 400:
            m.error_responses.labels(endpoint, model, error_status_label(exchange.status)).inc()
        if model not in self._located and model not in (NO_MODEL, OTHER):
            self._located.add(model)
            m.model_location.labels(model, exchange.location).set(1)
        series.duration.observe(max(exchange.ended - exchange.started, 0.0))
        if outcome is Outcome.ABORTED:
            m.client_disconnects.labels(endpoint, model, exchange.disconnect_phase.value).inc()
        cause = load_cause(exchange, exchange.model_state)
        if cause is not None:
            m.model_loads.labels(model, cause).inc()
        if obs.lifecycle:  # a model load or unload: no generation to measure, only the load itself
            m.load_requests.labels(endpoint, model, obs.finish_reason or "").inc()
            _record_load(obs, series)
        else:
            self._record_generation(exchange, series, endpoint, model)
        if self.service_level.enabled:
            result = self.service_level.judge(exchange)
            if result is not None:
                m.slo_requests.labels(endpoint, model, result).inc()
        if exchange.overhead_request is not None:
            m.overhead.labels("request").observe(exchange.overhead_request)
        if exchange.overhead_response is not None:
            m.overhead.labels("response").observe(exchange.overhead_response)
        if obs.parse_errors:
            m.parse_errors.labels(endpoint).inc(obs.parse_errors)
        m.relayed_bytes.labels(endpoint, "request").inc(exchange.bytes_in)
        m.relayed_bytes.labels(endpoint, "response").inc(exchange.bytes_out)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request", extra={"fields": _log_fields(exchange, model, outcome)})
        return model

    def _record_generation(self, exchange: Exchange, series: ModelSeries, endpoint: str, model: str) -> None:
        obs = exchange.observation
        if exchange.streaming and obs.first_content_at is not None:
            series.time_to_first_token.observe(max(obs.first_content_at - exchange.started, 0.0))
        if exchange.streaming and obs.first_answer_at is not None:
            series.time_to_first_answer_token.observe(max(obs.first_answer_at - exchange.started, 0.0))
        if exchange.streaming and obs.content_chunks:
            if obs.thinking_chunks:
                self.metrics.output_chunks.labels(endpoint, model, "thinking").inc(obs.thinking_chunks)
            if obs.content_chunks > obs.thinking_chunks:
                self.metrics.output_chunks.labels(endpoint, model, "answer").inc(
                    obs.content_chunks - obs.thinking_chunks)
        if obs.tool_calls:
            series.tool_calls.inc(obs.tool_calls)
        self._record_context_usage(obs, endpoint, model)
        if obs.gaps.observations:
            series.inter_token_latency.merge(obs.gaps.counts, obs.gaps.total)
        if obs.finish_reason:
            self.metrics.finished.labels(endpoint, model, finish_reason_label(obs.finish_reason)).inc()
        local = exchange.location == "local"
        _record_tokens(obs, series, local=local)
        # Ollama's phases (native routes): each one's histogram and the sum its speed is computed over. A phase
        # the reply did not report touches no series (each child is made on first use).
        _record_load(obs, series)
        if obs.prompt_eval_seconds is not None:
            series.prompt_eval_duration.observe(obs.prompt_eval_seconds)
            series.prompt_eval_seconds.inc(obs.prompt_eval_seconds)
        if obs.eval_seconds is not None:
            series.eval_duration.observe(obs.eval_seconds)
            if local:  # decode speed is this hardware's: a cloud model ran elsewhere
                series.eval_seconds.inc(obs.eval_seconds)
        if obs.total_seconds is not None:
            series.total_duration.observe(obs.total_seconds)
        wait = obs.queue_wait_estimate()
        if wait is not None:
            series.queue_wait.observe(wait)


    def _record_context_usage(self, obs: Observation, endpoint: str, model: str) -> None:
        window = self.context_length(model) if obs.prompt_tokens is not None else None
        if not window or obs.prompt_tokens is None:
            return
        usage = self.metrics.context_usage
        usage.labels(endpoint, model, "prompt").observe(obs.prompt_tokens / window)
        usage.labels(endpoint, model, "total").observe((obs.prompt_tokens + (obs.generation_tokens or 0)) / window)


def _record_load(obs: Observation, series: ModelSeries) -> None:
    if obs.load_seconds is not None:
        series.load_duration.observe(obs.load_seconds)
        series.load_seconds.inc(obs.load_seconds)


def error_status_label(status: int) -> str:
    return str(status) if status in ERROR_STATUSES else "other"


def _record_tokens(obs: Observation, series: ModelSeries, *, local: bool) -> None:
    generated, estimated = obs.generated()
    if obs.prompt_tokens is not None:
        series.prompt_tokens.inc(obs.prompt_tokens)
        series.request_prompt_tokens.observe(obs.prompt_tokens)
    if generated is not None:
        series.generation_tokens.inc(generated)
        series.request_generation_tokens.observe(generated)
        if estimated:
            series.generation_tokens_estimated.inc(generated)
    if obs.cached_tokens is not None:
        series.cached_tokens.inc(obs.cached_tokens)
    if obs.embedding_inputs is not None:
        series.embedding_inputs.inc(obs.embedding_inputs)
    # Speeds pair a count with the duration Ollama measured for exactly those tokens: the counters below are the
    # numerators of the decode and prefill rates over the same requests as their seconds.
    if obs.eval_seconds is not None and local:
        series.eval_tokens.inc(obs.generation_tokens or 0)
        if obs.generation_tokens and obs.eval_seconds > 0:
            series.generation_speed.observe(obs.generation_tokens / obs.eval_seconds)
    if obs.prompt_eval_seconds is not None:
        evaluated = obs.evaluated_prompt_tokens()
        series.prompt_eval_tokens.inc(evaluated or 0)
        if evaluated and obs.prompt_eval_seconds > 0:
            series.prompt_speed.observe(evaluated / obs.prompt_eval_seconds)


def _log_fields(exchange: Exchange, model: str, outcome: Outcome) -> dict[str, object]:
    obs = exchange.observation
    ttft = None if obs.first_content_at is None else round(obs.first_content_at - exchange.started, 6)
    return {
        "method": exchange.method,
        "path": exchange.path,
        "endpoint": exchange.endpoint,
        "model": model,
        "status": exchange.status,
        "outcome": outcome.value,
        "duration_s": round(exchange.ended - exchange.started, 6),
        "ttft_s": ttft,
        "prompt_tokens": obs.prompt_tokens,
        "generation_tokens": obs.generated()[0],
        "generation_tokens_estimated": obs.generated()[1],
        "bytes_in": exchange.bytes_in,
        "bytes_out": exchange.bytes_out,
        "client": exchange.client,
    }
