"""The second hostile review's holes (issue 24), each reproduced as it was found and held shut."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from ollama_metrics_proxy.app.logs import JsonFormatter, TextFormatter
from ollama_metrics_proxy.app.server import build_registry, start
from ollama_metrics_proxy.config.webconfig import load_web_config
from ollama_metrics_proxy.relay.listener import METRICS_MAX_CONNECTIONS
from ollama_metrics_proxy.usage.identity import load_key
from ollama_metrics_proxy.usage.store import SqliteStore
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


# ---------------------------------------------------------------- 11. files readable by everyone


async def test_the_request_log_and_its_directory_are_private(fake: FakeOllama, tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # the usual umask, which left the log 0644
    try:
        database = tmp_path / "data" / "requests.sqlite3"
        running = await start(config_for(fake.url, log_db=str(database), log_content=True),
                              registry=build_registry())
        try:
            assert running.proxy_address is not None
            async with aiohttp.ClientSession() as http, http.post(
                    f"http://127.0.0.1:{running.proxy_address.port}/api/generate",
                    json={"model": "llama3.2", "prompt": SECRET}) as response:
                await response.read()
            assert running.request_log is not None
            await asyncio.to_thread(running.request_log.flush)
            files = sorted(database.parent.iterdir())
            assert {path.name for path in files} >= {"requests.sqlite3", "requests.sqlite3-wal",
                                                     "requests.sqlite3-shm"}
            assert stat.S_IMODE(database.parent.stat().st_mode) == 0o700
            assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in files} == {
                path.name: 0o600 for path in files}
        finally:
            await running.stop()
    finally:
        os.umask(old_umask)


def test_an_existing_log_readable_by_others_is_made_private(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    database = tmp_path / "requests.sqlite3"
    database.touch(mode=0o644)
    os.chmod(database, 0o644)
    store = SqliteStore(str(database))
    with store._cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM requests")
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert "readable by other users" in caplog.text


def test_a_key_file_others_can_read_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = tmp_path / "client-identity.key"
    key.write_text("k" * 64 + "\n")
    os.chmod(key, 0o644)
    assert load_key(None, str(tmp_path)) == b"k" * 64
    assert "can be read by other users" in caplog.text and "chmod 600" in caplog.text


def test_a_tls_key_others_can_read_is_warned_about(
    self_signed: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    cert, key = self_signed
    os.chmod(key, 0o644)
    config = tmp_path / "web.yml"
    config.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    load_web_config(str(config))
    assert "TLS key_file" in caplog.text and "chmod 600" in caplog.text


# ---------------------------------------------------------------- 12. the head timeout can be reset


async def test_empty_lines_before_the_request_line_do_not_stop_the_head_deadline(fake: FakeOllama) -> None:
    running = await start(config_for(fake.url, request_head_timeout=0.5, idle_timeout=60),
                          registry=build_registry())
    try:
        assert running.proxy_address is not None and running.metrics_address is not None
        for port in (running.proxy_address.port, running.metrics_address.port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\r\n\r\n")
            started = asyncio.get_running_loop().time()
            closed_after = None
            for piece in b"GET /api/tags HTTP/1.1\r\n":  # dripped, a byte every 0.1 s
                writer.write(bytes([piece]))
                await asyncio.sleep(0.1)
                if reader.at_eof() or writer.is_closing() or await _closed(reader):
                    closed_after = asyncio.get_running_loop().time() - started
                    break
            writer.close()
            assert closed_after is not None and closed_after < 2, port
        refused = running.registry.get_sample_value
        for listener in ("api", "metrics"):
            assert refused("ollama_metrics_proxy_refused_connections_total",
                           {"listener": listener, "reason": "head_timeout"}) == 1
    finally:
        await running.stop()


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout=0.001) == b""
    except TimeoutError:
        return False


# ---------------------------------------------------------------- 4. one client can lock Prometheus out


async def test_idle_keep_alive_connections_cannot_keep_a_scrape_out(fake: FakeOllama) -> None:
    running = await start(config_for(fake.url), registry=build_registry())
    held: list[asyncio.StreamWriter] = []
    try:
        assert running.metrics_address is not None
        port = running.metrics_address.port
        for _ in range(METRICS_MAX_CONNECTIONS):  # every slot held by one client's idle keep-alive connection
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            held.append(writer)
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.status == 200
        evicted = running.registry.get_sample_value("ollama_metrics_proxy_refused_connections_total",
                                                    {"listener": "metrics", "reason": "evicted_idle"})
        assert evicted is not None and evicted >= 1
    finally:
        for writer in held:
            writer.close()
        await running.stop()
