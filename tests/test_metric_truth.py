"""Ground truth: every recorded reply, through the real proxy, in every chunking, spacing and ending, exports
exactly the figures ``tests/ground_truth.py`` reads from the same bytes with ``json`` alone.

An upstream on a loopback port plays a script: the reply's bytes in the chosen pieces, then the chosen ending
(end of body; holding the body open, so the client leaves first; or cutting the connection). A real HTTP client
reads through the proxy and leaves when the ending says so. Nothing of the proxy's code computes an expectation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from ollama_metrics_proxy.app.server import build_registry, start
from tests.conftest import ProxyUnderTest, config_for, serve_app
from tests.fake_ollama import BODIES, RECORDINGS, ROUTES, STREAMS, WITHOUT_USAGE, FakeOllama
from tests.ground_truth import JSON, NDJSON, SSE, Expected, expected_for, messages_of, respace

CONTENT_TYPES = {NDJSON: "application/x-ndjson", SSE: "text/event-stream", JSON: "application/json; charset=utf-8"}
CHUNKINGS = ("one_write", "per_message", "byte_by_byte", "random")
STYLES = ("compact", "spaced", "pretty")


def kind_of(name: str) -> str:
    return {".ndjson": NDJSON, ".sse": SSE}.get(name[name.rfind("."):], JSON)


@dataclass
class Script:
    content_type: str = "application/json"
    pieces: list[bytes] = field(default_factory=list)
    then: str = "eof"  # eof: end the body; hold: keep it open until the proxy hangs up; die: cut the connection
    content_length: int | None = None


class ScriptedUpstream:
    def __init__(self) -> None:
        self.script = Script()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> ScriptedUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._play)
        self._runner, self.url = await serve_app(app, handler_cancellation=True)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _play(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        script = self.script
        response = web.StreamResponse(headers={"Content-Type": script.content_type})
        if script.content_length is not None:
            response.content_length = script.content_length
        await response.prepare(request)
        for piece in script.pieces:
            await response.write(piece)
        if script.then == "hold":
            await asyncio.Event().wait()  # until the proxy closes the connection (the handler is cancelled)
        if script.then == "die":
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write_eof()
        return response


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedUpstream, ProxyUnderTest]]:
    upstream = await ScriptedUpstream().start()
    running = await start(config_for(upstream.url), registry=build_registry())
    try:
        yield upstream, ProxyUnderTest(running)
    finally:
        await running.stop()
        await upstream.stop()


def pieces(data: bytes, messages: list[bytes], chunking: str, seed: int, largest: int = 48) -> list[bytes]:
    if chunking == "one_write":
        return [data]
    if chunking == "per_message":
        return messages
    if chunking == "byte_by_byte":
        return [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(seed)
    cuts, at = [], 0
    while at < len(data):
        size = rng.randint(1, largest)
        cuts.append(data[at : at + size])
        at += size
    return cuts


def totals(registry: CollectorRegistry) -> dict[str, float]:
    """Every sample summed over its labels; requests also per outcome."""
    sums: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
            if sample.name == "ollama_requests_total":
                key = f"outcome={sample.labels['outcome']}"
                sums[key] = sums.get(key, 0.0) + sample.value
            if sample.name == "ollama_finished_requests_total":
                key = f"reason={sample.labels['reason']}"
                sums[key] = sums.get(key, 0.0) + sample.value
            if sample.name == "ollama_output_chunks_total":
                key = f"kind={sample.labels['kind']}"
                sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def expected_deltas(expected: Expected, outcome: str, streaming: bool) -> dict[str, float]:
    generated = None if expected.lifecycle else expected.generated
    deltas = {
        f"outcome={outcome}": 1,
        "ollama_requests_total": 1,
        "ollama_generation_tokens_total": generated or 0,
        "ollama_generation_tokens_estimated_total": (generated or 0) if expected.estimated else 0,
        "ollama_prompt_tokens_total": 0 if expected.lifecycle else expected.prompt_tokens or 0,
        # Decode speed is this hardware's: a cloud model's eval time is left out.
        "ollama_eval_seconds_total": 0 if expected.cloud else expected.eval_seconds or 0,
        "ollama_eval_tokens_total": (expected.reported_generation or 0)
        if expected.eval_seconds is not None and not expected.cloud else 0,
        "ollama_prompt_eval_tokens_total": (  # the tokens prompt_eval_duration timed: less the cached ones
            (expected.prompt_tokens or 0) - (expected.cached_tokens or 0)
            if expected.prompt_eval_seconds is not None else 0),
        "ollama_prompt_cached_tokens_total": 0 if expected.lifecycle else expected.cached_tokens or 0,
        "ollama_finished_requests_total": 1 if expected.finish_reason and not expected.lifecycle else 0,
        "ollama_load_requests_total": 1 if expected.lifecycle else 0,
        "ollama_metrics_proxy_parse_errors_total": expected.parse_errors,
        "ollama_time_to_first_token_seconds_count": 1 if streaming and expected.content_chunks else 0,
        "ollama_inter_token_latency_seconds_count": expected.gaps,
        "ollama_time_to_first_answer_token_seconds_count": 1 if streaming and expected.answered else 0,
        "ollama_tool_calls_total": 0 if expected.lifecycle else expected.tool_calls,
        "kind=thinking": expected.thinking_chunks if streaming and not expected.lifecycle else 0,
        "kind=answer": (expected.content_chunks - expected.thinking_chunks) if streaming and not expected.lifecycle
        else 0,
        "ollama_embedding_inputs_total": expected.embedding_inputs or 0,
    }
    if expected.finish_reason and not expected.lifecycle:
        deltas[f"reason={expected.finish_reason}"] = 1
    return deltas


def outcome_of(expected: Expected, ending: str) -> str:
    if ending == "leave_early" and not expected.error:
        return "aborted"
    if ending == "die" or expected.error or not expected.complete:
        return "upstream_error"
    return "success"


async def play(upstream: ScriptedUpstream, proxy: ProxyUnderTest, endpoint: str, kind: str,
               relayed: list[bytes], chunking: str, ending: str, seed: int, largest: int = 48) -> dict[str, float]:
    """One request through the proxy; returns how the exported figures moved."""
    data = b"".join(relayed)
    upstream.script = Script(
        content_type=CONTENT_TYPES[kind], pieces=pieces(data, relayed, chunking, seed, largest),
        then={"complete": "eof", "die": "die"}.get(ending, "hold"),
        content_length=len(data) * 2 if kind == JSON and ending == "die" else None,
    )
    before = totals(proxy.registry)
    async with aiohttp.ClientSession() as http, http.post(proxy.url + endpoint, data=b'{"model":"m"}') as response:
        if ending == "complete":
            assert await response.read() == data  # and the client got exactly what was sent
        elif ending == "die":
            with contextlib.suppress(aiohttp.ClientPayloadError):
                await response.read()
        else:  # the client reads what was relayed, then hangs up
            assert await response.content.readexactly(len(data)) == data
            response.close()
    for _ in range(500):
        after = totals(proxy.registry)
        if after.get("ollama_requests_total", 0) > before.get("ollama_requests_total", 0):
            break
        await asyncio.sleep(0.01)
    return {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after.keys() | before.keys()}


def endings(messages: list[bytes], endpoint: str, kind: str) -> list[tuple[str, int]]:
    """(ending, messages relayed): complete; the client leaves halfway, right after the terminal message or
    right after an in-band error; the upstream dies halfway."""
    half = max(1, len(messages) // 2)
    found = [("complete", len(messages)), ("die", half)]
    if kind == JSON:
        return found
    terminal = next((index for index in range(1, len(messages) + 1)
                     if expected_for(endpoint, b"".join(messages[:index]), kind).complete), None)
    if terminal is not None and half < terminal:
        found.append(("leave_early", half))
    if terminal is not None:
        found.append(("leave_after_terminal", terminal))
    error = next((index for index in range(1, len(messages) + 1)
                  if expected_for(endpoint, b"".join(messages[:index]), kind).error), None)
    if error is not None:  # ollama-python raises on an error line and closes: the error still counts
        found.append(("leave_after_error", error))
    return found


async def check_recording(upstream: ScriptedUpstream, proxy: ProxyUnderTest, name: str, endpoint: str,
                          style: str) -> None:
    kind = kind_of(name)
    body = respace((RECORDINGS / name).read_bytes(), kind, style)
    messages = messages_of(body, kind)
    for seed, chunking in enumerate(CHUNKINGS):
        for ending, count in endings(messages, endpoint, kind):
            relayed = messages[:count] if kind != JSON or ending != "die" else [body[: len(body) // 2]]
            expected = expected_for(endpoint, b"".join(relayed), kind)
            moved = await play(upstream, proxy, endpoint, kind, relayed, chunking, ending, seed)
            wanted = expected_deltas(expected, outcome_of(expected, ending), kind != JSON)
            got = {key: moved.get(key, 0.0) for key in wanted}
            assert got == pytest.approx(wanted), (chunking, ending, count)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(("name", "endpoint"), sorted({**STREAMS, **BODIES}.items()))
async def test_every_recording_exports_what_it_carries(
    scripted: tuple[ScriptedUpstream, ProxyUnderTest], name: str, endpoint: str, style: str,
) -> None:
    await check_recording(*scripted, name, endpoint, style)


def _large_bodies() -> dict[str, tuple[str, dict[str, object]]]:
    vector = [0.0123456789] * 768
    return {
        "embed_batch": ("/api/embed", {
            "model": "all-minilm", "embeddings": [vector] * 400, "total_duration": 5_000_000,
            "load_duration": 1_000_000, "prompt_eval_count": 16000}),
        "generate_long_context": ("/api/generate", {
            "model": "llama3.2", "created_at": "2025-10-26T17:15:28.330196Z", "response": "The sky is blue.",
            "done": True, "done_reason": "length", "context": list(range(300_000)), "total_duration": 5043500667,
            "load_duration": 5025959, "prompt_eval_count": 26, "prompt_eval_duration": 325953000,
            "eval_count": 290, "eval_duration": 4709213000}),
        "openai_embeddings": ("/v1/embeddings", {
            "object": "list", "data": [{"object": "embedding", "embedding": vector, "index": i} for i in range(300)],
            "model": "all-minilm", "usage": {"prompt_tokens": 900, "total_tokens": 900}}),
        "openai_chat_long_content": ("/v1/chat/completions", {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "llama3.2",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": 'a "quoted" line\n' * 100_000},
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 4096, "total_tokens": 4116}}),
    }


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")], ids=["compact", "spaced"])
@pytest.mark.parametrize("case", sorted(_large_bodies()))
async def test_bodies_over_a_mebibyte_keep_every_field(
    scripted: tuple[ScriptedUpstream, ProxyUnderTest], case: str, separators: tuple[str, str],
) -> None:
    """Fields before or after megabytes of vectors, context or text, in any spacing, are all read."""
    endpoint, reply = _large_bodies()[case]
    body = json.dumps(reply, separators=separators).encode()
    assert len(body) > 1024 * 1024
    expected = expected_for(endpoint, body, JSON)
    assert expected.prompt_tokens or expected.embedding_inputs  # the oracle found the figures
    for seed, chunking in enumerate(("one_write", "random")):
        moved = await play(*scripted, endpoint, JSON, [body], chunking, "complete", seed, largest=65536)
        wanted = expected_deltas(expected, "success", streaming=False)
        assert {key: moved.get(key, 0.0) for key in wanted} == pytest.approx(wanted)


async def test_mixed_traffic_decode_speed_is_the_native_truth(fake: FakeOllama, tmp_path: Path) -> None:
    """Native, OpenAI (with and without usage) and Anthropic requests together: decode speed from the exported
    counters, /-/models and /-/stats equals eval_count / eval_duration of the native replies alone, and the
    request log marks the estimated tokens."""
    running = await start(config_for(fake.url, log_db=str(tmp_path / "log.db")), registry=build_registry())
    proxy = ProxyUnderTest(running)
    native = [("/api/generate", True), ("/api/chat", True), ("/api/generate", False), ("/api/chat", False)]
    others: list[tuple[str, dict[str, object]]] = [
        ("/v1/chat/completions", {"stream": True}),  # no include_usage: estimated tokens, no decode time
        ("/v1/chat/completions", {"stream": True, "stream_options": {"include_usage": True}}),
        ("/v1/completions", {"stream": True}),
        ("/v1/messages", {"stream": True, "max_tokens": 16}),
    ]
    try:
        async with aiohttp.ClientSession() as http:
            for path, streamed in native:
                async with http.post(proxy.url + path, json={"model": "llama3.2", "stream": streamed}) as reply:
                    await reply.read()
            for path, extra in others:
                async with http.post(proxy.url + path, json={"model": "llama3.2", **extra}) as reply:
                    await reply.read()
            await proxy.settled(len(native) + len(others))
            finals = [json.loads(ROUTES[key].body.splitlines()[-1]) for key in native]
            truth = sum(f["eval_count"] for f in finals) / (sum(f["eval_duration"] for f in finals) / 1e9)
            tokens = proxy.total("ollama_eval_tokens_total")
            seconds = proxy.total("ollama_eval_seconds_total")
            assert tokens / seconds == pytest.approx(truth)
            everything = proxy.total("ollama_generation_tokens_total")
            assert everything / seconds > truth * 1.01  # what the old rule divided: not the truth
            running.request_log.flush()  # type: ignore[union-attr]
            async with http.get(proxy.metrics_url + "/-/models") as reply:
                llama = next(m for m in (await reply.json())["models"] if m["name"] == "llama3.2:latest")
            assert llama["decode_tokens_per_second"] == pytest.approx(truth)
            no_usage = expected_for("/v1/chat/completions", WITHOUT_USAGE["/v1/chat/completions"].body, SSE)
            completions = expected_for("/v1/completions", WITHOUT_USAGE["/v1/completions"].body, SSE)
            assert llama["generation_tokens_estimated"] == no_usage.content_chunks + completions.content_chunks
            async with http.get(proxy.metrics_url + "/-/logs?endpoint=/v1/completions") as reply:
                [record] = (await reply.json())["records"]
            assert record["generation_tokens"] == record["generation_tokens_estimated"] == completions.content_chunks
            async with http.get(proxy.metrics_url + "/-/stats") as reply:
                stats = await reply.json()
            assert stats["generation_tokens_estimated"] == llama["generation_tokens_estimated"]
    finally:
        await running.stop()


async def test_a_long_mostly_cached_prompt_lands_in_a_finite_prefill_bucket(
    scripted: tuple[ScriptedUpstream, ProxyUnderTest],
) -> None:
    """32,000 prompt tokens, most from the cache, with 50 ms of prefill: 640,000 tokens/s on paper."""
    final = {"model": "llama3.2", "response": "ok", "done": True, "done_reason": "stop", "prompt_eval_count": 32000,
             "prompt_eval_duration": 50_000_000, "eval_count": 1, "eval_duration": 20_000_000}
    body = json.dumps(final).encode()
    await play(*scripted, "/api/generate", JSON, [body], "one_write", "complete", 0)
    proxy = scripted[1]
    labels = {"endpoint": "/api/generate", "model": "llama3.2:latest"}
    below_inf = proxy.value("ollama_prompt_tokens_per_second_bucket", le="1000000.0", **labels)
    above_old_top = below_inf - proxy.value("ollama_prompt_tokens_per_second_bucket", le="50000.0", **labels)
    assert below_inf == 1 and above_old_top == 1
