"""A stand-in Ollama for trying the proxy without one: it answers like Ollama, at a believable pace.

It echoes the model each request names, answers /api/generate as generate (``response``) and /api/chat as chat
(``message``), streams NDJSON and OpenAI SSE one token per chunk at a model's own speed, reports Ollama's
timings and counts in the final object, embeds, lists its models in /api/tags and /api/ps, and answers a model
it does not know with Ollama's 404. It is for looking at the dashboard, not for measuring anything.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass

from aiohttp import web

SENTENCE = ("The sky looks blue because air scatters short wavelengths of sunlight more than long ones, so blue "
            "light reaches your eyes from every direction of the sky.")
WORDS = SENTENCE.split(" ")


@dataclass(frozen=True)
class Model:
    name: str
    tokens_per_second: float
    family: str
    parameter_size: str
    embedding: bool = False


MODELS = {model.name: model for model in (
    Model("llama3.2:latest", 55.0, "llama", "3.2B"),
    Model("qwen3:8b", 32.0, "qwen3", "8.2B"),
    Model("gemma3:12b", 21.0, "gemma3", "12.2B"),
    Model("all-minilm:latest", 0.0, "bert", "23M", embedding=True),
)}


def _model(name: object) -> Model | None:
    if not isinstance(name, str):
        return None
    return MODELS.get(name) or MODELS.get(f"{name}:latest")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def _final(model: Model, tokens: int, started: float, prompt: int) -> dict[str, object]:
    total = int((time.perf_counter() - started) * 1e9)
    return {"done": True, "done_reason": "stop", "total_duration": total, "load_duration": 2_000_000,
            "prompt_eval_count": prompt, "prompt_eval_duration": prompt * 400_000,
            "eval_count": tokens, "eval_duration": int(tokens / model.tokens_per_second * 1e9)}


async def _json(request: web.Request) -> dict[str, object]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _not_found(name: object) -> web.Response:
    return web.json_response({"error": f"model '{name}' not found"}, status=404)


async def generate(request: web.Request) -> web.StreamResponse:
    return await _native(request, chat=request.path == "/api/chat")


async def _native(request: web.Request, *, chat: bool) -> web.StreamResponse:
    body = await _json(request)
    model = _model(body.get("model"))
    if model is None or model.embedding:
        return _not_found(body.get("model"))
    started, tokens, prompt = time.perf_counter(), random.randint(20, 80), random.randint(12, 400)

    def piece(text: str) -> dict[str, object]:
        content = {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
        return {"model": model.name, "created_at": _now(), **content}

    if body.get("stream", True) is False:
        await asyncio.sleep(tokens / model.tokens_per_second)
        text = " ".join(random.choice(WORDS) for _ in range(tokens))
        return web.json_response({**piece(text), **_final(model, tokens, started, prompt)})
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    await asyncio.sleep(prompt / 2000)  # prompt evaluation
    for _ in range(tokens):
        await response.write(json.dumps({**piece(" " + random.choice(WORDS)), "done": False}).encode() + b"\n")
        await asyncio.sleep(1 / model.tokens_per_second)
    await response.write(json.dumps({**piece(""), **_final(model, tokens, started, prompt)}).encode() + b"\n")
    await response.write_eof()
    return response


async def openai_chat(request: web.Request) -> web.StreamResponse:
    body = await _json(request)
    model = _model(body.get("model"))
    if model is None or model.embedding:
        return web.json_response({"error": {"message": f"model '{body.get('model')}' not found",
                                            "type": "not_found_error"}}, status=404)
    tokens, prompt = random.randint(20, 80), random.randint(12, 400)
    chunk = {"id": f"chatcmpl-{random.randint(0, 998)}", "object": "chat.completion.chunk",
             "created": int(time.time()), "model": model.name, "system_fingerprint": "fp_ollama"}
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)

    async def event(payload: object) -> None:
        await response.write(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")

    for index in range(tokens):
        delta = {"role": "assistant", "content": " " + random.choice(WORDS)} if index == 0 else {
            "content": " " + random.choice(WORDS)}
        await event({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        await asyncio.sleep(1 / model.tokens_per_second)
    await event({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        await event({**chunk, "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": tokens,
                                                       "total_tokens": prompt + tokens}})
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def embed(request: web.Request) -> web.Response:
    body = await _json(request)
    model = _model(body.get("model"))
    if model is None or not model.embedding:
        return _not_found(body.get("model"))
    inputs = body.get("input")
    count = len(inputs) if isinstance(inputs, list) else 1
    await asyncio.sleep(0.01 * count)
    vectors = [[round(random.uniform(-0.1, 0.1), 6) for _ in range(8)] for _ in range(count)]
    return web.json_response({"model": model.name, "embeddings": vectors, "total_duration": 10_000_000 * count,
                              "load_duration": 1_000_000, "prompt_eval_count": 6 * count})


def _listing(model: Model) -> dict[str, object]:
    return {"name": model.name, "model": model.name, "size": 2_000_000_000, "digest": "0" * 64,
            "details": {"format": "gguf", "family": model.family, "parameter_size": model.parameter_size,
                        "quantization_level": "Q4_K_M"}}


async def tags(request: web.Request) -> web.Response:
    return web.json_response({"models": [_listing(model) for model in MODELS.values()]})


async def ps(request: web.Request) -> web.Response:
    loaded = [m for m in MODELS.values() if m.name in ("llama3.2:latest", "qwen3:8b")]
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 300))
    return web.json_response({"models": [{**_listing(m), "size_vram": 1_800_000_000, "expires_at": expires,
                                          "context_length": 4096} for m in loaded]})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": "0.12.6-demo"})


def application() -> web.Application:
    app = web.Application()
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/chat", generate)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/v1/chat/completions", openai_chat)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_get("/api/version", version)
    return app
