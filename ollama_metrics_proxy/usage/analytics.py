"""The JSON usage API and the dashboard page, on the metrics listener.

Every answer is JSON (the dashboard and landing pages aside) and every error is a JSON body with a message that
says what to change. Database work runs in a thread; a database that is down makes these endpoints answer 503,
never the proxy.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import re
import time
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import orjson
from aiohttp import hdrs, web

from ollama_metrics_proxy.observe.exchange import Outcome
from ollama_metrics_proxy.usage.live_stats import LiveStats
from ollama_metrics_proxy.usage.request_log import RequestLog
from ollama_metrics_proxy.usage.store import StoreError

MAX_LIMIT = 1000
DEFAULT_GROUP_LIMIT = 100  # /-/models and /-/clients: the top 100 by requests, a cursor for the rest
MAX_HISTORY_MINUTES = 60 * 24 * 31
STATIC = resources.files("ollama_metrics_proxy") / "static"
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


@dataclass
class Analytics:
    live: LiveStats
    request_log: RequestLog | None
    admin_token: str | None
    client_header: str | None
    api_address: str = ""  # where clients should point, for the dashboard's empty state


ANALYTICS_KEY = web.AppKey("analytics", Analytics)


class BadParameter(ValueError):
    pass


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _analytics(request: web.Request) -> Analytics:
    return request.app[ANALYTICS_KEY]


def _log_or_error(request: web.Request) -> RequestLog | web.Response:
    request_log = _analytics(request).request_log
    if request_log is None:
        return error(404, "the request log is off; start the proxy with --log-db (a file path or postgresql:// URL)")
    return request_log


async def _in_thread(function: Any, *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


def _database_error(request_log: RequestLog, exc: StoreError) -> web.Response:
    return error(503, f"request log database {request_log.store.describe()} is unavailable: {exc}")


# ---------------------------------------------------------------- parameters


_WHOLE_NUMBER = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() also accepts "²"
# Times are unix milliseconds in a 64-bit column; anything outside years 1970-9999 is a mistake, not a query.
_LATEST_MS = 253_402_300_799_000
_MAX_CURSOR = 2**63 - 1
_MAX_PARAM_LENGTH = 200


def _query(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > _MAX_PARAM_LENGTH:
        raise BadParameter(f"{name} is too long ({len(raw)} characters; at most {_MAX_PARAM_LENGTH})")
    if not raw.isprintable() or _surrogates(raw):
        raise BadParameter(f"{name} must be printable UTF-8 text, got {raw!r}")
    return raw


def _surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = _query(request, name)
    if raw is None:
        return default
    if not _WHOLE_NUMBER.fullmatch(raw) or not low <= int(raw) <= high:
        raise BadParameter(f"{name} must be a whole number from {low} to {high}, got {raw!r}")
    return int(raw)


def _time_param(request: web.Request, name: str) -> int | None:
    """Unix seconds (``1700000000`` or ``1700000000.5``) or ISO 8601 (``2026-11-23T12:00:00Z``); returns ms."""
    raw = _query(request, name)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = _iso_seconds(name, raw)
    if not 0 <= seconds * 1000 <= _LATEST_MS:  # also false for nan and inf
        raise BadParameter(f"{name} must be a time between 1970 and 9999, got {raw!r}")
    return int(seconds * 1000)


def _iso_seconds(name: str, raw: str) -> float:
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadParameter(f"{name} must be unix seconds or an ISO 8601 time like 2026-11-23T12:00:00Z, "
                           f"got {raw!r}") from None
    if moment.tzinfo is None:
        raise BadParameter(f"{name} needs a time zone (add Z for UTC), got {raw!r}")
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):
        raise BadParameter(f"{name} must be a time between 1970 and 9999, got {raw!r}") from None


def _cursor_param(request: web.Request) -> tuple[int, int] | None:
    raw = _query(request, "cursor")
    if raw is None:
        return None
    try:
        started, row_id = base64.urlsafe_b64decode(raw.encode() + b"==").decode().split(":")
        key = int(started), int(row_id)
    except (ValueError, UnicodeError):
        key = (-1, -1)
    if not all(0 <= part <= _MAX_CURSOR for part in key):
        raise BadParameter("cursor is not one this API returned; pass next_cursor from the previous page")
    return key


def _encode_cursor(row: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(f"{row['started_ms']}:{row['id']}".encode()).decode().rstrip("=")


# ---------------------------------------------------------------- handlers


async def stats(request: web.Request) -> web.Response:
    analytics = _analytics(request)
    payload = analytics.live.summary()
    payload["request_log"] = "on" if analytics.request_log is not None else "off"
    payload["api_address"] = analytics.api_address
    return web.json_response(payload)


async def history(request: web.Request) -> web.Response:
    request_log = _log_or_error(request)
    if isinstance(request_log, web.Response):
        return request_log
    try:
        minutes = _int_param(request, "minutes", 60, 1, MAX_HISTORY_MINUTES)
        step = _int_param(request, "step", 60, 1, 86_400)
    except BadParameter as exc:
        return error(400, str(exc))
    if minutes * 60 // step > 10_000:
        return error(400, f"minutes={minutes} with step={step} s makes more than 10000 buckets; raise step")
    now_ms = int(time.time() * 1000)
    step_ms = step * 1000
    first = (now_ms - minutes * 60_000) // step_ms * step_ms
    try:
        rows = await _in_thread(request_log.store.history, first, step_ms)
    except StoreError as exc:
        return _database_error(request_log, exc)
    by_bucket = {row[0]: row for row in rows}
    buckets = []
    for start in range(first, now_ms + 1, step_ms):
        _, count, tokens, duration, errors = by_bucket.get(start, (start, 0, 0, 0.0, 0))
        buckets.append({
            "start": start / 1000, "requests": count, "requests_per_minute": count * 60 / step,
            "generation_tokens": tokens, "tokens_per_second": tokens / step,
            "average_duration_seconds": duration / count if count else None,
            "error_ratio": errors / count if count else 0.0,
        })
    return web.json_response({"minutes": minutes, "step_seconds": step, "buckets": buckets})


def _page_params(request: web.Request) -> tuple[int, tuple[int, str] | None]:
    """``limit`` (top N by requests) and ``cursor`` (where the previous page ended) of a grouped listing."""
    unknown = set(request.query) - {"limit", "cursor"}
    if unknown:
        raise BadParameter(f"unknown parameter {sorted(unknown)[0][:40]!r}; use limit and cursor")
    limit = _int_param(request, "limit", DEFAULT_GROUP_LIMIT, 1, MAX_LIMIT)
    raw = _query(request, "cursor")
    if raw is None:
        return limit, None
    try:
        requests, name = orjson.loads(base64.urlsafe_b64decode(raw.encode() + b"=="))
    except (ValueError, TypeError, orjson.JSONDecodeError):
        requests, name = None, None
    # Exactly what _page wrote: a count (not a boolean, which is an int to Python and not to PostgreSQL) and a
    # printable name (PostgreSQL refuses a NUL in text: that was a 503 "database unavailable", not a 400).
    if (type(requests) is not int or not isinstance(name, str) or not 0 <= requests <= _MAX_CURSOR
            or len(name) > _MAX_PARAM_LENGTH or not name.isprintable() or _surrogates(name)):
        raise BadParameter("cursor is not one this API returned; pass next_cursor from the previous page")
    return limit, (requests, name)


def _page(rows: list[dict[str, Any]], limit: int, total: int) -> dict[str, Any]:
    last = rows[-1] if len(rows) == limit else None
    cursor = None
    if last is not None:
        cursor = base64.urlsafe_b64encode(orjson.dumps([last["requests"], last["name"]])).decode().rstrip("=")
    return {"total": total, "next_cursor": cursor}


async def _large_json(payload: dict[str, Any]) -> web.Response:
    """Encoded in a thread: a page of a thousand rows is milliseconds of work the relay's loop should not do."""
    body = await asyncio.to_thread(orjson.dumps, payload)
    return web.Response(body=body, content_type="application/json")


