"""Wiring: build the shared state, the two listeners, and run them until a signal arrives."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import ssl
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from ollama_metrics_proxy import __version__
from ollama_metrics_proxy.app.admin import build_metrics_app
from ollama_metrics_proxy.app.eventloop import run_event_loop, tune_garbage_collector
from ollama_metrics_proxy.config import Config, HostPort
from ollama_metrics_proxy.config.webconfig import load_web_config
from ollama_metrics_proxy.metrics.families import TrafficMetrics
from ollama_metrics_proxy.metrics.labels import ModelLabels
from ollama_metrics_proxy.metrics.otel import GenAiMetrics, MissingPackage
from ollama_metrics_proxy.metrics.recorder import Recorder
from ollama_metrics_proxy.metrics.slo import ServiceLevel
from ollama_metrics_proxy.metrics.tracing import RequestTracer
from ollama_metrics_proxy.redact import redact_url
from ollama_metrics_proxy.relay.api_port import (
    CANCEL_WAIT_SECONDS,
    ApiPort,
    api_connection_limit,
    api_guard,
    open_api_port,
)
from ollama_metrics_proxy.relay.api_port import StartupError as StartupError  # raised by start(), caught by the CLI
from ollama_metrics_proxy.relay.hosts import AllowedHosts, remembered
from ollama_metrics_proxy.relay.listener import (
    METRICS_MAX_CONNECTIONS,
    ConnectionGuard,
    GuardedSite,
    raise_open_file_limit,
    refusal_response,
)
from ollama_metrics_proxy.relay.workers import WorkerPool
from ollama_metrics_proxy.telemetry.collectors import QueueCollector, Samplers, build_samplers, register_telemetry
from ollama_metrics_proxy.telemetry.ollama_state import OllamaStatePoller
from ollama_metrics_proxy.telemetry.sources import SourceUnavailable
from ollama_metrics_proxy.upstream import UpstreamClient
from ollama_metrics_proxy.usage.analytics import Analytics
from ollama_metrics_proxy.usage.live_stats import LiveStats
from ollama_metrics_proxy.usage.request_log import RequestLog
from ollama_metrics_proxy.usage.store import StoreError, open_store

log = logging.getLogger(__name__)
# After the grace, what is left of shutting down: cancelled handlers record their requests, idle connections close,
# the request log writes what is queued. Together well under two seconds.
CONNECTION_CLOSE_SECONDS = 0.2
SAMPLER_STOP_SECONDS = 0.3
REQUEST_LOG_STOP_SECONDS = 0.8


def build_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def poller_session(config: Config) -> aiohttp.ClientSession:
    """The Ollama poller's session (the relay has its own lean client, ``upstream.UpstreamClient``).

    Each poll sets its own timeout; no decompression, no cookies, and no HTTP_PROXY from the environment: the
    proxy talks only to its configured upstream.
    """
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


@dataclass
class RunningProxy:
    config: Config
    registry: CollectorRegistry
    recorder: Recorder
    poller: OllamaStatePoller
    session: aiohttp.ClientSession
    upstream: UpstreamClient
    samplers: Samplers
    request_log: RequestLog | None = None
    background: set[asyncio.Task[None]] = field(default_factory=set)
    started_at: float = field(default_factory=time.time)
    runners: list[web.BaseRunner] = field(default_factory=list)
    api: ApiPort | None = None
    workers: WorkerPool | None = None  # --workers N: the other relaying processes
    proxy_address: HostPort | None = None
    metrics_address: HostPort | None = None

    @property
    def in_flight(self) -> int:
        return (self.api.proxy.in_flight if self.api else 0) + (self.workers.in_flight if self.workers else 0)

    async def stop(self, grace: float = 0.0) -> None:
        """Stop accepting connections, let requests in flight finish for up to ``grace`` seconds, cut the rest
        (recorded as aborted), write every record, close everything.

        aiohttp's own runner shutdown would wait its timeout for the handlers, cancel them, then wait the timeout
        again, per listener; here the handlers are awaited once, so the whole stop takes the grace plus well
        under two seconds, which fits inside `docker stop`'s ten when the grace is the default eight.
        """
        if self.workers is not None:
            self.workers.stop()  # they stop accepting and drain their requests meanwhile, with the same grace
        if self.api is not None:
            self.api.stop_accepting()
        for runner in self.runners:
            for site in list(runner.sites):
                await site.stop()
        if self.api is not None:
            await self.api.finish(grace)
        if self.workers is not None:  # every request they relayed is reported before the request log stops
            await self.workers.wait(CANCEL_WAIT_SECONDS + CONNECTION_CLOSE_SECONDS)
        await self.poller.stop()
        # Sampler threads are daemons: one stuck in a driver call must not hold up the exit.
        await asyncio.gather(*(asyncio.to_thread(sampler.stop, SAMPLER_STOP_SECONDS)
                               for sampler in self.samplers.all()))
        for runner in self.runners:
            await runner.cleanup()
        if self.request_log is not None:  # writes what is still queued
            await asyncio.to_thread(self.request_log.stop, REQUEST_LOG_STOP_SECONDS)
        if self.recorder.otel is not None:  # one last push
            await asyncio.to_thread(self.recorder.otel.shutdown)
        if self.recorder.tracer is not None:  # the spans still batched
            await asyncio.to_thread(self.recorder.tracer.shutdown)
        self.upstream.close()
        await self.session.close()


async def start(config: Config, registry: CollectorRegistry | None = None,
                samplers: Samplers | None = None) -> RunningProxy:
    registry = registry if registry is not None else build_registry()
    if samplers is None:
        try:
            samplers = build_samplers(config)
        except SourceUnavailable as exc:
            raise StartupError(f"--gpu on, but NVML is unavailable: {exc.detail}") from None
    metrics = TrafficMetrics(registry)
    models = ModelLabels(config.max_models, metrics.label_overflows.labels("model").inc)
    live = LiveStats()
    request_log = build_request_log(config, registry)
    otel = build_otel(config)
    recorder = Recorder(metrics, models, live, request_log, otel,
                        ServiceLevel(config.slo_ttft, config.slo_tpot), tracer=build_tracer(config))
    session = poller_session(config)
    upstream = UpstreamClient(config.upstream, config.connect_timeout)
    poller = OllamaStatePoller(config.upstream, session, config.ollama_poll_interval, on_installed=models.admit)
    recorder.context_length = poller.context_length
    recorder.model_state = poller.model_state
    register_telemetry(registry, poller, samplers.gpu, samplers.processes, samplers.host,
                       QueueCollector(metrics.in_flight, samplers.processes, config.ollama_num_parallel,
                                      poller.installed_models, poller.loaded_models))
    running = RunningProxy(config, registry, recorder, poller, session, upstream, samplers, request_log)
    try:
        guard = api_guard(config, on_refused=lambda reason: metrics.refused_connections.labels("api", reason).inc())
        # Each relaying process holds up to --max-connections; the gauges show all of them together.
        metrics.open_connections.labels("api").set_function(
            lambda: guard.open + (running.workers.open_connections if running.workers else 0))
        metrics.max_connections.labels("api").set(api_connection_limit(config) * config.workers)
        metrics.workers.set_function(lambda: 1 + (running.workers.serving if running.workers else 0))
        running.api = await open_api_port(config, recorder, upstream, guard, config.listen,
                                          reuse_port=config.workers > 1)
        running.proxy_address = running.api.address
        if config.workers > 1:
            running.workers = WorkerPool(config, running.api.address, recorder)
            await running.workers.start()
        analytics = Analytics(live, request_log, config.admin_token, config.client_header,
                              api_address=str(running.proxy_address))
        metrics_hosts = AllowedHosts(config.allowed_hosts, bound=config.metrics_listen.host)
        web_config = load_web_config(config.web_config_file) if config.web_config_file else None
        metrics_app = build_metrics_app(registry, poller, samplers, running.started_at, analytics,
                                        host_allowed=remembered(metrics_hosts.allows),
                                        on_refused=metrics.refused.labels("metrics", "host").inc,
                                        web_config=web_config)
        metrics_runner = web.AppRunner(metrics_app, handler_cancellation=True, access_log=None,
                                       shutdown_timeout=CONNECTION_CLOSE_SECONDS,
                                       keepalive_timeout=config.idle_timeout)
        metrics_guard = guard_for(metrics, "metrics", METRICS_MAX_CONNECTIONS, config.request_head_timeout,
                                  "ollama-metrics-proxy: too many connections to the metrics listener")
        running.metrics_address = await _serve(running, metrics_runner, config.metrics_listen, "--metrics-listen",
                                               metrics_guard, web_config.ssl_context if web_config else None)
    except BaseException:
        await running.stop()
        raise
    poller.start()
    if request_log is not None:
        request_log.start()
        running.background.add(asyncio.create_task(_check_request_log(request_log)))
    for sampler in samplers.all():
        sampler.start()
    return running


def build_otel(config: Config) -> GenAiMetrics | None:
    if config.otlp_endpoint is None:
        return None  # nothing of OpenTelemetry is imported: Prometheus alone costs the relay nothing more
    try:
        return GenAiMetrics(config.otlp_endpoint, config.otlp_interval, dict(config.otlp_headers))
    except MissingPackage as exc:
        raise StartupError(str(exc)) from None


def build_tracer(config: Config) -> RequestTracer | None:
    if config.otlp_endpoint is None:
        return None
    try:
        return RequestTracer(config.otlp_endpoint, dict(config.otlp_headers))
    except MissingPackage as exc:
        raise StartupError(str(exc)) from None


def build_request_log(config: Config, registry: CollectorRegistry) -> RequestLog | None:
    if config.log_db is None:
        return None
    proxy_name = f"{socket.gethostname()}:{config.listen.port}"
    return RequestLog(open_store(config.log_db), registry, proxy_name=proxy_name,
                      retention_days=config.log_retention_days, max_rows=config.log_max_rows,
                      content_limit=config.log_content_max_bytes if config.log_content else 0)


async def _check_request_log(request_log: RequestLog) -> None:
    """Say at start-up, once, whether the request log's database works; the proxy runs either way."""
    try:
        await asyncio.to_thread(request_log.store.ping)
    except StoreError as exc:
        log.warning("request log: %s is unavailable (%s); requests are relayed and counted, their records "
                    "dropped until it works", request_log.store.describe(), exc)
    else:
        log.info("request log: writing to %s", request_log.store.describe())


