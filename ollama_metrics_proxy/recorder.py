"""Turns a finished ``Exchange`` into metric updates, once per request.

Everything here runs in the handler's ``finally``; an exception is logged and counted, never raised, so a bug
in metrics code cannot break a request that has already been relayed.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ollama_metrics_proxy.exchange import Exchange, Outcome
from ollama_metrics_proxy.labels import ModelLabels, finish_reason_label
from ollama_metrics_proxy.live_stats import LiveStats
from ollama_metrics_proxy.metrics import FastCounter, FastHistogram, TrafficMetrics
from ollama_metrics_proxy.otel import GenAiMetrics
from ollama_metrics_proxy.request_log import RequestLog

log = logging.getLogger("ollama_metrics_proxy.requests")


class RequestRecorder(Protocol):
    """What the relay reports, once per request: ``Recorder`` in the process that owns the metrics, or a relay
    worker's ``workers.RemoteRecorder``, which sends the same reports to that process (``--workers``)."""

    def start(self, exchange: Exchange) -> str: ...

    def finish(self, exchange: Exchange, in_flight_label: str) -> None: ...

    def count_internal_error(self, stage: str) -> None: ...

    def count_refused(self, listener: str, reason: str) -> None: ...


class Recorder:
    def __init__(self, metrics: TrafficMetrics, models: ModelLabels, live: LiveStats | None = None,
                 request_log: RequestLog | None = None, otel: GenAiMetrics | None = None) -> None:
        self.metrics = metrics
        self.models = models
        self.live = live if live is not None else LiveStats()
        self.request_log = request_log
        self.otel = otel  # --otlp-endpoint: None, and never touched, unless asked for

    def start(self, exchange: Exchange) -> str:
        """Count the request in flight; returns the model label used, to pass back to ``finish``.

        Only the request is known here, so a model the guard has not admitted yet shows as ``other``.
        """
        try:
            label = self.models.resolve(exchange.request_model, may_add=False)
            self.metrics.in_flight.labels(exchange.endpoint, label).inc()
            self.live.request_started(exchange)
            return label
        except Exception:
            self._internal_error("start")
            return ""

    def finish(self, exchange: Exchange, in_flight_label: str) -> None:
        try:
            if in_flight_label:
                self.metrics.in_flight.labels(exchange.endpoint, in_flight_label).dec()
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
        key = (endpoint, model)
        m.requests.labels(endpoint, model, outcome.value).inc()
        m.duration.labels(*key).observe(max(exchange.ended - exchange.started, 0.0))
        if outcome is Outcome.ABORTED:
            m.client_disconnects.labels(*key, exchange.disconnect_phase.value).inc()
        if obs.lifecycle:  # a model load or unload: no generation to measure, only the load itself
            m.load_requests.labels(*key, obs.finish_reason or "").inc()
            self._record_phase(obs.load_seconds, m.load_duration, m.load_seconds, key)
        else:
            self._record_generation(exchange, key)
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

    def _record_generation(self, exchange: Exchange, key: tuple[str, str]) -> None:
        m, obs = self.metrics, exchange.observation
        if exchange.streaming and obs.first_content_at is not None:
            m.time_to_first_token.labels(*key).observe(max(obs.first_content_at - exchange.started, 0.0))
        if obs.gaps.observations:
            m.inter_token_latency.labels(*key).merge(obs.gaps.counts, obs.gaps.total)
        if obs.finish_reason:
            m.finished.labels(*key, finish_reason_label(obs.finish_reason)).inc()
        self._record_tokens(exchange, key)
        self._record_phase(obs.load_seconds, m.load_duration, m.load_seconds, key)
        self._record_phase(obs.prompt_eval_seconds, m.prompt_eval_duration, m.prompt_eval_seconds, key)
        self._record_phase(obs.eval_seconds, m.eval_duration, m.eval_seconds, key)
        self._record_phase(obs.total_seconds, m.total_duration, None, key)
        wait = obs.queue_wait_estimate()
        if wait is not None:
            m.queue_wait.labels(*key).observe(wait)

    def _record_tokens(self, exchange: Exchange, key: tuple[str, str]) -> None:
        m, obs = self.metrics, exchange.observation
        generated, estimated = obs.generated()
        if obs.prompt_tokens is not None:
            m.prompt_tokens.labels(*key).inc(obs.prompt_tokens)
            m.request_prompt_tokens.labels(*key).observe(obs.prompt_tokens)
        if generated is not None:
            m.generation_tokens.labels(*key).inc(generated)
            m.request_generation_tokens.labels(*key).observe(generated)
            if estimated:
                m.generation_tokens_estimated.labels(*key).inc(generated)
        if obs.cached_tokens is not None:
            m.cached_tokens.labels(*key).inc(obs.cached_tokens)
        if obs.embedding_inputs is not None:
            m.embedding_inputs.labels(*key).inc(obs.embedding_inputs)
        # Speeds pair a count with the duration Ollama measured for exactly those tokens: the counters below
        # are the numerators of the decode and prefill rates over the same requests as their seconds.
        if obs.eval_seconds is not None:
            m.eval_tokens.labels(*key).inc(obs.generation_tokens or 0)
            if obs.generation_tokens and obs.eval_seconds > 0:
                m.generation_speed.labels(*key).observe(obs.generation_tokens / obs.eval_seconds)
        if obs.prompt_eval_seconds is not None:
            m.prompt_eval_tokens.labels(*key).inc(obs.prompt_tokens or 0)
            if obs.prompt_tokens and obs.prompt_eval_seconds > 0:
                m.prompt_speed.labels(*key).observe(obs.prompt_tokens / obs.prompt_eval_seconds)

    @staticmethod
    def _record_phase(seconds: float | None, histogram: FastHistogram, counter: FastCounter | None,
                      key: tuple[str, str]) -> None:
        if seconds is None:
            return
        histogram.labels(*key).observe(seconds)
        if counter is not None:
            counter.labels(*key).inc(seconds)


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
