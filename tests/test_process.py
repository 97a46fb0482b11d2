"""The real command in a child process: start-up, readiness, logs, signals, ports in use, a 1 GiB upload."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.fake_ollama import FakeOllama, rec

STARTED = re.compile(r"Ollama API on http://127\.0\.0\.1:(\d+) .* metrics on http://127\.0\.0\.1:(\d+)/metrics")
ONE_GIB = 1024**3


class ProxyProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="omp-process-"))  # its default request log lives here
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ollama_metrics_proxy", "--listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**_clean_env(self.home), **(env or {})}, cwd=Path(__file__).parent.parent, preexec_fn=preexec,
        )
        self.log_lines: list[str] = []
        self.api_url, self.metrics_url = self._wait_for_start()

    def _wait_for_start(self) -> tuple[str, str]:
        assert self.process.stderr is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            self.log_lines.append(line)
            match = STARTED.search(line)
            if match:
                return f"http://127.0.0.1:{match[1]}", f"http://127.0.0.1:{match[2]}"
        self.process.kill()
        raise AssertionError("proxy did not start:\n" + "".join(self.log_lines))

    def stop(self) -> str:
        """SIGTERM, wait, and return the rest of the log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, rest = self.process.communicate(timeout=20)
        shutil.rmtree(self.home, ignore_errors=True)
        return "".join(self.log_lines) + rest


def _clean_env(home: Path) -> dict[str, str]:
    """The caller's environment without the proxy's settings, with HOME and XDG_DATA_HOME in a temporary
    directory: the real command's default request log must never land in the user's own."""
    kept = {key: value for key, value in os.environ.items()
            if not key.startswith("OLLAMA_METRICS_PROXY_") and key != "OLLAMA_HOST"}
    return {**kept, "HOME": str(home), "XDG_DATA_HOME": str(home / "data")}


@pytest.fixture
def dead_upstream() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def proxy_process(fake: FakeOllama) -> Iterator[ProxyProcess]:
    process = ProxyProcess("--upstream", fake.url, "--ollama-poll-interval", "0.2")
    yield process
    process.stop()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def test_starts_without_ollama_and_says_how_to_point_it(dead_upstream: str) -> None:
    process = ProxyProcess(env={"OLLAMA_METRICS_PROXY_UPSTREAM": dead_upstream})
    try:
        status, body = await get(process.metrics_url + "/-/ready")
        for _ in range(50):
            if json.loads(body)["checked_at"] is not None:
                break
            await asyncio.sleep(0.1)
            status, body = await get(process.metrics_url + "/-/ready")
        assert status == 503
        ready = json.loads(body)
        assert ready["ready"] is False and ready["upstream"] == dead_upstream
        assert "Connection refused" in ready["error"]
        assert (await get(process.metrics_url + "/-/healthy"))[0] == 200
    finally:
        log = process.stop()
    assert process.process.returncode == 0
    assert f"upstream Ollama at {dead_upstream}: unavailable (unreachable)" in log
    assert "is not answering" in log and "--upstream URL" in log and "OLLAMA_METRICS_PROXY_UPSTREAM" in log
    assert "Traceback" not in log


async def test_ready_when_ollama_answers(proxy_process: ProxyProcess) -> None:
    for _ in range(50):
        status, body = await get(proxy_process.metrics_url + "/-/ready")
        if status == 200:
            break
        await asyncio.sleep(0.1)
    assert status == 200
    assert json.loads(body)["ollama_version"] == "0.33.0"


async def test_json_logs_one_line_per_request_without_content(fake: FakeOllama) -> None:
    process = ProxyProcess("--upstream", fake.url, "--log-format", "json", "--log-level", "debug")
    secret = "my secret prompt text"
    async with aiohttp.ClientSession() as http:
        payload = {"model": "llama3.2", "prompt": secret}
        async with http.post(process.api_url + "/api/generate", json=payload) as response:
            assert secret not in await response.text() and response.status == 200
    log = process.stop()
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    started = next(entry for entry in entries if "started" in entry["message"])
    assert started["upstream"] == fake.url and started["max_models"] == 100
    requests = [entry for entry in entries if entry["message"] == "request"]
    assert len(requests) == 1
    assert requests[0]["endpoint"] == "/api/generate" and requests[0]["outcome"] == "success"
    assert requests[0]["generation_tokens"] == 259
    assert secret not in log and "The sky" not in log


