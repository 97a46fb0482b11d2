"""Every scrape-time metric: collectors that read the latest snapshot of each background source.

Nothing here does I/O. A source without a snapshot yields no series of its own; its health shows in
``ollama_metrics_proxy_source_up`` and ``ollama_metrics_proxy_source_errors_total``. Things that are gone (an
unloaded model, a lost GPU, an exited runner) simply stop appearing, rather than lingering at a last value.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ollama_metrics_proxy.config import Config
from ollama_metrics_proxy.telemetry.gpu import CLOCK_EVENT_REASONS, GpuReading, GpuSampler
from ollama_metrics_proxy.telemetry.ollama_state import InstalledModel, LoadedModel, OllamaStatePoller
from ollama_metrics_proxy.telemetry.sources import SourceHealth, ThreadedSampler
from ollama_metrics_proxy.telemetry.system import (
    HostReading,
    HostSampler,
    OllamaProcessSampler,
    RunnerArgs,
    process_name,
)

GPU_LABELS = ("gpu", "uuid")


def _family(kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str, documentation: str,
            labels: Sequence[str], samples: Iterable[tuple[Sequence[str], float]]) -> Metric:
    family = kind(name, documentation, labels=list(labels))
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def gauge(name: str, documentation: str, labels: Sequence[str] = (),
          samples: Iterable[tuple[Sequence[str], float]] = ()) -> Metric:
    return _family(GaugeMetricFamily, name, documentation, labels, samples)


def counter(name: str, documentation: str, labels: Sequence[str] = (),
            samples: Iterable[tuple[Sequence[str], float]] = ()) -> Metric:
    return _family(CounterMetricFamily, name, documentation, labels, samples)


class _Described(Collector):
    """Registers without prometheus_client calling collect() at registration time."""

    def describe(self) -> Iterable[Metric]:
        return []


class OllamaStateCollector(_Described):
    def __init__(self, poller: OllamaStatePoller) -> None:
        self._poller = poller

    def collect(self) -> Iterable[Metric]:
        poller = self._poller
        yield gauge("ollama_up", "1 when the last poll of Ollama's /api/version, /api/ps and /api/tags succeeded.",
                    samples=[((), 1.0 if poller.up else 0.0)])
        yield counter("ollama_model_appearances_total", "Models that appeared in /api/ps between two polls (loads by "
                      "any client; ollama_model_loads_total has those of requests through the proxy, by cause).",
                      ["model"], [((name,), count) for name, count in sorted(poller.loads.items())])
        yield counter("ollama_model_unloads_total", "Models that left /api/ps between two polls.",
                      ["model"], [((name,), count) for name, count in sorted(poller.unloads.items())])
        snapshot = poller.snapshot
        if snapshot is None:
            return
        if snapshot.version:
            yield gauge("ollama_build_info", "The upstream Ollama's version; always 1.", ["version"],
                        [((snapshot.version,), 1.0)])
        loaded = snapshot.loaded
        now = time.time()
        per_model: list[tuple[str, str, Callable[[Any], float | None]]] = [
            ("ollama_model_loaded", "1 for each model Ollama holds in memory.", lambda m: 1.0),
            ("ollama_model_size_bytes", "Memory a loaded model occupies (RAM and VRAM).", lambda m: m.size_bytes),
            ("ollama_model_vram_bytes", "GPU memory a loaded model occupies.", lambda m: m.vram_bytes),
            ("ollama_model_gpu_offload_ratio", "Share of a loaded model held on the GPU (size_vram / size).",
             lambda m: m.vram_bytes / m.size_bytes if m.size_bytes else None),
            ("ollama_model_context_length", "Context window a loaded model was started with, in tokens.",
             lambda m: m.context_length),
            ("ollama_model_expires_in_seconds", "Seconds until Ollama unloads an idle model (keep-alive).",
             lambda m: None if m.expires_at is None else m.expires_at - now),
        ]
        yield gauge("ollama_models_loaded", "Models Ollama holds in memory.", samples=[((), len(loaded))])
        for name, documentation, read in per_model:
            samples = [((model.name,), value) for model in loaded if (value := read(model)) is not None]
            yield gauge(name, documentation, ["model"], samples)
        installed = snapshot.installed
        yield gauge("ollama_models_installed", "Models installed in Ollama (/api/tags).",
                    samples=[((), len(installed))])
        yield gauge("ollama_models_disk_bytes", "Disk space of the installed models, summed.",
                    samples=[((), sum(model.size_bytes for model in installed))])
        yield gauge("ollama_model_info", "Installed model metadata, to join on the model label; always 1.",
                    ["model", "family", "parameter_size", "quantization_level"],
                    [((m.name, m.family, m.parameter_size, m.quantization_level), 1.0) for m in installed])


GPU_FIELDS: tuple[tuple[str, str, Callable[[GpuReading], float | None]], ...] = (
    ("ollama_gpu_utilization_ratio", "Share of time a kernel was running on the GPU.",
     lambda g: g.utilization_ratio),
    ("ollama_gpu_memory_utilization_ratio", "Share of time GPU memory was being read or written.",
     lambda g: g.memory_utilization_ratio),
    ("ollama_gpu_memory_used_bytes", "GPU memory in use, as nvidia-smi reports it (without the memory the driver "
     "reserves, where NVML's v2 memory call is available).", lambda g: g.memory_used_bytes),
    ("ollama_gpu_memory_reserved_bytes", "GPU memory the driver reserves for itself (NVML v2; absent where the "
     "driver only has the v1 call, whose used figure includes it).", lambda g: g.memory_reserved_bytes),
    ("ollama_gpu_memory_free_bytes", "GPU memory free.", lambda g: g.memory_free_bytes),
    ("ollama_gpu_memory_total_bytes", "GPU memory installed.", lambda g: g.memory_total_bytes),
    ("ollama_gpu_temperature_celsius", "GPU core temperature.", lambda g: g.temperature_celsius),
    ("ollama_gpu_power_watts", "GPU power draw.", lambda g: g.power_watts),
    ("ollama_gpu_power_limit_watts", "GPU power limit in force.", lambda g: g.power_limit_watts),
    ("ollama_gpu_sm_clock_hertz", "GPU streaming-multiprocessor clock.", lambda g: g.sm_clock_hertz),
    ("ollama_gpu_fan_ratio", "GPU fan speed as a share of its maximum.", lambda g: g.fan_ratio),
)


class GpuCollector(_Described):
    def __init__(self, sampler: GpuSampler) -> None:
        self._sampler = sampler

    def collect(self) -> Iterable[Metric]:
        readings = self._sampler.snapshot
        yield gauge("ollama_gpu_up", "1 while NVML answers.", samples=[((), 0.0 if readings is None else 1.0)])
        if readings is None:
            return
        yield gauge("ollama_gpus", "NVIDIA GPUs NVML reports.", samples=[((), len(readings))])
        yield gauge("ollama_gpu_info", "GPU identity; always 1.", ["gpu", "uuid", "name", "driver_version"],
                    [((str(g.index), g.uuid, g.name, g.driver_version), 1.0) for g in readings])
        for name, documentation, read in GPU_FIELDS:
            samples = [((str(g.index), g.uuid), value) for g in readings if (value := read(g)) is not None]
            yield gauge(name, documentation, GPU_LABELS, samples)
        yield counter("ollama_gpu_energy_joules", "Energy the GPU used since the driver loaded (NVML).",
                      GPU_LABELS, [((str(g.index), g.uuid), g.energy_joules) for g in readings
                                   if g.energy_joules is not None])
        yield gauge("ollama_gpu_clock_throttled", "1 while NVML reports this reason for holding the GPU's clocks "
                    "down (power cap, thermal or hardware slowdown, idle, …), else 0.", [*GPU_LABELS, "reason"],
                    [((str(g.index), g.uuid, reason), float(bool(g.clock_event_reasons & bit)))
                     for g in readings if g.clock_event_reasons is not None
                     for bit, reason in CLOCK_EVENT_REASONS.items()])
        yield gauge("ollama_gpu_process_memory_bytes", "GPU memory used by each process (the Ollama runner).",
                    ["gpu", "pid", "process"],
                    [((str(g.index), str(p.pid), p.name), p.memory_bytes) for g in readings for p in g.processes])


class OllamaProcessCollector(_Described):
    def __init__(self, sampler: OllamaProcessSampler) -> None:
        self._sampler = sampler

    def collect(self) -> Iterable[Metric]:
        readings = self._sampler.snapshot or []
        labels = ("role", "pid")
        yield counter("ollama_process_cpu_seconds", "CPU time of the Ollama server and runner processes.",
                      labels, [((r.role, str(r.pid)), r.cpu_seconds) for r in readings])
        yield gauge("ollama_process_resident_memory_bytes", "Resident memory of the Ollama processes.",
                    labels, [((r.role, str(r.pid)), r.resident_memory_bytes) for r in readings])
        yield gauge("ollama_process_threads", "Threads of the Ollama processes.",
                    labels, [((r.role, str(r.pid)), r.threads) for r in readings])
        yield gauge("ollama_process_start_time_seconds", "Start time of the Ollama processes, unix seconds.",
                    labels, [((r.role, str(r.pid)), r.start_time_seconds) for r in readings])


class HostCollector(_Described):
    def __init__(self, sampler: HostSampler) -> None:
        self._sampler = sampler

    def collect(self) -> Iterable[Metric]:
        host: HostReading | None = self._sampler.snapshot
        if host is None:
            return
        yield gauge("ollama_host_cpu_utilization_ratio", "Host CPU busy share between the last two samples.",
                    samples=[((), host.cpu_utilization_ratio)])
        yield gauge("ollama_host_memory_used_bytes", "Host memory in use (total minus available).",
                    samples=[((), host.memory_used_bytes)])
        yield gauge("ollama_host_memory_total_bytes", "Host memory installed.", samples=[((), host.memory_total_bytes)])
        if host.models_dir is not None:
            yield gauge("ollama_host_models_disk_used_bytes", "Used space on the filesystem of the models directory.",
                        ["path"], [((host.models_dir,), host.models_disk_used_bytes or 0)])
            yield gauge("ollama_host_models_disk_free_bytes", "Free space on the filesystem of the models directory.",
                        ["path"], [((host.models_dir,), host.models_disk_free_bytes or 0)])


class SourceHealthCollector(_Described):
    def __init__(self, sources: Sequence[SourceHealth]) -> None:
        self._sources = sources

    def collect(self) -> Iterable[Metric]:
        yield gauge("ollama_metrics_proxy_source_up", "1 while a telemetry source (ollama, gpu, ollama_process, "
                    "host) delivers data.", ["source"],
                    [((s.name,), 1.0 if s.status.up else 0.0) for s in self._sources])
        yield counter("ollama_metrics_proxy_source_errors_total", "Failed samples of a telemetry source, by reason.",
                      ["source", "reason"],
                      [((s.name, reason), count) for s in self._sources for reason, count in
                       sorted(s.error_counts().items())])


@dataclass
class Samplers:
    """The threaded telemetry sources the configuration turned on."""

    gpu: GpuSampler | None = None
    processes: OllamaProcessSampler | None = None
    host: HostSampler | None = None

    def all(self) -> list[ThreadedSampler[Any]]:
        return [sampler for sampler in (self.gpu, self.processes, self.host) if sampler is not None]


def build_samplers(config: Config) -> Samplers:
    """Raises SourceUnavailable when ``--gpu on`` and NVML cannot be initialised."""
    samplers = Samplers()
    if config.gpu != "off":
        samplers.gpu = GpuSampler(config.gpu_interval, process_name)
        if config.gpu == "on":
            samplers.gpu.initialize()
    if config.ollama_process:
        samplers.processes = OllamaProcessSampler(config.system_interval, config.ollama_pid)
    if config.host_metrics:
        samplers.host = HostSampler(config.system_interval, config.models_dir)
    return samplers


EMBEDDING_ENDPOINTS = frozenset({"/api/embed", "/api/embeddings", "/v1/embeddings"})
# Model families whose runner Ollama forces to one parallel slot whatever OLLAMA_NUM_PARALLEL says (server/sched.go;
# ../shared/reference/ollama-api.md §10). nemotron_h is a prefix: its variants share it.
SINGLE_SLOT_FAMILIES = frozenset({"mllama", "qwen3vl", "qwen3vlmoe", "qwen35", "qwen35moe", "qwen3next", "lfm2",
                                  "lfm2moe"})
SINGLE_SLOT_PREFIXES = ("nemotron_h",)


def slots_for(model: str, runners: dict[str, RunnerArgs], installed: dict[str, InstalledModel], configured: int | None,
              *, only_embedding: bool) -> int | None:
    """The slots that apply to one model: what its runner was started with (a fact), else Ollama's rule."""
    runner = runners.get(model)
    if runner is not None and runner.parallel:
        return runner.parallel
    if only_embedding or single_slot(installed.get(model)):
        return 1
    return configured