def guard_for(metrics: TrafficMetrics, listener: str, limit: int, head_timeout: float,
              message: str) -> ConnectionGuard:
    guard = ConnectionGuard(limit, head_timeout, refusal_response(message),
                            on_refused=lambda reason: metrics.refused_connections.labels(listener, reason).inc(),
                            evict_idle=listener == "metrics")
    metrics.open_connections.labels(listener).set_function(lambda: guard.open)
    metrics.max_connections.labels(listener).set(limit)
    return guard


async def _serve(running: RunningProxy, runner: web.BaseRunner, address: HostPort, flag: str,
                 guard: ConnectionGuard, ssl_context: ssl.SSLContext | None = None) -> HostPort:
    # handler_cancellation (set on the runner): a client that disconnects cancels its handler at once, which
    # closes the upstream connection, so Ollama stops generating even while no bytes are flowing.
    await runner.setup()
    running.runners.append(runner)
    site = GuardedSite(runner, address.host, address.port, guard, ssl_context)
    try:
        await site.start()
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise StartupError(f"cannot listen on {address} ({flag}): {reason}") from None
    bound = runner.addresses  # (host, port, ...) per socket; tells the real port when 0 was asked for
    return HostPort(address.host, bound[0][1] if bound else address.port)


def probe_listen(address: HostPort) -> str | None:
    """For --check-config: can this address be bound right now?"""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address.host, address.port))
    except OSError as exc:
        return "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
    return None


async def serve_forever(config: Config) -> None:
    before, after = raise_open_file_limit()
    if after != before:
        log.info("open-file limit raised from %d to %d", before, after)
    running = await start(config)
    tune_garbage_collector()
    log.info(
        "ollama-metrics-proxy %s started: Ollama API on http://%s -> %s, metrics on %s://%s/metrics",
        __version__, running.proxy_address, redact_url(config.upstream),
        "https" if config.web_config_file and load_web_config(config.web_config_file).ssl_context else "http",
        running.metrics_address,
        extra={"fields": config.summary()},
    )
    if running.workers is not None:
        log.info("%d processes relay on the API port (--workers): this one and relay workers with pids %s",
                 config.workers, ", ".join(map(str, running.workers.pids())))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        log.info("shutting down; waiting up to %g s (--shutdown-grace) for %d requests in flight",
                 config.shutdown_grace, running.in_flight)
    finally:
        await running.stop(config.shutdown_grace)
    log.info("stopped")


def run(config: Config) -> None:
    """Run until SIGINT/SIGTERM."""
    run_event_loop(serve_forever(config), config.event_loop)
