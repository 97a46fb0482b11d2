"""One relay worker of ``--workers N`` (see ``workers``): the API port on a shared address, reporting each request
to the primary process instead of recording it. Started by the primary as
``python -m ollama_metrics_proxy.app.relay_worker NUMBER CHANNEL_FD``, with ``(config, port)`` pickled on stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import pickle
import signal
import socket
import sys
from typing import Any, Final

from ollama_metrics_proxy.app.eventloop import run_event_loop, tune_garbage_collector
from ollama_metrics_proxy.app.logs import setup_logging
from ollama_metrics_proxy.config import Config, HostPort
from ollama_metrics_proxy.observe.exchange import Exchange
from ollama_metrics_proxy.relay.api_port import StartupError, api_guard, open_api_port
from ollama_metrics_proxy.relay.listener import ConnectionGuard, raise_open_file_limit
from ollama_metrics_proxy.relay.workers import frame
from ollama_metrics_proxy.upstream import UpstreamClient

log = logging.getLogger("ollama_metrics_proxy.requests")
CONNECTIONS_REPORT_SECONDS: Final = 1.0
# Reports wait this long to go out together: one write here and one wake-up of the primary per batch rather than
# two per request. Metrics and the request log lag the relay by at most this.
REPORT_BATCH_SECONDS: Final = 0.005
# Reports wait in the socket's buffer only if the primary stalls; past this they are dropped (and said), so a
# stalled primary never grows a worker's memory without bound.
MAX_UNSENT_BYTES: Final = 64 * 1024 * 1024


class RemoteRecorder:
    """A worker's recorder: each report goes to the primary, in batches (``REPORT_BATCH_SECONDS``)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._reports: list[tuple[Any, ...]] = []
        self._flush_scheduled = False
        self._tokens = itertools.count(1)
        self._said_dropped = False

    def start(self, exchange: Exchange) -> str:
        token = next(self._tokens)
        self.report(("start", token, exchange.endpoint, exchange.method, exchange.path, exchange.request_model,
                     exchange.started, exchange.wall_started, exchange.client))
        return str(token)

    def finish(self, exchange: Exchange, in_flight_label: str) -> None:
        # The relay never touches the exchange after this, so it is pickled later, with the batch.
        self.report(("finish", int(in_flight_label or 0), exchange))

    def count_internal_error(self, stage: str) -> None:
        log.exception("metrics failed at stage %s; the request itself was not affected", stage)
        self.report(("internal_error", stage))

    def count_refused(self, listener: str, reason: str) -> None:
        self.report(("refused", listener, reason))

    def report(self, report: tuple[Any, ...]) -> None:
        self._reports.append(report)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_later(REPORT_BATCH_SECONDS, self.flush)

    def flush(self) -> None:
        """Send what is waiting (also called directly, to send at once)."""
        self._flush_scheduled = False
        reports, self._reports = self._reports, []
        transport = self._transport
        if not reports or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            if not self._said_dropped:
                self._said_dropped = True
                log.error("the primary process is not reading this worker's reports; dropping them")
            return
        try:
            data = frame(reports)
        except Exception:  # one report that cannot be pickled must not take the others with it
            log.exception("a report could not be sent to the primary process")
            data = b"".join(frame([report]) for report in reports if _picklable(report))
        transport.write(data)


def _picklable(report: tuple[Any, ...]) -> bool:
    try:
        pickle.dumps(report)
    except Exception:
        return False
    return True


class _PrimaryLink(asyncio.Protocol):
    """The worker's end of the channel: nothing comes this way; its end means the primary is gone."""

    def __init__(self, gone: asyncio.Event) -> None:
        self._gone = gone

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone.set()


async def serve_worker(config: Config, port: int, channel: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    transport, _ = await loop.create_unix_connection(lambda: _PrimaryLink(stop), sock=channel)
    recorder = RemoteRecorder(transport)
    upstream = UpstreamClient(config.upstream, config.connect_timeout)
    guard = api_guard(config, on_refused=lambda reason: recorder.report(("refused_connection", reason)))
    try:
        api = await open_api_port(config, recorder, upstream, guard, HostPort(config.listen.host, port),
                                  reuse_port=True)
    except StartupError as exc:
        recorder.report(("failed", str(exc)))
        recorder.flush()
        transport.close()
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    tune_garbage_collector()
    recorder.report(("ready",))
    reporter = asyncio.create_task(_report_connections(recorder, guard))
    try:
        await stop.wait()
    finally:
        reporter.cancel()
        api.stop_accepting()
        await api.finish(config.shutdown_grace)
        upstream.close()
        recorder.report(("connections", 0))
        recorder.flush()
        await _drained(transport)
        transport.close()
    return 0


async def _drained(transport: asyncio.Transport) -> None:
    """Every report written to the channel (bounded: a primary that stopped reading is not waited for)."""
    for _ in range(100):
        if transport.is_closing() or not transport.get_write_buffer_size():
            return
        await asyncio.sleep(0.01)


async def _report_connections(recorder: RemoteRecorder, guard: ConnectionGuard) -> None:
    """The primary's open-connections gauge includes this worker's, told once a second when it changed."""
    reported = -1
    while True:
        if guard.open != reported:
            reported = guard.open
            recorder.report(("connections", reported))
        await asyncio.sleep(CONNECTIONS_REPORT_SECONDS)


def main() -> int:
    if len(sys.argv) != 3 or sys.stdin.isatty():
        print("ollama-metrics-proxy: the relay worker is started by the proxy itself (--workers N), not by hand",
              file=sys.stderr)
        return 2
    number, descriptor = int(sys.argv[1]), int(sys.argv[2])
    config, port = pickle.load(sys.stdin.buffer)
    setup_logging(config.log_level, config.log_format, worker=number)
    raise_open_file_limit()
    channel = socket.socket(fileno=descriptor)
    status = 1
    with contextlib.suppress(KeyboardInterrupt):
        async def serve() -> None:
            nonlocal status
            status = await serve_worker(config, port, channel)
        run_event_loop(serve(), config.event_loop)
    return status


if __name__ == "__main__":
    sys.exit(main())
