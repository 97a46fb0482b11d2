"""NVML telemetry: one and two fake GPUs, unsupported fields, a lost GPU, and the real no-driver path."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ollama_metrics_proxy.app.server import StartupError, start
from ollama_metrics_proxy.config import Config
from ollama_metrics_proxy.telemetry.collectors import GpuCollector, Samplers, build_samplers
from ollama_metrics_proxy.telemetry.gpu import GpuSampler, load_nvml
from tests.conftest import ProxyUnderTest, config_for
from tests.fake_nvml import LIBRARY_NOT_FOUND, FakeGpu, FakeNvml
from tests.fake_ollama import FakeOllama

H100 = "GPU-1f6a9b5e-0000-4000-8000-000000000001"
L4 = "GPU-1f6a9b5e-0000-4000-8000-000000000002"


def sampler_for(nvml: FakeNvml) -> tuple[GpuSampler, CollectorRegistry]:
    sampler = GpuSampler(5.0, process_name=lambda pid: f"proc{pid}", nvml_loader=lambda: nvml)
    registry = CollectorRegistry()
    registry.register(GpuCollector(sampler))
    return sampler, registry


def value(registry: CollectorRegistry, name: str, /, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_one_gpu_every_field_converted_to_base_units() -> None:
    nvml = FakeNvml([FakeGpu(H100, processes=[(4242, 5 * 1024**3)])])
    sampler, registry = sampler_for(nvml)
    sampler.sample_once()
    gpu = {"gpu": "0", "uuid": H100}
    assert value(registry, "ollama_gpu_up") == 1
    assert value(registry, "ollama_gpus") == 1
    assert value(registry, "ollama_gpu_info", **gpu, name="NVIDIA H100 80GB HBM3", driver_version="570.86.15") == 1
    assert value(registry, "ollama_gpu_utilization_ratio", **gpu) == 0.87
    assert value(registry, "ollama_gpu_memory_utilization_ratio", **gpu) == 0.41
    # NVML v2, as nvidia-smi shows it: used leaves out the driver's reserve, which has its own gauge.
    assert value(registry, "ollama_gpu_memory_used_bytes", **gpu) == 30 * 1024**3
    assert value(registry, "ollama_gpu_memory_reserved_bytes", **gpu) == 615 * 1024**2
    assert value(registry, "ollama_gpu_memory_free_bytes", **gpu) == 80 * 1024**3 - 30 * 1024**3 - 615 * 1024**2
    assert value(registry, "ollama_gpu_memory_total_bytes", **gpu) == 80 * 1024**3
    assert value(registry, "ollama_gpu_temperature_celsius", **gpu) == 64
    assert value(registry, "ollama_gpu_power_watts", **gpu) == pytest.approx(350.25)
    assert value(registry, "ollama_gpu_power_limit_watts", **gpu) == pytest.approx(700)
    assert value(registry, "ollama_gpu_energy_joules_total", **gpu) == pytest.approx(123456.789)
    assert value(registry, "ollama_gpu_sm_clock_hertz", **gpu) == 1.98e9
    assert value(registry, "ollama_gpu_fan_ratio", **gpu) == 0.55
    assert value(registry, "ollama_gpu_process_memory_bytes", gpu="0", pid="4242", process="proc4242") == 5 * 1024**3


def test_two_gpus_with_unsupported_fields(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml([FakeGpu(H100), FakeGpu(L4, name="NVIDIA L4", unsupported={"fan", "energy"})])
    sampler, registry = sampler_for(nvml)
    with caplog.at_level(logging.INFO):
        sampler.sample_once()
        sampler.sample_once()
    assert value(registry, "ollama_gpus") == 2
    assert value(registry, "ollama_gpu_fan_ratio", gpu="0", uuid=H100) == 0.55
    assert value(registry, "ollama_gpu_fan_ratio", gpu="1", uuid=L4) is None  # no series, not a zero
    assert value(registry, "ollama_gpu_energy_joules_total", gpu="1", uuid=L4) is None
    assert value(registry, "ollama_gpu_power_watts", gpu="1", uuid=L4) == pytest.approx(350.25)
    unsupported = [r.message for r in caplog.records if "cannot read" in r.message]
    assert len(unsupported) == 2  # once per GPU and field, not once per cycle


def test_a_gpu_lost_mid_run_loses_its_series_only(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml([FakeGpu(H100), FakeGpu(L4)])
    sampler, registry = sampler_for(nvml)
    sampler.sample_once()
    assert value(registry, "ollama_gpu_utilization_ratio", gpu="1", uuid=L4) == 0.87
    nvml.gpus[1].lost = True
    sampler.sample_once()
    sampler.sample_once()
    assert value(registry, "ollama_gpu_utilization_ratio", gpu="1", uuid=L4) is None
    assert value(registry, "ollama_gpu_utilization_ratio", gpu="0", uuid=H100) == 0.87
    assert value(registry, "ollama_gpus") == 1
    assert sum("is lost" in r.message for r in caplog.records) == 1


def test_no_library_means_gpu_down_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    sampler, registry = sampler_for(FakeNvml([], init_error=LIBRARY_NOT_FOUND))
    for _ in range(3):
        sampler.sample_once()
    assert value(registry, "ollama_gpu_up") == 0
    assert value(registry, "ollama_gpus") is None
    assert sampler.health.status.reason == "library_not_found"
    assert sampler.health.error_counts() == {"library_not_found": 3}
    assert sum("gpu metrics: unavailable (library_not_found)" in r.message for r in caplog.records) == 1


def test_real_pynvml_on_this_machine_takes_the_no_driver_path() -> None:
    """There is no NVIDIA driver here: the real module's nvmlInit raises the library-not-found error."""
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("this machine has an NVIDIA driver; the no-driver path cannot be shown here")
    nvml = load_nvml()
    with pytest.raises(nvml.NVMLError) as raised:
        nvml.nvmlInit()
    assert raised.value.value == LIBRARY_NOT_FOUND
    sampler = GpuSampler(5.0, process_name=str)  # the real loader
    sampler.sample_once()
    assert sampler.snapshot is None
    assert sampler.health.status.reason == "library_not_found"
    assert "libnvidia-ml" in (sampler.health.status.detail or "")


