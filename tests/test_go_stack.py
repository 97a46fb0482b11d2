"""Against Ollama's own HTTP stack: a stand-in Ollama on Go's net/http (``tests/go/standin``) and a Go client
that does what the ``ollama`` CLI does (``tests/go/client``: the ``HEAD /`` heartbeat, show, a streamed chat read
with a line scanner, tags, ps, a pull progress stream). Through the proxy, every reply equals the direct one,
in the process on both event loops and through the real command on both."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ollama_metrics_proxy.app.server import build_registry, start
from tests.conftest import ProxyUnderTest, config_for, started_addresses

ROOT = Path(__file__).parent.parent
GO_SOURCES = Path(__file__).parent / "go"
GO = shutil.which("go")

pytestmark = [
    pytest.mark.skipif(GO is None and os.environ.get("CI") != "true",
                       reason="Go is not installed (make test installs golang-go as root)"),
    pytest.mark.both_loops,
]


@dataclass(frozen=True)
class GoPrograms:
    standin: Path
    client: Path


@pytest.fixture(scope="session")
def go_programs(tmp_path_factory: pytest.TempPathFactory) -> GoPrograms:
    """Both programs built once, with Go's caches inside the test's temporary directory."""
    assert GO is not None, "Go is not installed (apt-get install golang-go)"
    work = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GOCACHE": str(work / "cache"), "GOPATH": str(work / "path"), "GO111MODULE": "off",
           "GOFLAGS": "", "CGO_ENABLED": "0"}
    built = {}
    for name in ("standin", "client"):
        subprocess.run([GO, "build", "-o", str(work / name), f"./{name}"], cwd=GO_SOURCES, env=env, check=True,
                       capture_output=True, timeout=300)
        built[name] = work / name
    return GoPrograms(**built)


@pytest.fixture
async def go_ollama(go_programs: GoPrograms) -> AsyncIterator[str]:
    process = await asyncio.create_subprocess_exec(str(go_programs.standin), "127.0.0.1:0",
                                                   stdout=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=10)
        assert line.startswith(b"listening on "), line
        yield f"http://{line.split()[-1].decode()}"
    finally:
        process.kill()
        await process.wait()


async def go_client(programs: GoPrograms, base: str) -> list[dict[str, object]]:
    process = await asyncio.create_subprocess_exec(str(programs.client), base, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    results = [json.loads(line) for line in stdout.splitlines()]
    assert process.returncode == 0, (stderr.decode(), [r for r in results if r.get("error")])
    return results


def calls(results: list[dict[str, object]]) -> list[object]:
    return [result["call"] for result in results]


@pytest.fixture
async def proxied_go_ollama(go_ollama: str) -> AsyncIterator[ProxyUnderTest]:
    running = await start(config_for(go_ollama), registry=build_registry())
    yield ProxyUnderTest(running)
    await running.stop()


async def test_the_cli_calls_through_the_proxy_equal_the_direct_ones(
    go_programs: GoPrograms, go_ollama: str, proxied_go_ollama: ProxyUnderTest,
) -> None:
    direct = await go_client(go_programs, go_ollama)
    proxied = await go_client(go_programs, proxied_go_ollama.url)
    assert calls(direct) == calls(proxied) and "heartbeat" in calls(direct)
    assert proxied == direct
    heartbeat = next(result for result in proxied if result["call"] == "heartbeat")
    assert heartbeat["status"] == 200 and heartbeat["content_length"] == 17 and "body" not in heartbeat
    await proxied_go_ollama.settled(len(direct))
    chat = {"endpoint": "/api/chat", "model": "llama3.2:latest", "outcome": "success"}
    assert proxied_go_ollama.value("ollama_requests_total", **chat) == 2
    # HEAD /, GET / and GET /api/big are outside the endpoint set: "other", and each one a success.
    unlisted = proxied_go_ollama.value("ollama_requests_total", endpoint="other", model="none", outcome="success")
    assert unlisted == sum(calls(direct).count(call) for call in ("heartbeat", "root", "big"))


@pytest.fixture(params=["asyncio", "uvloop"])
def real_command(request: pytest.FixtureRequest, go_ollama: str) -> list[str]:
    return [sys.executable, "-m", "ollama_metrics_proxy", "--listen", "127.0.0.1:0", "--metrics-listen",
           "127.0.0.1:0", "--upstream", go_ollama, "--gpu", "off", "--log-db", "off",
           "--event-loop", request.param]


async def test_the_cli_calls_through_the_real_command_on_each_event_loop(
    go_programs: GoPrograms, go_ollama: str, real_command: list[str],
) -> None:
    """What `pipx install` gives (asyncio's loop) and what `make run` gives (uvloop): the `ollama` CLI's
    heartbeat, answered as Go answers it, used to come back empty on asyncio's loop."""
    process = await asyncio.create_subprocess_exec(*real_command, cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    try:
        api, _ = await started_addresses(process)
        direct = await go_client(go_programs, go_ollama)
        proxied = await go_client(go_programs, f"http://{api}")
    finally:
        process.terminate()
        _, stderr = await process.communicate()
    assert proxied == direct
    assert b"malformed" not in stderr and b"Traceback" not in stderr, stderr.decode()[-2000:]


def test_the_go_programs_are_gofmt_and_vet_clean(go_programs: GoPrograms, tmp_path: Path) -> None:
    assert GO is not None
    env = {**os.environ, "GOCACHE": str(tmp_path / "cache"), "GOPATH": str(tmp_path / "path"), "GO111MODULE": "off",
           "GOFLAGS": ""}
    gofmt = subprocess.run([str(Path(GO).resolve().parent / "gofmt"), "-l", "."], cwd=GO_SOURCES,
                           capture_output=True, text=True, check=True)
    assert gofmt.stdout == ""
    for name in ("standin", "client"):
        vet = subprocess.run([GO, "vet", f"./{name}"], cwd=GO_SOURCES, env=env, capture_output=True, text=True)
        assert vet.returncode == 0, vet.stderr
