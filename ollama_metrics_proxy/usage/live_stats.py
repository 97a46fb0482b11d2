"""Figures since the proxy started, kept in memory: they work with the request log turned off."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, fields
from statistics import quantiles
from typing import Any

from ollama_metrics_proxy.endpoints import is_inference
from ollama_metrics_proxy.observe.exchange import Exchange, Outcome
from ollama_metrics_proxy.usage.store import CLIENT_ERROR_OUTCOMES, ERROR_OUTCOMES

RECENT_DURATIONS = 10_000  # percentiles are over the most recent requests, so memory stays bounded


@dataclass
class ModelTotals:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generation_tokens: int = 0
    generation_tokens_estimated: int = 0
    thinking_chunks: int = 0
    answer_chunks: int = 0
    tool_calls: int = 0
    duration_seconds: float = 0.0
    decoded_tokens: int = 0
    eval_seconds: float = 0.0
    errors: int = 0
    client_errors: int = 0
    last_used: float = 0.0


TOTALS_FIELDS = tuple(field.name for field in fields(ModelTotals) if field.name != "last_used")  # the sums


class LiveStats:
    """Updated and read on the event loop thread only (the recorder and the API handlers), so no lock."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.in_flight = 0
        self.aborted = 0
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.ttfat_sum = 0.0  # time to the first answer chunk, after any thinking
        self.ttfat_count = 0
        self.models: dict[str, ModelTotals] = {}  # keyed by the bounded model label
        self._durations: deque[float] = deque(maxlen=RECENT_DURATIONS)

    def request_started(self, exchange: Exchange) -> None:
        if is_inference(exchange.endpoint):
            self.in_flight += 1

    def request_finished(self, exchange: Exchange, model_label: str) -> None:
        if not is_inference(exchange.endpoint):
            return
        self.in_flight -= 1
        obs = exchange.observation
        duration = max(exchange.ended - exchange.started, 0.0)
        generated, estimated = obs.generated()
        self._durations.append(duration)
        if exchange.outcome is Outcome.ABORTED:
            self.aborted += 1
        if obs.first_content_at is not None and exchange.streaming:
            self.ttft_sum += obs.first_content_at - exchange.started
            self.ttft_count += 1
        if obs.first_answer_at is not None and exchange.streaming:
            self.ttfat_sum += obs.first_answer_at - exchange.started
            self.ttfat_count += 1
        # Only the model's totals: the overall ones are their sum (``totals``), added up when read.
        totals = self.models.get(model_label)
        if totals is None:
            totals = self.models[model_label] = ModelTotals()
        totals.requests += 1
        totals.prompt_tokens += obs.prompt_tokens or 0
        totals.cached_tokens += obs.cached_tokens or 0
        totals.generation_tokens += generated or 0
        totals.generation_tokens_estimated += (generated or 0) if estimated else 0
        totals.thinking_chunks += obs.thinking_chunks
        totals.answer_chunks += obs.content_chunks - obs.thinking_chunks
        totals.tool_calls += obs.tool_calls
        totals.duration_seconds += duration
        if obs.eval_seconds is not None and exchange.location == "local":
            # decode speed over exactly the local requests that timed their decode (a cloud model ran elsewhere)
            totals.decoded_tokens += obs.generation_tokens or 0
            totals.eval_seconds += obs.eval_seconds
        totals.errors += exchange.outcome in ERROR_OUTCOMES
        totals.client_errors += exchange.outcome in CLIENT_ERROR_OUTCOMES
        totals.last_used = exchange.wall_started

    def totals(self) -> ModelTotals:
        """Every model's totals added up (the models are bounded by the model-label guard); ``last_used`` is the
        latest of them."""
        overall = ModelTotals()
        for model in list(self.models.values()):
            for name in TOTALS_FIELDS:
                setattr(overall, name, getattr(overall, name) + getattr(model, name))
            overall.last_used = max(overall.last_used, model.last_used)
        return overall

    def summary(self) -> dict[str, Any]:
        durations = list(self._durations)
        totals = self.totals()
        cut = quantiles(durations, n=100, method="inclusive") if len(durations) > 1 else durations * 99
        return {
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "requests": totals.requests,
            "in_flight": self.in_flight,
            "prompt_tokens": totals.prompt_tokens,
            "cached_tokens": totals.cached_tokens,
            "generation_tokens": totals.generation_tokens,
            "generation_tokens_estimated": totals.generation_tokens_estimated,
            "errors": totals.errors,
            "client_errors": totals.client_errors,
            "error_ratio": totals.errors / totals.requests if totals.requests else 0.0,
            "aborted": self.aborted,
            "average_duration_seconds": totals.duration_seconds / totals.requests if totals.requests else None,
            "p50_duration_seconds": cut[49] if cut else None,
            "p95_duration_seconds": cut[94] if cut else None,
            "average_ttft_seconds": self.ttft_sum / self.ttft_count if self.ttft_count else None,
            "average_time_to_first_answer_seconds": self.ttfat_sum / self.ttfat_count if self.ttfat_count else None,
            "thinking_chunks": totals.thinking_chunks,
            "answer_chunks": totals.answer_chunks,
            "tool_calls": totals.tool_calls,
            "models_in_use": sorted(self.models),
        }

    def per_model(self, limit: int, after: tuple[int, str] | None = None) -> tuple[list[dict[str, Any]], int]:
        """One page, ordered as the request log's: most requests first, ties by name."""
        ordered = sorted(self.models.items(), key=lambda item: (-item[1].requests, item[0]))
        if after is not None:
            ordered = [(name, t) for name, t in ordered if (-t.requests, name) > (-after[0], after[1])]
        rows = ordered[:limit]
        return [
            {"name": name, "requests": t.requests, "prompt_tokens": t.prompt_tokens, "cached_tokens": t.cached_tokens,
             "generation_tokens": t.generation_tokens,
             "generation_tokens_estimated": t.generation_tokens_estimated,
             "average_duration_seconds": t.duration_seconds / t.requests,
             "decode_tokens_per_second": t.decoded_tokens / t.eval_seconds if t.eval_seconds else None,
             "errors": t.errors, "client_errors": t.client_errors, "error_ratio": t.errors / t.requests,
             "last_used_ms": int(t.last_used * 1000)}
            for name, t in rows
        ], len(self.models)
