"""Polling Ollama's /api/version, /api/ps and /api/tags: loads, unloads, removed series, the info metric."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from ollama_metrics_proxy.app.server import start
from ollama_metrics_proxy.telemetry.collectors import Samplers
from ollama_metrics_proxy.telemetry.ollama_state import parse_time
from tests.conftest import ProxyUnderTest, config_for
from tests.fake_ollama import FakeOllama, rec

LLAMA = {"model": "llama3.2:latest"}
MINILM = {"model": "all-minilm:latest"}


@pytest.fixture
async def quiet_proxy(fake: FakeOllama) -> AsyncIterator[ProxyUnderTest]:
    """A proxy whose poller the test drives by hand (a long interval keeps the background poll out of the way)."""
    running = await start(config_for(fake.url, ollama_poll_interval=3600), registry=CollectorRegistry(),
                          samplers=Samplers())
    proxy = ProxyUnderTest(running)
    await asyncio.sleep(0)  # let the first background poll run
    yield proxy
    await running.stop()


async def test_loaded_and_installed_models(fake: FakeOllama, quiet_proxy: ProxyUnderTest) -> None:
    proxy = quiet_proxy
    await proxy.running.poller.poll_once()
    assert proxy.value("ollama_up") == 1
    assert proxy.value("ollama_build_info", version="0.33.0") == 1
    assert proxy.value("ollama_models_loaded") == 1
    assert proxy.value("ollama_model_loaded", **LLAMA) == 1
    assert proxy.value("ollama_model_size_bytes", **LLAMA) == 3321830464
    assert proxy.value("ollama_model_vram_bytes", **LLAMA) == 2333539264
    assert proxy.value("ollama_model_gpu_offload_ratio", **LLAMA) == pytest.approx(2333539264 / 3321830464)
    assert proxy.value("ollama_model_context_length", **LLAMA) == 4096
    expires = parse_time("2099-10-17T16:47:07.93355-07:00")
    assert expires is not None
    assert proxy.value("ollama_model_expires_in_seconds", **LLAMA) == pytest.approx(expires - time.time(), abs=5)
    assert proxy.value("ollama_models_installed") == 2
    assert proxy.value("ollama_models_disk_bytes") == 2019393189 + 45960996
    assert proxy.value("ollama_model_info", **LLAMA, family="llama", parameter_size="3.2B",
                       quantization_level="Q4_K_M") == 1
    assert proxy.value("ollama_metrics_proxy_source_up", source="ollama") == 1


async def test_loads_unloads_and_removed_series(fake: FakeOllama, quiet_proxy: ProxyUnderTest) -> None:
    proxy, poller = quiet_proxy, quiet_proxy.running.poller
    await poller.poll_once()  # llama3.2 was loaded before the proxy started: not a load
    assert proxy.value("ollama_model_appearances_total", **LLAMA) == 0
    fake.override["/api/ps"] = rec("ps_two.json")
    await poller.poll_once()
    assert proxy.value("ollama_model_appearances_total", **MINILM) == 1
    assert proxy.value("ollama_model_context_length", **MINILM) == 512
    fake.override["/api/ps"] = rec("ps_empty.json")
    fake.override["/api/tags"] = rec("tags_one.json")
    await poller.poll_once()
    assert proxy.value("ollama_model_unloads_total", **LLAMA) == 1
    assert proxy.value("ollama_model_unloads_total", **MINILM) == 1
    assert proxy.value("ollama_models_loaded") == 0
    # Gone models leave no series behind, not a stale last value.
    assert proxy.registry.get_sample_value("ollama_model_loaded", LLAMA) is None
    assert proxy.registry.get_sample_value("ollama_model_vram_bytes", MINILM) is None
    assert proxy.registry.get_sample_value("ollama_model_info", {**MINILM, "family": "bert",
                                           "parameter_size": "23M", "quantization_level": "F16"}) is None
    assert proxy.value("ollama_models_installed") == 1


async def test_installed_models_always_get_their_own_label(fake: FakeOllama) -> None:
    running = await start(config_for(fake.url, max_models=1, ollama_poll_interval=3600),
                          registry=CollectorRegistry(), samplers=Samplers())
    proxy = ProxyUnderTest(running)
    try:
        await running.poller.poll_once()  # two installed models, a limit of one: both admitted
        async with aiohttp.ClientSession() as http:
            for path, model in (("/api/generate", "llama3.2"), ("/api/embed", "all-minilm")):
                async with http.post(proxy.url + path, json={"model": model, "stream": False}) as response:
                    await response.read()
        assert proxy.value("ollama_requests_total", endpoint="/api/generate", outcome="success", **LLAMA) == 1
        assert proxy.value("ollama_requests_total", endpoint="/api/embed", outcome="success", **MINILM) == 1
        assert proxy.value("ollama_metrics_proxy_label_overflows_total", label="model") == 0
    finally:
        await running.stop()


async def test_ollama_down_removes_state_series_and_says_why(
    fake: FakeOllama, quiet_proxy: ProxyUnderTest,
) -> None:
    proxy, poller = quiet_proxy, quiet_proxy.running.poller
    await poller.poll_once()
    await fake.stop()
    await poller.poll_once()
    assert proxy.value("ollama_up") == 0
    assert proxy.registry.get_sample_value("ollama_models_loaded") is None
    assert proxy.registry.get_sample_value("ollama_build_info", {"version": "0.33.0"}) is None
    assert proxy.value("ollama_metrics_proxy_source_up", source="ollama") == 0
    assert proxy.value("ollama_metrics_proxy_source_errors_total", source="ollama", reason="unreachable") == 1


async def test_scrape_answers_while_the_poll_hangs(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.headers_gate = asyncio.Event()  # Ollama accepts connections but never answers
    running = await start(config_for(fake.url), registry=CollectorRegistry(), samplers=Samplers())
    proxy = ProxyUnderTest(running)
    try:
        await asyncio.sleep(0.05)  # the poll is now waiting on the upstream
        async with asyncio.timeout(2):  # far less than the poll's own 5 s timeout
            async with http.get(proxy.metrics_url + "/metrics") as response:
                assert response.status == 200
            async with http.get(proxy.metrics_url + "/-/system") as response:
                assert response.status == 200
            async with http.get(proxy.metrics_url + "/-/ready") as response:
                assert response.status == 503
    finally:
        fake.headers_gate.set()
        await running.stop()


async def test_system_report(fake: FakeOllama, quiet_proxy: ProxyUnderTest, http: aiohttp.ClientSession) -> None:
    await quiet_proxy.running.poller.poll_once()
    async with http.get(quiet_proxy.metrics_url + "/-/system") as response:
        assert response.status == 200
        report = await response.json()
    assert report["proxy"]["uptime_seconds"] >= 0
    ollama = report["ollama"]
    assert ollama["up"] is True and ollama["version"] == "0.33.0" and ollama["installed_models"] == 2
    assert ollama["loaded_models"][0]["name"] == "llama3.2:latest"
    assert ollama["loaded_models"][0]["gpu_offload_ratio"] == pytest.approx(2333539264 / 3321830464)


async def test_stop_returns_when_a_poll_turns_the_cancellation_into_a_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiohttp raises TimeoutError instead of CancelledError when the cancellation meets its own timeout; the
    poller must stop all the same (it once went on polling, and the proxy's shutdown waited forever)."""
    from ollama_metrics_proxy.telemetry.ollama_state import OllamaStatePoller

    polls = 0

    async def poll_swallowing_cancellation(self: OllamaStatePoller) -> None:
        nonlocal polls
        polls += 1
        if polls > 1:  # only reached when the poller ignored the stop; cancellable, so the test ends either way
            await asyncio.sleep(30)
            return
        # What a cancelled request looks like when aiohttp reports it as a timeout: the poll just ends.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)

    monkeypatch.setattr(OllamaStatePoller, "poll_once", poll_swallowing_cancellation)
    async with aiohttp.ClientSession() as session:
        poller = OllamaStatePoller("http://127.0.0.1:9", session, interval=0.05)
        poller.start()
        await asyncio.sleep(0.05)
        try:
            await asyncio.wait_for(poller.stop(), timeout=2)
        finally:
            if poller._task is not None:
                poller._task.cancel()
    assert polls == 1
