"""``--workers N``: more processes relaying on the API port, one process recording.

The process the user started (the primary) runs everything it runs with one worker: the API port, the metrics
listener, telemetry, the request log. With ``--workers N`` it also starts N-1 relay workers
(``relay_worker``): each binds the same API address with SO_REUSEPORT, so the kernel spreads new connections
over all N processes, and relays exactly as the primary does. A worker reports each request to the primary
(that it started, then the finished ``Exchange``) over a Unix socket pair, and the primary's ``Recorder``
records it like one of its own: one set of metrics, one request log, one live page and usage API, so nothing
has to be merged at scrape time and every figure keeps its single definition.

Per relayed chunk a worker does exactly what the primary does; per request it adds two small pickles, sent in
batches a few milliseconds apart. A worker that dies is replaced (and counted); the requests it had in
flight are recorded as aborted, as their clients saw them end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ollama_metrics_proxy.config import ENV_PREFIX, Config, HostPort
from ollama_metrics_proxy.metrics.recorder import Recorder
from ollama_metrics_proxy.observe.exchange import Exchange, Outcome
from ollama_metrics_proxy.relay.api_port import StartupError

log = logging.getLogger(__name__)

# The channel: frames of a 4-byte length and a pickled list of reports. Pickle is safe here: both ends are this
# program, joined by a socket pair the primary created before starting the worker.
FRAME: Final = struct.Struct(">I")
START_TIMEOUT_SECONDS: Final = 30.0
# A worker that dies is replaced after a second; one that keeps dying soon after its start waits twice as long each
# time, up to half a minute, so a crash loop neither floods the log nor burns a core.
RESTART_DELAY_SECONDS: Final = 1.0
MAX_RESTART_DELAY_SECONDS: Final = 30.0
STABLE_AFTER_SECONDS: Final = 30.0
# The folder that holds the package, so a worker started from a source checkout imports this same code.
PACKAGE_ROOT: Final = str(Path(__file__).resolve().parents[2])


def frame(reports: list[tuple[Any, ...]]) -> bytes:
    payload = pickle.dumps(reports, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(payload)) + payload


class WorkerLink(asyncio.Protocol):
    """The primary's end of one worker's channel: applies each report to the primary's recorder."""

    def __init__(self, number: int, recorder: Recorder) -> None:
        self.number = number
        self._recorder = recorder
        self._buffer = bytearray()
        self._in_flight: dict[int, tuple[Exchange, str]] = {}  # token -> (the request as started, its label)
        self.open_connections = 0
        self.failure: str | None = None  # what a worker that could not start said
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= FRAME.size:
            (size,) = FRAME.unpack_from(buffer)
            end = FRAME.size + size
            if len(buffer) < end:
                break
            payload = bytes(buffer[FRAME.size:end])
            del buffer[:end]
            try:
                reports = pickle.loads(payload)
            except Exception:
                self._recorder.count_internal_error("worker")
                continue
            for report in reports:
                try:
                    self._apply(report)
                except Exception:  # a failure in recording never takes the channel down
                    self._recorder.count_internal_error("worker")

    def _apply(self, report: tuple[Any, ...]) -> None:
        kind = report[0]
        recorder = self._recorder
        if kind == "start":
            _, token, endpoint, method, path, request_model, started, wall_started, client = report
            exchange = Exchange(endpoint=endpoint, method=method, path=path, started=started,
                                request_model=request_model, wall_started=wall_started, client=client)
            self._in_flight[token] = (exchange, recorder.start(exchange))
        elif kind == "finish":
            _, token, exchange = report
            started = self._in_flight.pop(token, None)
            recorder.finish(exchange, started[1] if started else "")
        elif kind == "refused":
            recorder.count_refused(report[1], report[2])
        elif kind == "refused_connection":
            recorder.metrics.refused_connections.labels("api", report[1]).inc()
        elif kind == "internal_error":  # already logged, with its traceback, by the worker
            recorder.metrics.internal_errors.labels(report[1]).inc()
        elif kind == "connections":
            self.open_connections = report[1]
        elif kind == "ready":
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == "failed":
            self.failure = report[1]

    def connection_lost(self, exc: Exception | None) -> None:
        # The worker is gone: its clients' connections went with it, so what it had in flight ended there.
        now = time.perf_counter()
        for exchange, label in self._in_flight.values():
            exchange.finish(Outcome.ABORTED, now)
            try:
                self._recorder.finish(exchange, label)
            except Exception:
                self._recorder.count_internal_error("worker")
        self._in_flight.clear()
        self.open_connections = 0
        if not self.lost.done():
            self.lost.set_result(None)


@dataclass
class _Worker:
    number: int
    process: asyncio.subprocess.Process
    link: WorkerLink
    started: float  # time.monotonic()
    waited: float = 0.0  # how long it was waited for after the one it replaced died (0: one of the first)


