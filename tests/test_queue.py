"""Ollama's queue, seen from the proxy, against a fake Ollama that really queues (tests/queuing_ollama.py)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from ollama_metrics_proxy.app.server import build_registry, start
from ollama_metrics_proxy.metrics.families import TrafficMetrics
from ollama_metrics_proxy.telemetry.collectors import QueueCollector, Samplers
from ollama_metrics_proxy.telemetry.ollama_state import InstalledModel
from ollama_metrics_proxy.telemetry.system import OllamaProcessSampler
from tests.conftest import ProxyUnderTest, config_for
from tests.queuing_ollama import QueuingOllama
from tests.test_relay import wait_for


@pytest.fixture
async def queuing() -> AsyncIterator[QueuingOllama]:
    server = await QueuingOllama(slots=1).start()
    yield server
    await server.stop()


async def chat(url: str, model: str = "llama3.2") -> float:
    """One streamed chat; returns the seconds to its first content line, as the client saw them."""
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http, http.post(url + "/api/chat", json={"model": model}) as response:
        started = loop.time()
        first = None
        async for line in response.content:
            if first is None and json.loads(line).get("done") is False:
                first = loop.time() - started
        return first or 0.0


async def test_queue_wait_estimate_matches_the_wait_ollama_imposed(queuing: QueuingOllama) -> None:
    """Three chats at once on one slot wait about 0, 1 and 2 generations. Ollama's own durations give the wait
    within milliseconds: total - load - prompt_eval - eval. The alternative, the proxy's time to first token
    minus load and prompt evaluation, also holds the first token's decoding (and the network): it is off by a
    token's time per request, which is why the duration-based figure is the one exported."""
    running = await start(config_for(queuing.url), registry=build_registry(), samplers=Samplers())
    proxy = ProxyUnderTest(running)
    try:
        await asyncio.gather(*(chat(proxy.url) for _ in range(3)))
        labels = {"endpoint": "/api/chat", "model": "llama3.2:latest"}
        await wait_for(lambda: proxy.value("ollama_queue_wait_estimate_seconds_count", **labels) == 3)
        estimated = proxy.value("ollama_queue_wait_estimate_seconds_sum", **labels)
        imposed = sum(queuing.waits)
        assert imposed > 2 * queuing.tokens * queuing.token_seconds  # the fake really made requests wait
        assert abs(estimated - imposed) < 3 * 0.005, (estimated, imposed)
        ttft = proxy.value("ollama_time_to_first_token_seconds_sum", **labels)
        load = proxy.value("ollama_load_seconds_total", **labels)
        prefill = proxy.value("ollama_prompt_eval_seconds_total", **labels)
        ttft_based = ttft - load - prefill
        assert ttft_based - imposed > 3 * queuing.token_seconds * 0.8  # off by about one token each
    finally:
        await running.stop()


async def test_waiting_estimate_from_the_slots_in_the_ollama_process_environment(queuing: QueuingOllama) -> None:
    """A stand-in Ollama server process started with OLLAMA_NUM_PARALLEL=2 and OLLAMA_MAX_QUEUE=7: with five
    chats in flight on one model, two run and three wait."""
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)",
        env={"OLLAMA_NUM_PARALLEL": "2", "OLLAMA_MAX_QUEUE": "7", "PATH": "/usr/bin:/bin"})
    queuing.slots, queuing.tokens, queuing.token_seconds = 2, 10, 0.05  # as the environment says
    sampler = OllamaProcessSampler(0.05, ollama_pid=server.pid)
    running = await start(config_for(queuing.url), registry=build_registry(), samplers=Samplers(processes=sampler))
    proxy = ProxyUnderTest(running)
    try:
        await wait_for(lambda: proxy.value("ollama_parallel_slots") == 2)
        assert proxy.value("ollama_max_queue") == 7
        await chat(proxy.url)  # the model's first success earns it its own label value (README, "model")
        chats = [asyncio.create_task(chat(proxy.url)) for _ in range(5)]
        await wait_for(lambda: queuing.waiting == 3)
        assert proxy.value("ollama_requests_waiting_estimate", model="llama3.2:latest") == 3
        await asyncio.gather(*chats)
        assert proxy.value("ollama_requests_waiting_estimate", model="llama3.2:latest") == 0
    finally:
        await running.stop()
        server.kill()
        await server.wait()


