"""The second hostile review's holes (issue 24), each reproduced as it was found and held shut."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import aiohttp

from ollama_metrics_proxy.app.logs import JsonFormatter, TextFormatter
from ollama_metrics_proxy.app.server import build_registry, start
from tests.conftest import config_for
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
