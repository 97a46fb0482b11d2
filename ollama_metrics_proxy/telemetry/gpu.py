"""NVIDIA GPU telemetry from NVML (the ``pynvml`` module of nvidia-ml-py), sampled in a named thread.

Units are converted once, here, where they are read: percent → ratio, milliwatts → watts, millijoules →
joules, MHz → hertz. A field a GPU does not support yields no value (logged once per GPU and field); a GPU
that is lost is skipped; no library, no driver or no permission turns the whole source down with one log line.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from ollama_metrics_proxy.telemetry.sources import SourceUnavailable, ThreadedSampler

log = logging.getLogger(__name__)

# NVML return codes (nvml.h); compared by value so any NVMLError subclass, real or fake, is understood.
NOT_SUPPORTED = 3
NO_PERMISSION = 4
DRIVER_NOT_LOADED = 9
LIBRARY_NOT_FOUND = 12
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
INIT_FAILURES = {
    LIBRARY_NOT_FOUND: ("library_not_found", "the NVML library (libnvidia-ml.so) was not found: no NVIDIA driver"),
    DRIVER_NOT_LOADED: ("driver_not_loaded", "the NVIDIA driver is not loaded"),
    NO_PERMISSION: ("no_permission", "no permission to open the NVIDIA devices"),
}
# NVML's clock event ("throttle") reasons, by bit (nvml.h nvmlClocksEventReason*): a fixed, bounded label set.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str
    memory_bytes: int


@dataclass
class GpuReading:
    index: int
    uuid: str
    name: str
    driver_version: str
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_total_bytes: int | None = None
    memory_reserved_bytes: int | None = None
    temperature_celsius: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None
    sm_clock_hertz: float | None = None
    fan_ratio: float | None = None
    clock_event_reasons: int | None = None  # a bit mask of CLOCK_EVENT_REASONS
    processes: list[GpuProcess] = field(default_factory=list)


class GpuLost(Exception):
    pass


def load_nvml() -> ModuleType:
    """Import pynvml; a missing package reads like a missing library."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise SourceUnavailable("library_not_found", f"the nvidia-ml-py package is not installed ({exc})") from exc


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class GpuSampler(ThreadedSampler[list[GpuReading]]):
    hint = "; GPU metrics are off until NVML answers (use --gpu off to silence this)"

    def __init__(self, interval: float, process_name: Callable[[int], str],
                 nvml_loader: Callable[[], ModuleType] = load_nvml) -> None:
        super().__init__("gpu", interval)
        self._nvml_loader = nvml_loader
        self._nvml: ModuleType | None = None
        self._process_name = process_name
        self._unsupported: set[tuple[str, str]] = set()
        self._memory_v1_only = False

    def initialize(self) -> ModuleType:
        """Load and initialise NVML once; raises SourceUnavailable with the reason when it cannot."""
        if self._nvml is not None:
            return self._nvml
        nvml = self._nvml_loader()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            reason, detail = INIT_FAILURES.get(exc.value, ("init_failed", f"nvmlInit failed: {exc}"))
            raise SourceUnavailable(reason, detail) from exc
        self._nvml = nvml
        return nvml

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                log.debug("nvmlShutdown failed", exc_info=True)
            self._nvml = None

    def sample(self) -> list[GpuReading]:
        nvml = self.initialize()
        try:
            count = nvml.nvmlDeviceGetCount()
            driver = _text(nvml.nvmlSystemGetDriverVersion())
        except nvml.NVMLError as exc:
            raise SourceUnavailable("query_failed", f"NVML did not answer: {exc}") from exc
        readings = []
        for index in range(count):
            try:
                readings.append(self._read_gpu(nvml, index, driver))
            except GpuLost:
                continue  # logged once in _read
        return readings

    def _read_gpu(self, nvml: ModuleType, index: int, driver: str) -> GpuReading:
        gpu = str(index)
        handle = self._read(nvml, gpu, "handle", nvml.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            raise GpuLost
        reading = GpuReading(index=index, driver_version=driver,
                             uuid=_text(self._read(nvml, gpu, "uuid", nvml.nvmlDeviceGetUUID, handle) or ""),
                             name=_text(self._read(nvml, gpu, "name", nvml.nvmlDeviceGetName, handle) or ""))
        rates = self._read(nvml, gpu, "utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        if rates is not None:
            reading.utilization_ratio = rates.gpu / 100
            reading.memory_utilization_ratio = rates.memory / 100
        self._read_memory(nvml, gpu, handle, reading)
        reading.temperature_celsius = self._scaled(
            nvml, gpu, "temperature", 1, nvml.nvmlDeviceGetTemperature, handle, NVML_TEMPERATURE_GPU)
        reading.power_watts = self._scaled(nvml, gpu, "power", 1e-3, nvml.nvmlDeviceGetPowerUsage, handle)
        reading.power_limit_watts = self._scaled(
            nvml, gpu, "power_limit", 1e-3, nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        reading.energy_joules = self._scaled(
            nvml, gpu, "energy", 1e-3, nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
        reading.sm_clock_hertz = self._scaled(
            nvml, gpu, "sm_clock", 1e6, nvml.nvmlDeviceGetClockInfo, handle, NVML_CLOCK_SM)
        reading.fan_ratio = self._scaled(nvml, gpu, "fan", 1e-2, nvml.nvmlDeviceGetFanSpeed, handle)
        # The current name (drivers from 535), else the one it replaced.
        reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        if reasons is not None:
            reading.clock_event_reasons = self._read(nvml, gpu, "clock_event_reasons", reasons, handle)
        processes = self._read(nvml, gpu, "processes", nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        reading.processes = [
            GpuProcess(process.pid, self._process_name(process.pid), process.usedGpuMemory or 0)
            for process in processes or ()
        ]
        return reading

    def _read_memory(self, nvml: ModuleType, gpu: str, handle: Any, reading: GpuReading) -> None:
        """Memory as nvidia-smi and dcgm-exporter show it: NVML's v2 call, whose ``used`` leaves out the memory
        the driver reserves (the v1 call counts it as used: about 600 MiB on an idle H200). Drivers or
        nvidia-ml-py releases without the v2 call get v1, and no reserved figure."""
        version = getattr(nvml, "nvmlMemory_v2", None)
        if version is not None and not self._memory_v1_only:
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
            except TypeError:  # an nvidia-ml-py that predates the version parameter
                self._memory_v1_only = True
            except nvml.NVMLError as exc:
                if exc.value not in (FUNCTION_NOT_FOUND, NOT_SUPPORTED):
                    self._unreadable(gpu, "memory", exc)
                    return
                self._memory_v1_only = True
            else:
                reading.memory_used_bytes, reading.memory_free_bytes = memory.used, memory.free
                reading.memory_total_bytes, reading.memory_reserved_bytes = memory.total, memory.reserved
                return
        memory = self._read(nvml, gpu, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        if memory is not None:
            reading.memory_used_bytes, reading.memory_free_bytes = memory.used, memory.free
            reading.memory_total_bytes = memory.total

    def _scaled(self, nvml: ModuleType, gpu: str, what: str, factor: float,
                read: Callable[..., Any], *args: Any) -> float | None:
        value = self._read(nvml, gpu, what, read, *args)
        return None if value is None else value * factor

    def _read(self, nvml: ModuleType, gpu: str, what: str, read: Callable[..., Any], *args: Any) -> Any:
        """One NVML call; None when the GPU does not support it. Raises GpuLost for a vanished GPU."""
        try:
            return read(*args)
        except nvml.NVMLError as exc:
            self._unreadable(gpu, what, exc)
            return None

    def _unreadable(self, gpu: str, what: str, exc: Any) -> None:
        """A failed NVML call: raises GpuLost for a vanished GPU, else logs once per GPU and field."""
        if exc.value == GPU_IS_LOST:
            if (gpu, "lost") not in self._unsupported:
                self._unsupported.add((gpu, "lost"))
                log.warning("GPU %s is lost (fell off the bus or was reset); its series are dropped", gpu)
            raise GpuLost from exc
        if (gpu, what) not in self._unsupported:
            self._unsupported.add((gpu, what))
            level = logging.INFO if exc.value == NOT_SUPPORTED else logging.WARNING
            log.log(level, "GPU %s: cannot read %s (%s); that series is left out", gpu, what, exc)