async def test_without_a_known_slot_count_the_estimate_is_left_out(queuing: QueuingOllama) -> None:
    running = await start(config_for(queuing.url), registry=build_registry(), samplers=Samplers())
    proxy = ProxyUnderTest(running)
    try:
        await chat(proxy.url)
        text = "\n".join(f"{s.name}" for family in proxy.registry.collect() for s in family.samples)
        assert "ollama_requests_waiting_estimate" not in text and "ollama_parallel_slots" not in text
    finally:
        await running.stop()
    flagged = await start(config_for(queuing.url, ollama_num_parallel=4), registry=build_registry(),
                          samplers=Samplers())
    try:
        assert ProxyUnderTest(flagged).value("ollama_parallel_slots") == 4
    finally:
        await flagged.stop()


async def test_a_full_queue_answers_busy(queuing: QueuingOllama) -> None:
    queuing.max_waiting, queuing.token_seconds = 1, 0.05
    running = await start(config_for(queuing.url), registry=build_registry(), samplers=Samplers())
    proxy = ProxyUnderTest(running)
    try:
        results = await asyncio.gather(*(chat(proxy.url) for _ in range(3)), return_exceptions=True)
        assert len(results) == 3
        labels = {"endpoint": "/api/chat"}
        await wait_for(lambda: sum(proxy.value("ollama_requests_total", **labels, model=m, outcome="busy")
                                   for m in ("llama3.2:latest", "other")) == 1)
    finally:
        await running.stop()


async def test_the_proxys_own_overhead_is_measured_each_way(queuing: QueuingOllama) -> None:
    running = await start(config_for(queuing.url), registry=build_registry(), samplers=Samplers())
    proxy = ProxyUnderTest(running)
    try:
        for _ in range(3):
            await chat(proxy.url)
        for direction in ("request", "response"):
            await wait_for(lambda d=direction: proxy.value("ollama_metrics_proxy_overhead_seconds_count",
                                                            direction=d) == 3)
            total = proxy.value("ollama_metrics_proxy_overhead_seconds_sum", direction=direction)
            assert 0 < total < proxy.value("ollama_request_duration_seconds_sum", endpoint="/api/chat",
                                           model="llama3.2:latest")
    finally:
        await running.stop()


async def test_an_ollama_environment_without_the_variables_means_ollamas_defaults(queuing: QueuingOllama) -> None:
    """Since 0.10 an unset OLLAMA_NUM_PARALLEL is one slot per model (and OLLAMA_MAX_QUEUE 512): a visible
    environment without them is known, not unknown."""
    server = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)",
                                                  env={"PATH": "/usr/bin:/bin"})
    sampler = OllamaProcessSampler(0.05, ollama_pid=server.pid)
    running = await start(config_for(queuing.url), registry=build_registry(), samplers=Samplers(processes=sampler))
    proxy = ProxyUnderTest(running)
    try:
        await wait_for(lambda: proxy.value("ollama_parallel_slots") == 1)
        assert proxy.value("ollama_max_queue") == 512
    finally:
        await running.stop()
        server.kill()
        await server.wait()


@pytest.mark.parametrize(("family", "capabilities", "slots"), [
    ("llama", ["completion", "tools"], 4),
    ("qwen3vl", ["completion", "vision"], 1),  # families Ollama forces to one slot
    ("qwen35moe", ["completion"], 1),
    ("nemotron_h_moe", ["completion"], 1),
    ("bert", ["embedding"], 1),  # an embedding model, even when asked on a chat route
])
def test_each_model_gets_the_slots_that_apply_to_it(family: str, capabilities: list[str], slots: int) -> None:
    registry = CollectorRegistry()
    metrics = TrafficMetrics(registry)
    installed = InstalledModel(name="m:latest", size_bytes=1, family=family, parameter_size="8B",
                               quantization_level="Q4_K_M", capabilities=tuple(capabilities))
    registry.register(QueueCollector(metrics.in_flight, None, 4, lambda: [installed]))
    for _ in range(6):
        metrics.series("/api/chat", "m:latest").in_flight.inc()
    assert registry.get_sample_value("ollama_parallel_slots") == 4
    assert registry.get_sample_value("ollama_model_parallel_slots", {"model": "m:latest"}) == slots
    assert registry.get_sample_value("ollama_requests_waiting_estimate", {"model": "m:latest"}) == 6 - slots
