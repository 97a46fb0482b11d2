"""The request log: one record per proxied inference request, written off the event loop in batches.

``submit`` runs on the event loop and only turns the finished exchange into a flat record (a tuple, which keeps
the garbage collector's work small while thousands wait) on a bounded queue. A named writer thread writes them
to the database in batches and enforces retention. A slow or failing
database never slows or fails a request: a full queue or a failed write drops records, and every dropped
record is counted in
``ollama_metrics_proxy_request_log_records_total{result=...}`` and logged (once per kind of failure).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter

from ollama_metrics_proxy.endpoints import is_inference
from ollama_metrics_proxy.observe.exchange import Exchange, Outcome
from ollama_metrics_proxy.observe.extract import normalize_model
from ollama_metrics_proxy.usage.content import prompt_text, response_text
from ollama_metrics_proxy.usage.store import Store, StoreError, UsageRecord

log = logging.getLogger(__name__)
QUEUE_SIZE = 10_000
BATCH_SIZE = 500
# The writer wakes on this interval (or when flushed) and drains what is queued, rather than waking for every
# record: one thread switch per interval keeps the writer from competing with the relay for the GIL.
WRITE_INTERVAL_SECONDS = 0.5
RETENTION_INTERVAL_SECONDS = 300.0


Captured = tuple[bytes, bytes, str]  # request body, response body, response content type (with --log-content)


def record_for(exchange: Exchange, proxy_name: str) -> UsageRecord:
    obs = exchange.observation
    generated, estimated = obs.generated()
    ttft = None if obs.first_content_at is None else max(obs.first_content_at - exchange.started, 0.0)
    model = exchange.model
    return UsageRecord(
        started_ms=int(exchange.wall_started * 1000), endpoint=exchange.endpoint,
        model=normalize_model(model) if model else None,
        outcome=(exchange.outcome or Outcome.SUCCESS).value, status=exchange.status,
        client_address=exchange.client or None, client_identity=exchange.client_identity,
        prompt_tokens=obs.prompt_tokens, cached_tokens=obs.cached_tokens, generation_tokens=generated,
        duration_seconds=max(exchange.ended - exchange.started, 0.0), ttft_seconds=ttft,
        load_seconds=obs.load_seconds, prompt_eval_seconds=obs.prompt_eval_seconds, eval_seconds=obs.eval_seconds,
        done_reason=obs.finish_reason, bytes_in=exchange.bytes_in, bytes_out=exchange.bytes_out, proxy=proxy_name,
        generation_tokens_estimated=generated if estimated and generated else 0,
        ttfat_seconds=None if obs.first_answer_at is None else max(obs.first_answer_at - exchange.started, 0.0),
        thinking_chunks=obs.thinking_chunks if exchange.streaming else None,
        answer_chunks=obs.content_chunks - obs.thinking_chunks if exchange.streaming else None,
        tool_calls=obs.tool_calls, location=exchange.location,
    )


def with_content(record: UsageRecord, captured: Captured, limit: int) -> UsageRecord:
    """Add prompt and response text (--log-content); parsing the captures happens in the writer thread."""
    request, response, content_type = captured
    return record._replace(prompt_text=prompt_text(request, limit),
                           response_text=response_text(response, content_type, limit))


class RequestLog:
    def __init__(self, store: Store, registry: CollectorRegistry, *, proxy_name: str, retention_days: float,
                 max_rows: int, content_limit: int = 0, queue_size: int = QUEUE_SIZE,
                 retention_interval: float = RETENTION_INTERVAL_SECONDS) -> None:
        self.store = store
        self._proxy_name = proxy_name
        self._retention_ms = int(retention_days * 86_400_000)
        self._max_rows = max_rows
        self.content_limit = content_limit
        self._retention_interval = retention_interval
        # A deque, not a queue.Queue: appending takes no lock, and only the loop appends and only the writer pops.
        self._pending: deque[tuple[UsageRecord, Captured | None]] = deque()
        self._queue_size = queue_size
        self._submitted = 0  # appended by the loop
        self._processed = 0  # written or dropped by the writer
        self._progress = threading.Condition()
        self._records = Counter(
            "ollama_metrics_proxy_request_log_records_total",
            "Request-log records by what became of them: written, or dropped because the queue was full or the "
            "database write failed.", ("result",), registry=registry)
        for result in ("written", "dropped_queue_full", "dropped_write_failed"):
            self._records.labels(result)
        self._deleted = Counter(
            "ollama_metrics_proxy_request_log_deleted_total",
            "Request-log records deleted by retention (age, row limit) or by DELETE /-/logs.", ("reason",),
            registry=registry)
        self._logged_failure: str | None = None
        self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
        self._wake = threading.Event()
        self._stopping = False
        self._next_retention = 0.0

    # ---------------------------------------------------------------- event-loop side

    def start(self) -> None:
        self._thread.start()

    def submit(self, exchange: Exchange) -> None:
        """Called once a request is finished; the exchange is not touched by the relay afterwards."""
        if not is_inference(exchange.endpoint):
            return
        if len(self._pending) >= self._queue_size:
            self._records.labels("dropped_queue_full").inc()
            self._log_failure("queue_full", f"the queue of {self._queue_size} records is full; the database "
                                            "is not keeping up")
            return
        captured = None
        if self.content_limit and exchange.captured_request is not None and exchange.captured_response is not None:
            captured = (bytes(exchange.captured_request), bytes(exchange.captured_response), exchange.content_type)
        self._pending.append((record_for(exchange, self._proxy_name), captured))
        self._submitted += 1
        if len(self._pending) % BATCH_SIZE == 0:
            # A flood fills a batch before the interval is over: write it now, so what a hard kill (kill -9, the
            # OOM killer) can take, the records still queued, stays within the last half second of requests.
            self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer."""
        if self._thread.is_alive():
            self._stopping = True
            self._wake.set()
            self._thread.join(timeout)
        self.store.close()

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every record submitted so far has been written or counted as dropped (tests, shutdown)."""
        target = self._submitted
        self._wake.set()
        with self._progress:
            self._progress.wait_for(lambda: self._processed >= target, timeout)

    def record_deleted(self, reason: str, rows: int) -> None:
        if rows:
            self._deleted.labels(reason).inc(rows)

    # ---------------------------------------------------------------- writer thread

    def _run(self) -> None:
        while True:
            self._wake.wait(WRITE_INTERVAL_SECONDS)
            self._wake.clear()
            while batch := self._drain():
                self._write(batch)
                with self._progress:
                    self._processed += len(batch)
                    self._progress.notify_all()
            if self._stopping:
                return
            if time.monotonic() >= self._next_retention and len(self._pending) < BATCH_SIZE:
                self._next_retention = time.monotonic() + self._retention_interval
                self._enforce_retention()

    def _drain(self) -> list[UsageRecord]:
        batch: list[UsageRecord] = []
        while self._pending and len(batch) < BATCH_SIZE:
            record, captured = self._pending.popleft()
            if captured is not None:
                try:
                    record = with_content(record, captured, self.content_limit)
                except Exception:  # keep the record, without its text, and the writer alive
                    log.exception("request log: could not extract prompt and response text")
            batch.append(record)
        return batch

    def _write(self, batch: list[UsageRecord]) -> None:
        try:
            self.store.insert(batch)
        except StoreError as exc:
            self._records.labels("dropped_write_failed").inc(len(batch))
            self._log_failure("write_failed", f"{len(batch)} records could not be written to "
                                              f"{self.store.describe()}: {exc}")
            return
        self._records.labels("written").inc(len(batch))
        if self._logged_failure is not None:
            log.info("request log: writing to %s again", self.store.describe())
            self._logged_failure = None

    def _enforce_retention(self) -> None:
        try:
            aged = self.store.delete_before(int(time.time() * 1000) - self._retention_ms)
            self.record_deleted("retention_age", aged)
            self.record_deleted("retention_rows", self.store.keep_newest(self._max_rows))
        except StoreError as exc:
            self._log_failure("retention_failed", f"retention could not run on {self.store.describe()}: {exc}")

    def _log_failure(self, kind: str, message: str) -> None:
        if self._logged_failure != kind:
            self._logged_failure = kind
            log.warning("request log: %s (counted in ollama_metrics_proxy_request_log_records_total)", message)
