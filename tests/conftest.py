from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop  # `make test` installs the fast extra too: the relay's tests run on both loops
from aiohttp import web

from ollama_metrics_proxy.app.server import RunningProxy, build_registry, start
from ollama_metrics_proxy.config import Config, HostPort
from ollama_metrics_proxy.telemetry.collectors import Samplers
from ollama_metrics_proxy.telemetry.gpu import GpuSampler
from ollama_metrics_proxy.telemetry.system import HostSampler, OllamaProcessSampler
from tests.fake_nvml import FakeGpu, FakeNvml
from tests.fake_ollama import FakeOllama, rec
from tests.postgres_server import PostgresServer, binaries

EVENT_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,  # what a plain `pip install` or `pipx install` gets
    "uvloop": uvloop.new_event_loop,  # what `make run`, the image and the `fast` extra get
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item,
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests marked ``both_loops`` (the relay's) run once on each event loop; the rest on asyncio's own."""
    if item.get_closest_marker("both_loops"):
        return EVENT_LOOPS
    return {"asyncio": EVENT_LOOPS["asyncio"]}


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    if not directory.exists():
        return {}
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in directory.rglob("*")}


@pytest.fixture(scope="session", autouse=True)
def nothing_outside_temporary_directories(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test may touch the user's own request log: the proxy's default data directory points into a
    temporary one for the whole run, and the real one must be exactly as it was when the run ends."""
    real = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share") / "ollama-metrics-proxy"
    before = _snapshot(real)
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("XDG_DATA_HOME", None)
        else:
            os.environ["XDG_DATA_HOME"] = saved
    assert _snapshot(real) == before, f"the test run changed {real}"


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

    def total(self, name: str) -> float:
        """A sample summed over every label set."""
        return sum(sample.value for family in self.registry.collect() for sample in family.samples
                   if sample.name == name)

    async def settled(self, requests: int) -> None:
        """Wait until ``requests`` requests are recorded (the proxy records just after the last byte)."""
        for _ in range(500):
            if self.total("ollama_requests_total") >= requests:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the proxy did not record {requests} requests")


async def serve_app(app: web.Application, **runner_options: Any) -> tuple[web.AppRunner, str]:
    """An aiohttp application on a free loopback port; returns its runner (to clean up) and base URL."""
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


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


@pytest.fixture
async def full_proxy(fake: FakeOllama, tmp_path: Path) -> AsyncIterator[ProxyUnderTest]:
    """A proxy with every source delivering: a fake NVML with two GPUs, a real process standing in for the
    Ollama server, the host, Ollama's state (one model loaded then another, so loads and unloads count),
    and the request log."""
    nvml = FakeNvml([FakeGpu("GPU-a", processes=[(1234, 2**30)]), FakeGpu("GPU-b", unsupported={"fan"})])
    # The stand-in server carries Ollama's queue settings in its environment, as `ollama serve` would.
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)",
        env={**os.environ, "OLLAMA_NUM_PARALLEL": "4", "OLLAMA_MAX_QUEUE": "512"})
    samplers = Samplers(
        gpu=GpuSampler(0.05, process_name=lambda pid: "ollama", nvml_loader=lambda: nvml),
        processes=OllamaProcessSampler(0.05, ollama_pid=server.pid),
        host=HostSampler(0.05, models_dir=str(tmp_path)),
    )
    running = await start(config_for(fake.url, ollama_poll_interval=3600, log_db=str(tmp_path / "log.db"),
                                     slo_ttft=60.0, slo_tpot=5.0),
                          registry=build_registry(),
                          samplers=samplers)
    try:
        await running.poller.poll_once()
        fake.override["/api/ps"] = rec("ps_two.json")
        await running.poller.poll_once()
        fake.override["/api/ps"] = rec("ps.json")
        await running.poller.poll_once()
        while not all(sampler.snapshot for sampler in samplers.all()):
            await asyncio.sleep(0.02)
        yield ProxyUnderTest(running)
    finally:
        await running.stop()
        server.kill()
        await server.wait()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | None]:
    """One PostgreSQL for the whole run; None (and the PostgreSQL cases skipped) only outside CI when absent."""
    if binaries() is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError("CI must have PostgreSQL: make test installs Debian's postgresql package")
        yield None
        return
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def log_db(request: pytest.FixtureRequest, tmp_path: Path, postgres_server: PostgresServer | None) -> str:
    """A fresh request-log database of each kind, named by the fixture parameter."""
    if request.param == "sqlite":
        return str(tmp_path / "requests.sqlite3")
    if postgres_server is None:
        pytest.skip("PostgreSQL is not installed (make test installs it as root)")
    return postgres_server.create_database(f"log_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=local",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


async def started_addresses(process: asyncio.subprocess.Process, timeout: float = 30) -> tuple[str, str]:
    """Reads a child proxy's log until its start-up line; returns the API's and the metrics listener's host:port."""
    assert process.stderr is not None
    line = b""
    while b"started" not in line:
        line = await asyncio.wait_for(process.stderr.readline(), timeout=timeout)
        assert line, "the proxy did not start"
    found = re.search(rb"Ollama API on http://([\d.:]+) .* metrics on https?://([\d.:]+)/metrics", line)
    assert found is not None, line
    return found[1].decode(), found[2].decode()