def restart_delay(lived: float, waited: float) -> float:
    """How long to wait before replacing a worker that died after ``lived`` seconds, itself started ``waited``
    seconds after the death of the one before it."""
    if lived >= STABLE_AFTER_SECONDS:
        return RESTART_DELAY_SECONDS
    return min(max(waited * 2, RESTART_DELAY_SECONDS), MAX_RESTART_DELAY_SECONDS)


class WorkerPool:
    """Starts, watches and stops the relay workers (numbered 1 to N-1; the primary is worker 0)."""

    def __init__(self, config: Config, address: HostPort, recorder: Recorder) -> None:
        self._config = config
        self._address = address  # the port the primary bound, so that port 0 means the same port for all
        self._recorder = recorder
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._stop_deadline = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._restarts = recorder.metrics.worker_restarts

    @property
    def open_connections(self) -> int:
        return sum(worker.link.open_connections for worker in list(self._workers.values()))

    @property
    def in_flight(self) -> int:
        return sum(worker.link.in_flight for worker in self._workers.values())

    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers.values()]

    @property
    def serving(self) -> int:
        """Workers that listen now."""
        return sum(1 for worker in list(self._workers.values())
                   if worker.link.ready.done() and not worker.link.lost.done())

    async def start(self) -> None:
        """Start every worker and wait until each listens; raises StartupError if one cannot."""
        for number in range(1, self._config.workers):
            try:
                self._workers[number] = await self._spawn(number)
            except OSError as exc:  # no process could be made (out of memory, of processes, of descriptors)
                raise StartupError(f"relay worker {number} of --workers {self._config.workers} could not be "
                                   f"started: {exc.strerror or exc}") from None
        for number, worker in self._workers.items():
            await asyncio.wait({worker.link.ready, worker.link.lost}, timeout=START_TIMEOUT_SECONDS,
                               return_when=asyncio.FIRST_COMPLETED)
            if not worker.link.ready.done():
                reason = worker.link.failure or "it did not report that it listens"
                raise StartupError(f"relay worker {number} of --workers {self._config.workers} could not start: "
                                   f"{reason}")
        for worker in self._workers.values():
            self._watch(worker)

    def stop(self) -> None:
        """Ask every worker to stop: each stops accepting, lets its requests finish within the grace, exits."""
        self._stopping = True
        self._stop_deadline = time.monotonic() + self._config.shutdown_grace
        for worker in self._workers.values():
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)

    async def wait(self, extra: float) -> None:
        """After ``stop``: wait for the workers to exit with every report delivered (until the grace plus
        ``extra`` is over), then kill any left."""
        workers = list(self._workers.values())
        waits = [asyncio.ensure_future(_exited(worker)) for worker in workers]
        if waits:
            timeout = max(self._stop_deadline + extra - time.monotonic(), 0.1)
            _, late = await asyncio.wait(waits, timeout=timeout)
            for worker in workers:
                if worker.process.returncode is None:
                    log.warning("relay worker %d (pid %d) did not stop in time; killing it", worker.number,
                                worker.process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
            if late:
                await asyncio.wait(late, timeout=1.0)
        for task in self._tasks:
            task.cancel()

    async def _spawn(self, number: int) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            # The configuration (secrets included) goes through a pipe, never the command line or the
            # environment: the proxy's own variables (an admin token, OTLP headers) are not passed on.
            environment = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
            environment["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ollama_metrics_proxy.app.relay_worker", str(number), str(theirs.fileno()),
                stdin=asyncio.subprocess.PIPE, pass_fds=(theirs.fileno(),), env=environment)
        finally:
            theirs.close()
        assert process.stdin is not None
        process.stdin.write(pickle.dumps((self._config, self._address.port), protocol=pickle.HIGHEST_PROTOCOL))
        process.stdin.close()
        recorder = self._recorder
        _, link = await asyncio.get_running_loop().create_unix_connection(
            lambda: WorkerLink(number, recorder), sock=ours)
        return _Worker(number, process, link, time.monotonic())

    def _watch(self, worker: _Worker) -> None:
        task = asyncio.create_task(self._replace_when_lost(worker))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace_when_lost(self, worker: _Worker) -> None:
        await worker.link.lost
        status = await worker.process.wait()
        if self._stopping:
            return
        self._restarts.inc()
        delay = restart_delay(time.monotonic() - worker.started, worker.waited)
        log.warning("relay worker %d (pid %d) exited unexpectedly (%s); starting another in %g s", worker.number,
                    worker.process.pid, _describe_exit(status), delay)
        await asyncio.sleep(delay)
        if self._stopping:
            return
        try:
            replacement = await self._spawn(worker.number)
        except OSError as exc:
            log.error("relay worker %d could not be restarted: %s", worker.number, exc)
            return
        replacement.waited = delay
        self._workers[worker.number] = replacement
        self._watch(replacement)


async def _exited(worker: _Worker) -> None:
    await worker.link.lost  # every report read
    await worker.process.wait()


def _describe_exit(status: int) -> str:
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-status).name}"
        return f"killed by signal {-status}"
    return f"exit status {status}"
