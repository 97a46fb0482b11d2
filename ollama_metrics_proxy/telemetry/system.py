"""The Ollama server and runner processes, and the host they run on, read with psutil in a named thread.

The proxy's own process is not covered here: prometheus_client's process collector already exports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import psutil

from ollama_metrics_proxy.telemetry.sources import SourceUnavailable, ThreadedSampler

SERVER_NAMES = frozenset({"ollama", "ollama.exe"})
RUNNER_NAMES = frozenset({"ollama_llama_server", "llama-server", "ollama-runner"})


@dataclass(frozen=True)
class RunnerArgs:
    """What a model runner's command line says (Ollama 0.30+ starts one llama-server per loaded model):
    ``--model …/blobs/sha256-<digest> --ctx-size N --parallel N`` (``-m``, ``-c``, ``-np``; ``--flag=value`` too)."""

    digest: str | None
    parallel: int | None
    context_size: int | None


_RUNNER_FLAGS = {"--model": "model", "-m": "model", "--ctx-size": "ctx", "-c": "ctx", "--parallel": "parallel",
                 "-np": "parallel"}
_BLOB_DIGEST = re.compile(r"sha256[-:]([0-9a-f]{64})$")


def runner_args(cmdline: list[str]) -> RunnerArgs | None:
    """The runner's model digest, slots and context size; None for a command line naming none of them."""
    values: dict[str, str] = {}
    for index, argument in enumerate(cmdline):
        flag, equals, value = argument.partition("=")
        key = _RUNNER_FLAGS.get(flag)
        if key is None:
            continue
        if not equals:
            value = cmdline[index + 1] if index + 1 < len(cmdline) else ""
        values[key] = value
    if not values:
        return None
    digest = _BLOB_DIGEST.search(values.get("model", ""))
    return RunnerArgs(digest=digest[1] if digest else None, parallel=_positive(values.get("parallel")),
                      context_size=_positive(values.get("ctx")))


def _positive(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() and int(text) > 0 else None


@dataclass(frozen=True)
class ProcessReading:
    pid: int
    role: str  # "server" or "runner"
    name: str
    cpu_seconds: float
    resident_memory_bytes: int
    threads: int
    start_time_seconds: float
    # The server's queueing settings, from its environment when visible (OLLAMA_NUM_PARALLEL, OLLAMA_MAX_QUEUE).
    settings: dict[str, int] = field(default_factory=dict)
    runner: RunnerArgs | None = None  # a runner's model, slots and context size, from its command line


@dataclass(frozen=True)
class HostReading:
    cpu_utilization_ratio: float
    memory_used_bytes: int
    memory_total_bytes: int
    models_dir: str | None = None
    models_disk_used_bytes: int | None = None
    models_disk_free_bytes: int | None = None


def process_name(pid: int) -> str:
    """The short name of a process, or "" when it has gone or is not visible."""
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return ""


class OllamaProcessFinder:
    """Finds the Ollama server (by ``--ollama-pid`` or by name) and its runner children."""

    def __init__(self, pid: int | None) -> None:
        self._pid = pid

    def find(self) -> list[tuple[psutil.Process, str]]:
        servers = self._servers()
        found: dict[int, tuple[psutil.Process, str]] = {server.pid: (server, "server") for server in servers}
        for server in servers:
            for child in _children(server):
                found.setdefault(child.pid, (child, "runner"))
        if self._pid is None:
            for process in psutil.process_iter(["name"]):
                if process.info["name"] in RUNNER_NAMES:
                    found.setdefault(process.pid, (process, "runner"))
        return list(found.values())

    def _servers(self) -> list[psutil.Process]:
        if self._pid is not None:
            try:
                return [psutil.Process(self._pid)]
            except psutil.NoSuchProcess:
                raise SourceUnavailable("not_visible", f"no process with --ollama-pid {self._pid}") from None
            except psutil.AccessDenied:
                raise SourceUnavailable("no_permission", f"cannot read process {self._pid}") from None
        # Runners are started from the same `ollama` executable (`ollama runner …`), so a process named ollama
        # whose parent is also one is a runner, not a second server.
        named = [process for process in psutil.process_iter(["name", "ppid"]) if process.info["name"] in SERVER_NAMES]
        pids = {process.pid for process in named}
        return [process for process in named if process.info["ppid"] not in pids]


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def read_process(process: psutil.Process, role: str) -> ProcessReading | None:
    try:
        with process.oneshot():
            times = process.cpu_times()
            return ProcessReading(
                pid=process.pid, role=role, name=process.name(),
                cpu_seconds=times.user + times.system,
                resident_memory_bytes=process.memory_info().rss,
                threads=process.num_threads(), start_time_seconds=process.create_time(),
                settings=queue_settings(process) if role == "server" else {},
                runner=runner_args(_cmdline(process)) if role == "runner" else None,
            )
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None  # exited between listing and reading
    except psutil.AccessDenied:
        return None


# Ollama's own defaults when the variable is unset (since 0.10 one slot per model; ollama:envconfig/config.go).
def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except (psutil.Error, OSError):
        return []


QUEUE_SETTINGS = {"OLLAMA_NUM_PARALLEL": 1, "OLLAMA_MAX_QUEUE": 512}


def queue_settings(process: psutil.Process) -> dict[str, int]:
    """OLLAMA_NUM_PARALLEL and OLLAMA_MAX_QUEUE as the Ollama server runs with them: from its environment, or
    Ollama's defaults for those it leaves unset; empty when the environment cannot be read (another user's
    process), since then nothing says which apply."""
    try:
        environment = process.environ()
    except (psutil.Error, OSError):
        return {}
    found = {}
    for name, default in QUEUE_SETTINGS.items():
        value = environment.get(name, "").strip()
        found[name] = int(value) if value.isdigit() and int(value) > 0 else default
    return found


class OllamaProcessSampler(ThreadedSampler[list[ProcessReading]]):
    hint = ("; run the proxy on the Ollama host or in its PID namespace, or pass --ollama-pid "
            "(--ollama-process off turns this off)")

    def __init__(self, interval: float, ollama_pid: int | None) -> None:
        super().__init__("ollama_process", interval)
        self._finder = OllamaProcessFinder(ollama_pid)

    def sample(self) -> list[ProcessReading]:
        readings = [read_process(process, role) for process, role in self._finder.find()]
        found = [reading for reading in readings if reading is not None]
        if not found:
            raise SourceUnavailable("not_visible", "no Ollama process is visible from here")
        return found


class HostSampler(ThreadedSampler[HostReading]):
    def __init__(self, interval: float, models_dir: str | None) -> None:
        super().__init__("host", interval)
        self._models_dir = models_dir
        psutil.cpu_percent(interval=None)  # primes the counter: each sample measures since the previous one

    def sample(self) -> HostReading:
        memory = psutil.virtual_memory()
        used = free = None
        if self._models_dir is not None:
            try:
                usage = psutil.disk_usage(self._models_dir)
                used, free = usage.used, usage.free
            except OSError:
                pass  # the directory vanished: no disk series, the rest stands
        return HostReading(
            cpu_utilization_ratio=psutil.cpu_percent(interval=None) / 100,
            memory_used_bytes=memory.total - memory.available,
            memory_total_bytes=memory.total,
            models_dir=self._models_dir if used is not None else None,
            models_disk_used_bytes=used, models_disk_free_bytes=free,
        )
