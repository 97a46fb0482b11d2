"""--otlp-endpoint: the GenAI semantic-convention metrics reach a real OTLP/HTTP receiver, started here, which
decodes the protobuf payloads (opentelemetry-proto); names, attributes, bucket bounds and values must agree with
the Prometheus figures of the same traffic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from ollama_metrics_proxy.app.server import build_registry, start
from ollama_metrics_proxy.metrics.otel import DURATION_BUCKETS, TOKEN_BUCKETS, TPOT_BUCKETS, TTFT_BUCKETS
from tests.conftest import ProxyUnderTest, config_for, serve_app
from tests.fake_ollama import FakeOllama
from tests.test_relay import wait_for


class OtlpReceiver:
    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/metrics", self._receive)
        self._runner, self.url = await serve_app(app)
        return self

    async def _receive(self, request: web.Request) -> web.Response:
        payload = ExportMetricsServiceRequest()
        payload.ParseFromString(await request.read())
        self.requests.append(payload)
        self.headers.append(dict(request.headers))
        return web.Response(status=200, content_type="application/x-protobuf")

    def histograms(self) -> dict[str, list[Any]]:
        """The latest data points of each histogram (cumulative temporality: the last push has everything)."""
        latest: dict[str, list[Any]] = {}
        for payload in self.requests:
            for resource in payload.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        if metric.HasField("histogram"):
                            latest[metric.name] = list(metric.histogram.data_points)
        return latest

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    server = await OtlpReceiver().start()
    yield server
    await server.stop()


def attributes(point: Any) -> dict[str, str]:
    return {item.key: item.value.string_value for item in point.attributes}


async def test_genai_metrics_reach_an_otlp_receiver_and_agree_with_prometheus(
    fake: FakeOllama, receiver: OtlpReceiver,
) -> None:
    config = config_for(fake.url, otlp_endpoint=receiver.url, otlp_interval=0.2,
                        otlp_headers=(("Authorization", "Bearer otlp-secret-token"),))
    running = await start(config, registry=build_registry())
    proxy = ProxyUnderTest(running)
    try:
        async with aiohttp.ClientSession() as http:
            for path, body in (("/api/chat", {"stream": True}), ("/api/chat", {"stream": True}),
                               ("/api/generate", {"stream": False}), ("/api/embed", {"input": ["a", "b"]}),
                               ("/api/chat", {"model": "llama3"})):  # the last one: a 404
                async with http.post(proxy.url + path, json={"model": "llama3.2", **body}) as response:
                    await response.read()
        await wait_for(lambda: "gen_ai.client.token.usage" in receiver.histograms(), timeout=10)
        await asyncio.sleep(0.5)  # a push after every request was recorded
        histograms = receiver.histograms()
    finally:
        await running.stop()
    assert receiver.headers[0]["Authorization"] == "Bearer otlp-secret-token"
    assert receiver.headers[0]["Content-Type"] == "application/x-protobuf"
    assert {"gen_ai.client.token.usage", "gen_ai.server.request.duration", "gen_ai.server.time_to_first_token",
            "gen_ai.server.time_per_output_token"} <= set(histograms)

    tokens = histograms["gen_ai.client.token.usage"]
    assert all(list(point.explicit_bounds) == list(map(float, TOKEN_BUCKETS)) for point in tokens)
    output = {attributes(p)["gen_ai.request.model"] + " " + attributes(p)["gen_ai.operation.name"]: p.sum
              for p in tokens if attributes(p)["gen_ai.token.type"] == "output"}
    chat = {"endpoint": "/api/chat", "model": "llama3.2:latest"}
    assert output["llama3.2:latest chat"] == proxy.value("ollama_generation_tokens_total", **chat)
    assert output["llama3.2:latest text_completion"] == proxy.value(
        "ollama_generation_tokens_total", endpoint="/api/generate", model="llama3.2:latest")
    inputs = sum(p.sum for p in tokens if attributes(p)["gen_ai.token.type"] == "input")
    assert inputs == sum(proxy.value("ollama_prompt_tokens_total", endpoint=e, model=m) for e, m in (
        ("/api/chat", "llama3.2:latest"), ("/api/generate", "llama3.2:latest"), ("/api/embed", "all-minilm:latest")))

    durations = histograms["gen_ai.server.request.duration"]
    assert all(list(point.explicit_bounds) == list(DURATION_BUCKETS) for point in durations)
    assert sum(point.count for point in durations) == 5
    point = next(p for p in durations if attributes(p)["gen_ai.operation.name"] == "chat"
                 and "error.type" not in attributes(p))
    assert attributes(point)["gen_ai.provider.name"] == "ollama"
    assert attributes(point)["gen_ai.response.model"] == "llama3.2:latest"
    assert point.count == 2
    assert point.sum == pytest.approx(proxy.value("ollama_request_duration_seconds_sum", **chat))
    failed = [p for p in durations if attributes(p).get("error.type") == "client_error"]
    assert len(failed) == 1 and failed[0].count == 1

    ttft = histograms["gen_ai.server.time_to_first_token"]
    assert all(list(point.explicit_bounds) == list(TTFT_BUCKETS) for point in ttft)
    assert sum(p.count for p in ttft) == proxy.value("ollama_time_to_first_token_seconds_count", **chat) == 2
    assert sum(p.sum for p in ttft) == pytest.approx(proxy.value("ollama_time_to_first_token_seconds_sum", **chat))

    # The client conventions' chunk figures: one first-chunk time per streamed request, one value per later chunk.
    first_chunk = histograms["gen_ai.client.operation.time_to_first_chunk"]
    assert all(list(point.explicit_bounds) == list(DURATION_BUCKETS) for point in first_chunk)
    assert sum(p.count for p in first_chunk) == proxy.total("ollama_time_to_first_token_seconds_count") > 0
    per_chunk = histograms["gen_ai.client.operation.time_per_output_chunk"]
    assert all(list(point.explicit_bounds) == list(TPOT_BUCKETS) for point in per_chunk)
    assert sum(p.count for p in per_chunk) == proxy.total("ollama_inter_token_latency_seconds_count") > 0


async def test_off_by_default_imports_nothing(fake: FakeOllama) -> None:
    running = await start(config_for(fake.url), registry=build_registry())
    try:
        assert running.recorder.otel is None
    finally:
        await running.stop()


@pytest.mark.parametrize(("endpoint", "given", "url", "authorization"), [
    ("http://collector:4318", {}, "http://collector:4318/v1/metrics", None),
    ("https://collector:4318/", {}, "https://collector:4318/v1/metrics", None),
    ("https://collector/otlp/v1/metrics", {}, "https://collector/otlp/v1/metrics", None),
    ("https://ops:s%40cret@collector:4318", {}, "https://collector:4318/v1/metrics", "Basic b3BzOnNAY3JldA=="),
    ("https://ops:secret@collector", {"authorization": "Bearer t"}, "https://collector/v1/metrics", None),
])
def test_the_push_target_carries_no_credentials_in_its_url(
    endpoint: str, given: dict[str, str], url: str, authorization: str | None,
) -> None:
    from ollama_metrics_proxy.metrics.otel import metrics_target

    got_url, headers = metrics_target(endpoint, given)
    assert got_url == url and "secret" not in got_url and "cret" not in got_url
    assert headers.get("Authorization") == authorization
    assert {k: v for k, v in headers.items() if k != "Authorization"} == given