async def models(request: web.Request) -> web.Response:
    analytics = _analytics(request)
    try:
        limit, after = _page_params(request)
    except BadParameter as exc:
        return error(400, str(exc))
    if analytics.request_log is None:
        rows, total = analytics.live.per_model(limit, after)
        return await _large_json({"source": "since_start", "models": rows, **_page(rows, limit, total)})
    try:
        rows, total = await _in_thread(analytics.request_log.store.per_model, limit, after)
    except StoreError as exc:
        return _database_error(analytics.request_log, exc)
    return await _large_json({"source": "request_log", "models": rows, **_page(rows, limit, total)})


async def logs(request: web.Request) -> web.Response:
    request_log = _log_or_error(request)
    if isinstance(request_log, web.Response):
        return request_log
    outcomes = {outcome.value for outcome in Outcome}
    try:
        outcome = _query(request, "outcome")
        if outcome is not None and outcome not in outcomes:
            raise BadParameter(f"outcome must be one of {', '.join(sorted(outcomes))}, got {outcome!r}")
        filters = {"model": _query(request, "model"), "outcome": outcome,
                   "client": _query(request, "client"), "endpoint": _query(request, "endpoint"),
                   "since": _time_param(request, "since"), "until": _time_param(request, "until")}
        limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
        cursor = _cursor_param(request)
    except BadParameter as exc:
        return error(400, str(exc))
    unknown = set(request.query) - {"model", "outcome", "client", "endpoint", "since", "until", "limit", "cursor"}
    if unknown:
        return error(400, f"unknown parameter {sorted(unknown)[0][:40]!r}; use model, outcome, client, endpoint, "
                          "since, until, limit, cursor")
    try:
        rows = await _in_thread(request_log.store.logs, filters, limit + 1, cursor)
    except StoreError as exc:
        return _database_error(request_log, exc)
    page, more = rows[:limit], len(rows) > limit
    for row in page:
        row["started_at"] = row["started_ms"] / 1000
    return web.json_response({"records": page, "next_cursor": _encode_cursor(page[-1]) if more else None})


