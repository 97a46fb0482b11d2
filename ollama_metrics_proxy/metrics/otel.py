"""``--otlp-endpoint``: the OpenTelemetry GenAI semantic-convention metrics, pushed over OTLP/HTTP.

Opt-in: without the flag nothing here is imported and the relay pays nothing. With it, the OpenTelemetry SDK and
its OTLP/HTTP exporter (``pip install 'ollama-metrics-proxy[otel]'``) push, every ``--otlp-interval`` seconds:

- ``gen_ai.client.token.usage`` ({token}, by ``gen_ai.token.type`` input/output),
- ``gen_ai.server.request.duration`` (s),
- ``gen_ai.server.time_to_first_token`` (s, streamed requests),
- ``gen_ai.server.time_per_output_token`` (s, after the first token, streamed requests with two tokens or more),
- ``gen_ai.client.operation.time_to_first_chunk`` and ``gen_ai.client.operation.time_per_output_chunk`` (s, the
  proxy being Ollama's client; one value per chunk after the first, at its inter-token bucket's upper bound),

each with ``gen_ai.operation.name``, ``gen_ai.provider.name`` (ollama), ``gen_ai.request.model``,
``gen_ai.response.model`` and, when the request failed, ``error.type`` (the outcome), with the bucket boundaries
the semantic conventions recommend. Model values are the bounded ``model`` label values of the Prometheus side,
so the two agree.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ollama_metrics_proxy.observe import INTER_TOKEN_BUCKETS, GapCounts
from ollama_metrics_proxy.observe.exchange import Exchange, Outcome

# https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-metrics/ (recommended explicit bucket boundaries)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
OPERATIONS = {
    "/api/chat": "chat", "/v1/chat/completions": "chat", "/v1/messages": "chat", "/v1/responses": "chat",
    "/api/generate": "text_completion", "/v1/completions": "text_completion",
    "/api/embed": "embeddings", "/api/embeddings": "embeddings", "/v1/embeddings": "embeddings",
}
PROVIDER = "ollama"


class MissingPackage(RuntimeError):
    pass


def metrics_target(endpoint: str, headers: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    return signal_target(endpoint, headers, "/v1/metrics")


def signal_target(endpoint: str, headers: Mapping[str, str], signal_path: str) -> tuple[str, dict[str, str]]:
    """The URL and headers to push one signal to. A collector's base URL gets OTLP's path for the signal
    (``/v1/metrics``, ``/v1/traces``), as OTEL_EXPORTER_OTLP_ENDPOINT does; a URL naming one signal's path gets
    the other signal's in its place; any other path is used as it is (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT).
    Credentials in the URL become Basic authentication (unless an Authorization header is given), so the URL the
    exporter holds, and may log, carries no secret."""
    parts = urlsplit(endpoint)
    netloc = parts.netloc.rpartition("@")[2]
    path = parts.path.rstrip("/")
    known = next((suffix for suffix in ("/v1/metrics", "/v1/traces") if path.endswith(suffix)), None)
    if known is not None:
        path = path[: -len(known)] + signal_path
    elif not path or signal_path != "/v1/metrics":  # a base path: the signal's path below it
        path += signal_path
    url = urlunsplit((parts.scheme, netloc, path, parts.query, ""))
    result = dict(headers)
    if parts.username and not any(name.lower() == "authorization" for name in result):
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        result["Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")
    return url, result


class GenAiMetrics:
    """Records each finished inference request into the SDK's instruments; the SDK's reader pushes them."""

    def __init__(self, endpoint: str, interval: float, headers: Mapping[str, str]) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics import Histogram, MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
            from opentelemetry.sdk.resources import Resource
        except ImportError as exc:
            raise MissingPackage("--otlp-endpoint needs the OpenTelemetry SDK and OTLP exporter: "
                                 "pip install 'ollama-metrics-proxy[otel]'") from exc
        from ollama_metrics_proxy import __version__

        url, push_headers = metrics_target(endpoint, headers)
        exporter = OTLPMetricExporter(endpoint=url, headers=push_headers)
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval * 1000)
        views = [View(instrument_type=Histogram, instrument_name=name,
                      aggregation=ExplicitBucketHistogramAggregation(boundaries))
                 for name, boundaries in (("gen_ai.client.token.usage", TOKEN_BUCKETS),
                                          ("gen_ai.server.request.duration", DURATION_BUCKETS),
                                          ("gen_ai.server.time_to_first_token", TTFT_BUCKETS),
                                          ("gen_ai.server.time_per_output_token", TPOT_BUCKETS),
                                          ("gen_ai.client.operation.time_to_first_chunk", DURATION_BUCKETS),
                                          ("gen_ai.client.operation.time_per_output_chunk", TPOT_BUCKETS))]
        resource = Resource.create({"service.name": "ollama-metrics-proxy", "service.version": __version__})
        self._provider = MeterProvider(resource=resource, metric_readers=[reader], views=views)
        meter = self._provider.get_meter("ollama_metrics_proxy", __version__)
        self._tokens = meter.create_histogram("gen_ai.client.token.usage", unit="{token}",
                                              description="Input and output tokens used per request.")
        self._duration = meter.create_histogram("gen_ai.server.request.duration", unit="s",
                                                description="Generative AI server request duration.")
        self._ttft = meter.create_histogram("gen_ai.server.time_to_first_token", unit="s",
                                            description="Time to generate the first token, streamed requests.")
        self._tpot = meter.create_histogram("gen_ai.server.time_per_output_token", unit="s",
                                            description="Time per output token after the first, streamed requests.")
        # The proxy is also a client of Ollama: the client conventions' chunk figures, as the proxy received them.
        self._first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time from the request to the first chunk with generated content, streamed requests.")
        self._per_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_per_output_chunk", unit="s",
            description="Time between consecutive output chunks, one value per chunk after the first.")

    def record(self, exchange: Exchange, model: str) -> None:
        operation = OPERATIONS.get(exchange.endpoint)
        if operation is None:
            return
        obs = exchange.observation
        attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.provider.name": PROVIDER,
                                      "gen_ai.request.model": model, "gen_ai.response.model": model}
        outcome = exchange.outcome or Outcome.SUCCESS
        if outcome is not Outcome.SUCCESS:
            attributes["error.type"] = outcome.value
        self._duration.record(max(exchange.ended - exchange.started, 0.0), attributes)
        if obs.lifecycle:
            return
        generated, _ = obs.generated()
        if obs.prompt_tokens is not None:
            self._tokens.record(obs.prompt_tokens, {**attributes, "gen_ai.token.type": "input"})
        if generated is not None:
            self._tokens.record(generated, {**attributes, "gen_ai.token.type": "output"})
        if exchange.streaming and obs.first_content_at is not None:
            self._first_chunk.record(max(obs.first_content_at - exchange.started, 0.0), attributes)
            self._record_chunk_gaps(obs.gaps, attributes)
        if exchange.streaming and obs.first_content_at is not None and outcome is Outcome.SUCCESS:
            self._ttft.record(max(obs.first_content_at - exchange.started, 0.0), attributes)
            per_token = exchange.time_per_output_token()
            if per_token is not None:
                self._tpot.record(per_token, attributes)

    def _record_chunk_gaps(self, gaps: GapCounts, attributes: dict[str, Any]) -> None:
        """One value per chunk after the first. The relay keeps a request's gaps as counts per inter-token bucket
        (no per-chunk list); every boundary the convention gives is one of those buckets' bounds, so each gap is
        recorded at its bucket's upper bound (a gap too long for the last one at that bound doubled): the
        convention's bucket counts are exact, the sum an upper bound."""
        for index, count in enumerate(gaps.counts):
            value = INTER_TOKEN_BUCKETS[index] if index < len(INTER_TOKEN_BUCKETS) else INTER_TOKEN_BUCKETS[-1] * 2
            for _ in range(count):
                self._per_chunk.record(value, attributes)

    def shutdown(self) -> None:
        """Push what is recorded and stop (the SDK's own timeouts bound it)."""
        self._provider.shutdown(timeout_millis=2000)