def test_gpu_on_without_a_driver_refuses_to_start() -> None:
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("this machine has an NVIDIA driver")
    with pytest.raises(StartupError, match="--gpu on, but NVML is unavailable: the NVML library"):
        asyncio.run(start(Config(gpu="on")))


def test_gpu_off_builds_no_sampler() -> None:
    assert build_samplers(Config(gpu="off", ollama_process=False, host_metrics=False)).all() == []


def test_sampler_thread_starts_samples_and_stops() -> None:
    nvml = FakeNvml([FakeGpu(H100)])
    sampler, registry = sampler_for(nvml)
    sampler.start()
    try:
        for _ in range(200):
            if sampler.snapshot is not None:
                break
            time.sleep(0.01)
        assert sampler.snapshot is not None and nvml.initialized
        assert sampler._thread.name == "gpu-sampler"
    finally:
        sampler.stop()
    assert not sampler._thread.is_alive()
    assert nvml.shutdowns == 1
    assert b"ollama_gpu_up 1.0" in generate_latest(registry)


async def test_gpu_series_in_the_proxy_scrape(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    nvml = FakeNvml([FakeGpu(H100, processes=[(4242, 1024)])])
    samplers = Samplers(gpu=GpuSampler(0.05, process_name=lambda pid: "ollama", nvml_loader=lambda: nvml))
    running = await start(config_for(fake.url), registry=CollectorRegistry(), samplers=samplers)
    proxy = ProxyUnderTest(running)
    try:
        for _ in range(100):
            if proxy.value("ollama_gpu_up") == 1:
                break
            await asyncio.sleep(0.02)
        async with http.get(proxy.metrics_url + "/metrics") as response:
            text = await response.text()
        assert f'ollama_gpu_memory_used_bytes{{gpu="0",uuid="{H100}"}}' in text
        assert 'ollama_gpu_process_memory_bytes{gpu="0",pid="4242",process="ollama"} 1024.0' in text
        async with http.get(proxy.metrics_url + "/-/system") as response:
            report = await response.json()
        assert report["gpus"]["up"] is True and report["gpus"]["sampled_at"] > 0
        assert report["gpus"]["devices"][0]["uuid"] == H100
    finally:
        await running.stop()


@pytest.mark.parametrize("old", ["driver_without_v2", "nvidia_ml_py_without_v2", "nvidia_ml_py_without_version"])
def test_memory_falls_back_to_nvml_v1_whose_used_includes_the_reserve(old: str) -> None:
    gpu = FakeGpu(H100, memory_used=0, memory_reserved=615 * 1024**2, memory_v2=old != "driver_without_v2")
    nvml = FakeNvml([gpu])
    if old == "nvidia_ml_py_without_v2":
        del nvml.nvmlMemory_v2
    elif old == "nvidia_ml_py_without_version":
        v1 = nvml.nvmlDeviceGetMemoryInfo
        nvml.nvmlDeviceGetMemoryInfo = lambda handle: v1(handle)  # type: ignore[method-assign]
    sampler, registry = sampler_for(nvml)
    for _ in range(2):  # the fallback is remembered, and keeps working
        sampler.sample_once()
        labels = {"gpu": "0", "uuid": H100}
        assert value(registry, "ollama_gpu_memory_used_bytes", **labels) == 615 * 1024**2
        assert value(registry, "ollama_gpu_memory_reserved_bytes", **labels) is None
        assert value(registry, "ollama_gpu_memory_total_bytes", **labels) == 80 * 1024**3


def test_idle_gpu_reads_zero_used_like_nvidia_smi() -> None:
    """The H200 finding: v1 said 615 MiB used on an idle GPU where nvidia-smi and dcgm-exporter say 0."""
    nvml = FakeNvml([FakeGpu(H100, memory_used=0, memory_reserved=615 * 1024**2)])
    sampler, registry = sampler_for(nvml)
    sampler.sample_once()
    assert value(registry, "ollama_gpu_memory_used_bytes", gpu="0", uuid=H100) == 0


def test_clock_throttle_reasons_are_one_series_per_reason() -> None:
    nvml = FakeNvml([FakeGpu(H100, clock_event_reasons=0x4 | 0x40)])
    sampler, registry = sampler_for(nvml)
    sampler.sample_once()
    labels = {"gpu": "0", "uuid": H100}
    assert value(registry, "ollama_gpu_clock_throttled", **labels, reason="sw_power_cap") == 1
    assert value(registry, "ollama_gpu_clock_throttled", **labels, reason="hw_thermal_slowdown") == 1
    assert value(registry, "ollama_gpu_clock_throttled", **labels, reason="gpu_idle") == 0
    reasons = {sample.labels["reason"] for family in registry.collect() for sample in family.samples
               if sample.name == "ollama_gpu_clock_throttled"}
    assert len(reasons) == 9