async def clients(request: web.Request) -> web.Response:
    analytics = _analytics(request)
    if analytics.client_header is None:
        return error(404, "client accounting is off; start the proxy with --client-header NAME "
                          "(for example X-User, set by your gateway)")
    request_log = _log_or_error(request)
    if isinstance(request_log, web.Response):
        return request_log
    try:
        limit, after = _page_params(request)
    except BadParameter as exc:
        return error(400, str(exc))
    try:
        rows, total = await _in_thread(request_log.store.per_client, limit, after)
    except StoreError as exc:
        return _database_error(request_log, exc)
    return await _large_json({"header": analytics.client_header, "clients": rows, **_page(rows, limit, total)})


async def delete_logs(request: web.Request) -> web.Response:
    analytics = _analytics(request)
    if analytics.admin_token is None:
        return error(403, "mutating endpoints are disabled; start the proxy with --admin-token "
                          "(or OLLAMA_METRICS_PROXY_ADMIN_TOKEN) to enable them")
    # X-Admin-Token serves when Authorization carries the metrics listener's basic authentication.
    supplied = request.headers.get(hdrs.AUTHORIZATION, "")
    if "X-Admin-Token" in request.headers:
        supplied = "Bearer " + request.headers["X-Admin-Token"]
    expected = f"Bearer {analytics.admin_token}"
    # Header bytes that are not UTF-8 arrive as surrogates; compared as the bytes they were, they simply differ.
    if not hmac.compare_digest(supplied.encode("utf-8", "surrogateescape"), expected.encode()):
        return web.json_response({"error": "a valid admin token is required: Authorization: Bearer <token>"},
                                 status=401, headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="ollama-metrics-proxy"'})
    request_log = _log_or_error(request)
    if isinstance(request_log, web.Response):
        return request_log
    try:
        before = _time_param(request, "before")
    except BadParameter as exc:
        return error(400, str(exc))
    try:
        deleted = await _in_thread(request_log.store.delete_before, before)
    except StoreError as exc:
        return _database_error(request_log, exc)
    request_log.record_deleted("admin", deleted)
    return web.json_response({"deleted": deleted})


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    suffix = name[name.rfind("."):] if "." in name else ""
    resource = STATIC / name
    if suffix not in STATIC_TYPES or "/" in name or not resource.is_file():
        return error(404, f"no such file {name!r}")
    return web.Response(body=resource.read_bytes(), content_type=STATIC_TYPES[suffix],
                        headers={hdrs.CACHE_CONTROL: "no-cache"})


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(body=(STATIC / "dashboard.html").read_bytes(), content_type="text/html",
                        headers={hdrs.CACHE_CONTROL: "no-cache"})


async def landing(request: web.Request) -> web.Response:
    return web.Response(body=(STATIC / "index.html").read_bytes(), content_type="text/html")


def add_routes(app: web.Application, analytics: Analytics) -> None:
    app[ANALYTICS_KEY] = analytics
    app.router.add_get("/", landing)
    app.router.add_get("/-/dashboard", dashboard)
    app.router.add_get("/-/static/{name}", static_file)
    app.router.add_get("/-/stats", stats)
    app.router.add_get("/-/stats/history", history)
    app.router.add_get("/-/models", models)
    app.router.add_get("/-/logs", logs)
    app.router.add_delete("/-/logs", delete_logs)
    app.router.add_get("/-/clients", clients)
