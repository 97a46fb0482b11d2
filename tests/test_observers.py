"""The incremental parsers, on every recorded stream, at every split point, and on hostile input."""

from __future__ import annotations

import itertools
import json

import pytest

from ollama_metrics_proxy.endpoints import Dialect
from ollama_metrics_proxy.observe import Observation, observer_for
from ollama_metrics_proxy.observe.extract import find_model
from ollama_metrics_proxy.observe.json_body import JsonBodyObserver
from ollama_metrics_proxy.observe.lines import LineBuffer
from ollama_metrics_proxy.observe.ndjson import NdjsonObserver
from tests.fake_ollama import BODIES, JSON, NDJSON, SSE, STREAMS, rec


def observe(endpoint: str, name: str, pieces: list[bytes]) -> Observation:
    recording = rec(name)
    observer = observer_for(endpoint, 200, recording.content_type, clock=lambda: 1.0)
    for piece in pieces:
        observer.feed(piece)
    return observer.close()


def splits(data: bytes, parts: int) -> list[list[bytes]]:
    """Every way of cutting ``data`` into ``parts`` non-empty pieces (for 3 parts, every pair of cut points)."""
    cuts = itertools.combinations(range(1, len(data)), parts - 1)
    return [[data[a:b] for a, b in itertools.pairwise((0, *points, len(data)))] for points in cuts]


@pytest.mark.parametrize(("name", "endpoint"), sorted({**STREAMS, **BODIES}.items()))
def test_every_two_way_split_gives_the_same_result(name: str, endpoint: str) -> None:
    body = rec(name).body
    whole = observe(endpoint, name, [body]).comparable()
    for pieces in splits(body, 2):
        assert observe(endpoint, name, pieces).comparable() == whole, pieces


