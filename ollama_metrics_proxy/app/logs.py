"""Logging set-up: plain text or one JSON object per line. Prompts and responses are never logged, and every
line passes through ``redact_text``: a driver's or an HTTP library's message that quotes a URL or a connection
string (the OTLP exporter's retries, psycopg's connection errors) shows no credential."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from ollama_metrics_proxy.redact import redact_text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact_text(orjson.dumps(entry, default=str).decode())


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return redact_text(line)


class _WorkerField(logging.Filter):
    """Tags every line of a relay worker (``--workers``) with its number, as lines from all the processes share
    one stream."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self._worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.fields = {**(getattr(record, "fields", None) or {}), "worker": self._worker}
        return True


def setup_logging(level: str, fmt: str, worker: int | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if worker is not None:
        handler.addFilter(_WorkerField(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print every path; the proxy logs its own line per request at debug level.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
