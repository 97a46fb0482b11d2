"""A fake Ollama that really queues, as Ollama's runners do: each model serves ``slots`` requests at once and the
rest wait for a slot without bound; durations are reported as Ollama reports them (ollama-api.md §3.4), and the
wait each request really had is noted, so the proxy's estimates can be checked against it."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict

from aiohttp import web

from tests.conftest import serve_app

BUSY = {"error": "server busy, please try again.  maximum pending requests exceeded"}


class QueuingOllama:
    def __init__(self, slots: int = 1, tokens: int = 4, token_seconds: float = 0.02, prompt_seconds: float = 0.01,
                 max_waiting: int | None = None) -> None:
        self.slots = slots
        self.tokens = tokens
        self.token_seconds = token_seconds
        self.prompt_seconds = prompt_seconds
        self.max_waiting = max_waiting
        self.waits: list[float] = []  # the slot wait each request really had, seconds
        self.waiting = 0
        self._slots: dict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(self.slots))
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> QueuingOllama:
        app = web.Application()
        app.router.add_post("/api/chat", self._chat)
        app.router.add_get("/api/{state:version|ps|tags}", self._state)
        self._runner, self.url = await serve_app(app, handler_cancellation=True)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.6"} if request.path.endswith("version") else {"models": []})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        entered = time.perf_counter()  # Ollama takes total_duration's start at handler entry
        body = await request.json()
        model = body["model"]
        if self.max_waiting is not None and self.waiting >= self.max_waiting:
            return web.json_response(BUSY, status=503)
        loaded = time.perf_counter()  # the scheduler hands back the (already loaded) runner: load_duration
        slot = self._slots[model]
        self.waiting += 1
        try:
            await slot.acquire()  # the wait for a parallel slot, reported nowhere by Ollama
        finally:
            self.waiting -= 1
        try:
            started = time.perf_counter()
            self.waits.append(started - loaded)
            return await self._generate(request, model, entered, loaded, started)
        finally:
            slot.release()

    async def _generate(self, request: web.Request, model: str, entered: float, loaded: float,
                        started: float) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await asyncio.sleep(self.prompt_seconds)
        evaluated = time.perf_counter()
        for _ in range(self.tokens):
            await asyncio.sleep(self.token_seconds)
            line = {"model": model, "created_at": "2026-11-28T12:00:00Z",
                    "message": {"role": "assistant", "content": " x"}, "done": False}
            await response.write(json.dumps(line).encode() + b"\n")
        done = time.perf_counter()
        final = {"model": model, "created_at": "2026-11-28T12:00:00Z", "message": {"role": "assistant", "content": ""},
                 "done": True, "done_reason": "stop", "total_duration": int((done - entered) * 1e9),
                 "load_duration": int((loaded - entered) * 1e9), "prompt_eval_count": 10,
                 "prompt_eval_duration": int((evaluated - started) * 1e9), "eval_count": self.tokens,
                 "eval_duration": int((done - evaluated) * 1e9)}
        await response.write(json.dumps(final).encode() + b"\n")
        await response.write_eof()
        return response
