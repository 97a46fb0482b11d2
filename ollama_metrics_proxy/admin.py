"""The metrics listener: /metrics, /-/healthy and /-/ready. Its own traffic is never counted."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from ollama_metrics_proxy.ollama_state import OllamaStatePoller

REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
POLLER_KEY = web.AppKey("poller", OllamaStatePoller)


def _json(status: int, payload: object) -> web.Response:
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
    state = poller.state
    payload = {
        "ready": state.up,
        "upstream": poller.upstream,
        "ollama_version": state.version,
        "error": state.error,
        "checked_at": state.checked_at,
    }
    return _json(200 if state.up else 503, payload)


async def not_found(request: web.Request) -> web.Response:
    return _json(404, {"error": f"no such endpoint {request.path}; try /metrics, /-/healthy or /-/ready"})


def build_metrics_app(registry: CollectorRegistry, poller: OllamaStatePoller) -> web.Application:
    app = web.Application()
    app[REGISTRY_KEY] = registry
    app[POLLER_KEY] = poller
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)  # add_get also answers HEAD
    app.router.add_get("/-/ready", ready)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