@pytest.mark.parametrize(("name", "endpoint"), sorted(STREAMS.items()))
def test_every_three_way_split_gives_the_same_result(name: str, endpoint: str) -> None:
    body = rec(name).body
    whole = observe(endpoint, name, rec(name).chunks).comparable()
    step = max(1, len(body) // 200)  # every pair of cut points on a grid, plus every cut next to a newline
    points = sorted(set(range(1, len(body), step)) | {i + d for i, c in enumerate(body) if c == 10
                                                         for d in (0, 1) if 0 < i + d < len(body)})
    for a, b in itertools.combinations(points, 2):
        pieces = [body[:a], body[a:b], body[b:]]
        assert observe(endpoint, name, pieces).comparable() == whole, (a, b)


def _final_native(name: str) -> dict[str, object]:
    """The oracle: the done:true line, parsed with the standard library."""
    lines = [json.loads(line) for line in rec(name).body.splitlines() if line.strip()]
    return next(line for line in lines if line.get("done") is True)


@pytest.mark.parametrize("name", ["generate_stream.ndjson", "chat_stream.ndjson", "chat_tool_stream.ndjson"])
def test_native_stream_reports_what_the_final_line_says(name: str) -> None:
    final = _final_native(name)
    obs = observe("/api/chat", name, rec(name).chunks)
    assert obs.complete and obs.error is None
    assert obs.model == final["model"]
    assert obs.prompt_tokens == final["prompt_eval_count"]
    assert obs.generation_tokens == final["eval_count"]
    assert obs.eval_seconds == final["eval_duration"] / 1e9  # type: ignore[operator]
    assert obs.load_seconds == final["load_duration"] / 1e9  # type: ignore[operator]
    assert obs.total_seconds == final["total_duration"] / 1e9  # type: ignore[operator]
    assert obs.finish_reason == final["done_reason"]
    assert obs.content_chunks == len(rec(name).chunks) - 1


def test_thinking_and_tool_call_chunks_count_as_content_and_nested_done_is_not_final() -> None:
    # The tool call's arguments contain "done":true; that must not end the stream early.
    obs = observe("/api/chat", "chat_tool_stream.ndjson", rec("chat_tool_stream.ndjson").chunks)
    assert obs.content_chunks == 2
    assert obs.generation_tokens == 15


def test_midstream_error_line_is_an_error_and_incomplete() -> None:
    obs = observe("/api/generate", "generate_midstream_error.ndjson", rec("generate_midstream_error.ndjson").chunks)
    assert obs.error == "an error was encountered while running the model: unexpected EOF"
    assert not obs.complete
    assert obs.content_chunks == 2


def test_openai_stream_usage_and_finish() -> None:
    obs = observe("/v1/chat/completions", "openai_chat_stream.sse", rec("openai_chat_stream.sse").chunks)
    usage = json.loads(rec("openai_chat_stream.sse").body.split(b"data: ")[4].strip())["usage"]
    assert obs.complete
    assert (obs.prompt_tokens, obs.generation_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert obs.finish_reason == "stop"
    assert obs.content_chunks == 2


def test_openai_completions_takes_the_last_usage_not_the_zero_ones() -> None:
    obs = observe("/v1/completions", "openai_completions_stream.sse", rec("openai_completions_stream.sse").chunks)
    assert (obs.prompt_tokens, obs.generation_tokens) == (12, 1)
    assert obs.content_chunks == 1


def test_openai_stream_without_done_is_incomplete() -> None:
    obs = observe("/v1/chat/completions", "openai_chat_midstream_error.sse",
                  rec("openai_chat_midstream_error.sse").chunks)
    assert not obs.complete
    assert obs.content_chunks == 1


def test_anthropic_stream() -> None:
    obs = observe("/v1/messages", "anthropic_stream.sse", rec("anthropic_stream.sse").chunks)
    assert obs.complete and obs.model == "llama3.2"
    assert (obs.prompt_tokens, obs.generation_tokens, obs.finish_reason) == (14, 7, "end_turn")
    assert obs.content_chunks == 2


def test_responses_stream() -> None:
    obs = observe("/v1/responses", "responses_stream.sse", rec("responses_stream.sse").chunks)
    assert obs.complete and obs.model == "llama3.2"
    assert (obs.prompt_tokens, obs.generation_tokens, obs.cached_tokens) == (27, 3, 5)
    assert obs.content_chunks == 2


@pytest.mark.parametrize(("name", "endpoint"), sorted(BODIES.items()))
def test_json_bodies_match_the_standard_library(name: str, endpoint: str) -> None:
    body = json.loads(rec(name).body)
    obs = observe(endpoint, name, [rec(name).body])
    usage = body.get("usage", {})
    prompt = body.get("prompt_eval_count", usage.get("prompt_tokens", usage.get("input_tokens")))
    generated = body.get("eval_count", usage.get("completion_tokens", usage.get("output_tokens")))
    vectors = body.get("embeddings", body.get("data"))
    assert obs.complete
    assert (obs.prompt_tokens, obs.generation_tokens) == (prompt, generated)
    if vectors is not None:
        assert obs.embedding_inputs == len(vectors)
    assert obs.content_chunks == 0


def test_large_embedding_reply_is_measured_without_being_kept() -> None:
    vectors = [[0.125] * 768 for _ in range(400)]
    reply = {"model": "all-minilm", "embeddings": vectors, "total_duration": 5_000_000,
             "load_duration": 1_000_000, "prompt_eval_count": 1234}
    body = json.dumps(reply, separators=(",", ":")).encode()
    assert len(body) > 1024 * 1024
    observer = JsonBodyObserver(Dialect.NATIVE)
    for at in range(0, len(body), 4093):
        observer.feed(body[at : at + 4093])
    obs = observer.close()
    assert (obs.model, obs.prompt_tokens, obs.embedding_inputs) == ("all-minilm", 1234, 400)
    assert obs.total_seconds == 0.005
    assert len(observer._body) == 0


@pytest.mark.parametrize("garbage", [
    b"\x00\xff\xfe binary \x89PNG\r\n\x1a\n" * 50,
    b'{"done":true, this is not json}\n',
    b'{"model":"x","response":"a","done":false}\n{"error": 42}\n[1,2,3]\n"str"\nnull\n',
    b"data: {not json}\n\ndata: [DONE]\n\n",
    b"\n\n\n",
])
@pytest.mark.parametrize(("content_type", "endpoint"), [
    (NDJSON, "/api/generate"), (SSE, "/v1/chat/completions"), (SSE, "/v1/messages"),
    (SSE, "/v1/responses"), (JSON, "/api/chat"),
])
def test_malformed_bytes_never_raise(garbage: bytes, content_type: str, endpoint: str) -> None:
    observer = observer_for(endpoint, 200, content_type)
    for piece in (garbage[:7], garbage[7:]):
        observer.feed(piece)
    observer.close()  # must not raise; what it learned is best effort


def test_final_line_missing_means_incomplete_and_tokens_come_from_chunks() -> None:
    chunks = rec("generate_stream.ndjson").chunks[:-1]
    obs = observe("/api/generate", "generate_stream.ndjson", chunks)
    assert not obs.complete
    assert obs.generation_tokens is None and obs.content_chunks == 3


def test_huge_line_is_dropped_and_counted_with_bounded_memory() -> None:
    buffer = LineBuffer(max_line=1000)
    assert buffer.feed(b"x" * 600) == b""
    assert buffer.feed(b"y" * 600) == b""  # over the limit: dropped
    assert buffer.oversized == 1
    assert buffer.feed(b"z" * 5000) == b""  # still inside the dropped line, nothing kept
    assert buffer.feed(b"tail\nnext line\nrest") == b"next line\n"
    assert buffer.close() == b"rest"


def test_blocks_of_whole_lines_come_back_without_copying() -> None:
    buffer = LineBuffer()
    chunk = b"a\nb\n"
    assert buffer.feed(chunk) is chunk
    assert buffer.feed(b"c\nd") == b"c\n"
    assert buffer.feed(b"e\nf\n") == b"de\nf\n"


@pytest.mark.parametrize(("name", "endpoint"), sorted(STREAMS.items()))
def test_one_block_and_line_by_line_agree(name: str, endpoint: str) -> None:
    """The counting fast path (the whole stream as one read) and the line path (a byte at a time) agree."""
    body = rec(name).body
    whole = observe(endpoint, name, [body]).comparable()
    bytewise = observe(endpoint, name, [body[i : i + 1] for i in range(len(body))]).comparable()
    assert whole == bytewise


def test_batched_token_lines_take_the_fast_path_and_count_each_token() -> None:
    """Many token lines in one read (a busy relay) are counted, with zero gaps between them."""
    lines = rec("generate_stream.ndjson").chunks
    observer = NdjsonObserver(clock=lambda: 5.0)
    observer.feed(lines[0])  # the first line names the model
    observer.feed(b"".join(lines[1:3] * 50))  # 100 token lines in one read
    observer.feed(lines[3])
    obs = observer.close()
    assert obs.content_chunks == 101 and obs.complete
    assert obs.gaps.observations == 100 and obs.gaps.counts[0] == 100


def test_stream_observer_times_first_content_and_gaps() -> None:
    now = iter([10.0, 10.5, 10.6, 11.0])
    observer = NdjsonObserver(clock=lambda: next(now))
    for chunk in rec("generate_stream.ndjson").chunks:
        observer.feed(chunk)
    obs = observer.close()
    assert obs.first_content_at == 10.0
    assert obs.gaps.observations == 2
    assert obs.gaps.total == pytest.approx(0.6)


@pytest.mark.parametrize(("raw", "model"), [
    (b'{"model":"llama3.2","prompt":"x"}', "llama3.2"),
    (b'{"model" : "spaced:tag"}', "spaced:tag"),
    (b'{"tools":[{"parameters":{"model":{"type":"string"}}}],"model":"q"}', "q"),  # a nested key, not a string
    (b'{"model":"we\\"ird"}', 'we"ird'),
    (b'{"model":"caf\\u00e9"}', "caf\u00e9"),
    (b'{"prompt":"no model here"}', None),
    (b'{"model":""}', None),
])
def test_model_is_found_without_parsing_the_body(raw: bytes, model: str | None) -> None:
    assert find_model(raw) == model
