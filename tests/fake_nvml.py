"""A stand-in for the ``pynvml`` module: the same functions, structures and error values, GPUs made up.

Mocks belong at process boundaries; NVML is one (a C library talking to a kernel driver), so the tests swap the
module and keep everything above it real.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

NOT_SUPPORTED = 3
LIBRARY_NOT_FOUND = 12
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    utilization: int = 87  # percent
    memory_utilization: int = 41
    memory_used: int = 30 * 1024**3  # as NVML's v2 call reports it: without the driver's reserve
    memory_total: int = 80 * 1024**3
    memory_reserved: int = 615 * 1024**2
    memory_v2: bool = True  # the driver has nvmlDeviceGetMemoryInfo_v2
    clock_event_reasons: int = 0x4 | 0x20  # software power cap and software thermal slowdown
    temperature: int = 64  # celsius
    power_mw: int = 350_250
    power_limit_mw: int = 700_000
    energy_mj: int = 123_456_789
    sm_clock_mhz: int = 1980
    fan_percent: int = 55
    processes: list[tuple[int, int]] = field(default_factory=list)  # (pid, bytes)
    unsupported: set[str] = field(default_factory=set)
    lost: bool = False


@dataclass
class _Rates:
    gpu: int
    memory: int


@dataclass
class _Memory:
    used: int
    free: int
    total: int


@dataclass
class _MemoryV2:
    version: int
    total: int
    reserved: int
    free: int
    used: int


@dataclass
class _Process:
    pid: int
    usedGpuMemory: int


class FakeNvml(types.ModuleType):
    def __init__(self, gpus: list[FakeGpu], init_error: int | None = None) -> None:
        super().__init__("pynvml")
        self.NVMLError = NVMLError
        self.nvmlMemory_v2 = 0x02000028
        self.gpus = gpus
        self.init_error = init_error
        self.initialized = False
        self.shutdowns = 0

    # --- library lifecycle
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.86.15"

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self._gpu(self.gpus[index], "handle")

    # --- per-device reads
    def _gpu(self, gpu: FakeGpu, what: str) -> FakeGpu:
        if gpu.lost:
            raise NVMLError(GPU_IS_LOST)
        if what in gpu.unsupported:
            raise NVMLError(NOT_SUPPORTED)
        return gpu

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        return self._gpu(gpu, "uuid").uuid

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> bytes:
        return self._gpu(gpu, "name").name.encode()  # older nvidia-ml-py returns bytes

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> _Rates:
        gpu = self._gpu(gpu, "utilization")
        return _Rates(gpu.utilization, gpu.memory_utilization)

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu, version: int | None = None) -> _Memory | _MemoryV2:
        """As nvidia-ml-py: v1 without ``version`` (its used includes the driver's reserve), else the _v2 entry
        point, which a driver may lack (FUNCTION_NOT_FOUND)."""
        gpu = self._gpu(gpu, "memory")
        free = gpu.memory_total - gpu.memory_used - gpu.memory_reserved
        if not version:
            return _Memory(gpu.memory_total - free, free, gpu.memory_total)
        if not gpu.memory_v2:
            raise NVMLError(FUNCTION_NOT_FOUND)
        assert version == self.nvmlMemory_v2
        return _MemoryV2(version, gpu.memory_total, gpu.memory_reserved, free, gpu.memory_used)

    def nvmlDeviceGetCurrentClocksEventReasons(self, gpu: FakeGpu) -> int:
        return self._gpu(gpu, "clock_event_reasons").clock_event_reasons

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:
        assert sensor == 0
        return self._gpu(gpu, "temperature").temperature

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        return self._gpu(gpu, "power").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, gpu: FakeGpu) -> int:
        return self._gpu(gpu, "power_limit").power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, gpu: FakeGpu) -> int:
        return self._gpu(gpu, "energy").energy_mj

    def nvmlDeviceGetClockInfo(self, gpu: FakeGpu, clock: int) -> int:
        assert clock == 1
        return self._gpu(gpu, "sm_clock").sm_clock_mhz

    def nvmlDeviceGetFanSpeed(self, gpu: FakeGpu) -> int:
        return self._gpu(gpu, "fan").fan_percent

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu) -> list[Any]:
        return [_Process(pid, used) for pid, used in self._gpu(gpu, "processes").processes]
