"""``make demo``: the stand-in Ollama, the proxy in front of it, and a little varied traffic, so the dashboard
page and /metrics fill within seconds. Nothing of it touches your own request log (it lives in a temporary
directory for the run). Ctrl-C stops everything.

    python -m demo.run [--port 11435] [--metrics-port 9934] [--seconds N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import tempfile

import aiohttp
from aiohttp import web

from demo.standin import application
from ollama_metrics_proxy.app.logs import setup_logging
from ollama_metrics_proxy.app.server import start
from ollama_metrics_proxy.config import Config, HostPort

log = logging.getLogger("demo")
CHAT = [{"role": "user", "content": "Why is the sky blue?"}]
# (weight, method path, body): what a small team's traffic might look like, errors and a leaver included.
TRAFFIC = [
    (5, "/api/chat", {"model": "llama3.2", "messages": CHAT}),
    (3, "/api/generate", {"model": "qwen3:8b", "prompt": "Why is the sky blue?"}),
    (2, "/api/generate", {"model": "gemma3:12b", "prompt": "Write a haiku.", "stream": False}),
    (3, "/v1/chat/completions", {"model": "llama3.2", "messages": CHAT, "stream": True}),
    (2, "/api/embed", {"model": "all-minilm", "input": ["a", "b", "c"]}),
    (1, "/api/chat", {"model": "mistral", "messages": CHAT}),  # not installed: a client error
]


async def client(base: str, leave_early: float) -> None:
    weights = [weight for weight, _, _ in TRAFFIC]
    async with aiohttp.ClientSession() as http:
        while True:
            _, path, body = random.choices(TRAFFIC, weights)[0]
            try:
                async with http.post(base + path, json=body) as response:
                    if random.random() < leave_early:
                        await response.content.readline()  # a user closes the tab mid-answer
                        response.close()
                    else:
                        await response.read()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(random.uniform(0.2, 1.5))


async def main(port: int, metrics_port: int, seconds: float | None) -> None:
    standin = web.AppRunner(application(), access_log=None, handler_cancellation=True)  # a proxy that hangs up
    await standin.setup()
    site = web.TCPSite(standin, "127.0.0.1", 0)
    await site.start()
    upstream = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory(prefix="ollama-metrics-proxy-demo-") as data:
        config = Config(upstream=upstream, listen=HostPort("127.0.0.1", port),
                        metrics_listen=HostPort("127.0.0.1", metrics_port), log_db=f"{data}/requests.sqlite3",
                        ollama_poll_interval=2.0, gpu="off", client_header="X-User")
        running = await start(config)
        api, metrics = running.proxy_address, running.metrics_address
        print(f"demo: a stand-in Ollama at {upstream}, the proxy in front of it on http://{api}\n"
              f"demo: dashboard  http://{metrics}/-/dashboard\n"
              f"demo: metrics    http://{metrics}/metrics\n"
              f"demo: try it     curl http://{api}/api/generate -d '{{\"model\": \"llama3.2\", \"prompt\": \"Hi\"}}'\n"
              "demo: Ctrl-C stops", flush=True)
        clients = [asyncio.create_task(client(f"http://{api}", leave_early=0.05)) for _ in range(4)]
        try:
            if seconds is None:
                await asyncio.Event().wait()
            else:
                await asyncio.sleep(seconds)
        finally:
            for task in clients:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
            await running.stop()
            await standin.cleanup()


def cli() -> None:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=11435, help="the proxy's API port (default 11435)")
    parser.add_argument("--metrics-port", type=int, default=9934, help="the dashboard and /metrics (default 9934)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: Ctrl-C)")
    args = parser.parse_args()
    setup_logging("warning", "text")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.port, args.metrics_port, args.seconds))


if __name__ == "__main__":
    cli()
