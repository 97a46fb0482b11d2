"""``--workers N``, the real command in child processes: the port shared, one process recording every request,
a worker that dies replaced, a stop that leaves nothing behind. Expected figures come from the recording."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import pickle
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import aiohttp
import psutil
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ollama_metrics_proxy.app.server import StartupError, start
from ollama_metrics_proxy.metrics.families import TrafficMetrics
from ollama_metrics_proxy.metrics.labels import ModelLabels
from ollama_metrics_proxy.metrics.recorder import Recorder
from ollama_metrics_proxy.observe import Observation
from ollama_metrics_proxy.observe.exchange import Exchange, Outcome
from ollama_metrics_proxy.relay.workers import FRAME, WorkerLink, frame, restart_delay
from tests.conftest import config_for
from tests.fake_ollama import FakeOllama, rec
from tests.test_process import ProxyProcess

CHAT = rec("chat_stream.ndjson")


def final_object(body: bytes) -> dict[str, int]:
    final: dict[str, int] = json.loads(body.splitlines()[-1])
    assert final["done"] is True
    return final


async def scrape(url: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples (with these labels) on the proxy's /metrics."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as response:
        text = await response.text()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


async def eventually(check: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def settles(url: str, name: str, expected: float, **labels: str) -> None:
    """Reports reach the primary a moment after the client has its reply: wait for the figure."""
    async def reached() -> bool:
        return await scrape(url, name, **labels) == expected
    await eventually(reached)


def relay_workers(primary: psutil.Process) -> list[psutil.Process]:
    return [child for child in primary.children()
            if "ollama_metrics_proxy.app.relay_worker" in " ".join(child.cmdline())]


def client_connections(process: psutil.Process, port: int) -> int:
    """Established connections this process accepted on the API port."""
    return sum(1 for connection in process.net_connections(kind="tcp")
               if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == port)


def gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def many_connections() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))


async def open_held_streams(fake: FakeOllama, api_url: str, http: aiohttp.ClientSession,
                            count: int) -> list[tuple[aiohttp.ClientResponse, bytes]]:
    """``count`` chats, each on its own connection, held by the fake Ollama after their first line; the i-th
    from user ``user-i`` asking question ``i``."""
    fake.gate, fake.gated_paths = asyncio.Event(), {"/api/chat"}
    streams = []
    for number in range(count):
        response = await http.post(api_url + "/api/chat", headers={"X-User": f"user-{number}"}, json={
            "model": "llama3.2", "messages": [{"role": "user", "content": f"question {number}"}]})
        streams.append((response, await response.content.readline()))
    return streams


async def test_workers_share_the_port_and_one_process_records_every_request(fake: FakeOllama,
                                                                           tmp_path: Path) -> None:
    database = tmp_path / "log.sqlite3"
    process = ProxyProcess("--upstream", fake.url, "--log-db", str(database), "--workers", "3",
                           "--log-content", "on", "--client-header", "X-User")
    port = int(process.api_url.rsplit(":", 1)[1])
    primary = psutil.Process(process.process.pid)
    workers = relay_workers(primary)
    try:
        assert len(workers) == 2
        assert await scrape(process.metrics_url, "ollama_metrics_proxy_workers") == 3
        streams_count = 24
        async with many_connections() as http:
            streams = await open_held_streams(fake, process.api_url, http, streams_count)
            held = {p.pid: client_connections(p, port) for p in (primary, *workers)}
            # The kernel spread the connections over the processes; all 24 on one has odds of about 3^-23.
            assert sum(held.values()) == streams_count and sum(1 for n in held.values() if n) >= 2, held
            # The primary counts the workers' requests in flight as its own.
            assert await scrape(process.metrics_url, "ollama_requests_in_flight",
                                endpoint="/api/chat") == streams_count
            assert fake.gate is not None
            fake.gate.set()
            bodies = [first + await response.read() for response, first in streams]
        assert all(body == CHAT.body for body in bodies)  # byte for byte, through every process

        final = final_object(CHAT.body)
        await settles(process.metrics_url, "ollama_requests_total", streams_count, endpoint="/api/chat",
                      outcome="success")
        assert await scrape(process.metrics_url, "ollama_requests_in_flight") == 0
        assert await scrape(process.metrics_url, "ollama_generation_tokens_total") == \
            streams_count * final["eval_count"]
        assert await scrape(process.metrics_url, "ollama_prompt_tokens_total") == \
            streams_count * final["prompt_eval_count"]
    finally:
        log = process.stop()
    assert process.process.returncode == 0 and "Traceback" not in log, log
    assert all(gone(worker) for worker in workers)
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT outcome, COUNT(*), SUM(generation_tokens) FROM requests GROUP BY outcome").fetchall()
        logged = db.execute("SELECT client_identity, prompt_text, response_text FROM requests").fetchall()
    assert rows == [("success", streams_count, streams_count * final["eval_count"])]
    # Who asked what, and the answer, cross from the worker that relayed each request (--log-content).
    answer = "".join(json.loads(line)["message"]["content"] for line in CHAT.body.splitlines())
    assert sorted(logged) == sorted((f"user-{n}", f"user: question {n}", answer) for n in range(streams_count))


async def test_a_worker_that_dies_is_replaced_and_its_requests_are_recorded_as_aborted(
    fake: FakeOllama, tmp_path: Path,
) -> None:
    database = tmp_path / "log.sqlite3"
    process = ProxyProcess("--upstream", fake.url, "--log-db", str(database), "--workers", "2")
    port = int(process.api_url.rsplit(":", 1)[1])
    primary = psutil.Process(process.process.pid)
    try:
        (worker,) = relay_workers(primary)
        streams_count = 24
        async with many_connections() as http:
            streams = await open_held_streams(fake, process.api_url, http, streams_count)
            on_worker = client_connections(worker, port)
            assert 0 < on_worker < streams_count, on_worker  # each case has odds of 2^-24
            worker.send_signal(signal.SIGKILL)

            async def replaced() -> bool:
                return (await scrape(process.metrics_url, "ollama_metrics_proxy_worker_restarts_total") == 1
                        and await scrape(process.metrics_url, "ollama_metrics_proxy_workers") == 2)

            await eventually(replaced)
            # The dead worker's requests ended with it: no longer in flight, recorded as aborted.
            assert await scrape(process.metrics_url, "ollama_requests_in_flight") == streams_count - on_worker
            await settles(process.metrics_url, "ollama_requests_total", on_worker, outcome="aborted")
            assert fake.gate is not None
            fake.gate.set()
            complete, cut = 0, 0
            for response, first in streams:
                try:
                    body = first + await response.read()
                except aiohttp.ClientPayloadError:
                    cut += 1
                else:
                    assert body == CHAT.body
                    complete += 1
            assert (complete, cut) == (streams_count - on_worker, on_worker)
            for _ in range(8):  # the replacement and the primary serve new requests
                async with http.post(process.api_url + "/api/chat", json={"model": "llama3.2"}) as response:
                    assert await response.read() == CHAT.body
        (replacement,) = relay_workers(primary)
        assert replacement.pid != worker.pid
    finally:
        log = process.stop()
    assert f"relay worker 1 (pid {worker.pid}) exited unexpectedly (killed by SIGKILL); starting another in 1 s" in log
    assert "Traceback" not in log
    with sqlite3.connect(database) as db:
        outcomes = dict(db.execute("SELECT outcome, COUNT(*) FROM requests GROUP BY outcome").fetchall())
    assert outcomes == {"success": streams_count - on_worker + 8, "aborted": on_worker}, outcomes


async def test_workers_hold_no_secret_and_each_refuses_a_foreign_host_counted_once(fake: FakeOllama) -> None:
    """Ollama's Host rule holds on whichever process a connection reaches (DNS rebinding), and nothing of the
    refused requests reaches Ollama."""
    secret = "admin-token-that-must-stay-in-one-process"
    process = ProxyProcess("--upstream", fake.url, "--workers", "3",
                           env={"OLLAMA_METRICS_PROXY_ADMIN_TOKEN": secret})
    workers = relay_workers(psutil.Process(process.process.pid))
    try:
        # Workers get their configuration through a pipe: no secret in their command line or environment.
        assert len(workers) == 2
        for worker in workers:
            assert secret not in " ".join(worker.cmdline())
            assert secret not in "".join(worker.environ().values())
        async with many_connections() as http:
            for _ in range(12):
                async with http.post(process.api_url + "/api/chat", json={"model": "llama3.2"},
                                     headers={"Host": "attacker.example"}) as response:
                    assert response.status == 403 and await response.read() == b""
        await settles(process.metrics_url, "ollama_metrics_proxy_refused_requests_total", 12, listener="api",
                      reason="host")
        assert not [seen for seen in fake.seen if seen.path_qs.startswith("/api/chat")]
    finally:
        log = process.stop()
    assert "Traceback" not in log


async def test_a_workers_log_lines_say_which_worker_wrote_them(fake: FakeOllama) -> None:
    """All processes write to one stream: each line of a relay worker carries its number, in JSON as in text."""
    process = ProxyProcess("--upstream", fake.url, "--workers", "3", "--log-format", "json")
    fake.die_after = 2  # every stream breaks off: each process that relayed one says so
    try:
        async with many_connections() as http:
            for _ in range(36):  # the odds that one of the three processes gets none: about 3 * (2/3)^36, 1e-6
                with contextlib.suppress(aiohttp.ClientPayloadError):
                    async with http.post(process.api_url + "/api/chat", json={"model": "llama3.2"}) as response:
                        await response.read()
    finally:
        log = process.stop()
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]  # one JSON object per line
    broke = [entry for entry in entries if "upstream broke off" in entry["message"]]
    assert len(broke) == 36
    assert {entry.get("worker") for entry in broke} == {None, 1, 2}  # the primary's lines carry none


async def test_workers_leave_when_the_primary_is_killed(fake: FakeOllama) -> None:
    """No orphan keeps relaying, unrecorded, on the port after the process that records is gone."""
    process = ProxyProcess("--upstream", fake.url, "--workers", "3")
    workers = relay_workers(psutil.Process(process.process.pid))
    assert len(workers) == 2
    process.process.kill()
    process.process.wait()
    await eventually(lambda: all(gone(worker) for worker in workers))
    process.stop()
    with contextlib.suppress(aiohttp.ClientError):
        async with aiohttp.ClientSession() as http, http.get(process.api_url + "/api/tags") as response:
            raise AssertionError(f"something still answers on the API port: {response.status}")


def exchange_with_every_field_set() -> Exchange:
    """Every field away from its default, so a field the channel would lose shows up as a difference."""
    values: dict[str, object] = {"endpoint": "/api/chat", "method": "POST", "path": "/api/chat?x=1", "started": 1.5,
                                 "request_model": "llama3.2", "status": 200, "content_type": "application/x-ndjson",
                                 "streaming": True, "outcome": Outcome.ABORTED, "ended": 9.25, "bytes_in": 7,
                                 "bytes_out": 9, "client": "10.0.0.2", "client_identity": "team-a",
                                 "wall_started": 1_700_000_000.5, "usage_injected": True, "overhead_request": 0.001,
                                 "overhead_response": 0.002, "captured_request": bytearray(b"{}"),
                                 "captured_response": bytearray(b"{\"done\":true}"), "request_num_ctx": 8192,
                                 "model_state": ("loaded", 4096), "trace": (1, 2, 3, True)}
    assert set(values) | {"observation"} == {f.name for f in dataclasses.fields(Exchange)}
    exchange = Exchange(**values)  # type: ignore[arg-type]
    observation = exchange.observation
    for field in dataclasses.fields(Observation):
        if field.name != "gaps":
            current = getattr(observation, field.name)
            setattr(observation, field.name, True if isinstance(current, bool) else
                    "x" if current is None and field.name in ("model", "error", "finish_reason") else 3)
    observation.gaps.add(0.02)
    return exchange


def test_a_finished_exchange_crosses_the_channel_whole() -> None:
    exchange = exchange_with_every_field_set()
    assert pickle.loads(frame([("finish", 1, exchange)])[FRAME.size:]) == [("finish", 1, exchange)]


async def test_the_primary_reads_reports_split_anywhere_and_survives_garbage() -> None:
    """Frames cut at every byte, and a frame that is not a pickle (counted as an internal error), change nothing
    of what the recorder is told."""
    registry = CollectorRegistry()
    metrics = TrafficMetrics(registry)
    recorder = Recorder(metrics, ModelLabels(10, lambda: None))
    link = WorkerLink(1, recorder)
    exchange = exchange_with_every_field_set()
    exchange.outcome, exchange.status = Outcome.SUCCESS, 200
    start = ("start", 7, exchange.endpoint, exchange.method, exchange.path, exchange.request_model, exchange.started,
             exchange.wall_started, exchange.client)
    garbage = FRAME.pack(5) + b"nope!"
    stream = frame([start]) + garbage + frame([("refused", "api", "host")]) + frame([("finish", 7, exchange)])
    link.connection_made(cast(asyncio.Transport, None))
    for byte in range(len(stream)):
        link.data_received(stream[byte:byte + 1])
    assert link.in_flight == 0
    # Counted under the model the reply named; in flight meanwhile under "other" (not admitted before a reply).
    assert registry.get_sample_value("ollama_requests_total",
                                     {"endpoint": "/api/chat", "model": "x:latest", "outcome": "success"}) == 1
    assert registry.get_sample_value("ollama_requests_in_flight", {"endpoint": "/api/chat", "model": "other"}) == 0
    assert registry.get_sample_value("ollama_generation_tokens_total",
                                     {"endpoint": "/api/chat", "model": "x:latest"}) == 3
    assert registry.get_sample_value("ollama_metrics_proxy_internal_errors_total", {"stage": "worker"}) == 1
    assert registry.get_sample_value("ollama_metrics_proxy_refused_requests_total",
                                     {"listener": "api", "reason": "host"}) == 1


def test_a_worker_that_keeps_dying_is_replaced_ever_more_slowly() -> None:
    waits = [restart_delay(lived=2.0, waited=0.0)]  # one of the first workers, dead two seconds after its start
    while len(waits) < 8:
        waits.append(restart_delay(lived=2.0, waited=waits[-1]))
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    assert restart_delay(lived=600.0, waited=30.0) == 1  # one that ran a while is replaced at once again


async def test_a_worker_that_cannot_be_made_is_one_clear_startup_error(fake: FakeOllama, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """No process to be had (EAGAIN: the process limit): the proxy does not start, and says why in one line;
    nothing it opened is left listening."""
    async def no_process(*args: object, **kwargs: object) -> None:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", no_process)
    config = config_for(fake.url, workers=3, log_db=str(tmp_path / "log.sqlite3"))
    with pytest.raises(StartupError) as raised:
        await start(config)
    assert str(raised.value) == ("relay worker 1 of --workers 3 could not be started: "
                                 "Resource temporarily unavailable")
    listening = {connection.laddr.port for connection in psutil.Process().net_connections(kind="tcp")
                 if connection.status == psutil.CONN_LISTEN}
    assert listening == {int(fake.url.rsplit(":", 1)[1])}  # only the fake Ollama's own port
