"""What no peer answers (issue 25), each through the real command: goodput against service levels, the context
window in use, why models load, the runners' real slot counts, a trace per request."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import started_addresses
from tests.fake_ollama import ROUTES, FakeOllama

ROOT = Path(__file__).parent.parent


class RealProxy:
    """The real command, as a child process, against the fake Ollama."""

    def __init__(self, process: asyncio.subprocess.Process, api: str, metrics: str) -> None:
        self.process = process
        self.url = f"http://{api}"
        self.metrics_url = f"http://{metrics}"

    async def samples(self, name: str) -> dict[str, float]:
        """Every sample of one metric, keyed by its label text."""
        async with aiohttp.ClientSession() as http, http.get(self.metrics_url + "/metrics") as response:
            text = await response.text()
        found = {}
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                labels, _, value = line.rpartition(" ")
                found[labels[len(name):]] = float(value)
        return found


async def start_real(fake_url: str, *flags: str) -> RealProxy:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ollama_metrics_proxy", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
        "--upstream", fake_url, "--gpu", "off", "--log-db", "off", "--ollama-poll-interval", "0.2", *flags,
        cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    api, metrics = await started_addresses(process)
    return RealProxy(process, api, metrics)


@pytest.fixture
async def real_proxy_factory(fake: FakeOllama) -> AsyncIterator[list[RealProxy]]:
    started: list[RealProxy] = []
    yield started
    for proxy in started:
        proxy.process.terminate()
        await proxy.process.wait()


# ---------------------------------------------------------------- goodput


async def test_goodput_judges_each_generation_against_the_service_levels(
    fake: FakeOllama, real_proxy_factory: list[RealProxy],
) -> None:
    """Streamed chats with a token every 50 ms: a TPOT limit of 20 ms is missed, 1 s met; a 404 is not judged."""
    fake.delay = 0.05
    lines = [json.loads(line) for line in ROUTES[("/api/chat", True)].body.splitlines()]
    assert sum(1 for line in lines if line["message"]["content"]) > 1  # a time per token exists
    strict = await start_real(fake.url, "--slo-ttft", "30", "--slo-tpot", "0.02")
    lenient = await start_real(fake.url, "--slo-ttft", "30", "--slo-tpot", "1")
    real_proxy_factory.extend([strict, lenient])
    async with aiohttp.ClientSession() as http:
        for proxy in (strict, lenient):
            for model in ("llama3.2", "llama3.2", "llama3"):  # llama3: the recorded 404
                async with http.post(proxy.url + "/api/chat", json={"model": model}) as response:
                    await response.read()
    labels = '{endpoint="/api/chat",model="llama3.2:latest",result="%s"}'
    strict_samples, lenient_samples = await strict.samples("ollama_slo_requests_total"), await lenient.samples(
        "ollama_slo_requests_total")
    assert strict_samples == {labels % "missed": 2.0}
    assert lenient_samples == {labels % "met": 2.0}


async def test_without_service_levels_nothing_is_judged(
    fake: FakeOllama, real_proxy_factory: list[RealProxy],
) -> None:
    proxy = await start_real(fake.url)
    real_proxy_factory.append(proxy)
    async with aiohttp.ClientSession() as http, http.post(proxy.url + "/api/chat", json={"model": "llama3.2"}) as r:
        await r.read()
    assert await proxy.samples("ollama_slo_requests_total") == {}


# ---------------------------------------------------------------- context-window use


async def test_context_window_use_is_measured_against_the_loaded_models_window(
    fake: FakeOllama, real_proxy_factory: list[RealProxy],
) -> None:
    window = json.loads(ROUTES[("/api/ps", False)].body)["models"][0]["context_length"]
    final = json.loads(ROUTES[("/api/chat", True)].body.splitlines()[-1])
    proxy = await start_real(fake.url)
    real_proxy_factory.append(proxy)
    await asyncio.sleep(0.5)  # a poll of /api/ps has run
    async with aiohttp.ClientSession() as http, http.post(proxy.url + "/api/chat", json={"model": "llama3.2"}) as r:
        await r.read()
    sums = await proxy.samples("ollama_context_window_usage_ratio_sum")
    labels = '{endpoint="/api/chat",model="llama3.2:latest",part="%s"}'
    assert sums[labels % "prompt"] == pytest.approx(final["prompt_eval_count"] / window)
    assert sums[labels % "total"] == pytest.approx((final["prompt_eval_count"] + final["eval_count"]) / window)
