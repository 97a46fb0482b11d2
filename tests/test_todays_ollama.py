"""What Ollama 0.33 sends, through the real proxy into metrics, the request log and /-/stats: thinking before
the answer, cached prompt tokens, tool calls on the done line, cloud models, the cloud's error statuses, a CORS
preflight, an embedding's missing phase durations. Expected figures are read from the recordings with ``json``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import ProxyUnderTest
from tests.fake_ollama import FakeOllama, Recording, rec
from tests.test_request_log import flush, get, start_proxy

pytestmark = pytest.mark.both_loops


def lines_of(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in rec(name).body.splitlines() if line.strip()]


def label(model: str) -> str:
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


@pytest.fixture
async def logged(fake: FakeOllama, log_db: str) -> AsyncIterator[ProxyUnderTest]:
    proxy = await start_proxy(fake, log_db)
    yield proxy
    await proxy.running.stop()


async def stream(proxy: ProxyUnderTest, http: aiohttp.ClientSession, fake: FakeOllama, name: str,
                 path: str = "/api/chat") -> list[dict[str, Any]]:
    fake.override[path] = rec(name)
    async with http.post(proxy.url + path, json={"model": "m"}) as response:
        assert response.status == 200
        await response.read()
    return lines_of(name)


async def test_thinking_cached_tokens_and_the_first_answer_reach_metrics_log_and_stats(
    logged: ProxyUnderTest, fake: FakeOllama, http: aiohttp.ClientSession,
) -> None:
    lines = await stream(logged, http, fake, "chat_thinking_stream.ndjson")
    final = lines[-1]
    thinking = sum(1 for line in lines if line["message"].get("thinking") and not line["message"]["content"])
    answer = sum(1 for line in lines if line["message"]["content"])
    labels = {"endpoint": "/api/chat", "model": label(final["model"])}
    await logged.settled(1)
    assert logged.value("ollama_prompt_cached_tokens_total", **labels) == final["prompt_eval_cached_count"]
    assert logged.value("ollama_prompt_eval_tokens_total", **labels) == (
        final["prompt_eval_count"] - final["prompt_eval_cached_count"])
    assert logged.value("ollama_output_chunks_total", **labels, kind="thinking") == thinking
    assert logged.value("ollama_output_chunks_total", **labels, kind="answer") == answer
    assert logged.value("ollama_time_to_first_answer_token_seconds_count", **labels) == 1
    # The answer comes after the thinking: its first chunk later than the first chunk of all.
    first_token = logged.value("ollama_time_to_first_token_seconds_sum", **labels)
    assert logged.value("ollama_time_to_first_answer_token_seconds_sum", **labels) >= first_token

    await flush(logged)
    _, body = await get(http, logged.metrics_url + "/-/logs")
    row = body["records"][0]
    assert (row["cached_tokens"], row["thinking_chunks"], row["answer_chunks"], row["tool_calls"]) == (
        final["prompt_eval_cached_count"], thinking, answer, 0)
    assert row["location"] == "local" and row["ttfat_seconds"] >= row["ttft_seconds"]
    _, stats = await get(http, logged.metrics_url + "/-/stats")
    assert (stats["cached_tokens"], stats["thinking_chunks"], stats["answer_chunks"]) == (
        final["prompt_eval_cached_count"], thinking, answer)
    assert stats["average_time_to_first_answer_seconds"] >= stats["average_ttft_seconds"]


async def test_a_tool_call_on_the_done_line_is_counted_and_its_silence_is_no_token_gap(
    proxy: ProxyUnderTest, fake: FakeOllama, http: aiohttp.ClientSession,
) -> None:
    fake.delay = 0.3  # the silence while Ollama assembles the call
    lines = await stream(proxy, http, fake, "chat_tool_done_line.ndjson")
    calls = sum(len(line["message"].get("tool_calls") or []) for line in lines)
    labels = {"endpoint": "/api/chat", "model": label(lines[0]["model"])}
    await proxy.settled(1)
    assert calls == 2 and proxy.value("ollama_tool_calls_total", **labels) == calls
    assert proxy.value("ollama_inter_token_latency_seconds_count", **labels) == 0
    assert proxy.value("ollama_time_to_first_answer_token_seconds_count", **labels) == 1


async def test_a_cloud_model_is_labelled_and_left_out_of_decode_speed(
    logged: ProxyUnderTest, fake: FakeOllama, http: aiohttp.ClientSession,
) -> None:
    lines = await stream(logged, http, fake, "chat_cloud_stream.ndjson")
    model = label(lines[-1]["model"])
    assert lines[-1]["remote_host"] and lines[-1]["eval_duration"] > 0
    labels = {"endpoint": "/api/chat", "model": model}
    await logged.settled(1)
    assert logged.value("ollama_model_location_info", model=model, location="cloud") == 1
    assert logged.value("ollama_eval_seconds_total", **labels) == 0
    assert logged.value("ollama_eval_tokens_total", **labels) == 0
    assert logged.value("ollama_generation_tokens_total", **labels) == lines[-1]["eval_count"]
    await stream(logged, http, fake, "chat_stream.ndjson")
    local = label(lines_of("chat_stream.ndjson")[-1]["model"])
    await logged.settled(2)
    assert logged.value("ollama_model_location_info", model=local, location="local") == 1
    await flush(logged)
    _, body = await get(http, logged.metrics_url + "/-/models")
    decode = {row["name"]: row["decode_tokens_per_second"] for row in body["models"]}
    assert decode[model] is None and decode[local] is not None


@pytest.mark.parametrize(("status", "message"), [
    (401, "unauthorized"), (403, "forbidden"), (429, "you have reached your hourly usage limit"),
    (502, "an error was encountered while running the model: cloud unreachable"),
])
async def test_the_clouds_error_statuses_are_counted_as_such(
    proxy: ProxyUnderTest, fake: FakeOllama, http: aiohttp.ClientSession, status: int, message: str,
) -> None:
    fake.override["/api/chat"] = Recording("cloud_error.json", "application/json; charset=utf-8", status,
                                           json.dumps({"error": message}).encode())
    async with http.post(proxy.url + "/api/chat", json={"model": "gpt-oss:120b-cloud"}) as response:
        assert response.status == status
    await proxy.settled(1)
    assert proxy.value("ollama_error_responses_total", endpoint="/api/chat", model="other",
                       status=str(status)) == 1


async def test_a_cors_preflight_is_not_an_inference_request(
    logged: ProxyUnderTest, http: aiohttp.ClientSession,
) -> None:
    headers = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    async with http.options(logged.url + "/api/chat", headers=headers) as response:
        await response.read()
    await logged.settled(1)
    assert logged.total("ollama_requests_total") == 1
    assert logged.value("ollama_requests_total", endpoint="other", model="none", outcome="success") == 1
    await flush(logged)
    _, body = await get(http, logged.metrics_url + "/-/logs")
    assert body["records"] == []


async def test_an_embedding_gets_no_made_up_queue_wait(
    proxy: ProxyUnderTest, fake: FakeOllama, http: aiohttp.ClientSession,
) -> None:
    reply = json.loads(rec("embed.json").body)
    assert "total_duration" in reply and "prompt_eval_duration" not in reply and "eval_duration" not in reply
    async with http.post(proxy.url + "/api/embed", json={"model": "all-minilm", "input": ["a", "b"]}) as response:
        await response.read()
    async with http.post(proxy.url + "/api/chat", json={"model": "llama3.2"}) as response:
        await response.read()
    await proxy.settled(2)
    embed = {"endpoint": "/api/embed", "model": label(reply["model"])}
    assert proxy.value("ollama_total_duration_seconds_count", **embed) == 1
    assert proxy.value("ollama_queue_wait_estimate_seconds_count", **embed) == 0
    assert proxy.value("ollama_queue_wait_estimate_seconds_count", endpoint="/api/chat",
                       model="llama3.2:latest") == 1


async def test_an_unfinished_completions_stream_counts_its_chunks_not_the_placeholder_usage(
    logged: ProxyUnderTest, fake: FakeOllama, http: aiohttp.ClientSession,
) -> None:
    recording = rec("openai_completions_stream.sse")
    events = [json.loads(event.removeprefix(b"data: ")) for event in recording.body.split(b"\n\n")
              if event.startswith(b"data: {")]
    assert events[0]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    relayed = [event for event in events if event["choices"]][:1]  # the client leaves after the first chunk
    fake.override["/v1/completions"] = recording
    fake.gate = asyncio.Event()
    async with http.post(logged.url + "/v1/completions", json={"model": "llama3.2", "stream": True}) as response:
        await response.content.readuntil(b"\n\n")
    await logged.settled(1)
    fake.gate.set()
    labels = {"endpoint": "/v1/completions", "model": "llama3.2:latest"}
    assert logged.value("ollama_generation_tokens_estimated_total", **labels) == len(relayed)
    assert logged.value("ollama_prompt_tokens_total", **labels) == 0
    await flush(logged)
    _, body = await get(http, logged.metrics_url + "/-/logs")
    row = body["records"][0]
    assert row["prompt_tokens"] is None and row["generation_tokens"] == len(relayed)
