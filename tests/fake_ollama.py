"""A fake Ollama: a real aiohttp server on port 0 replaying recorded payloads from ``tests/recordings``.

It answers like Ollama does (content types, streaming one line per flush, 404 for unknown models) and has
knobs for the failure cases a proxy must survive: a delay per chunk, dying mid-stream, and a gate that holds
the rest of a stream until the test opens it. It also notes when a client's connection went away.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

RECORDINGS = Path(__file__).parent / "recordings"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
JSON = "application/json; charset=utf-8"
UNKNOWN_MODEL = "llama3"  # the recorded 404 names this model


@dataclass(frozen=True)
class Recording:
    name: str
    content_type: str
    status: int = 200
    data: bytes | None = None  # a reply made up by the test instead of a recorded file
    pieces: tuple[bytes, ...] | None = None  # how a made-up reply is flushed, when not as Ollama would

    @property
    def body(self) -> bytes:
        return self.data if self.data is not None else (RECORDINGS / self.name).read_bytes()

    @property
    def chunks(self) -> list[bytes]:
        """How Ollama flushes it: one NDJSON line or one SSE event per chunk; JSON in one piece."""
        if self.pieces is not None:
            return list(self.pieces)
        body = self.body
        if self.content_type == NDJSON:
            return body.splitlines(keepends=True)
        if self.content_type == SSE:
            return [event + b"\n\n" for event in body.split(b"\n\n") if event]
        return [body]


def rec(name: str, status: int = 200) -> Recording:
    suffix = Path(name).suffix
    content_type = {".ndjson": NDJSON, ".sse": SSE}.get(suffix, JSON)
    return Recording(name, content_type, status)


# (path, streamed?) -> what Ollama would send. "Streamed" follows each route's default.
ROUTES: dict[tuple[str, bool], Recording] = {
    ("/api/generate", True): rec("generate_stream.ndjson"),
    ("/api/generate", False): rec("generate.json"),
    ("/api/chat", True): rec("chat_stream.ndjson"),
    ("/api/chat", False): rec("chat.json"),
    ("/api/embed", False): rec("embed.json"),
    ("/api/embeddings", False): rec("embeddings_legacy.json"),
    ("/api/pull", True): rec("pull_progress.ndjson"),
    ("/api/show", False): rec("show.json"),
    ("/api/tags", False): rec("tags.json"),
    ("/api/ps", False): rec("ps.json"),
    ("/api/version", False): rec("version.json"),
    ("/v1/chat/completions", True): rec("openai_chat_stream.sse"),
    ("/v1/chat/completions", False): rec("openai_chat.json"),
    ("/v1/completions", True): rec("openai_completions_stream.sse"),
    ("/v1/embeddings", False): rec("openai_embeddings.json"),
    ("/v1/responses", True): rec("responses_stream.sse"),
    ("/v1/messages", True): rec("anthropic_stream.sse"),
    ("/v1/messages", False): rec("anthropic.json"),
}
# OpenAI-compatible streams as Ollama sends them when the client did not ask for usage (ROUTES has them with it).
WITHOUT_USAGE: dict[str, Recording] = {
    "/v1/chat/completions": rec("openai_chat_stream_no_usage.sse"),
    "/v1/completions": rec("openai_completions_stream_no_usage.sse"),
}
# Every recorded reply and the endpoint that produces it: streams, then whole JSON bodies. The observer tests and
# the ground-truth suite both go through all of them.
STREAMS = {
    "generate_stream.ndjson": "/api/generate",
    "chat_stream.ndjson": "/api/chat",
    "chat_tool_stream.ndjson": "/api/chat",
    "generate_midstream_error.ndjson": "/api/generate",
    # Ollama 0.33's shapes: thinking before the answer, cached prompt tokens, tool calls on the done line after a
    # silence (the llama-server path), a cloud model's remote_model and remote_host, logprobs on every chunk.
    "chat_thinking_stream.ndjson": "/api/chat",
    "generate_thinking_stream.ndjson": "/api/generate",
    "chat_tool_done_line.ndjson": "/api/chat",
    "chat_cloud_stream.ndjson": "/api/chat",
    "generate_logprobs_stream.ndjson": "/api/generate",
    "generate_stream_garbage_line.ndjson": "/api/generate",  # a line that is not JSON: a parse error, no token
    "pull_progress.ndjson": "/api/pull",
    "openai_chat_stream.sse": "/v1/chat/completions",
    "openai_chat_stream_no_usage.sse": "/v1/chat/completions",
    "openai_chat_tool_stream_no_usage.sse": "/v1/chat/completions",
    "openai_completions_stream.sse": "/v1/completions",
    "openai_completions_stream_no_usage.sse": "/v1/completions",
    "openai_chat_midstream_error.sse": "/v1/chat/completions",
    "anthropic_stream.sse": "/v1/messages",
    "anthropic_stream_error.sse": "/v1/messages",
    "responses_stream.sse": "/v1/responses",
}
BODIES = {
    "generate.json": "/api/generate",
    "generate_load.json": "/api/generate",
    "generate_unload.json": "/api/generate",
    "chat.json": "/api/chat",
    "embed.json": "/api/embed",
    "embeddings_legacy.json": "/api/embeddings",
    "openai_chat.json": "/v1/chat/completions",
    "openai_embeddings.json": "/v1/embeddings",
    "anthropic.json": "/v1/messages",
}
STREAM_BY_DEFAULT = frozenset({"/api/generate", "/api/chat", "/api/pull", "/api/push", "/api/create"})
NOT_FOUND = rec("not_found.json", 404)


@dataclass
class SeenRequest:
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeOllama:
    delay: float = 0.0  # seconds before each chunk after the first
    die_after: int | None = None  # cut the connection after this many chunks
    gate: asyncio.Event | None = None  # when set up, the stream pauses after its first chunk until opened
    gated_paths: set[str] | None = None  # the gate holds only these paths (None: every path)
    headers_gate: asyncio.Event | None = None  # when set up, nothing is sent until opened (a queued request)
    eof_delay: float = 0.0  # seconds between the last chunk and the end of the body (the chunked terminator)
    override: dict[str, Recording] = field(default_factory=dict)  # path -> recording, whatever the request
    seen: list[SeenRequest] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)  # perf_counter times a client went away mid-reply
    blob_bytes: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("POST", "/api/blobs/{digest}", self._blob)
        app.router.add_route("HEAD", "/api/blobs/{digest}", self._blob_head)
        app.router.add_route("DELETE", "/api/delete", self._empty)
        app.router.add_route("POST", "/api/copy", self._empty)
        app.router.add_route("*", "/echo/{tail:.*}", self._echo)
        app.router.add_route("*", "/{tail:.*}", self._replay)
        return app

    async def start(self) -> FakeOllama:
        # handler_cancellation lets a handler notice at once that the proxy closed the connection.
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def recording_for(self, path: str, body: bytes) -> Recording | None:
        if path in self.override:
            return self.override[path]
        request = _json_object(body)
        if request.get("model") == UNKNOWN_MODEL:
            return NOT_FOUND
        streamed = request.get("stream", path in STREAM_BY_DEFAULT)
        if streamed and path in WITHOUT_USAGE and not _asks_for_usage(request):
            return WITHOUT_USAGE[path]  # as Ollama: no usage anywhere unless stream_options.include_usage
        return ROUTES.get((path, bool(streamed))) or ROUTES.get((path, False)) or ROUTES.get((path, True))

    async def _replay(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self._note(request, body)
        recording = self.recording_for(request.path, body)
        if recording is None:
            return web.Response(status=404, text="404 page not found")
        response = web.StreamResponse(status=recording.status, headers={"Content-Type": recording.content_type})
        if recording.content_type == JSON and self.gate is None and self.die_after is None:
            response.content_length = len(recording.body)
        try:
            if self.headers_gate is not None:
                await self.headers_gate.wait()
            await response.prepare(request)
            await self._stream(request, response, recording.chunks)
        except asyncio.CancelledError:
            self.disconnects.append(time.perf_counter())
            raise
        return response

    async def _stream(self, request: web.Request, response: web.StreamResponse, chunks: list[bytes]) -> None:
        for index, chunk in enumerate(chunks):
            if self.die_after is not None and index == self.die_after:
                assert request.transport is not None
                request.transport.abort()  # no terminating chunk: the reply is cut off
                return
            if index and self.delay:
                await asyncio.sleep(self.delay)
            if index == 1 and self.gate is not None and (self.gated_paths is None or request.path in self.gated_paths):
                await self.gate.wait()
            await response.write(chunk)
        if self.eof_delay:
            await asyncio.sleep(self.eof_delay)
        await response.write_eof()

    async def _blob(self, request: web.Request) -> web.Response:
        self._note(request, b"")
        digest = hashlib.sha256()
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            self.blob_bytes += len(chunk)
        expected = request.match_info["digest"]
        if expected != "sha256:" + digest.hexdigest():
            message = f"digest mismatch, expected {expected!r}, got 'sha256:{digest.hexdigest()}'"
            return web.json_response({"error": message}, status=400)
        return web.Response(status=201)

    async def _blob_head(self, request: web.Request) -> web.Response:
        self._note(request, b"")
        return web.Response(status=404, content_type="application/json")

    async def _empty(self, request: web.Request) -> web.Response:
        self._note(request, await request.read())
        return web.Response(status=200)

    async def _echo(self, request: web.Request) -> web.Response:
        """Reflects what arrived, for header and query-string forwarding tests."""
        body = await request.read()
        self._note(request, body)
        return web.json_response({"path_qs": request.path_qs, "raw_path": request.raw_path,
                                  "headers": dict(request.headers), "body_length": len(body)})

    def _note(self, request: web.Request, body: bytes) -> None:
        self.seen.append(SeenRequest(request.method, request.raw_path, dict(request.headers), body))


def _asks_for_usage(request: dict[str, object]) -> bool:
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _json_object(body: bytes) -> dict[str, object]:
    try:
        value = json.loads(body) if body else {}
    except (ValueError, RecursionError):  # nested too deep for Python's parser: a body no test asks about
        return {}
    return value if isinstance(value, dict) else {}
