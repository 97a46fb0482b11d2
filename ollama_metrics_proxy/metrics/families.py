"""Every metric the proxy derives from traffic, defined in one place on an injected registry.

Names follow Prometheus conventions (base units, ``_total`` counters, no colons). Bucket sets are chosen for
LLM work (see the README's metric table): cold model loads take minutes and long generations an hour, so every
latency histogram reaches far past the client library's 10 s default.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ollama_metrics_proxy import __version__
from ollama_metrics_proxy.observe import INTER_TOKEN_BUCKETS

REQUEST_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0,
)
TIME_TO_FIRST_TOKEN_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 320.0, 640.0,
)
# Ollama's own phases: prompt evaluation can take milliseconds, a cold load of a large model minutes.
PHASE_DURATION_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
    30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0,
)
TOKEN_COUNT_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
TOKENS_PER_SECOND_BUCKETS = (
    1, 2.5, 5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000, 10000, 20000, 50000,
    100000, 200000, 500000, 1000000,  # prefill of a long, mostly cached prompt reads far above real compute speed
)

# The proxy's own share of a request's time: microseconds normally, milliseconds when a connection to Ollama must
# be opened first.
OVERHEAD_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)
# Time Ollama spent outside compute before answering: from none to minutes behind a long queue.
QUEUE_WAIT_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)
ENDPOINT_MODEL = ("endpoint", "model")
# Shares of the context window; past 1 the prompt did not fit and Ollama truncated it.
CONTEXT_USAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0, 1.5, 2.0)

# One series per counter is enough: `_created` samples would double the series count for no query we need.
disable_created_metrics()  # type: ignore[no-untyped-call]


class _Family(Collector):
    """A labelled metric family recorded by one thread (the event loop) and read by scrapes.

    prometheus_client's instruments validate labels on every ``labels()`` call and take a lock on every update;
    recording one request touches about twenty series, which made metrics the largest cost in the relay's
    per-request budget. Here a child is bound once per label set and an update is a plain attribute or list
    increment. All updates happen on the event loop thread, so they never race each other; a scrape copies
    each child's numbers first (``list()`` of a list is atomic under the GIL), so it sees whole buckets, at
    worst one request behind on a sum.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry):
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        registry.register(self)

    def labels(self, *labelvalues: str) -> Any:
        child = self._children.get(labelvalues)
        if child is None:
            child = self._children[labelvalues] = self._new_child()
        return child

    def _new_child(self) -> Any:
        raise NotImplementedError

    def _items(self) -> list[tuple[tuple[str, ...], Any]]:
        return list(self._children.items())  # atomic copy: the loop may add a child meanwhile

    def describe(self) -> Iterable[Metric]:
        return []


class CounterCell:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class GaugeCell(CounterCell):
    __slots__ = ()

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramCell:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def merge(self, counts: Sequence[int], total: float) -> None:
        """Add a whole per-request histogram with the same buckets (inter-token gaps)."""
        for index, count in enumerate(counts):
            if count:
                self.counts[index] += count
        self.total += total


class _ValueFamily(_Family):
    exposed_as: type[CounterMetricFamily] | type[GaugeMetricFamily] = CounterMetricFamily

    def collect(self) -> Iterable[Metric]:
        family = self.exposed_as(self._name, self._documentation, labels=self._labelnames)
        for labelvalues, cell in self._items():
            family.add_metric(list(labelvalues), cell.value)
        return [family]


class FastCounter(_ValueFamily):
    def _new_child(self) -> CounterCell:
        return CounterCell()


class FastGauge(_ValueFamily):
    exposed_as = GaugeMetricFamily

    def _new_child(self) -> GaugeCell:
        return GaugeCell()


