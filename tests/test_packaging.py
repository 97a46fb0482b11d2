"""The wheel users install (``pipx install``, ``pip install``): built with ``python -m build``, installed into a
clean virtual environment, started from outside the checkout, it relays a request and serves its page."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import venv
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import started_addresses
from tests.fake_ollama import FakeOllama, rec

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The command from a freshly built wheel in a new virtual environment (dependencies from the package index
    or pip's cache, as a user would get them)."""
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    [wheel] = out.glob("ollama_metrics_proxy-*.whl")
    environment = out / "venv"
    venv.create(environment, with_pip=True)
    install = subprocess.run([str(environment / "bin/python"), "-m", "pip", "install", "--quiet", str(wheel)],
                             capture_output=True, text=True, timeout=300, check=False)
    assert install.returncode == 0, install.stderr[-2000:]
    return environment / "bin/ollama-metrics-proxy"


async def test_the_installed_wheel_starts_relays_and_serves_its_page(
    installed: Path, fake: FakeOllama, tmp_path: Path,
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OLLAMA")}
    process = await asyncio.create_subprocess_exec(
        str(installed), "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--upstream", fake.url,
        "--gpu", "off", "--log-db", str(tmp_path / "log.sqlite3"), env=env, cwd=tmp_path,  # not the checkout
        stderr=asyncio.subprocess.PIPE)
    try:
        api, metrics = await started_addresses(process)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://{api}/api/generate", json={"model": "llama3.2"}) as response:
                assert await response.read() == rec("generate_stream.ndjson").body
            for path in ("/-/dashboard", "/-/static/dashboard.js", "/-/static/dashboard.css", "/"):
                async with http.get(f"http://{metrics}{path}") as response:
                    assert response.status == 200 and len(await response.read()) > 100, path
            async with http.get(f"http://{metrics}/metrics") as response:
                assert 'ollama_requests_total{endpoint="/api/generate"' in await response.text()
    finally:
        process.terminate()
        await process.wait()
    assert not str(installed).startswith(str(ROOT))  # the command is the installed one, not the checkout
