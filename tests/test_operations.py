"""What no peer answers (issue 25), each through the real command: goodput against service levels, the context
window in use, why models load, the runners' real slot counts, a trace per request."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ollama_metrics_proxy.relay.tracecontext import TraceStarter, parse_traceparent
from ollama_metrics_proxy.telemetry.system import runner_args
from tests.conftest import serve_app, started_addresses
from tests.fake_ollama import ROUTES, FakeOllama, Recording

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


# ---------------------------------------------------------------- real slot counts


async def test_runner_slots_and_context_come_from_the_runner_command_line(
    fake: FakeOllama, real_proxy_factory: list[RealProxy], tmp_path: Path,
) -> None:
    """A stand-in Ollama server whose child is a stand-in runner started as Ollama 0.30+ starts llama-server."""
    loaded = json.loads(ROUTES[("/api/ps", False)].body)["models"][0]
    blob = tmp_path / "models" / "blobs" / f"sha256-{loaded['digest']}"
    runner = [sys.executable, "-c", "import time; time.sleep(120)", "--model", str(blob), "--ctx-size", "8192",
              "--parallel", "3", "--port", "40001"]
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", f"import subprocess, time; subprocess.Popen({runner!r}); time.sleep(120)",
        env={"PATH": "/usr/bin:/bin", "OLLAMA_NUM_PARALLEL": "1"})
    try:
        proxy = await start_real(fake.url, "--ollama-pid", str(server.pid), "--system-interval", "0.2")
        real_proxy_factory.append(proxy)
        model = f'{{model="{loaded["name"]}"}}'
        for _ in range(100):
            slots = await proxy.samples("ollama_runner_parallel_slots")
            if slots:
                break
            await asyncio.sleep(0.1)
        assert slots == {model: 3.0}
        assert await proxy.samples("ollama_runner_context_size") == {model: 8192.0}
        # The runner's three slots, not the environment's one, decide how many requests wait.
        async with aiohttp.ClientSession() as http:
            async with http.post(proxy.url + "/api/chat", json={"model": "llama3.2"}) as response:
                await response.read()
            fake.gate = asyncio.Event()
            held = [asyncio.create_task(http.post(proxy.url + "/api/chat", json={"model": "llama3.2"}))
                    for _ in range(4)]
            for _ in range(100):
                if (await proxy.samples("ollama_requests_in_flight")).get(
                        '{endpoint="/api/chat",model="llama3.2:latest"}') == 4:
                    break
                await asyncio.sleep(0.05)
            assert await proxy.samples("ollama_model_parallel_slots") == {model: 3.0}
            assert await proxy.samples("ollama_requests_waiting_estimate") == {model: 1.0}
            fake.gate.set()
            for response in await asyncio.gather(*held):
                await response.read()
    finally:
        fake.gate = None
        server.kill()
        await server.wait()


@pytest.mark.parametrize(("cmdline", "expected"), [
    (["/usr/lib/ollama/llama-server", "--model", "/m/blobs/sha256-" + "a" * 64, "--ctx-size", "4096",
      "--parallel", "2", "--port", "1"], ("a" * 64, 2, 4096)),
    (["llama-server", "-m", "/m/blobs/sha256-" + "b" * 64, "-c", "32768", "-np", "4"], ("b" * 64, 4, 32768)),
    (["ollama", "runner", "--model=/m/blobs/sha256-" + "c" * 64, "--ctx-size=2048"], ("c" * 64, None, 2048)),
    (["ollama", "serve"], None),
])
def test_runner_command_lines_are_read_in_every_spelling(
    cmdline: list[str], expected: tuple[str, int | None, int] | None,
) -> None:
    found = runner_args(cmdline)
    assert (None if found is None else (found.digest, found.parallel, found.context_size)) == expected


# ---------------------------------------------------------------- why models load


def generation(model: str, load_ns: int) -> Recording:
    """A whole /api/generate reply as Ollama sends it, reporting a load of ``load_ns``."""
    reply = {"model": model, "created_at": "2026-12-03T20:00:00Z", "response": "Hi", "done": True,
             "done_reason": "stop", "total_duration": load_ns + 90_000_000, "load_duration": load_ns,
             "prompt_eval_count": 5, "prompt_eval_duration": 10_000_000, "eval_count": 2, "eval_duration": 80_000_000}
    return Recording("generate.json", "application/json; charset=utf-8", 200, json.dumps(reply).encode())


async def test_each_reported_load_is_counted_with_its_cause(
    fake: FakeOllama, real_proxy_factory: list[RealProxy],
) -> None:
    ps = {"models": [
        {"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 1, "digest": "a" * 64, "size_vram": 1,
         "context_length": 4096, "expires_at": "2099-01-01T00:00:00Z", "details": {}},
        {"name": "qwen3:8b", "model": "qwen3:8b", "size": 1, "digest": "b" * 64, "size_vram": 1,
         "context_length": 8192, "expires_at": "2001-01-01T00:00:00Z", "details": {}},  # keep-alive ran out
    ]}
    fake.override["/api/ps"] = Recording("ps.json", "application/json; charset=utf-8", 200, json.dumps(ps).encode())
    proxy = await start_real(fake.url)
    real_proxy_factory.append(proxy)
    await asyncio.sleep(0.6)  # polls of /api/ps and /api/tags have run
    asks = [  # (model, options, load reported in ns, expected cause)
        ("llama3.2:latest", {"num_ctx": 16384}, 2_000_000_000, "options_changed"),  # loaded with 4096
        ("llama3.2:latest", {"num_ctx": 4096}, 3_000_000, None),  # loaded as asked: no load
        ("llama3.2:latest", {}, 1_500_000_000, "unknown"),  # loaded, same options, yet a load: evicted
        ("qwen3:8b", {}, 1_000_000_000, "expired"),
        ("mistral:latest", {}, 4_000_000_000, "not_loaded"),
    ]
    async with aiohttp.ClientSession() as http:
        for model, options, load_ns, _ in asks:
            fake.override["/api/generate"] = generation(model, load_ns)
            body = {"model": model, "prompt": "hi", "stream": False, "options": options}
            async with http.post(proxy.url + "/api/generate", json=body) as response:
                await response.read()
    expected = {f'{{cause="{cause}",model="{model}"}}': 1.0 for model, _, _, cause in asks if cause}
    assert await proxy.samples("ollama_model_loads_total") == expected


# ---------------------------------------------------------------- a trace per request


class TraceReceiver:
    """A real OTLP/HTTP receiver: decodes what the proxy pushes to /v1/traces (metrics are accepted and ignored)."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._ignored)
        self.runner, url = await serve_app(app)
        return url

    async def _traces(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.spans += [span for resource in message.resource_spans for scope in resource.scope_spans
                       for span in scope.spans]
        return web.Response(status=200, content_type="application/x-protobuf")

    async def _ignored(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200, content_type="application/x-protobuf")


def span_attributes(span: Any) -> dict[str, Any]:
    values = {}
    for item in span.attributes:
        kind = item.value.WhichOneof("value")
        value = getattr(item.value, kind)
        values[item.key] = [v.string_value for v in value.values] if kind == "array_value" else value
    return values


async def test_each_sampled_request_is_a_span_in_the_callers_trace_with_ollamas_phases(
    fake: FakeOllama,
) -> None:
    receiver = TraceReceiver()
    collector = await receiver.start()
    proxy = await start_real(fake.url, "--otlp-endpoint", collector, "--otlp-trace-sample-ratio", "0")
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    try:
        async with aiohttp.ClientSession() as http:
            for flags in ("01", "00", None):  # sampled by the caller, not sampled, no trace (ratio 0: not sampled)
                headers = {"traceparent": f"00-{caller_trace}-{caller_span}-{flags}"} if flags else {}
                async with http.post(proxy.url + "/api/chat", json={"model": "llama3.2"}, headers=headers) as r:
                    await r.read()
    finally:
        proxy.process.terminate()  # a stop pushes the spans still batched
        await proxy.process.wait()
        await receiver.runner.cleanup()
    sent = [seen.headers.get("traceparent") or seen.headers.get("Traceparent") for seen in fake.seen
            if seen.path_qs == "/api/chat"]
    assert len(sent) == 3 and all(value and value.startswith("00-") for value in sent)
    # Ollama is told this request's own span, in the caller's trace, with the caller's sampled flag.
    assert sent[0].split("-")[1] == caller_trace and sent[0].split("-")[2] != caller_span and sent[0].endswith("-01")
    assert sent[1].split("-")[1] == caller_trace and sent[1].endswith("-00")
    assert sent[2].split("-")[1] != caller_trace and sent[2].endswith("-00")

    final = json.loads(ROUTES[("/api/chat", True)].body.splitlines()[-1])
    roots = [span for span in receiver.spans if span.name.startswith("chat ")]
    assert len(roots) == 1  # only the sampled request
    root = roots[0]
    assert root.trace_id.hex() == caller_trace and root.parent_span_id.hex() == caller_span
    assert root.span_id.hex() == sent[0].split("-")[2]
    assert root.name == "chat llama3.2:latest"
    attributes = span_attributes(root)
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.request.model"] == "llama3.2:latest"
    assert attributes["gen_ai.usage.input_tokens"] == final["prompt_eval_count"]
    assert attributes["gen_ai.usage.output_tokens"] == final["eval_count"]
    assert attributes["gen_ai.response.finish_reasons"] == [final["done_reason"]]
    children = {span.name: span for span in receiver.spans if span.parent_span_id == root.span_id}
    assert {"ollama.load", "ollama.prompt_eval", "ollama.decode"} <= set(children)
    for name, field in (("ollama.load", "load_duration"), ("ollama.prompt_eval", "prompt_eval_duration"),
                        ("ollama.decode", "eval_duration")):
        span = children[name]
        assert span.trace_id == root.trace_id
        assert span.end_time_unix_nano - span.start_time_unix_nano == pytest.approx(final[field], abs=1000)
    assert children["ollama.decode"].end_time_unix_nano == root.end_time_unix_nano


@pytest.mark.parametrize(("header", "expected"), [
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
     (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, True)),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
     (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, False)),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),  # an all-zero trace id is invalid
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # version ff is invalid
    ("garbage", None),
])
def test_traceparent_headers_are_read_as_w3c_says(header: str, expected: tuple[int, int, bool] | None) -> None:
    assert parse_traceparent(header) == expected


def test_the_sample_ratio_decides_new_traces() -> None:
    assert all(TraceStarter(1.0).start(None)[3] for _ in range(50))
    assert not any(TraceStarter(0.0).start(None)[3] for _ in range(50))