class FastHistogram(_Family):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self._bounds = tuple(float(bound) for bound in buckets)
        self._bound_texts = [repr(bound) for bound in self._bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramCell:
        return HistogramCell(self._bounds)

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for labelvalues, cell in self._items():
            counts, total = list(cell.counts), cell.total
            cumulative, buckets = 0, []
            for bound, count in zip(self._bound_texts, counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(list(labelvalues), buckets, total)
        return [family]


class ModelSeries:
    """One (endpoint, model) pair's child in every family labelled by exactly those two, each bound on first use.

    Recording a request touches about twenty such children; looking each up by its label values cost more than
    the updates themselves. A pair's children are bound once (``TrafficMetrics.series``) and read back as plain
    attributes. Binding stays lazy, so a pair's series appear in /metrics only once something was recorded in
    them, exactly as with ``labels()``.
    """

    in_flight: GaugeCell
    duration: HistogramCell
    time_to_first_token: HistogramCell
    time_to_first_answer_token: HistogramCell
    inter_token_latency: HistogramCell
    tool_calls: CounterCell
    prompt_tokens: CounterCell
    generation_tokens: CounterCell
    generation_tokens_estimated: CounterCell
    eval_tokens: CounterCell
    prompt_eval_tokens: CounterCell
    request_prompt_tokens: HistogramCell
    request_generation_tokens: HistogramCell
    cached_tokens: CounterCell
    embedding_inputs: CounterCell
    load_duration: HistogramCell
    prompt_eval_duration: HistogramCell
    eval_duration: HistogramCell
    total_duration: HistogramCell
    load_seconds: CounterCell
    prompt_eval_seconds: CounterCell
    eval_seconds: CounterCell
    generation_speed: HistogramCell
    prompt_speed: HistogramCell
    queue_wait: HistogramCell

    # A slot per child annotated above, each named as its family's attribute on TrafficMetrics: the annotations are
    # the one list of them.
    __slots__ = ("_families", "_key", *__annotations__)

    def __init__(self, families: dict[str, _Family], key: tuple[str, str]) -> None:
        self._families = families
        self._key = key

    def __getattr__(self, name: str) -> Any:
        """Called only for a child not bound yet: bind it."""
        family = None if name.startswith("_") else self._families.get(name)
        if family is None:
            raise AttributeError(name)
        child = family.labels(*self._key)
        setattr(self, name, child)
        return child


class TrafficMetrics:
    """The families recorded once per proxied request, plus the proxy's own health counters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: Sequence[str] = ENDPOINT_MODEL) -> FastCounter:
            return FastCounter(name.removesuffix("_total"), doc, labels, registry)

        def histogram(name: str, doc: str, buckets: Sequence[float],
                      labels: Sequence[str] = ENDPOINT_MODEL) -> FastHistogram:
            return FastHistogram(name, doc, labels, buckets, registry)

        self.requests = counter(
            "ollama_requests_total", "Requests relayed to Ollama, by how they ended.",
            (*ENDPOINT_MODEL, "outcome"))
        self.in_flight = FastGauge(
            "ollama_requests_in_flight", "Requests relayed to Ollama that have not finished yet "
            "(queued in Ollama or generating).", ENDPOINT_MODEL, registry)
        self.duration = histogram(
            "ollama_request_duration_seconds",
            "Time from the request's arrival at the proxy to the last byte of the response.",
            REQUEST_DURATION_BUCKETS)
        self.time_to_first_token = histogram(
            "ollama_time_to_first_token_seconds",
            "Streamed requests: time from the request's arrival to the first chunk carrying generated text, "
            "thinking or a tool call.", TIME_TO_FIRST_TOKEN_BUCKETS)
        self.time_to_first_answer_token = histogram(
            "ollama_time_to_first_answer_token_seconds",
            "Streamed requests: time from the request's arrival to the first chunk of the answer (text or a tool "
            "call), after any thinking; what a user waits for when the model thinks first (Ollama 0.12.4+ thinks "
            "by default on capable models).", TIME_TO_FIRST_TOKEN_BUCKETS)
        self.inter_token_latency = histogram(
            "ollama_inter_token_latency_seconds",
            "Streamed requests: gaps between consecutive chunks carrying generated content, as relayed. The "
            "silence before a chunk with a tool call is no sample: Ollama streams nothing while it assembles one.",
            INTER_TOKEN_BUCKETS)
        self.output_chunks = counter(
            "ollama_output_chunks_total",
            "Streamed chunks carrying generated content, by kind: thinking (reasoning before the answer) or "
            "answer (text or tool calls).", (*ENDPOINT_MODEL, "kind"))
        self.context_usage = histogram(
            "ollama_context_window_usage_ratio",
            "Generations: the share of the loaded model's context window (/api/ps context_length) the request "
            "used, part=prompt (prompt tokens) or part=total (prompt and generated). Near 1, Ollama drops the "
            "oldest history silently (truncate) or stops with done_reason length; raise num_ctx.",
            CONTEXT_USAGE_BUCKETS, (*ENDPOINT_MODEL, "part"))
        self.model_loads = counter(
            "ollama_model_loads_total",
            "Model loads reported by requests through the proxy (a load_duration of 0.25 s or more), by cause: "
            "not_loaded (absent from /api/ps), expired (its keep-alive had run out), options_changed (the request "
            "asked a num_ctx other than the loaded one: Ollama reloads), unknown.", ("model", "cause"))
        self.slo_requests = counter(
            "ollama_slo_requests_total",
            "Generations judged against --slo-ttft and --slo-tpot (only when one is set): met (a success within "
            "both) or missed (over either, or failed on the server's side). Client errors and clients that left "
            "are not judged. Goodput is met over all.", (*ENDPOINT_MODEL, "result"))
        self.tool_calls = counter(
            "ollama_tool_calls_total",
            "Tool calls in the replies (native message.tool_calls, OpenAI tool_calls, Anthropic tool_use blocks, "
            "Responses function_call items).")
        self.error_responses = counter(
            "ollama_error_responses_total",
            "Replies with an error status, by status: 401 (a cloud model without sign-in), 403, 404, 429 (the "
            "cloud's rate limit), 500, 502 (the cloud unreachable), 503 (busy), ...; other statuses as 'other'.",
            (*ENDPOINT_MODEL, "status"))
        self.model_location = Gauge(
            "ollama_model_location_info",
            "1 for each model label in use, with where it runs: local (on this Ollama's hardware) or cloud (an "
            "Ollama cloud model, run on ollama.com). Join on model to filter; cloud requests are left out of "
            "decode speed and energy per token.", ("model", "location"), registry=registry)
        self.client_disconnects = counter(
            "ollama_client_disconnects_total",
            "Clients that went away before the response ended; the upstream generation was cancelled.",
            (*ENDPOINT_MODEL, "phase"))
        self.finished = counter(
            "ollama_finished_requests_total",
            "Generations that reported why they stopped (done_reason, finish_reason or stop_reason).",
            (*ENDPOINT_MODEL, "reason"))
        self.prompt_tokens = counter(
            "ollama_prompt_tokens_total",
            "Prompt tokens Ollama reported, including those served from its prompt cache.")
        self.generation_tokens = counter(
            "ollama_generation_tokens_total",
            "Generated tokens: the count the reply reported, else (estimated) one per content chunk relayed.")
        self.generation_tokens_estimated = counter(
            "ollama_generation_tokens_estimated_total",
            "The part of ollama_generation_tokens_total that is estimated from content chunks, because the reply "
            "reported no count (OpenAI streams without include_usage, streams cut short).")
        self.eval_tokens = counter(
            "ollama_eval_tokens_total",
            "Generated tokens of the local requests that reported Ollama's eval_duration (native routes; not "
            "cloud models); divide by ollama_eval_seconds_total for decode speed over exactly the same requests.")
        self.prompt_eval_tokens = counter(
            "ollama_prompt_eval_tokens_total",
            "Prompt tokens Ollama evaluated in the requests that reported prompt_eval_duration: prompt_eval_count "
            "less prompt_eval_cached_count where the reply carries it (Ollama 0.33+), else prompt_eval_count "
            "including cached tokens (then divided by ollama_prompt_eval_seconds_total it overstates prefill speed "
            "when the prompt cache hits, since the duration covers only the uncached tokens).")
        self.load_requests = counter(
            "ollama_load_requests_total",
            "Requests that only loaded a model (done_reason load: an empty prompt) or unloaded it (unload: "
            "keep_alive 0), kept out of the generation, time-to-first-token and decode figures.",
            (*ENDPOINT_MODEL, "action"))
        self.request_prompt_tokens = histogram(
            "ollama_request_prompt_tokens", "Prompt tokens per request.", TOKEN_COUNT_BUCKETS)
        self.request_generation_tokens = histogram(
            "ollama_request_generation_tokens", "Generated tokens per request.", TOKEN_COUNT_BUCKETS)
        self.cached_tokens = counter(
            "ollama_prompt_cached_tokens_total",
            "Prompt tokens served from Ollama's prompt cache, where the reply reports them: native "
            "prompt_eval_cached_count (Ollama 0.33+), /v1 usage prompt_tokens_details.cached_tokens, Responses "
            "input_tokens_details.cached_tokens.")
        self.embedding_inputs = counter(
            "ollama_embedding_inputs_total", "Inputs embedded (one per returned vector).")
        self.load_duration = histogram(
            "ollama_load_duration_seconds",
            "Ollama's load_duration: waiting for and loading the model (includes queueing).",
            PHASE_DURATION_BUCKETS)
        self.prompt_eval_duration = histogram(
            "ollama_prompt_eval_duration_seconds", "Ollama's prompt_eval_duration: prefill of the prompt tokens "
            "not served from its prompt cache.", PHASE_DURATION_BUCKETS)
        self.eval_duration = histogram(
            "ollama_eval_duration_seconds", "Ollama's eval_duration: decoding the generated tokens.",
            PHASE_DURATION_BUCKETS)
        self.total_duration = histogram(
            "ollama_total_duration_seconds", "Ollama's total_duration for the request.", PHASE_DURATION_BUCKETS)
        self.load_seconds = counter(
            "ollama_load_seconds_total", "Sum of Ollama's load_duration.")
        self.prompt_eval_seconds = counter(
            "ollama_prompt_eval_seconds_total", "Sum of Ollama's prompt_eval_duration (prefill of the prompt "
            "tokens not served from cache); ollama_prompt_eval_tokens_total counts the same requests' tokens.")
        self.eval_seconds = counter(
            "ollama_eval_seconds_total", "Sum of Ollama's eval_duration of local requests (not cloud models); "
            "divide ollama_eval_tokens_total by it for decode speed.")
        self.generation_speed = histogram(
            "ollama_generation_tokens_per_second",
            "Decode speed per local request (not cloud models): eval_count / eval_duration.",
            TOKENS_PER_SECOND_BUCKETS)
        self.prompt_speed = histogram(
            "ollama_prompt_tokens_per_second",
            "Prefill speed per request: evaluated prompt tokens / prompt_eval_duration. The tokens are "
            "prompt_eval_count less prompt_eval_cached_count where the reply carries it (Ollama 0.33+); older "
            "replies count cached tokens too, so there this overstates compute speed when the cache hits.",
            TOKENS_PER_SECOND_BUCKETS)

        self.overhead = histogram(
            "ollama_metrics_proxy_overhead_seconds",
            "Time the proxy itself added to a request: direction=request from the request head's arrival to the "
            "request written to Ollama (opening a connection when none is pooled included), direction=response "
            "from Ollama's response head to the response head written to the client.", OVERHEAD_BUCKETS,
            ("direction",))
        self.queue_wait = histogram(
            "ollama_queue_wait_estimate_seconds",
            "Native inference requests: an estimate of the time spent waiting in Ollama for a parallel slot, "
            "total_duration - load_duration - prompt_eval_duration - eval_duration (time outside compute: the "
            "slot wait plus templating and tokenisation; the scheduler's own queue is in load_duration). Only "
            "replies that report prompt-eval or eval durations: not embeddings.",
            QUEUE_WAIT_BUCKETS)
        build = Gauge("ollama_metrics_proxy_build_info", "The proxy's version; always 1.",
                      ("version", "python_version"), registry=registry)
        build.labels(__version__, platform.python_version()).set(1)
        self.parse_errors = Counter(
            "ollama_metrics_proxy_parse_errors_total",
            "Response lines or bodies the proxy could not parse (relayed unchanged all the same).",
            ("endpoint",), registry=registry)
        self.label_overflows = Counter(
            "ollama_metrics_proxy_label_overflows_total",
            "Label values folded into 'other' because the label reached its limit of distinct values.",
            ("label",), registry=registry)
        self.relayed_bytes = counter(
            "ollama_metrics_proxy_relayed_bytes_total", "Body bytes relayed, by direction.",
            ("endpoint", "direction"))
        self.refused = Counter(
            "ollama_metrics_proxy_refused_requests_total",
            "Requests refused before anything was forwarded or answered, by listener (api, metrics) and reason "
            "(host: a Host header naming another machine, as DNS rebinding sends).", ("listener", "reason"),
            registry=registry)
        self.refused_connections = Counter(
            "ollama_metrics_proxy_refused_connections_total",
            "Client connections closed by the proxy, by listener and reason: max_connections (answered 503 at "
            "the cap), head_timeout (no complete request head in time) or evicted_idle (the metrics listener's "
            "longest-idle connection, closed at the cap to make room).", ("listener", "reason"),
            registry=registry)
        self.open_connections = Gauge(
            "ollama_metrics_proxy_open_connections", "Client connections open now, by listener.", ("listener",),
            registry=registry)
        self.max_connections = Gauge(
            "ollama_metrics_proxy_max_connections",
            "The cap on client connections, by listener (--max-connections for api).", ("listener",),
            registry=registry)
        self.workers = Gauge(
            "ollama_metrics_proxy_workers",
            "Processes relaying on the API port now: this one and its ready relay workers (--workers).",
            registry=registry)
        self.worker_restarts = Counter(
            "ollama_metrics_proxy_worker_restarts_total",
            "Relay worker processes (--workers) that exited unexpectedly and were replaced.", registry=registry)
        self.internal_errors = Counter(
            "ollama_metrics_proxy_internal_errors_total",
            "Failures inside the proxy's own metrics or logging code (the request itself was unaffected).",
            ("stage",), registry=registry)
        self._pair_families: dict[str, _Family] = {
            name: getattr(self, name) for name in ModelSeries.__slots__ if not name.startswith("_")}
        self._series: dict[tuple[str, str], ModelSeries] = {}

    def series(self, endpoint: str, model: str) -> ModelSeries:
        """The children of one (endpoint, model) pair; both labels are bounded, so this cache is too."""
        key = (endpoint, model)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = ModelSeries(self._pair_families, key)
        return series
