"""The metrics listener: /metrics, /-/healthy, /-/ready and /-/system. Its own traffic is never counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from ollama_metrics_proxy import __version__
from ollama_metrics_proxy.config.webconfig import WebConfig
from ollama_metrics_proxy.telemetry.collectors import Samplers
from ollama_metrics_proxy.telemetry.ollama_state import OllamaStatePoller
from ollama_metrics_proxy.telemetry.sources import SourceHealth
from ollama_metrics_proxy.usage.analytics import Analytics, add_routes

REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
POLLER_KEY = web.AppKey("poller", OllamaStatePoller)
SAMPLERS_KEY = web.AppKey("samplers", Samplers)
STARTED_KEY = web.AppKey("started_at", float)


def json_response(status: int, payload: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get(hdrs.ACCEPT, ""))
    # Rendering many series takes milliseconds of CPU; a thread keeps it off the relay's event loop.
    body = await asyncio.to_thread(encoder, request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="ollama-metrics-proxy is healthy.\n")


async def ready(request: web.Request) -> web.Response:
    poller = request.app[POLLER_KEY]
    snapshot = poller.snapshot
    payload = {
        "ready": poller.up,
        "upstream": poller.upstream,
        "ollama_version": snapshot.version if snapshot else None,
        "error": poller.health.status.detail,
        "checked_at": poller.checked_at,
    }
    return json_response(200 if poller.up else 503, payload)


def _source(health: SourceHealth, sampled_at: float | None) -> dict[str, Any]:
    """A source's state, and when it last delivered (so stale figures can be told apart)."""
    return {"up": health.status.up, "reason": health.status.reason, "detail": health.status.detail,
            "sampled_at": sampled_at}


def system_report(poller: OllamaStatePoller, samplers: Samplers, started_at: float) -> dict[str, Any]:
    """The same figures as the scrape, as one JSON object for people and scripts."""
    snapshot = poller.snapshot
    now = time.time()
    report: dict[str, Any] = {
        "proxy": {"version": __version__, "uptime_seconds": round(now - started_at, 3)},
        "ollama": {
            **_source(poller.health, poller.checked_at),
            "upstream": poller.upstream,
            "version": snapshot.version if snapshot else None,
            "loaded_models": [
                {**asdict(model),
                 "gpu_offload_ratio": model.vram_bytes / model.size_bytes if model.size_bytes else None,
                 "expires_in_seconds": None if model.expires_at is None else round(model.expires_at - now, 3)}
                for model in (snapshot.loaded if snapshot else ())
            ],
            "installed_models": len(snapshot.installed) if snapshot else None,
            "installed_disk_bytes": sum(m.size_bytes for m in snapshot.installed) if snapshot else None,
        },
    }
    if samplers.gpu is not None:
        report["gpus"] = {**_source(samplers.gpu.health, samplers.gpu.sampled_at),
                          "devices": [asdict(gpu) for gpu in samplers.gpu.snapshot or ()]}
    if samplers.processes is not None:
        report["ollama_processes"] = {**_source(samplers.processes.health, samplers.processes.sampled_at),
                                      "processes": [asdict(p) for p in samplers.processes.snapshot or ()]}
    if samplers.host is not None:
        host = samplers.host.snapshot
        report["host"] = {**_source(samplers.host.health, samplers.host.sampled_at), **(asdict(host) if host else {})}
    return report


async def system(request: web.Request) -> web.Response:
    app = request.app
    return json_response(200, system_report(app[POLLER_KEY], app[SAMPLERS_KEY], app[STARTED_KEY]))


# Browser hardening for the page and the JSON API: no MIME sniffing, no framing (clickjacking), scripts and
# styles only from the proxy itself (the page has no inline code), and no referrer leaking its address.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


async def not_found(request: web.Request) -> web.Response:
    return json_response(404, {"error": f"no such endpoint {request.path}; see / for the list"})


def host_check(allowed: Callable[[str | None], bool], on_refused: Callable[[], None]) -> Middleware:
    """Answer only requests whose Host names this listener (DNS rebinding: see hosts.py)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get(hdrs.HOST)
        if allowed(host):
            return await handler(request)
        on_refused()
        return json_response(403, {"error": f"Host {host!r} does not name this proxy; if it should, start the "
                                            "proxy with --allowed-hosts naming it"})

    return check


def basic_auth(config: WebConfig) -> Middleware:
    """--web-config-file's basic_auth_users guard every path of the metrics listener, as in exporter-toolkit."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if await config.authorized(request.headers.get(hdrs.AUTHORIZATION)):
            return await handler(request)
        response = json_response(401, {"error": "this listener needs basic authentication "
                                                "(a user of --web-config-file's basic_auth_users)"})
        response.headers[hdrs.WWW_AUTHENTICATE] = 'Basic realm="ollama-metrics-proxy"'
        return response

    return check


def client_certificate_check(config: WebConfig) -> Middleware:
    """--web-config-file's client_allowed_sans: a verified client certificate must also name an allowed SAN."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        if transport is not None and config.client_allowed(transport.get_extra_info("peercert")):
            return await handler(request)
        return json_response(403, {"error": "this listener's client certificate must name one of "
                                            "--web-config-file's client_allowed_sans"})

    return check


def configured_headers(headers: dict[str, str]) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """--web-config-file's http_server_config.headers, on every response (over the proxy's own defaults)."""

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(headers)

    return add


def build_metrics_app(registry: CollectorRegistry, poller: OllamaStatePoller, samplers: Samplers,
                      started_at: float, analytics: Analytics,
                      host_allowed: Callable[[str | None], bool] | None = None,
                      on_refused: Callable[[], None] = lambda: None,
                      web_config: WebConfig | None = None) -> web.Application:
    middlewares = [host_check(host_allowed, on_refused)] if host_allowed is not None else []
    if web_config is not None and web_config.allowed_sans:
        middlewares.insert(0, client_certificate_check(web_config))
    if web_config is not None and web_config.users:
        middlewares.append(basic_auth(web_config))
    app = web.Application(middlewares=middlewares)
    app.on_response_prepare.append(add_security_headers)
    if web_config is not None and web_config.headers:
        app.on_response_prepare.append(configured_headers(web_config.headers))
    app[REGISTRY_KEY] = registry
    app[POLLER_KEY] = poller
    app[SAMPLERS_KEY] = samplers
    app[STARTED_KEY] = started_at
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)  # add_get also answers HEAD
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/-/system", system)
    add_routes(app, analytics)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
