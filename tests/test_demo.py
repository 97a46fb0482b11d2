"""``make demo``: with no Ollama at all, the dashboard page and /metrics fill within seconds."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).parent.parent


def ctrl_c_stops() -> None:
    """A shell without job control starts background commands with SIGINT ignored, and children inherit that
    (make test run with `&`): give the demo Ctrl-C as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_the_demo_fills_the_dashboard_and_metrics_within_seconds() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "demo.run", "--port", "0", "--metrics-port", "0", "--seconds", "60", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, preexec_fn=ctrl_c_stops)
    assert process.stdout is not None and process.stderr is not None
    try:
        printed = b""
        while b"/-/dashboard" not in printed:
            line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
            assert line, "the demo did not start"
            printed += line
        found = re.search(rb"http://([\d.:]+)/-/dashboard", printed)
        assert found is not None
        metrics = f"http://{found[1].decode()}"
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as http:
            while True:
                async with http.get(metrics + "/-/models") as response:
                    models = {m["name"] for m in (await response.json())["models"]}
                async with http.get(metrics + "/-/stats") as response:
                    stats = await response.json()
                if len(models) >= 3 and stats["requests"] >= 6:
                    break
                assert time.monotonic() < deadline, (models, stats)
                await asyncio.sleep(0.5)
            async with http.get(metrics + "/metrics") as response:
                text = await response.text()
            async with http.get(metrics + "/-/dashboard") as response:
                assert response.status == 200
        assert "ollama_requests_total{" in text and 'ollama_models_installed 4.0' in text
        assert re.search(r'ollama_generation_tokens_total\{[^}]*\} [1-9]', text)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
        except TimeoutError:
            process.kill()  # reaped here, not left to a later test's event loop
            await process.communicate()
            raise
    assert b"Traceback" not in stderr, stderr.decode()[-2000:]