def test_port_in_use_is_one_line_and_status_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "ollama_metrics_proxy", "--listen", f"127.0.0.1:{port}",
             "--metrics-listen", "127.0.0.1:0"],
            capture_output=True, text=True, timeout=30, env=_clean_env(tmp_path), check=False,
        )
        check = subprocess.run(
            [sys.executable, "-m", "ollama_metrics_proxy", "--check-config", "--listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30, env=_clean_env(tmp_path), check=False,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"ollama-metrics-proxy: error: cannot listen on 127.0.0.1:{port} (--listen): address already in use")
    assert "Traceback" not in result.stderr
    # --check-config beside the running service: a port in use is said, not a configuration error.
    assert check.returncode == 0, check.stderr
    assert f"note: --listen 127.0.0.1:{port} is in use now" in check.stdout


async def _upload_chunks(total: int, chunk: bytes) -> AsyncIterator[bytes]:
    """A chunked upload (as ollama-python's async create_blob sends), never held in memory whole."""
    for _ in range(total // len(chunk)):
        yield chunk


async def test_one_gib_blob_upload_streams_with_flat_memory(
    fake: FakeOllama, proxy_process: ProxyProcess
) -> None:
    proxy = psutil.Process(proxy_process.process.pid)
    baseline = proxy.memory_info().rss
    peak = baseline
    chunk = os.urandom(1024 * 1024)
    # The digest of 1024 copies of one random MiB, computed up front so the URL can name it.
    digest = hashlib.sha256()
    for _ in range(ONE_GIB // len(chunk)):
        digest.update(chunk)
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proxy.memory_info().rss)
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    url = f"{proxy_process.api_url}/api/blobs/sha256:{digest.hexdigest()}"
    try:
        async with aiohttp.ClientSession() as http, http.post(
            url, data=_upload_chunks(ONE_GIB, chunk)) as response:
            status = response.status
    finally:
        done.set()
        await sampler
    assert status == 201  # the fake hashed every byte and found the digest the URL names
    assert fake.blob_bytes == ONE_GIB
    assert peak - baseline < 50 * 1024 * 1024, f"proxy RSS grew by {(peak - baseline) / 2**20:.1f} MiB"


async def test_upstream_credentials_are_never_shown(fake: FakeOllama, dead_upstream: str) -> None:
    """With --upstream http://user:secret@host, no body any client can trigger and no log line holds the
    password: not the 502s, not /-/ready, /-/system or the start-up line."""
    secret = "s3cret-Pa55word"
    bodies: list[str] = []
    for upstream in (fake.url, dead_upstream):
        url = upstream.replace("http://", f"http://ops:{secret}@")
        process = ProxyProcess("--upstream", url, "--ollama-poll-interval", "0.2", "--log-level", "debug")
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(30):  # until the poller has checked once
                    async with http.get(process.metrics_url + "/-/ready") as response:
                        ready = await response.text()
                    if json.loads(ready)["checked_at"] is not None:
                        break
                    await asyncio.sleep(0.1)
                bodies.append(ready)
                async with http.get(process.metrics_url + "/-/system") as response:
                    bodies.append(await response.text())
                async with http.post(process.api_url + "/api/generate", json={"model": "llama3.2"}) as response:
                    bodies.append(await response.text())
                    status = response.status
                assert status == (200 if upstream == fake.url else 502)
        finally:
            bodies.append(process.stop())
    assert [body for body in bodies if secret in body] == []
    assert any("ops:***@" in body for body in bodies[:3]) and any("ops:***@" in body for body in bodies[4:])
    assert fake.seen[0].headers["Authorization"].startswith("Basic ")  # still sent to Ollama, as it should


@pytest.mark.parametrize("workers", ["1", "3"])
async def test_sigterm_lets_requests_finish_within_the_grace_then_cuts_and_records_the_rest(
    fake: FakeOllama, tmp_path: Path, workers: str,
) -> None:
    """A stream that finishes within the grace is a success, streams still running at the deadline are cut and
    recorded as aborted, every request is written, and the process is gone within the grace plus 2 s; with
    relay workers too, whichever process each request reached."""
    database = tmp_path / "log.sqlite3"
    process = ProxyProcess("--upstream", fake.url, "--log-db", str(database), "--shutdown-grace", "1.5",
                           "--workers", workers)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(5):
            async with http.post(process.api_url + "/api/generate", json={"model": "llama3.2"}) as response:
                await response.read()
        fake.gate, fake.gated_paths = asyncio.Event(), {"/api/chat"}  # chats hold after their first line
        held = [await http.post(process.api_url + "/api/chat", json={"model": "llama3.2"}) for _ in range(2)]
        for response in held:
            await response.content.readline()
        fake.delay = 0.25  # a generation still running at SIGTERM, done about 0.75 s later

        async def finishing() -> bytes:
            async with http.post(process.api_url + "/api/generate", json={"model": "llama3.2"}) as response:
                return await response.read()

        late = asyncio.create_task(finishing())
        await asyncio.sleep(0.1)
        sent = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        assert await late == rec("generate_stream.ndjson").body
        for response in held:
            with contextlib.suppress(aiohttp.ClientPayloadError):
                await response.read()
        exit_code = await asyncio.to_thread(process.process.wait, 10)
        elapsed = time.monotonic() - sent
    log = process.stop()
    assert exit_code == 0 and "Traceback" not in log
    assert sum(map(int, re.findall(r"cutting (\d+) requests still in flight", log))) == 2, log
    assert elapsed <= 1.5 + 2, f"stopping took {elapsed:.1f} s"
    with sqlite3.connect(database) as db:
        outcomes = dict(db.execute("SELECT outcome, COUNT(*) FROM requests GROUP BY outcome").fetchall())
    assert outcomes == {"success": 6, "aborted": 2}, outcomes


def _with_open_file_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


async def test_a_connection_flood_under_1024_open_files_leaves_the_proxy_serving(
    fake: FakeOllama, tmp_path: Path,
) -> None:
    """1,000 idle connections and 300 half-sent heads against a proxy limited to 1024 open files: the metrics
    listener keeps answering, connections over the cap get a 503 at once, half-sent heads and silent
    connections are closed after --request-head-timeout, and then the API serves again."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))  # room for this test's sockets
    process = ProxyProcess("--upstream", fake.url, "--log-db", str(tmp_path / "log.sqlite3"),
                           "--request-head-timeout", "2", preexec=lambda: _with_open_file_limit(1024))
    port = int(process.api_url.rsplit(":", 1)[1])
    writers: list[asyncio.StreamWriter] = []
    refused = 0
    try:
        for index in range(1300):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            if index >= 1000:
                writer.write(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/js")
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as http:
            for path in ("/metrics", "/-/healthy", "/-/ready"):
                async with http.get(process.metrics_url + path) as response:
                    assert response.status in (200, 503 if path == "/-/ready" else 200), path
        # At the cap a new connection is answered at once: a 503 in Ollama's error shape, then closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 ") and b"too many connections" in answer
        for writer in writers:
            writer.close()
        writers.clear()
        await asyncio.sleep(2.5)  # the head timeout frees whatever the cap had admitted
        async with aiohttp.ClientSession() as http:
            async with http.post(process.api_url + "/api/generate", json={"model": "llama3.2"}) as response:
                assert response.status == 200 and await response.read() == rec("generate_stream.ndjson").body
            async with http.get(process.metrics_url + "/metrics") as response:
                text = await response.text()
        refused = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith('ollama_metrics_proxy_refused_connections_total{listener="api"'))
    finally:
        for writer in writers:
            writer.close()
        log = process.stop()
    assert "Too many open files" not in log and "Traceback" not in log
    assert refused >= 1300 - 384


def test_the_open_file_limit_is_raised_to_the_hard_limit_and_said(tmp_path: Path) -> None:
    """Started with the common soft limit of 1024 under a hard limit of 4096, the proxy runs with 4096 and
    says so; the hard limit is left as it was."""
    script = ("import resource; from ollama_metrics_proxy.relay.listener import raise_open_file_limit; "
              "print(raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                            env=_clean_env(tmp_path), cwd=Path(__file__).parent.parent, check=False,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096)))
    assert result.stdout.strip() == "(1024, 4096) (4096, 4096)", result.stdout + result.stderr
    process = ProxyProcess("--log-db", "off", preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096)))
    log = process.stop()
    assert "open-file limit raised from 1024 to 4096" in log
