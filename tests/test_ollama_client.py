"""The official ``ollama`` Python client, sync and async, through the proxy; metrics equal what Ollama reported."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import ollama
import pytest

from tests.conftest import ProxyUnderTest
from tests.fake_ollama import ROUTES, FakeOllama, rec

MODEL = "llama3.2"
EMBED_MODEL = "all-minilm"


def reported(path: str, streamed: bool) -> dict[str, Any]:
    """What the fake Ollama reported for a route: its final object, parsed with the standard library."""
    body = ROUTES[(path, streamed)].body
    objects = [json.loads(line) for line in body.splitlines() if line.strip()]
    return objects[-1]


def expected_sum(path: str, field: str) -> float:
    return sum(reported(path, streamed).get(field, 0) for streamed in (True, False) if (path, streamed) in ROUTES)


def sync_session(host: str) -> dict[str, Any]:
    client = ollama.Client(host=host)
    results: dict[str, Any] = {
        "generate": client.generate(model=MODEL, prompt="Why is the sky blue?"),
        "generate_stream": list(client.generate(model=MODEL, prompt="Why is the sky blue?", stream=True)),
        "chat": client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}]),
        "chat_stream": list(client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)),
        "embed": client.embed(model=EMBED_MODEL, input=["Why is the sky blue?", "Why is the grass green?"]),
        "list": client.list(),
        "ps": client.ps(),
        "show": client.show(MODEL),
        "pull": list(client.pull(MODEL, stream=True)),
    }
    return results


async def async_session(host: str) -> dict[str, Any]:
    client = ollama.AsyncClient(host=host)
    messages = [{"role": "user", "content": "hi"}]
    return {
        "generate": await client.generate(model=MODEL, prompt="Why is the sky blue?"),
        "generate_stream": [part async for part in await client.generate(model=MODEL, prompt="x", stream=True)],
        "chat": await client.chat(model=MODEL, messages=messages),
        "chat_stream": [part async for part in await client.chat(model=MODEL, messages=messages, stream=True)],
        "embed": await client.embed(model=EMBED_MODEL, input=["Why is the sky blue?", "Why is the grass green?"]),
        "list": await client.list(),
        "ps": await client.ps(),
        "show": await client.show(MODEL),
        "pull": [part async for part in await client.pull(MODEL, stream=True)],
    }


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_official_client_works_and_metrics_match_reports(
    fake: FakeOllama, proxy: ProxyUnderTest, flavour: str
) -> None:
    if flavour == "sync":
        results = await asyncio.to_thread(sync_session, proxy.url)
    else:
        results = await async_session(proxy.url)

    # The client sees exactly what Ollama sent.
    assert results["generate"].response == reported("/api/generate", False)["response"]
    assert "".join(part.response for part in results["generate_stream"]) == "".join(
        json.loads(line)["response"] for line in ROUTES[("/api/generate", True)].body.splitlines())
    assert results["chat"].message.content == reported("/api/chat", False)["message"]["content"]
    assert results["chat_stream"][-1].done is True
    assert len(results["embed"].embeddings) == 2
    assert [model.model for model in results["list"].models] == ["llama3.2:latest", "all-minilm:latest"]
    assert results["ps"].models[0].size_vram == 2333539264
    assert results["show"].modelinfo["general.architecture"] == "llama"
    assert [part.status for part in results["pull"]][-1] == "success"
    assert sum(1 for part in results["pull"] if part.completed) == 3

    labels = {"model": "llama3.2:latest"}
    for path in ("/api/generate", "/api/chat"):
        assert proxy.value("ollama_prompt_tokens_total", endpoint=path, **labels) == expected_sum(
            path, "prompt_eval_count")
        assert proxy.value("ollama_generation_tokens_total", endpoint=path, **labels) == expected_sum(
            path, "eval_count")
        assert proxy.value("ollama_eval_seconds_total", endpoint=path, **labels) == pytest.approx(
            expected_sum(path, "eval_duration") / 1e9)
        assert proxy.value("ollama_load_seconds_total", endpoint=path, **labels) == pytest.approx(
            expected_sum(path, "load_duration") / 1e9)
        assert proxy.value("ollama_requests_total", endpoint=path, outcome="success", **labels) == 2
        # Only the streamed request has a time to first token.
        assert proxy.value("ollama_time_to_first_token_seconds_count", endpoint=path, **labels) == 1
    embed = {"endpoint": "/api/embed", "model": "all-minilm:latest"}
    assert proxy.value("ollama_prompt_tokens_total", **embed) == reported("/api/embed", False)["prompt_eval_count"]
    assert proxy.value("ollama_embedding_inputs_total", **embed) == 2
    assert proxy.value("ollama_requests_total", endpoint="/api/pull", outcome="success", **labels) == 1
    for path in ("/api/tags", "/api/ps"):
        assert proxy.value("ollama_requests_total", endpoint=path, model="none", outcome="success") == 1
    assert proxy.value("ollama_requests_total", endpoint="/api/show", outcome="success", **labels) == 1
    gaps = len(ROUTES[("/api/generate", True)].chunks) - 2  # content chunks minus one
    assert proxy.value("ollama_inter_token_latency_seconds_count", endpoint="/api/generate", **labels) == gaps
    assert proxy.value("ollama_finished_requests_total", endpoint="/api/generate", reason="length", **labels) == 1
    assert proxy.value("ollama_finished_requests_total", endpoint="/api/generate", reason="stop", **labels) == 1


async def test_an_error_line_the_client_raises_on_counts_as_an_upstream_error(
    proxy: ProxyUnderTest, fake: FakeOllama,
) -> None:
    """ollama-python raises at an `{"error": ...}` line and closes the stream: the failure was Ollama's."""
    fake.override["/api/generate"] = rec("generate_midstream_error.ndjson")
    fake.eof_delay = 30  # the client closes at the error line, before the stream's end reaches the proxy
    lines = [json.loads(line) for line in fake.override["/api/generate"].body.splitlines()]
    message = next(line["error"] for line in lines if "error" in line)
    model = next(line["model"] for line in lines if "model" in line)

    def generate() -> None:
        with pytest.raises(ollama.ResponseError, match=message[:20]):
            for _ in ollama.Client(host=proxy.url).generate(model=MODEL, prompt="x", stream=True):
                pass

    for _ in range(3):
        await asyncio.to_thread(generate)
    await proxy.settled(3)
    assert proxy.value("ollama_requests_total", endpoint="/api/generate", model=f"{model}:latest",
                       outcome="upstream_error") == 3
    assert proxy.total("ollama_client_disconnects_total") == 0
