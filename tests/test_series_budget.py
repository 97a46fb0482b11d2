"""The series counts examples/FLEET.md states, measured: traffic on one model through each kind of route."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import aiohttp

from tests.conftest import ProxyUnderTest

FLEET = Path(__file__).parent.parent / "examples/FLEET.md"
STATED = {  # the rows of FLEET.md's table, by the words that start them
    "native_both": "a native route (`/api/generate`, `/api/chat`) used streamed and not",
    "native_plain": "a native route used only non-streamed",
    "compatible": "an OpenAI or Anthropic route",
    "embedding": "an embedding route",
}


def stated(row: str) -> int:
    line = next(line for line in FLEET.read_text().splitlines() if line.startswith(f"| {row}"))
    found = re.search(r"about ([\d,]+)", line)
    assert found is not None, line
    return int(found[1].replace(",", ""))


async def test_series_per_route_and_model_are_as_fleet_md_says(
    proxy: ProxyUnderTest, http: aiohttp.ClientSession,
) -> None:
    requests = [
        ("/api/generate", {"stream": True}), ("/api/generate", {"stream": False}),
        ("/api/chat", {"stream": False}),
        ("/v1/chat/completions", {"stream": True, "stream_options": {"include_usage": True}}),
        ("/api/embed", {"input": ["a"]}),
    ]
    for path, body in requests:
        async with http.post(proxy.url + path, json={"model": "llama3.2", **body}) as response:
            await response.read()
    async with http.get(proxy.metrics_url + "/metrics") as response:
        text = await response.text()
    pairs: Counter[str] = Counter()
    for line in text.splitlines():
        endpoint = re.search(r'endpoint="([^"]+)"', line)
        if line and not line.startswith("#") and endpoint and 'model="' in line:
            pairs[endpoint[1]] += 1
    measured = {"native_both": pairs["/api/generate"], "native_plain": pairs["/api/chat"],
                "compatible": pairs["/v1/chat/completions"], "embedding": pairs["/api/embed"]}
    for key, row in STATED.items():
        assert abs(measured[key] - stated(row)) <= stated(row) * 0.1, (row, measured[key])
