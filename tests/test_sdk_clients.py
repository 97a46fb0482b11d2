"""The real OpenAI and Anthropic SDKs through the proxy: what they receive is what Ollama sent, and the exported
figures equal what the fake upstream's replies carry (read with ``json`` by ``tests/ground_truth.py``)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator

import aiohttp
import anthropic
import openai
import pytest

from ollama_metrics_proxy.app.server import build_registry, start
from ollama_metrics_proxy.relay.openai_usage import UsageStripper
from tests.conftest import ProxyUnderTest, config_for
from tests.fake_ollama import ROUTES, WITHOUT_USAGE, FakeOllama, rec
from tests.ground_truth import SSE, expected_for

CHAT = [{"role": "user", "content": "Say hi"}]
LLAMA = {"model": "llama3.2:latest"}


@pytest.fixture
async def injecting(fake: FakeOllama) -> AsyncIterator[ProxyUnderTest]:
    running = await start(config_for(fake.url, openai_usage="inject"), registry=build_registry())
    yield ProxyUnderTest(running)
    await running.stop()


def sdk(proxy: ProxyUnderTest) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="ollama", max_retries=0)


async def streamed_chat(client: openai.AsyncOpenAI, **extra: object) -> tuple[str, list[object]]:
    stream = await client.chat.completions.create(model="llama3.2", messages=CHAT, stream=True,  # type: ignore
                                                  **extra)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)  # type: ignore[attr-defined]
    return text, chunks


def recorded(path: str, *, usage: bool) -> bytes:
    return (ROUTES[(path, True)] if usage else WITHOUT_USAGE[path]).body


async def test_two_hundred_sdk_streams_are_all_successes_with_estimated_tokens(
    fake: FakeOllama, proxy: ProxyUnderTest,
) -> None:
    """The SDK hangs up right after data: [DONE], before the chunked terminator (held back here, as a slow
    network would): every stream still counts as a success, and without include_usage its tokens are estimated
    from its content chunks."""
    fake.eof_delay = 0.3
    expected = expected_for("/v1/chat/completions", recorded("/v1/chat/completions", usage=False), SSE)
    client = sdk(proxy)
    results = await asyncio.gather(*(streamed_chat(client) for _ in range(200)))
    await client.close()
    wanted_text = "".join(json.loads(data)["choices"][0]["delta"].get("content", "")
                          for data in recorded("/v1/chat/completions", usage=False).decode().split("data: ")[1:]
                          if data.strip() != "[DONE]")
    assert all(text == wanted_text for text, _ in results)
    await proxy.settled(200)
    endpoint = {"endpoint": "/v1/chat/completions", **LLAMA}
    assert proxy.value("ollama_requests_total", outcome="success", **endpoint) == 200
    assert proxy.value("ollama_requests_total", outcome="aborted", **endpoint) == 0
    assert expected.reported_generation is None and expected.content_chunks == 2
    assert proxy.value("ollama_generation_tokens_total", **endpoint) == 200 * expected.content_chunks
    assert proxy.value("ollama_generation_tokens_estimated_total", **endpoint) == 200 * expected.content_chunks


async def test_sdk_with_include_usage_counts_exactly(fake: FakeOllama, proxy: ProxyUnderTest) -> None:
    expected = expected_for("/v1/chat/completions", recorded("/v1/chat/completions", usage=True), SSE)
    client = sdk(proxy)
    for _ in range(5):
        _, chunks = await streamed_chat(client, stream_options={"include_usage": True})
        assert chunks[-1].usage.completion_tokens == expected.reported_generation  # type: ignore[attr-defined]
    await client.close()
    await proxy.settled(5)
    endpoint = {"endpoint": "/v1/chat/completions", **LLAMA}
    assert proxy.value("ollama_generation_tokens_total", **endpoint) == 5 * expected.reported_generation  # type: ignore
    assert proxy.value("ollama_prompt_tokens_total", **endpoint) == 5 * expected.prompt_tokens  # type: ignore
    assert proxy.value("ollama_generation_tokens_estimated_total", **endpoint) == 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_injected_usage_is_exact_and_the_client_gets_the_bytes_ollama_would_send(
    fake: FakeOllama, injecting: ProxyUnderTest, path: str,
) -> None:
    request = {"model": "llama3.2", "stream": True, "messages": CHAT, "prompt": "Why is the sky blue?"}
    body = json.dumps(request).encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(fake.url + path, data=body) as response:
            direct = await response.read()
        async with http.post(injecting.url + path, data=body) as response:
            proxied = await response.read()
    assert direct == recorded(path, usage=False)
    assert proxied == direct  # byte for byte: the usage the proxy asked for was taken out again
    sent = json.loads(fake.seen[-1].body)
    assert sent["stream_options"] == {"include_usage": True} and sent["messages"] == CHAT
    expected = expected_for(path, recorded(path, usage=True), SSE)
    await injecting.settled(1)
    labels = {"endpoint": path, **LLAMA}
    assert injecting.value("ollama_generation_tokens_total", **labels) == expected.reported_generation
    assert injecting.value("ollama_prompt_tokens_total", **labels) == expected.prompt_tokens
    assert injecting.value("ollama_generation_tokens_estimated_total", **labels) == 0
    assert injecting.value("ollama_metrics_proxy_relayed_bytes_total", endpoint=path,
                           direction="response") == len(direct)


async def test_injected_usage_through_the_sdk(fake: FakeOllama, injecting: ProxyUnderTest) -> None:
    client = sdk(injecting)
    text, chunks = await streamed_chat(client)
    await client.close()
    direct = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="ollama", max_retries=0)
    direct_text, direct_chunks = await streamed_chat(direct)
    await direct.close()
    assert text == direct_text
    assert [c.model_dump() for c in chunks] == [c.model_dump() for c in direct_chunks]  # type: ignore[attr-defined]
    assert all(c.usage is None for c in chunks)  # type: ignore[attr-defined]


@pytest.mark.parametrize("request_body", [
    {"model": "llama3.2", "stream": False, "messages": CHAT},  # not streamed: nothing to add
    {"model": "llama3.2", "stream": True, "stream_options": {"include_usage": True}, "messages": CHAT},
    {"model": "llama3.2", "messages": CHAT},  # /v1 streams only when asked
])
async def test_inject_leaves_other_requests_untouched(
    fake: FakeOllama, injecting: ProxyUnderTest, request_body: dict[str, object],
) -> None:
    body = json.dumps(request_body, separators=(", ", ": ")).encode()
    async with aiohttp.ClientSession() as http, http.post(injecting.url + "/v1/chat/completions",
                                                          data=body) as response:
        assert response.status == 200
        await response.read()
    assert fake.seen[-1].body == body


def test_usage_stripper_gives_the_reply_without_usage_at_every_split_point() -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        with_usage, without = recorded(path, usage=True), recorded(path, usage=False)
        for a, b in itertools.combinations(range(1, len(with_usage), 7), 2):
            stripper = UsageStripper()
            out = b"".join(stripper.feed(piece) for piece in (with_usage[:a], with_usage[a:b], with_usage[b:]))
            assert out + stripper.close() == without, (path, a, b)


async def test_anthropic_sdk_stream_counts_what_message_delta_reports(
    fake: FakeOllama, proxy: ProxyUnderTest,
) -> None:
    expected = expected_for("/v1/messages", rec("anthropic_stream.sse").body, SSE)
    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key="ollama", max_retries=0)
    async with client.messages.stream(model="llama3.2", max_tokens=64, messages=CHAT) as stream:  # type: ignore
        text = await stream.get_final_text()
    await client.close()
    assert text == "Hello from Claude's API shape."
    await proxy.settled(1)
    labels = {"endpoint": "/v1/messages", **LLAMA}
    assert proxy.value("ollama_requests_total", outcome="success", **labels) == 1
    assert proxy.value("ollama_generation_tokens_total", **labels) == expected.reported_generation
    assert proxy.value("ollama_prompt_tokens_total", **labels) == expected.prompt_tokens
    assert proxy.value("ollama_finished_requests_total", reason="end_turn", **labels) == 1


async def test_inject_rewrites_a_large_body_that_arrives_in_pieces(
    fake: FakeOllama, injecting: ProxyUnderTest,
) -> None:
    """A 900 kB streamed chat request (an image in base64, say), sent in 64 KiB pieces with its Content-Length:
    read whole, given include_usage, sent on with everything else as it was."""
    request = {"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "x" * 900_000}]}
    body = json.dumps(request).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for at in range(0, len(body), 65536):
            yield body[at : at + 65536]
            await asyncio.sleep(0)

    async with aiohttp.ClientSession() as http, http.post(
            injecting.url + "/v1/chat/completions", data=pieces(),
            headers={"Content-Length": str(len(body)), "Content-Type": "application/json"}) as response:
        assert await response.read() == recorded("/v1/chat/completions", usage=False)
    sent = json.loads(fake.seen[-1].body)
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == request["messages"]