def single_slot(model: InstalledModel | None) -> bool:
    """Whether Ollama runs this model with one slot: an embedding model, or a family forced to one."""
    if model is None:
        return False
    return ("embedding" in model.capabilities or model.family in SINGLE_SLOT_FAMILIES
            or model.family.startswith(SINGLE_SLOT_PREFIXES))


class QueueCollector(_Described):
    """Running and waiting at Ollama, per model, from the requests in flight through the proxy and the parallel
    slots that apply to each model: OLLAMA_NUM_PARALLEL from the Ollama server's environment when visible (Ollama's
    default of 1 when it is unset there), else --ollama-num-parallel; unknown, the estimate is left out rather
    than guessed. Ollama forces one slot on embedding models (by their capabilities in /api/tags, or a model seen
    only on embedding routes) and on some families (``SINGLE_SLOT_FAMILIES``). Requests beyond a runner's slots
    wait for one without bound (../shared/reference/ollama-api.md §10, citing ollama:envconfig/config.go and the
    scheduler, ollama:server/sched.go)."""

    def __init__(self, in_flight: Any, processes: OllamaProcessSampler | None, configured: int | None,
                 installed: Callable[[], Iterable[InstalledModel]] = tuple,
                 loaded: Callable[[], Iterable[LoadedModel]] = tuple) -> None:
        self._in_flight = in_flight
        self._processes = processes
        self._configured = configured
        self._installed = installed
        self._loaded = loaded

    def runners(self) -> dict[str, RunnerArgs]:
        """Each loaded model's runner, matched by the blob digest its command line names and /api/ps gives."""
        by_digest = {model.digest: model.name for model in self._loaded() if model.digest}
        found = {}
        for reading in (self._processes.snapshot or ()) if self._processes is not None else ():
            runner = reading.runner
            if runner is not None and runner.digest in by_digest:
                found[by_digest[runner.digest]] = runner
        return found

    def settings(self) -> dict[str, int]:
        for reading in (self._processes.snapshot or ()) if self._processes is not None else ():
            if reading.role == "server" and reading.settings:
                return dict(reading.settings)
        return {"OLLAMA_NUM_PARALLEL": self._configured} if self._configured else {}

    def collect(self) -> Iterable[Metric]:
        settings = self.settings()
        slots = settings.get("OLLAMA_NUM_PARALLEL")
        runners = self.runners()
        yield gauge("ollama_runner_parallel_slots",
                    "Parallel slots of each loaded model's runner, read from its command line (--parallel; Ollama "
                    "0.30+), where the proxy sees Ollama's processes.", ["model"],
                    [((model,), runner.parallel) for model, runner in runners.items() if runner.parallel])
        yield gauge("ollama_runner_context_size",
                    "Context size in tokens of each loaded model's runner, read from its command line (--ctx-size).",
                    ["model"], [((model,), runner.context_size) for model, runner in runners.items()
                                if runner.context_size])
        if "OLLAMA_MAX_QUEUE" in settings:
            yield gauge("ollama_max_queue", "OLLAMA_MAX_QUEUE: requests needing a model load that Ollama queues "
                        "before answering 503 server busy.", samples=[((), settings["OLLAMA_MAX_QUEUE"])])
        if slots is None and not runners:
            return
        if slots is not None:
            yield gauge("ollama_parallel_slots", "OLLAMA_NUM_PARALLEL: requests a loaded model serves at once "
                        "(embedding models: 1).", samples=[((), slots)])
        per_model: dict[str, list[float]] = {}
        for (endpoint, model), cell in self._in_flight._items():
            if model in ("", "none"):
                continue
            counts = per_model.setdefault(model, [0.0, 0.0])  # [all in flight, of which on embedding routes]
            counts[0] += cell.value
            if endpoint in EMBEDDING_ENDPOINTS:
                counts[1] += cell.value
        installed = {model.name: model for model in self._installed()}  # /api/tags names carry their tag
        model_slots = {model: slots_for(model, runners, installed, slots, only_embedding=bool(total and
                                                                                     embedding == total))
                       for model, (total, embedding) in per_model.items()}
        known = {model: count for model, count in model_slots.items() if count is not None}
        yield gauge("ollama_model_parallel_slots",
                    "Parallel slots the waiting estimate applies to each model in flight: its runner's (read from "
                    "its command line) where seen, else ollama_parallel_slots, or 1 where Ollama forces one "
                    "(embedding models; the mllama, qwen3vl, qwen35, qwen3next, lfm2 and nemotron_h families).",
                    ["model"], [((model,), count) for model, count in known.items()])
        yield gauge("ollama_requests_waiting_estimate",
                    "Estimate of the requests waiting in Ollama for a parallel slot, per model: those in flight "
                    "through the proxy beyond the model's slots (ollama_model_parallel_slots).",
                    ["model"], [((model, ), max(per_model[model][0] - count, 0.0)) for model, count in known.items()])


def register_telemetry(registry: CollectorRegistry, poller: OllamaStatePoller, gpu: GpuSampler | None,
                       processes: OllamaProcessSampler | None, host: HostSampler | None,
                       queue: QueueCollector | None = None) -> None:
    registry.register(OllamaStateCollector(poller))
    if queue is not None:
        registry.register(queue)
    health = [poller.health]
    if gpu is not None:
        registry.register(GpuCollector(gpu))
        health.append(gpu.health)
    if processes is not None:
        registry.register(OllamaProcessCollector(processes))
        health.append(processes.health)
    if host is not None:
        registry.register(HostCollector(host))
        health.append(host.health)
    registry.register(SourceHealthCollector(health))
