"""A real Prometheus scrapes the proxy while traffic flows; every PromQL expression in the kit must work.

Expressions come from both dashboards and every rule file, with Grafana's template variables substituted.
Each must parse and evaluate; each overview panel must return data; and every metric name used in the
dashboards, rules, README and examples must be one the proxy exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import ProxyUnderTest
from tests.fake_ollama import UNKNOWN_MODEL, FakeOllama, rec
from tests.test_exposition import drive_every_route, scrape

ROOT = Path(__file__).parent.parent
PROMETHEUS = shutil.which("prometheus")
RULE_FILES = sorted((ROOT / "examples/prometheus/rules").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
SUBSTITUTIONS = {"$__rate_interval": "15s", "$instance": ".*", "$model": ".*", "$endpoint": ".*"}
# Not module file names, and not the metric part of a recording rule's level:metric:operations name.
METRIC_NAME = re.compile(r"(?<![:\w])(ollama_[a-z0-9_]*[a-z0-9])\b(?!\.py|:)")
# Words shaped like metric names that are not metrics: a /-/ready JSON field, a `source` label value, and the
# package's own name (in wheel file names).
NOT_METRICS = {"ollama_version", "ollama_process", "ollama_metrics_proxy"}

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None and os.environ.get("CI") != "true",
    reason="prometheus missing: install Debian's prometheus package (make test does, as root)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def substitute(expr: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return expr


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expression) for every target."""
    return [(dashboard["uid"], panel["title"], substitute(target["expr"]))
            for path in DASHBOARDS for dashboard in [json.loads(path.read_text())]
            for panel in dashboard["panels"] for target in panel["targets"]]


def rule_queries() -> list[tuple[str, str]]:
    return [(rule.get("record") or rule["alert"], rule["expr"])
            for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


class Prometheus:
    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = http

    async def query(self, expr: str) -> list[dict[str, object]]:
        async with self.http.post(self.url + "/api/v1/query", data={"query": expr}) as response:
            body = await response.json()
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, object]] = body["data"]["result"]
        return result

    async def wait_for(self, expr: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not await self.query(expr):
            assert time.monotonic() < deadline, f"no data for {expr}"
            await asyncio.sleep(0.25)


@pytest.fixture
async def prometheus(full_proxy: ProxyUnderTest, tmp_path: Path) -> AsyncIterator[Prometheus]:
    target = full_proxy.metrics_url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in RULE_FILES],
        "scrape_configs": [{"job_name": "ollama-proxy", "static_configs": [{"targets": [target]}]}],
    }
    async with running_prometheus(config, tmp_path) as server:
        yield server


@contextlib.asynccontextmanager
async def running_prometheus(config: dict[str, object], directory: Path) -> AsyncIterator[Prometheus]:
    """A real Prometheus with this configuration, ready to query; stopped on leaving."""
    assert PROMETHEUS is not None, "CI must have prometheus: make test installs Debian's prometheus package"
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        PROMETHEUS, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    async with aiohttp.ClientSession() as api:  # Prometheus gzips its answers
        server = Prometheus(f"http://127.0.0.1:{port}", api)
        try:
            await _wait_ready(server, process)
            yield server
        finally:
            process.terminate()
            await process.wait()


