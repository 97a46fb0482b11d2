"""The second hostile review's holes (issue 24), each reproduced as it was found and held shut."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from ollama_metrics_proxy.app.logs import JsonFormatter, TextFormatter
from ollama_metrics_proxy.app.server import build_registry, start
from tests.conftest import config_for, serve_app
from tests.fake_ollama import FakeOllama

ROOT = Path(__file__).parent.parent
SECRET = "hunter2-not-for-your-eyes"


def check_config(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "ollama_metrics_proxy", "--check-config", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


# ---------------------------------------------------------------- 5. secrets in URLs


def test_a_database_password_in_the_query_is_never_printed() -> None:
    output = check_config("--log-db", f"postgresql://proxy@127.0.0.1:1/usage?password={SECRET}&sslmode=disable")
    assert "log_db" in output and "password=***" in output and SECRET not in output


def test_a_malformed_otlp_header_is_named_not_echoed() -> None:
    output = check_config("--otlp-endpoint", "http://127.0.0.1:4318", "--otlp-headers",
                          f"X-Scope=tenant,Authorization Bearer {SECRET}")
    assert "entry 2" in output and SECRET not in output


def test_log_lines_mask_urls_and_secret_parameters_from_any_library() -> None:
    """The OTLP exporter's retry warnings quote its endpoint, api_key and all; psycopg quotes connection strings."""
    record = logging.LogRecord("opentelemetry.exporter", logging.WARNING, __file__, 1,
                               "Transient error %s encountered while exporting to %s", (
                                   "ConnectionRefused", f"http://u:{SECRET}@collector:4318/v1/metrics?api_key={SECRET}"),
                               None)
    for formatter in (TextFormatter(), JsonFormatter()):
        line = formatter.format(record)
        assert "collector:4318" in line and SECRET not in line


async def test_the_usage_api_does_not_show_the_database_password_while_it_is_down(
    fake: FakeOllama, tmp_path: Path,
) -> None:
    target = f"postgresql://proxy@127.0.0.1:1/usage?password={SECRET}&connect_timeout=1"
    running = await start(config_for(fake.url, log_db=target, client_header="X-User"), registry=build_registry())
    try:
        assert running.metrics_address is not None
        base = f"http://127.0.0.1:{running.metrics_address.port}"
        async with aiohttp.ClientSession() as http:
            for path in ("/-/logs", "/-/models", "/-/clients", "/-/stats/history"):
                async with http.get(base + path) as response:
                    body = await response.text()
                assert response.status == 503, (path, body)
                assert "unavailable" in body and SECRET not in body, body
    finally:
        await running.stop()


# ---------------------------------------------------------------- 8. the Ollama poller reads without bound


async def test_a_poll_reply_that_never_ends_fails_the_poll_at_16_mib() -> None:
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"models":[')
        piece = b'{"name":"m:latest","size":1},' * 4096
        while sent < 64 * 2**20:  # bounded here too: the test stops by itself
            await response.write(piece)
            sent += len(piece)
        return response

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.33.0"})

    async def ps(request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    app = web.Application()
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/ps", ps)
    app.router.add_get("/api/tags", endless)
    runner, url = await serve_app(app)
    running = await start(config_for(url, ollama_poll_interval=3600), registry=build_registry())
    try:
        await running.poller.poll_once()
        assert running.poller.snapshot is None and not running.poller.up
        status = running.poller.health.status
        assert status.detail is not None and "more than 16 MiB" in status.detail
    finally:
        await running.stop()
        await runner.cleanup()
