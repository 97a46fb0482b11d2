from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from ollama_metrics_proxy.config import Config, HostPort
from ollama_metrics_proxy.server import RunningProxy, build_registry, start
from tests.fake_ollama import FakeOllama


class ProxyUnderTest:
    def __init__(self, running: RunningProxy) -> None:
        self.running = running
        self.registry = running.registry
        assert running.proxy_address and running.metrics_address
        self.url = f"http://127.0.0.1:{running.proxy_address.port}"
        self.metrics_url = f"http://127.0.0.1:{running.metrics_address.port}"

    def value(self, name: str, /, **labels: str) -> float:
        """A sample's current value, 0 when the series does not exist yet."""
        return self.registry.get_sample_value(name, labels) or 0.0


def config_for(upstream: str, **overrides: object) -> Config:
    base = {"upstream": upstream, "listen": HostPort("127.0.0.1", 0),
            "metrics_listen": HostPort("127.0.0.1", 0), "ollama_poll_interval": 0.2}
    base.update(overrides)
    return Config(**base)  # type: ignore[arg-type]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    server = await FakeOllama().start()
    yield server
    await server.stop()


@pytest.fixture
async def proxy(fake: FakeOllama) -> AsyncIterator[ProxyUnderTest]:
    running = await start(config_for(fake.url), registry=build_registry())
    yield ProxyUnderTest(running)
    await running.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session
