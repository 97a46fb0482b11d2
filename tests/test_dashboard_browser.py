"""The dashboard page in a real headless Chromium (Debian's package), driven by Playwright.

The page must load with no console errors, show the figures the JSON API returns after traffic, work before any
traffic and with the request log off; a screenshot is saved under test-artifacts/ for people to look at.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from ollama_metrics_proxy.app.server import start
from ollama_metrics_proxy.telemetry.collectors import Samplers
from tests.conftest import ProxyUnderTest, config_for
from tests.fake_ollama import UNKNOWN_MODEL, FakeOllama

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
# Quiet, offline Chromium: without these it tries to reach Google's services at every start.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="chromium missing: install Debian's chromium package (make test does, as root)")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    assert CHROMIUM is not None, "CI must have chromium: make test installs Debian's chromium package"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


async def open_dashboard(browser: Any, proxy: ProxyUnderTest) -> tuple[Any, list[str]]:
    page = await browser.new_page(viewport={"width": 1400, "height": 1200})
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    await page.goto(proxy.metrics_url + "/-/dashboard")
    await page.wait_for_selector("body[data-loaded='true']", timeout=15_000)
    return page, problems


async def wait_for_rows(page: Any, selector: str, count: int) -> None:
    """Polls from the test (the page's Content-Security-Policy forbids the eval behind wait_for_function)."""
    for _ in range(300):
        if await page.locator(selector).count() == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{selector}: expected {count} rows, found {await page.locator(selector).count()}")


async def test_dashboard_shows_the_api_figures(
    fake: FakeOllama, tmp_path: Path, browser: Any, http: aiohttp.ClientSession,
) -> None:
    config = config_for(fake.url, log_db=str(tmp_path / "log.sqlite3"))
    proxy = ProxyUnderTest(await start(config, registry=CollectorRegistry(), samplers=Samplers()))
    try:
        page, problems = await open_dashboard(browser, proxy)
        assert await page.is_visible("#empty")  # no traffic yet: the page says how to point a client here
        assert proxy.url.removeprefix("http://") in await page.inner_text("#empty")

        for body in ({"model": "llama3.2"}, {"model": "llama3.2", "stream": False}, {"model": UNKNOWN_MODEL}):
            async with http.post(proxy.url + "/api/generate", json=body) as response:
                await response.read()
        async with http.post(proxy.url + "/api/embed", json={"model": "all-minilm"}) as response:
            await response.read()
        request_log = proxy.running.request_log
        assert request_log is not None
        request_log.flush()
        await proxy.running.poller.poll_once()
        async with http.get(proxy.metrics_url + "/-/stats") as response:
            stats = await response.json()

        await page.reload()
        await page.wait_for_selector("body[data-loaded='true']")
        assert not await page.is_visible("#empty")
        assert await page.inner_text("#t-requests") == str(stats["requests"]) == "4"
        prompt, generated = (await page.inner_text("#t-tokens")).split(" / ")
        assert (int(prompt.replace(",", "")), int(generated.replace(",", ""))) == (
            stats["prompt_tokens"], stats["generation_tokens"])
        assert await page.inner_text("#t-errors") == f"{stats['error_ratio'] * 100:.1f}%"
        models = await page.inner_text("#models tbody")
        assert "llama3.2:latest" in models and "all-minilm:latest" in models
        assert "llama3.2:latest" in await page.inner_text("#loaded tbody")  # from /api/ps via /-/system
        assert "Ollama 0.33.0 up" in await page.inner_text("#ollama-status")
        await wait_for_rows(page, "#logs tbody tr", 4)
        assert "client_error" in await page.inner_text("#logs tbody")
        assert await page.locator("#c-rpm canvas").count() == 1  # uPlot drew the chart, axes included
        assert (await page.locator("#c-rpm canvas").bounding_box() or {}).get("width", 0) > 200

        await page.select_option("#f-outcome", "client_error")
        await wait_for_rows(page, "#logs tbody tr", 1)
        await page.select_option("#f-outcome", "")

        # Recent requests page through the log with the cursor.
        for _ in range(30):
            async with http.post(proxy.url + "/api/generate", json={"model": "llama3.2", "stream": False}) as response:
                await response.read()
        request_log.flush()
        await page.reload()
        await page.wait_for_selector("body[data-loaded='true']")
        await wait_for_rows(page, "#logs tbody tr", 25)
        await page.click("#p-older")
        await wait_for_rows(page, "#logs tbody tr", 34 - 25)
        assert await page.inner_text("#p-page") == "page 2"
        await page.click("#p-newer")
        await wait_for_rows(page, "#logs tbody tr", 25)

        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard-1400.png"), full_page=True)
        await page.set_viewport_size({"width": 1280, "height": 900})
        await asyncio.sleep(0.3)
        values = await page.locator(".tile .value").evaluate_all(
            "els => els.map(e => [e.id, e.scrollWidth <= e.clientWidth, e.getBoundingClientRect().top])")
        assert all(fits for _, fits, _ in values), values  # no card cuts or wraps its figure at 1280 px
        assert len({top for _, _, top in values}) == 1  # and all nine sit in one row
        await page.set_viewport_size({"width": 390, "height": 844})
        await asyncio.sleep(0.3)
        width = await page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], width  # no sideways scrolling on a phone
        await page.screenshot(path=str(ARTIFACTS / "dashboard-390.png"), full_page=True)
        assert problems == []
    finally:
        await proxy.running.stop()


async def test_dashboard_says_unknown_while_ollama_is_down(browser: Any, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proxy = ProxyUnderTest(await start(config_for(dead, log_db=str(tmp_path / "log.sqlite3")),
                                       registry=CollectorRegistry(), samplers=Samplers()))
    try:
        await proxy.running.poller.poll_once()
        page, problems = await open_dashboard(browser, proxy)
        assert "not answering" in await page.inner_text("#ollama-status")
        assert "unknown" in await page.inner_text("#loaded tbody")
        assert problems == []
    finally:
        await proxy.running.stop()


async def test_dashboard_with_the_request_log_off(
    fake: FakeOllama, browser: Any, http: aiohttp.ClientSession,
) -> None:
    proxy = ProxyUnderTest(await start(config_for(fake.url), registry=CollectorRegistry(), samplers=Samplers()))
    try:
        async with http.post(proxy.url + "/api/generate", json={"model": "llama3.2"}) as response:
            await response.read()
        page, problems = await open_dashboard(browser, proxy)
        assert await page.inner_text("#t-requests") == "1"
        assert await page.is_visible("#history-off")
        assert not await page.is_visible("#history")
        assert "llama3.2:latest" in await page.inner_text("#models tbody")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard-log-off.png"), full_page=True)
        assert problems == []
    finally:
        await proxy.running.stop()


async def test_landing_page_links_everything(proxy: ProxyUnderTest, http: aiohttp.ClientSession) -> None:
    async with http.get(proxy.metrics_url + "/") as response:
        assert response.status == 200 and response.content_type == "text/html"
        page = await response.text()
    for link in ("/-/dashboard", "/metrics", "/-/stats", "/-/models", "/-/logs", "/-/system", "/-/ready"):
        assert f'href="{link}' in page
    async with http.get(proxy.metrics_url + "/-/static/dashboard.js") as response:
        assert response.status == 200 and response.content_type == "text/javascript"
    async with http.get(proxy.metrics_url + "/-/static/..%2Fconfig.py") as response:
        assert response.status == 404
