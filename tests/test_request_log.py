"""The request log and the JSON usage API, with the same assertions on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from ollama_metrics_proxy.app.server import start
from ollama_metrics_proxy.observe.exchange import Exchange, Outcome
from ollama_metrics_proxy.telemetry.collectors import Samplers
from ollama_metrics_proxy.usage.request_log import RequestLog
from ollama_metrics_proxy.usage.store import SqliteStore, UsageRecord, open_store
from tests.conftest import ProxyUnderTest, config_for
from tests.fake_ollama import ROUTES, UNKNOWN_MODEL, FakeOllama, rec

ADMIN_TOKEN = "0123456789abcdef-admin"
LLAMA = "llama3.2:latest"


def reported(path: str, streamed: bool) -> dict[str, Any]:
    lines = [json.loads(line) for line in ROUTES[(path, streamed)].body.splitlines() if line.strip()]
    return lines[-1]


async def start_proxy(fake: FakeOllama, log_db: str | None, **overrides: Any) -> ProxyUnderTest:
    config = config_for(fake.url, log_db=log_db, admin_token=ADMIN_TOKEN, **overrides)
    return ProxyUnderTest(await start(config, registry=CollectorRegistry(), samplers=Samplers()))


@pytest.fixture
async def logged(fake: FakeOllama, log_db: str) -> AsyncIterator[ProxyUnderTest]:
    proxy = await start_proxy(fake, log_db, client_header="X-User")
    yield proxy
    await proxy.running.stop()


async def traffic(proxy: ProxyUnderTest, http: aiohttp.ClientSession) -> None:
    """Streamed and plain generations by two users, an embedding, a rejected model."""
    for user, body in (("alice", {"model": "llama3.2", "prompt": "secret prompt"}),
                       ("alice", {"model": "llama3.2", "prompt": "x", "stream": False}),
                       ("bob", {"model": "llama3.2", "prompt": "x"}),
                       ("bob", {"model": UNKNOWN_MODEL, "prompt": "x"})):
        async with http.post(proxy.url + "/api/generate", json=body, headers={"X-User": user}) as response:
            await response.read()
    async with http.post(proxy.url + "/api/embed", json={"model": "all-minilm", "input": ["a", "b"]},
                         headers={"X-User": "carol"}) as response:
        await response.read()
    async with http.get(proxy.url + "/api/tags") as response:  # not an inference request: not logged
        await response.read()
    await flush(proxy)


async def flush(proxy: ProxyUnderTest) -> None:
    request_log = proxy.running.request_log
    assert request_log is not None
    await asyncio.to_thread(request_log.flush)


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        return response.status, await response.json()


async def test_records_match_what_ollama_reported(logged: ProxyUnderTest, http: aiohttp.ClientSession) -> None:
    await traffic(logged, http)
    status, body = await get(http, logged.metrics_url + "/-/logs?limit=100")
    assert status == 200
    records = body["records"]
    assert len(records) == 5
    assert [r["started_ms"] for r in records] == sorted((r["started_ms"] for r in records), reverse=True)
    streamed = reported("/api/generate", True)
    first = records[-1]  # oldest: alice's streamed generation
    assert first["endpoint"] == "/api/generate" and first["model"] == LLAMA and first["outcome"] == "success"
    assert (first["prompt_tokens"], first["generation_tokens"]) == (streamed["prompt_eval_count"],
                                                                    streamed["eval_count"])
    assert first["eval_seconds"] == pytest.approx(streamed["eval_duration"] / 1e9)
    assert first["load_seconds"] == pytest.approx(streamed["load_duration"] / 1e9)
    assert first["done_reason"] == "stop" and first["status"] == 200 and first["client_identity"] == "alice"
    assert first["ttft_seconds"] is not None and first["duration_seconds"] >= first["ttft_seconds"]
    assert first["bytes_out"] == len(ROUTES[("/api/generate", True)].body) and first["bytes_in"] > 0
    assert first["client_address"] == "127.0.0.1"
    assert first["prompt_text"] is None and first["response_text"] is None  # never stored by default
    rejected = next(r for r in records if r["outcome"] == "client_error")
    assert rejected["status"] == 404 and rejected["model"] == f"{UNKNOWN_MODEL}:latest"
    embed = next(r for r in records if r["endpoint"] == "/api/embed")
    assert embed["prompt_tokens"] == reported("/api/embed", False)["prompt_eval_count"]


async def test_filters_and_pagination(logged: ProxyUnderTest, http: aiohttp.ClientSession) -> None:
    await traffic(logged, http)
    base = logged.metrics_url + "/-/logs"
    _, body = await get(http, base + "?client=bob")
    assert {r["client_identity"] for r in body["records"]} == {"bob"} and len(body["records"]) == 2
    _, body = await get(http, base + "?outcome=client_error")
    assert [r["status"] for r in body["records"]] == [404]
    _, body = await get(http, base + f"?model={LLAMA}")
    assert len(body["records"]) == 3
    _, body = await get(http, base + f"?since={time.time() + 60}")
    assert body["records"] == []
    _, body = await get(http, base + "?until=2000-01-01T00:00:00Z")
    assert body["records"] == []
    seen, cursor, pages = [], None, 0
    while True:
        _, body = await get(http, base + "?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        seen += [r["id"] for r in body["records"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    _, everything = await get(http, base)
    assert seen == [r["id"] for r in everything["records"]] and pages == 3


@pytest.mark.parametrize(("query", "message"), [
    ("limit=0", "limit must be a whole number from 1 to 1000"),
    ("limit=abc", "limit must be a whole number"),
    ("outcome=great", "outcome must be one of"),
    ("since=yesterday", "since must be unix seconds or an ISO 8601 time"),
    ("until=2026-01-01T00:00:00", "until needs a time zone"),
    ("cursor=%%%", "cursor is not one this API returned"),
    ("colour=blue", "unknown parameter 'colour'"),
])
async def test_bad_parameters_are_400_with_the_reason(
    logged: ProxyUnderTest, http: aiohttp.ClientSession, query: str, message: str,
) -> None:
    status, body = await get(http, logged.metrics_url + "/-/logs?" + query)
    assert status == 400
    assert message in body["error"]


async def test_stats_history_models_and_clients(logged: ProxyUnderTest, http: aiohttp.ClientSession) -> None:
    await traffic(logged, http)
    streamed, plain = reported("/api/generate", True), reported("/api/generate", False)
    embed = reported("/api/embed", False)
    _, stats = await get(http, logged.metrics_url + "/-/stats")
    # The 404 is the client's mistake: counted apart, not an error (server-side failures only).
    assert stats["requests"] == 5 and stats["in_flight"] == 0 and stats["errors"] == 0
    assert stats["client_errors"] == 1
    assert stats["generation_tokens"] == 2 * streamed["eval_count"] + plain["eval_count"]
    assert stats["prompt_tokens"] == 2 * streamed["prompt_eval_count"] + plain["prompt_eval_count"] + \
        embed["prompt_eval_count"]
    assert stats["error_ratio"] == 0 and stats["average_ttft_seconds"] > 0
    assert stats["p95_duration_seconds"] >= stats["p50_duration_seconds"] > 0
    assert stats["models_in_use"] == ["all-minilm:latest", "llama3.2:latest", "other"]

    _, history = await get(http, logged.metrics_url + "/-/stats/history?minutes=5&step=60")
    buckets = history["buckets"]
    assert sum(b["requests"] for b in buckets) == 5
    assert sum(b["generation_tokens"] for b in buckets) == stats["generation_tokens"]
    busy = [b for b in buckets if b["requests"]]
    assert all(b["tokens_per_second"] == pytest.approx(b["generation_tokens"] / 60) for b in busy)

    _, models = await get(http, logged.metrics_url + "/-/models")
    assert models["source"] == "request_log"
    llama = next(m for m in models["models"] if m["name"] == LLAMA)
    assert llama["requests"] == 3 and llama["error_ratio"] == 0
    assert llama["generation_tokens"] == 2 * streamed["eval_count"] + plain["eval_count"]
    decoded = (2 * streamed["eval_count"] + plain["eval_count"]) / (
        (2 * streamed["eval_duration"] + plain["eval_duration"]) / 1e9)
    assert llama["decode_tokens_per_second"] == pytest.approx(decoded)

    _, clients = await get(http, logged.metrics_url + "/-/clients")
    usage = {c["name"]: c for c in clients["clients"]}
    assert usage["alice"]["requests"] == 2 and usage["bob"]["requests"] == 2
    assert usage["bob"]["client_errors"] == 1 and usage["bob"]["error_ratio"] == 0


async def test_delete_needs_the_admin_token(logged: ProxyUnderTest, http: aiohttp.ClientSession) -> None:
    await traffic(logged, http)
    url = logged.metrics_url + "/-/logs"
    async with http.delete(url) as response:
        assert response.status == 401
        assert "admin token" in (await response.json())["error"]
    async with http.delete(url, headers={"Authorization": "Bearer wrong-token-wrong-token"}) as response:
        assert response.status == 401
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.delete(url + "?before=2000-01-01T00:00:00Z", headers=auth) as response:
        assert (await response.json()) == {"deleted": 0}
    async with http.delete(url + f"?before={time.time() + 1}", headers=auth) as response:
        assert response.status == 200 and (await response.json()) == {"deleted": 5}
    _, body = await get(http, url)
    assert body["records"] == []
    assert logged.value("ollama_metrics_proxy_request_log_deleted_total", reason="admin") == 5


async def test_mutating_endpoints_are_disabled_without_a_token(
    fake: FakeOllama, tmp_path: Any, http: aiohttp.ClientSession,
) -> None:
    proxy = ProxyUnderTest(await start(config_for(fake.url, log_db=str(tmp_path / "l.db")),
                                       registry=CollectorRegistry(), samplers=Samplers()))
    try:
        async with http.delete(proxy.metrics_url + "/-/logs",
                               headers={"Authorization": "Bearer anything-at-all-here"}) as response:
            assert response.status == 403
            assert "--admin-token" in (await response.json())["error"]
        status, body = await get(http, proxy.metrics_url + "/-/clients")
        assert status == 404 and "--client-header" in body["error"]
    finally:
        await proxy.running.stop()


async def test_retention_by_age_and_by_rows(fake: FakeOllama, log_db: str, http: aiohttp.ClientSession) -> None:
    proxy = await start_proxy(fake, log_db, log_max_rows=3)
    try:
        for _ in range(5):
            async with http.post(proxy.url + "/api/generate", json={"model": "llama3.2"}) as response:
                await response.read()
        await flush(proxy)
        request_log = proxy.running.request_log
        assert request_log is not None
        await asyncio.to_thread(request_log._enforce_retention)  # what the writer runs periodically
        assert await asyncio.to_thread(request_log.store.count) == 3
        assert proxy.value("ollama_metrics_proxy_request_log_deleted_total", reason="retention_rows") == 2
        request_log._retention_ms = 0  # everything is now older than the retention age
        await asyncio.to_thread(request_log._enforce_retention)
        assert await asyncio.to_thread(request_log.store.count) == 0
        assert proxy.value("ollama_metrics_proxy_request_log_deleted_total", reason="retention_age") == 3
    finally:
        await proxy.running.stop()


async def test_content_is_stored_only_when_asked_and_truncated(
    fake: FakeOllama, log_db: str, http: aiohttp.ClientSession,
) -> None:
    proxy = await start_proxy(fake, log_db, log_content=True, log_content_max_bytes=8)
    try:
        async with http.post(proxy.url + "/api/generate", json={"model": "llama3.2", "prompt": "Why is the sky blue?"}
                             ) as response:
            await response.read()
        async with http.post(proxy.url + "/api/chat",
                             json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}) as response:
            await response.read()
        await flush(proxy)
        _, body = await get(http, proxy.metrics_url + "/-/logs")
        chat, generate = body["records"]
        assert generate["prompt_text"] == "Why is t…"
        assert generate["response_text"] == "The sky …"
        assert chat["prompt_text"] == "user: hi"
        assert chat["response_text"] == "Hello! H…"
    finally:
        await proxy.running.stop()


async def test_log_off_answers_clearly_and_stats_still_work(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    proxy = await start_proxy(fake, None)
    try:
        async with http.post(proxy.url + "/api/generate", json={"model": "llama3.2"}) as response:
            await response.read()
        status, body = await get(http, proxy.metrics_url + "/-/logs")
        assert status == 404 and "--log-db" in body["error"]
        status, body = await get(http, proxy.metrics_url + "/-/stats/history")
        assert status == 404
        _, stats = await get(http, proxy.metrics_url + "/-/stats")
        assert stats["requests"] == 1 and stats["request_log"] == "off"
        _, models = await get(http, proxy.metrics_url + "/-/models")
        assert models["source"] == "since_start" and models["models"][0]["name"] == LLAMA
        assert models["models"][0]["generation_tokens"] == reported("/api/generate", True)["eval_count"]
    finally:
        await proxy.running.stop()


# ---------------------------------------------------------------- a database in trouble


async def relay_and_count(proxy: ProxyUnderTest, http: aiohttp.ClientSession, times: int = 3) -> None:
    for _ in range(times):
        async with http.post(proxy.url + "/api/generate", json={"model": "llama3.2"}) as response:
            assert response.status == 200
            assert await response.read() == rec("generate_stream.ndjson").body
    await flush(proxy)


async def test_locked_sqlite_loses_nothing_uncounted(
    fake: FakeOllama, tmp_path: Any, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(SqliteStore, "busy_timeout_ms", 50)
    path = tmp_path / "locked.sqlite3"
    proxy = await start_proxy(fake, str(path))
    try:
        await relay_and_count(proxy, http, 1)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        await relay_and_count(proxy, http, 3)
        assert proxy.value("ollama_metrics_proxy_request_log_records_total", result="dropped_write_failed") == 3
        blocker.execute("ROLLBACK")
        blocker.close()
        await relay_and_count(proxy, http, 2)
        assert proxy.value("ollama_metrics_proxy_request_log_records_total", result="written") == 3
    finally:
        await proxy.running.stop()


async def test_full_disk_loses_nothing_uncounted(fake: FakeOllama, tmp_path: Any, http: aiohttp.ClientSession) -> None:
    path = tmp_path / "full.sqlite3"
    proxy = await start_proxy(fake, str(path))
    try:
        await relay_and_count(proxy, http, 1)
        # Cap the file at its current size: SQLite then fails writes with "database or disk is full".
        with sqlite3.connect(path) as connection:
            pages = connection.execute("PRAGMA page_count").fetchone()[0]
        request_log = proxy.running.request_log
        assert request_log is not None
        store = request_log.store
        with store._lock:  # configure the writer's own connection, as a full disk would
            assert store._connection is not None
            store._connection.execute(f"PRAGMA max_page_count={pages}")
        await relay_and_count(proxy, http, 200)
        written = proxy.value("ollama_metrics_proxy_request_log_records_total", result="written")
        dropped = proxy.value("ollama_metrics_proxy_request_log_records_total", result="dropped_write_failed")
        assert dropped > 0
        assert written + dropped == 201  # every record is either in the database or counted as lost
        assert await asyncio.to_thread(store.count) == written
    finally:
        await proxy.running.stop()


async def test_unreachable_postgres_loses_nothing_uncounted(
    fake: FakeOllama, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await start_proxy(fake, "postgresql://proxy@127.0.0.1:1/nowhere")
    try:
        await relay_and_count(proxy, http, 4)
        assert proxy.value("ollama_metrics_proxy_request_log_records_total", result="dropped_write_failed") == 4
        status, body = await get(http, proxy.metrics_url + "/-/logs")
        assert status == 503 and "127.0.0.1:1" in body["error"]
        assert proxy.value("ollama_requests_total", endpoint="/api/generate", model=LLAMA, outcome="success") == 4
    finally:
        await proxy.running.stop()
    failures = [r for r in caplog.records if "could not be written" in r.message]
    assert len(failures) == 1  # logged once, not per batch


def test_full_queue_drops_and_counts(tmp_path: Any) -> None:
    """A database that cannot keep up: records beyond the queue are dropped at once and counted."""
    registry = CollectorRegistry()
    request_log = RequestLog(SqliteStore(str(tmp_path / "q.sqlite3")), registry, proxy_name="test",
                             retention_days=30, max_rows=1000, queue_size=2)
    for _ in range(5):  # the writer is not running yet: nothing drains the queue
        exchange = Exchange(endpoint="/api/generate", method="POST", path="/api/generate", started=1.0,
                            status=200, outcome=Outcome.SUCCESS, ended=2.0, wall_started=time.time())
        request_log.submit(exchange)

    def value(result: str) -> float | None:
        return registry.get_sample_value("ollama_metrics_proxy_request_log_records_total", {"result": result})

    assert value("dropped_queue_full") == 3
    request_log.start()
    request_log.flush()
    assert value("written") == 2
    request_log.stop()


async def test_bearer_tokens_are_stored_only_as_a_keyed_hash(
    fake: FakeOllama, tmp_path: Any, http: aiohttp.ClientSession,
) -> None:
    path = tmp_path / "keys.sqlite3"
    proxy = await start_proxy(fake, str(path), client_header="Authorization")
    token = "sk-very-secret-api-key-0123456789"
    try:
        async with http.post(proxy.url + "/api/generate", json={"model": "llama3.2"},
                             headers={"Authorization": f"Bearer {token}"}) as response:
            await response.read()
        await flush(proxy)
        _, body = await get(http, proxy.metrics_url + "/-/logs")
        identity = body["records"][0]["client_identity"]
        # HMAC-SHA256 under the random key kept beside the log (0600), not a bare hash anyone can recompute.
        key_file = tmp_path / "client-identity.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_bytes().strip()
        assert identity == "hmac-sha256:" + hmac.new(key, token.encode(), hashlib.sha256).hexdigest()[:16]
        assert hashlib.sha256(token.encode()).hexdigest()[:12] not in identity
        _, clients = await get(http, proxy.metrics_url + "/-/clients")
        assert clients["clients"][0]["name"] == identity
    finally:
        await proxy.running.stop()
    stored = b"".join(file.read_bytes() for file in tmp_path.glob("keys.sqlite3*"))
    assert token.encode() not in stored


async def test_a_given_hash_key_makes_identities_agree_across_proxies_and_restarts(
    fake: FakeOllama, tmp_path: Any, http: aiohttp.ClientSession,
) -> None:
    key = "fleet-wide-client-hash-key-0123"
    identities = []
    for name in ("a", "b"):
        proxy = await start_proxy(fake, str(tmp_path / f"{name}.sqlite3"), client_header="Authorization",
                                  client_hash_key=key)
        try:
            async with http.post(proxy.url + "/api/generate", json={"model": "llama3.2"},
                                 headers={"Authorization": "Bearer sk-team-token-42"}) as response:
                await response.read()
            await flush(proxy)
            _, body = await get(http, proxy.metrics_url + "/-/logs")
            identities.append(body["records"][0]["client_identity"])
        finally:
            await proxy.running.stop()
    expected = hmac.new(key.encode(), b"sk-team-token-42", hashlib.sha256).hexdigest()[:16]
    assert identities == ["hmac-sha256:" + expected] * 2
    assert not (tmp_path / "client-identity.key").exists()  # a given key is never written down


async def test_models_and_clients_are_paged_top_first(
    fake: FakeOllama, log_db: str, http: aiohttp.ClientSession,
) -> None:
    """40,000 distinct models in the log: one page is the top 100 by requests, and the cursor walks the rest."""
    path = log_db
    store = open_store(path)
    now = int(time.time() * 1000)
    records = [UsageRecord(started_ms=now, endpoint="/api/generate", model=f"model-{index:05d}:latest",
                           outcome="success", status=200, client_address="127.0.0.1",
                           client_identity=f"user-{index:05d}", prompt_tokens=1, cached_tokens=None,
                           generation_tokens=1, duration_seconds=0.1, ttft_seconds=None, load_seconds=None,
                           prompt_eval_seconds=None, eval_seconds=None, done_reason="stop", bytes_in=1,
                           bytes_out=1, proxy="test")
               for index in range(40_000) for _ in range(2 if index < 3 else 1)]
    store.insert(records)
    store.close()
    proxy = await start_proxy(fake, path, client_header="X-User")
    try:
        async with http.get(proxy.metrics_url + "/-/models") as response:
            body = await response.read()
            first = json.loads(body)
        assert len(body) < 100_000 and len(first["models"]) == 100 and first["total"] == 40_000
        assert [m["name"] for m in first["models"][:3]] == [f"model-0000{i}:latest" for i in range(3)]
        assert [m["requests"] for m in first["models"][:4]] == [2, 2, 2, 1]
        seen, cursor = [], None
        while True:
            query = "?limit=1000" + (f"&cursor={cursor}" if cursor else "")
            _, page = await get(http, proxy.metrics_url + "/-/clients" + query)
            seen += [client["name"] for client in page["clients"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 40_000
        status, bad = await get(http, proxy.metrics_url + "/-/models?cursor=bm90LWpzb24")
        assert status == 400 and "cursor" in bad["error"]
    finally:
        await proxy.running.stop()