async def _wait_ready(server: Prometheus, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.returncode is not None:
            assert process.stderr is not None
            raise AssertionError("prometheus exited: " + (await process.stderr.read()).decode())
        try:
            async with server.http.get(server.url + "/-/ready") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("prometheus did not become ready")


async def drive_traffic(proxy: ProxyUnderTest, fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    await drive_every_route(proxy, http)
    async with http.post(proxy.url + "/api/generate", json={"model": UNKNOWN_MODEL}) as response:
        assert response.status == 404
    for recording in ("chat_thinking_stream.ndjson", "chat_tool_done_line.ndjson"):  # thinking, a tool call
        fake.override["/api/chat"] = rec(recording)
        async with http.post(proxy.url + "/api/chat", json={"model": "qwen3:8b"}) as response:
            await response.read()
    del fake.override["/api/chat"]
    fake.die_after = 1  # Ollama dies mid-stream: an error on the server's side (upstream_error)
    async with http.post(proxy.url + "/api/generate", json={"model": "llama3.2"}) as response:
        with contextlib.suppress(aiohttp.ClientPayloadError):
            await response.read()
    fake.die_after = None
    fake.gate = asyncio.Event()  # one client gives up mid-stream
    response = await http.post(proxy.url + "/api/chat", json={"model": "llama3.2"})
    await response.content.readline()
    response.close()
    await asyncio.sleep(0.05)
    fake.gate = None


async def test_every_kit_expression_evaluates_against_real_scrapes(
    full_proxy: ProxyUnderTest, fake: FakeOllama, prometheus: Prometheus, http: aiohttp.ClientSession,
) -> None:
    await prometheus.wait_for('up{job="ollama-proxy"} == 1')
    await prometheus.wait_for("ollama_up == 1")
    # Traffic in two bursts a couple of scrapes apart, so every rate window sees counters grow.
    await drive_traffic(full_proxy, fake, http)
    await prometheus.wait_for("ollama_requests_total")
    fake.override["/api/ps"] = rec("ps_two.json")  # a model load between scrapes
    await full_proxy.running.poller.poll_once()
    await asyncio.sleep(2.5)
    await drive_traffic(full_proxy, fake, http)
    await asyncio.sleep(2.5)

    empty_panels = set()
    for uid, title, expr in dashboard_queries():
        result = await prometheus.query(expr)  # asserts it parses and evaluates
        if uid == "ollama-overview" and not result:
            empty_panels.add(title)
    overview_titles = {title for uid, title, _ in dashboard_queries() if uid == "ollama-overview"}
    assert empty_panels == set(), f"overview panels without data: {empty_panels}"
    assert len(overview_titles) >= 12
    # GPU panels have data too, from the fake NVML behind the proxy.
    assert await prometheus.query(substitute(
        "1000 * sum by (instance) (rate(ollama_gpu_energy_joules_total[$__rate_interval]))"))

    for _, expr in rule_queries():
        await prometheus.query(expr)
    assert await prometheus.query(dict(rule_queries())["instance_model_outcome:ollama_requests:rate5m"])
    assert await prometheus.query(dict(rule_queries())["instance_model:ollama_decode_tokens_per_second:ratio_rate5m"])


async def test_every_metric_name_in_the_kit_is_exported(
    full_proxy: ProxyUnderTest, http: aiohttp.ClientSession,
) -> None:
    await drive_every_route(full_proxy, http)
    _, text = await scrape(full_proxy, http)
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    exported |= {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines()
                 if line and not line.startswith("#")}
    examples = [path for path in (ROOT / "examples").rglob("*.*") if path.is_file()]
    sources = [*DASHBOARDS, *RULE_FILES, ROOT / "README.md", *examples]
    used: dict[str, set[str]] = {}
    for path in sources:
        for name in METRIC_NAME.findall(path.read_text()):
            used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert used, "no metric names found"
    missing = {name: sorted(where) for name, where in used.items() if name not in exported | NOT_METRICS}
    assert missing == {}, f"used but not exported: {missing}"


async def test_prometheus_scrapes_over_tls_with_basic_auth_and_a_wrong_password_fails(
    fake: FakeOllama, tmp_path: Path, self_signed: tuple[Path, Path],
) -> None:
    """--web-config-file in exporter-toolkit's format: an unchanged Prometheus scrape_config with tls_config and
    basic_auth scrapes; the same target with a wrong password is down with a 401."""
    import bcrypt

    from ollama_metrics_proxy.app.server import build_registry, start
    from tests.conftest import config_for

    cert, key = self_signed
    password = "scrape-secret-42"
    web_config = tmp_path / "web.yml"
    web_config.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": cert.name, "key_file": key.name, "min_version": "TLS12"},
        "basic_auth_users": {"prometheus": bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()},
    }))
    running = await start(config_for(fake.url, web_config_file=str(web_config)), registry=build_registry())
    target = f"127.0.0.1:{running.metrics_address.port}"  # type: ignore[union-attr]

    def job(name: str, secret: str) -> dict[str, object]:
        return {"job_name": name, "scheme": "https", "static_configs": [{"targets": [target]}],
                "tls_config": {"ca_file": str(cert)}, "basic_auth": {"username": "prometheus", "password": secret}}

    config = {"global": {"scrape_interval": "1s"},
              "scrape_configs": [job("right", password), job("wrong", "not-the-password")]}
    try:
        async with running_prometheus(config, tmp_path) as server:
            api = server.http
            await server.wait_for('up{job="right"} == 1')
            await server.wait_for('ollama_up{job="right"}')
            await server.wait_for('up{job="wrong"} == 0')
            async with api.get(server.url + "/api/v1/targets") as response:
                targets = (await response.json())["data"]["activeTargets"]
            wrong = next(t for t in targets if t["labels"]["job"] == "wrong")
            assert "401" in wrong["lastError"]
            # No credentials are refused too.
            async with api.get(f"https://{target}/metrics", ssl=False) as response:
                assert response.status == 401 and "Basic" in response.headers["WWW-Authenticate"]
    finally:
        await running.stop()
