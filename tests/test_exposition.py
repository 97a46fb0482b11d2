"""The metrics listener: /metrics in both formats and lint-clean, health and readiness, nothing counted twice."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from ollama_metrics_proxy.endpoints import ALL_ENDPOINTS, INFERENCE_ENDPOINTS
from tests.conftest import ProxyUnderTest
from tests.fake_ollama import ROUTES, FakeOllama
from tests.test_relay import fetch, request_for

PROMTOOL = shutil.which("promtool")


@pytest.fixture
async def proxy(full_proxy: ProxyUnderTest) -> ProxyUnderTest:
    return full_proxy


async def drive_every_route(proxy: ProxyUnderTest, http: aiohttp.ClientSession) -> None:
    for path, streamed in ROUTES:
        method, body = request_for(path, streamed)
        await fetch(http, method, proxy.url + path, body)


async def scrape(proxy: ProxyUnderTest, http: aiohttp.ClientSession, accept: str = "") -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with http.get(proxy.metrics_url + "/metrics", headers=headers) as response:
        assert response.status == 200
        return response.headers["Content-Type"], await response.text()


@pytest.mark.skipif(PROMTOOL is None and os.environ.get("CI") != "true",
                    reason="promtool missing: install Debian's prometheus package (make test does, as root)")
async def test_promtool_check_metrics_is_clean(proxy: ProxyUnderTest, http: aiohttp.ClientSession) -> None:
    assert PROMTOOL is not None, "CI must have promtool: make test installs Debian's prometheus package"
    await drive_every_route(proxy, http)
    _, text = await scrape(proxy, http)
    result = await asyncio.to_thread(subprocess.run, [PROMTOOL, "check", "metrics"], input=text,
                                     capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


async def test_openmetrics_by_content_negotiation(proxy: ProxyUnderTest, http: aiohttp.ClientSession) -> None:
    await drive_every_route(proxy, http)
    content_type, text = await scrape(proxy, http)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "ollama_requests_total{" in text
    content_type, text = await scrape(proxy, http, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")
    assert 'ollama_inter_token_latency_seconds_bucket{endpoint="/api/generate"' in text


async def test_every_family_is_exported_after_traffic(proxy: ProxyUnderTest, http: aiohttp.ClientSession) -> None:
    await drive_every_route(proxy, http)
    _, text = await scrape(proxy, http)
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    expected = {
        "ollama_requests_total", "ollama_requests_in_flight", "ollama_request_duration_seconds",
        "ollama_time_to_first_token_seconds", "ollama_inter_token_latency_seconds",
        "ollama_client_disconnects_total", "ollama_finished_requests_total", "ollama_prompt_tokens_total",
        "ollama_generation_tokens_total", "ollama_request_prompt_tokens", "ollama_request_generation_tokens",
        "ollama_prompt_cached_tokens_total", "ollama_embedding_inputs_total", "ollama_load_duration_seconds",
        "ollama_prompt_eval_duration_seconds", "ollama_eval_duration_seconds", "ollama_total_duration_seconds",
        "ollama_load_seconds_total", "ollama_prompt_eval_seconds_total", "ollama_eval_seconds_total",
        "ollama_generation_tokens_per_second", "ollama_prompt_tokens_per_second",
        "ollama_metrics_proxy_build_info", "ollama_metrics_proxy_parse_errors_total",
        "ollama_metrics_proxy_label_overflows_total", "ollama_metrics_proxy_relayed_bytes_total",
        "ollama_metrics_proxy_internal_errors_total", "process_cpu_seconds_total", "python_info",
    }
    # The text format names counters without their _total suffix in # TYPE lines.
    families |= {name + "_total" for name in families}
    assert expected <= families, expected - families
    for endpoint in INFERENCE_ENDPOINTS:
        if any(path == endpoint for path, _ in ROUTES):
            assert f'ollama_requests_total{{endpoint="{endpoint}"' in text, endpoint


async def test_buckets_reach_past_an_hour_for_duration(proxy: ProxyUnderTest, http: aiohttp.ClientSession) -> None:
    await drive_every_route(proxy, http)
    _, text = await scrape(proxy, http)
    assert 'ollama_request_duration_seconds_bucket{endpoint="/api/generate",le="3600.0"' in text
    assert 'ollama_time_to_first_token_seconds_bucket{endpoint="/api/chat",le="640.0"' in text


async def test_health_and_readiness(fake: FakeOllama, proxy: ProxyUnderTest, http: aiohttp.ClientSession) -> None:
    await proxy.running.poller.poll_once()
    async with http.get(proxy.metrics_url + "/-/healthy") as response:
        assert response.status == 200
    async with http.head(proxy.metrics_url + "/-/healthy") as response:
        assert response.status == 200
    async with http.get(proxy.metrics_url + "/-/ready") as response:
        assert response.status == 200
        body = await response.json()
    assert body["ready"] is True and body["upstream"] == fake.url and body["ollama_version"] == "0.33.0"
    await fake.stop()
    await proxy.running.poller.poll_once()
    async with http.head(proxy.metrics_url + "/-/ready") as response:
        assert response.status == 503
    async with http.get(proxy.metrics_url + "/-/ready") as response:
        body = await response.json()
    assert body["ready"] is False and "Connection refused" in body["error"]


async def test_metrics_listener_traffic_is_not_counted(proxy: ProxyUnderTest, http: aiohttp.ClientSession) -> None:
    for path in ("/metrics", "/-/healthy", "/-/ready", "/api/generate"):
        async with http.get(proxy.metrics_url + path) as response:
            await response.read()
    async with http.get(proxy.metrics_url + "/nope") as response:
        assert response.status == 404
        assert "see / for the list" in (await response.json())["error"]
    _, text = await scrape(proxy, http)
    assert "ollama_requests_total{" not in text


README = Path(__file__).parent.parent / "README.md"


def documented_metrics() -> set[str]:
    """Metric names in the README's metric table (rows starting with a backticked name)."""
    return set(re.findall(r"^\| `((?:ollama|process|python)_[a-z_]+)` \|", README.read_text(), re.MULTILINE))


async def test_readme_documents_exactly_what_is_exported(
    proxy: ProxyUnderTest, http: aiohttp.ClientSession,
) -> None:
    await drive_every_route(proxy, http)
    _, text = await scrape(proxy, http, "application/openmetrics-text; version=1.0.0")
    exported = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            exported.add(name + "_total" if kind == "counter" else name)
    ours = {name for name in exported if name.startswith("ollama_")}
    documented = documented_metrics()
    assert documented, "the README's metric table was not found"
    assert ours - documented == set(), "exported but not documented"
    assert documented - exported == set(), "documented but not exported"


def test_readme_lists_exactly_the_endpoint_label_values() -> None:
    text = README.read_text()
    paragraph = text[text.index("- `endpoint`: one of"):text.index("Raw paths never become labels")]
    listed = re.findall(r"`([^`]+)`", paragraph)[1:]  # the first is `endpoint` itself
    assert len(listed) == len(set(listed))
    assert set(listed) == set(ALL_ENDPOINTS)
