"""The Ollama process and host sources, read with psutil from real processes started by the tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry

from ollama_metrics_proxy.telemetry.collectors import HostCollector, OllamaProcessCollector, SourceHealthCollector
from ollama_metrics_proxy.telemetry.system import HostSampler, OllamaProcessSampler

# Burns a little CPU, starts a child (like a runner), then waits to be killed.
BUSY_SERVER = (
    "import subprocess, sys, time\n"
    "t = time.process_time()\n"
    "while time.process_time() - t < 0.2: pass\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def fake_ollama_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A real process whose name is "ollama" (Python run through a link of that name) with one child."""
    link = tmp_path / "ollama"
    link.symlink_to(sys.executable)
    process = subprocess.Popen([str(link), "-c", BUSY_SERVER], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    child_pid = int(process.stdout.readline())
    yield process, child_pid
    for pid in (child_pid, process.pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    process.wait(timeout=10)


def registry_for(sampler: OllamaProcessSampler) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(OllamaProcessCollector(sampler))
    registry.register(SourceHealthCollector([sampler.health]))
    return registry


def test_server_found_by_name_with_its_runner_and_then_gone(
    fake_ollama_server: tuple[subprocess.Popen[str], int],
) -> None:
    server, child_pid = fake_ollama_server
    sampler = OllamaProcessSampler(5.0, ollama_pid=None)
    registry = registry_for(sampler)
    sampler.sample_once()
    labels = {"role": "server", "pid": str(server.pid)}
    assert registry.get_sample_value("ollama_process_cpu_seconds_total", labels) >= 0.2
    assert registry.get_sample_value("ollama_process_resident_memory_bytes", labels) > 1024 * 1024
    assert registry.get_sample_value("ollama_process_threads", labels) >= 1
    started = registry.get_sample_value("ollama_process_start_time_seconds", labels)
    assert started == pytest.approx(psutil.Process(server.pid).create_time())
    runner = {"role": "runner", "pid": str(child_pid)}
    assert registry.get_sample_value("ollama_process_resident_memory_bytes", runner) > 0
    assert registry.get_sample_value("ollama_metrics_proxy_source_up", {"source": "ollama_process"}) == 1

    psutil.Process(child_pid).kill()
    server.kill()
    server.wait(timeout=10)
    psutil.wait_procs([psutil.Process(child_pid)] if psutil.pid_exists(child_pid) else [], timeout=10)
    sampler.sample_once()
    assert registry.get_sample_value("ollama_process_resident_memory_bytes", labels) is None
    assert registry.get_sample_value("ollama_process_resident_memory_bytes", runner) is None
    assert registry.get_sample_value("ollama_metrics_proxy_source_up", {"source": "ollama_process"}) == 0
    assert sampler.health.status.reason == "not_visible"


def test_server_given_by_pid() -> None:
    # The child says when its interpreter is up: sampled while still starting, its memory grows under the test.
    process = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                               stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdout.readline() == b"up\n"
        sampler = OllamaProcessSampler(5.0, ollama_pid=process.pid)
        registry = registry_for(sampler)
        sampler.sample_once()
        rss = registry.get_sample_value("ollama_process_resident_memory_bytes",
                                        {"role": "server", "pid": str(process.pid)})
        assert rss == pytest.approx(psutil.Process(process.pid).memory_info().rss, rel=0.5)
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    sampler.sample_once()
    assert sampler.snapshot is None
    assert sampler.health.status.detail == f"no process with --ollama-pid {process.pid}"


def test_no_ollama_visible_yields_no_series() -> None:
    sampler = OllamaProcessSampler(5.0, ollama_pid=None)
    registry = registry_for(sampler)
    if any(p.info["name"] == "ollama" for p in psutil.process_iter(["name"])):
        pytest.skip("a real Ollama runs on this machine")
    sampler.sample_once()
    assert registry.get_sample_value("ollama_metrics_proxy_source_up", {"source": "ollama_process"}) == 0
    text = "\n".join(str(metric) for metric in registry.collect())
    assert "role=" not in text


def test_host_figures(tmp_path: Path) -> None:
    sampler = HostSampler(5.0, models_dir=str(tmp_path))
    registry = CollectorRegistry()
    registry.register(HostCollector(sampler))
    t = time.process_time()
    while time.process_time() - t < 0.05:
        pass
    sampler.sample_once()
    ratio = registry.get_sample_value("ollama_host_cpu_utilization_ratio")
    assert ratio is not None and 0 <= ratio <= 1
    used = registry.get_sample_value("ollama_host_memory_used_bytes")
    total = registry.get_sample_value("ollama_host_memory_total_bytes")
    assert total == psutil.virtual_memory().total and 0 < used < total
    disk = os.statvfs(tmp_path)
    free = registry.get_sample_value("ollama_host_models_disk_free_bytes", {"path": str(tmp_path)})
    assert free == pytest.approx(disk.f_bavail * disk.f_frsize, rel=0.05)
    assert registry.get_sample_value("ollama_host_models_disk_used_bytes", {"path": str(tmp_path)}) > 0
