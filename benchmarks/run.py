"""Side-by-side benchmark: direct, a bare aiohttp passthrough, this proxy (every metric on), and nginx.

    python -m benchmarks.run [--rounds 5] [--seconds 5] [--json benchmarks/results.json] [--markdown FILE]

Every target sits in front of the same fast stand-in upstream (benchmarks/upstream.py) and is measured in the
same run, round after round: in each round every target is started afresh, and each workload runs on all of them
one after the other (in alternating order) before the next workload, so that a noisy machine affects them alike.
On machines of 4 cores or more the target under test runs alone on the last core and the load generator and the
stand-in upstream share the others (``--pin`` / ``--no-pin`` decide it either way). Reported
figures are medians over rounds; the verdicts compare this proxy (and, with ``--workers N``, the proxy with that
many relay processes) with the bare passthrough or nginx measured in the same run, never absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from benchmarks import use_uvloop

HERE = Path(__file__).parent
CHAT_BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}).encode()
OPENAI_BODY = json.dumps({"model": "bench", "stream": True, "stream_options": {"include_usage": True},
                          "messages": [{"role": "user", "content": "Why is the sky blue?"}]}).encode()
UPLOAD_BYTES = 1024**3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


# ---------------------------------------------------------------- cores

PIN_FROM_CORES = 4


@dataclass(frozen=True)
class Cores:
    """Where each process runs: the target under test alone on its cores, the load generator and the stand-in
    upstream on the others (as the issue's quiet-machine runs did), so that what is measured is the target's
    own cost rather than its share of a contended core. Empty sets leave the scheduler free (``--no-pin``)."""

    target: frozenset[int] = frozenset()
    rest: frozenset[int] = frozenset()

    @classmethod
    def split(cls, target_cores: int = 1) -> Cores:
        available = sorted(os.sched_getaffinity(0))
        if len(available) <= target_cores:
            return cls()
        return cls(frozenset(available[-target_cores:]), frozenset(available[:-target_cores]))

    @classmethod
    def for_this_machine(cls, pin: bool | None, target_cores: int = 1) -> Cores:
        """Pinned when asked, or by default from PIN_FROM_CORES cores up. With one core left for the load
        generator and the upstream (a 2-core machine), they become the bottleneck and a faster target makes them
        slower (it hands them more, smaller reads): streamed throughput then ranks nginx below a Python relay."""
        if pin is None:
            pin = len(os.sched_getaffinity(0)) >= PIN_FROM_CORES
        return cls.split(target_cores) if pin else cls()

    def pin(self, cores: frozenset[int]) -> Callable[[], None] | None:
        """A ``preexec_fn`` that pins the child (and whatever it forks, such as nginx's worker) before it starts."""
        return (lambda: os.sched_setaffinity(0, cores)) if cores else None



# ---------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    url: str
    process: subprocess.Popen[bytes] | None = None
    workdir: str | None = None

    def processes(self) -> list[psutil.Process]:
        if self.process is None:
            return []
        parent = psutil.Process(self.process.pid)
        return [parent, *parent.children(recursive=True)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.processes():
            times = process.cpu_times()
            total += times.user + times.system
        return total

    def rss(self) -> int:
        return sum(process.memory_info().rss for process in self.processes())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_target(name: str, upstream_url: str, cores: Cores = Cores(), root: Path = HERE.parent) -> Target:
    """Start one target. ``root`` is the checkout the proxy runs from (``benchmarks.ab`` runs other revisions)."""
    if name == "direct":
        return Target(name, upstream_url)
    port = free_port()
    workdir = tempfile.mkdtemp(prefix=f"bench-{name}-")
    if name == "passthrough":
        command = [sys.executable, "-m", "benchmarks.passthrough", str(port), upstream_url]
    elif name == "pump":
        command = [sys.executable, "-m", "benchmarks.pump", str(port), upstream_url]
    elif name in ("proxy", "proxy-nolog") or name.startswith("proxy-w"):
        # "proxy" runs as users get it: every metric, every telemetry source and the request log on.
        # "proxy-nolog" (informational) shows what the request log costs; "proxy-wN" (--workers N) what more
        # relaying processes buy.
        log_db = "off" if name == "proxy-nolog" else os.path.join(workdir, "requests.sqlite3")
        # --workers only where asked for: an A/B run (benchmarks.ab) may start revisions older than the flag.
        workers = ["--workers", name.removeprefix("proxy-w")] if name.startswith("proxy-w") else []
        command = [sys.executable, "-m", "ollama_metrics_proxy", "--upstream", upstream_url,
                   "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{free_port()}",
                   "--log-db", log_db, "--log-level", "warning", *workers]
    elif name == "nginx":
        config = (HERE / "nginx.conf.template").read_text().format(
            root=workdir, port=port, upstream_port=upstream_url.rsplit(":", 1)[1])
        Path(workdir, "nginx.conf").write_text(config)
        command = [nginx_binary() or "nginx", "-c", os.path.join(workdir, "nginx.conf"), "-p", workdir]
    else:
        raise ValueError(name)
    environment = {**os.environ, "PYTHONPATH": str(root)} if root != HERE.parent else None
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, env=environment,
                               preexec_fn=cores.pin(cores.target))
    wait_for_port(port, process)
    return Target(name, f"http://127.0.0.1:{port}", process, workdir)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((path for path in ("/usr/sbin/nginx",) if os.path.exists(path)), None)


# ---------------------------------------------------------------- workloads


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
                                 timeout=aiohttp.ClientTimeout(total=None))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def sequential_latency(target: Target, requests: int) -> dict[str, float]:
    """(1) One client, streamed /api/chat of 100 tokens, one after another."""
    first_bytes, ends = [], []
    async with session() as http:
        for _ in range(requests):
            started = time.perf_counter()
            async with http.post(f"{target.url}/api/chat?tokens=100", data=CHAT_BODY) as response:
                await response.content.readany()
                first_bytes.append(time.perf_counter() - started)
                await response.read()
                ends.append(time.perf_counter() - started)
    return {"ttfb_median_ms": statistics.median(first_bytes) * 1000,
            "ttfb_p99_ms": percentile(first_bytes, 0.99) * 1000,
            "end_median_ms": statistics.median(ends) * 1000, "end_p99_ms": percentile(ends, 0.99) * 1000}


async def for_seconds(seconds: float, clients: int,
                      one: Callable[[aiohttp.ClientSession], Coroutine[Any, Any, int]]) -> tuple[int, float]:
    """Run ``one`` in a loop from ``clients`` concurrent clients; returns (units counted, elapsed)."""
    deadline = time.perf_counter() + seconds
    async with session() as http:
        async def client() -> int:
            done = 0
            while time.perf_counter() < deadline:
                done += await one(http)
            return done

        started = time.perf_counter()
        counts = await asyncio.gather(*(client() for _ in range(clients)))
        return sum(counts), time.perf_counter() - started


async def stream_throughput(target: Target, seconds: float, openai: bool) -> dict[str, float]:
    """(2) NDJSON or (6) OpenAI SSE: 32 clients streaming 200-token chats as fast as the upstream can."""
    path, body, separator = ("/v1/chat/completions?tokens=200", OPENAI_BODY, b"\n\n") if openai else (
        "/api/chat?tokens=200", CHAT_BODY, b"\n")

    async def one(http: aiohttp.ClientSession) -> int:
        lines = 0
        async with http.post(target.url + path, data=body) as response:
            async for chunk in response.content.iter_any():
                lines += chunk.count(separator)
        return lines

    lines, elapsed = await for_seconds(seconds, 32, one)
    return {"lines_per_second": lines / elapsed}


async def nonstreamed_rps(target: Target, seconds: float) -> dict[str, float]:
    """(3) 32 clients, non-streamed small generations."""
    body = json.dumps({"model": "bench", "prompt": "hi", "stream": False}).encode()

    async def one(http: aiohttp.ClientSession) -> int:
        async with http.post(f"{target.url}/api/chat?tokens=10&stream=0", data=body) as response:
            await response.read()
        return 1

    cpu_before = target.cpu_seconds()
    requests, elapsed = await for_seconds(seconds, 32, one)
    results = {"requests_per_second": requests / elapsed}
    if target.process is not None:  # steadier than throughput on a small shared machine: the target's own cost
        results["nonstreamed_cpu_us_per_request"] = (target.cpu_seconds() - cpu_before) / requests * 1e6
    return results


@dataclass
class MemoryWatch:
    target: Target
    peak: int = 0
    samples: list[int] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.target.process is not None:
                self.peak = max(self.peak, self.target.rss())
            await asyncio.sleep(0.02)


async def with_memory(target: Target, work: Coroutine[Any, Any, dict[str, float]]) -> tuple[dict[str, float], int, int]:
    baseline = target.rss() if target.process is not None else 0
    watch, stop = MemoryWatch(target, baseline), asyncio.Event()
    watcher = asyncio.create_task(watch.run(stop))
    try:
        result = await work
    finally:
        stop.set()
        await watcher
    return result, baseline, watch.peak


STREAM_TOKENS = 50  # each stream: 50 token chunks 20 ms apart, then the final object (51 relayed chunks)


async def many_streams(target: Target, streams: int, waves: int, prefix: str) -> dict[str, float]:
    """(4) 256 or (7) 1,024 concurrent streams at 20 ms per token: CPU per relayed chunk, peak memory, time to
    first byte, total time, and the p99 over streams of each stream's largest gap between chunks."""
    largest_gaps: list[float] = []
    first_bytes: list[float] = []
    totals: list[float] = []

    async def one(http: aiohttp.ClientSession) -> None:
        started = time.perf_counter()
        async with http.post(f"{target.url}/api/chat?tokens={STREAM_TOKENS}&delay=0.02", data=CHAT_BODY) as response:
            last, largest = None, 0.0
            async for _ in response.content.iter_any():
                now = time.perf_counter()
                if last is None:
                    first_bytes.append(now - started)
                else:
                    largest = max(largest, now - last)
                last = now
            largest_gaps.append(largest)
            totals.append(time.perf_counter() - started)

    async def work() -> dict[str, float]:
        async with session() as http:
            for _ in range(waves):
                await asyncio.gather(*(one(http) for _ in range(streams)))
        return {}

    cpu_before = target.cpu_seconds() if target.process is not None else 0.0
    _, _, peak = await with_memory(target, work())
    result = {f"{prefix}_p99_largest_gap_ms": percentile(largest_gaps, 0.99) * 1000,
              f"{prefix}_ttfb_median_ms": statistics.median(first_bytes) * 1000,
              f"{prefix}_total_p99_ms": percentile(totals, 0.99) * 1000}
    if target.process is not None:
        cpu = target.cpu_seconds() - cpu_before
        result[f"{prefix}_cpu_us_per_chunk"] = cpu * 1e6 / (streams * waves * (STREAM_TOKENS + 1))
        result[f"{prefix}_peak_rss_mb"] = peak / 2**20
    return result


async def upload(target: Target) -> dict[str, float]:
    """(5) A 1 GiB blob upload, streamed in 1 MiB pieces."""
    piece = os.urandom(1024 * 1024)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(UPLOAD_BYTES // len(piece)):
            yield piece

    async def work() -> dict[str, float]:
        started = time.perf_counter()
        async with session() as http, http.post(f"{target.url}/api/blobs/sha256:{'0' * 64}", data=body()) as response:
            await response.read()
            assert response.status == 201, response.status
        return {"upload_mib_per_second": UPLOAD_BYTES / 2**20 / (time.perf_counter() - started)}

    result, baseline, peak = await with_memory(target, work())
    if target.process is not None:
        result["upload_rss_growth_mb"] = (peak - baseline) / 2**20
    return result


Workload = Callable[[Target], Coroutine[Any, Any, dict[str, float]]]


async def warm_up(target: Target) -> dict[str, float]:
    """Connections, caches, the first database write."""
    async with session() as http:
        for _ in range(20):
            async with http.post(f"{target.url}/api/chat?tokens=10", data=CHAT_BODY) as response:
                await response.read()
    return {}


def prefixed(prefix: str, results: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{key}": value for key, value in results.items()}


def workloads(seconds: float, sequential: int) -> list[tuple[str, Workload]]:
    """Every workload, in the order each target runs them: a target's memory figures depend on what it ran
    before, so the order is the same for all of them."""

    async def ndjson(target: Target) -> dict[str, float]:
        return prefixed("ndjson", await stream_throughput(target, seconds, openai=False))

    async def sse(target: Target) -> dict[str, float]:
        return prefixed("sse", await stream_throughput(target, seconds, openai=True))

    async def nonstreamed(target: Target) -> dict[str, float]:
        return await nonstreamed_rps(target, seconds)

    async def sequential_requests(target: Target) -> dict[str, float]:
        return await sequential_latency(target, sequential)

    async def streams_256(target: Target) -> dict[str, float]:
        return await many_streams(target, 256, 4, "s256")

    async def streams_1024(target: Target) -> dict[str, float]:
        return await many_streams(target, 1024, 1, "s1024")

    return [("warm-up", warm_up), ("sequential", sequential_requests), ("NDJSON streams", ndjson),
            ("SSE streams", sse), ("non-streamed", nonstreamed), ("256 streams", streams_256),
            ("1,024 streams", streams_1024), ("upload", upload)]


async def measure_round(targets: list[Target], steps: list[tuple[str, Workload]], round_number: int,
                        rounds: int) -> dict[str, dict[str, float]]:
    """One round: each workload in turn, run on every target one after the other before the next workload, so
    that the figures compared with each other are taken seconds apart, not minutes (a shared machine's speed
    drifts within minutes). The targets' order alternates from one workload to the next."""
    results: dict[str, dict[str, float]] = {target.name: {} for target in targets}
    for index, (label, step) in enumerate(steps):
        order = targets if (round_number + index) % 2 else targets[::-1]
        for target in order:
            print(f"round {round_number}/{rounds}: {label}: {target.name} …", file=sys.stderr, flush=True)
            results[target.name] |= await step(target)
    for figures in results.values():
        add_throughput_per_core(figures)
    return results


def add_throughput_per_core(results: dict[str, float]) -> None:
    """What one core of the target's processes relays, whatever number of them it runs."""
    if "nonstreamed_cpu_us_per_request" in results:
        results["requests_per_cpu_second"] = 1e6 / results["nonstreamed_cpu_us_per_request"]
    for prefix in ("s256", "s1024"):
        if f"{prefix}_cpu_us_per_chunk" in results:
            results[f"{prefix}_chunks_per_cpu_second"] = 1e6 / results[f"{prefix}_cpu_us_per_chunk"]


# ---------------------------------------------------------------- verdicts and report

# (title, metric, rule, bound, reference): the proxy's median against the reference's median in the same run.
TARGET_CHECKS = (
    ("streamed NDJSON throughput (2)", "ndjson_lines_per_second", "ratio>=", 0.9, "passthrough"),
    ("streamed OpenAI SSE throughput (6)", "sse_lines_per_second", "ratio>=", 0.9, "passthrough"),
    ("sequential median end-to-end (1)", "end_median_ms", "diff<=", 0.3, "passthrough"),
    ("non-streamed requests per second (3)", "requests_per_second", "ratio>=", 1.5, "passthrough"),
    ("CPU per relayed chunk at 256 streams (4)", "s256_cpu_us_per_chunk", "ratio<=", 0.6, "passthrough"),
    ("largest-gap p99 at 256 streams (4)", "s256_p99_largest_gap_ms", "ratio<=", 1.15, "nginx"),
    ("peak memory at 256 streams (4), MB", "s256_peak_rss_mb", "abs<", 150, ""),
    ("largest-gap p99 at 1,024 streams (7)", "s1024_p99_largest_gap_ms", "ratio<=", 2.0, "nginx"),
    ("time to first byte p50 at 1,024 streams (7)", "s1024_ttfb_median_ms", "ratio<=", 4.0, "nginx"),
    ("peak memory at 1,024 streams (7), MB", "s1024_peak_rss_mb", "abs<", 200, ""),
    ("upload throughput (5)", "upload_mib_per_second", "ratio>=", 0.9, "passthrough"),
    ("upload memory growth (5), MB", "upload_rss_growth_mb", "abs<", 50, ""),
)


def verdicts(medians: dict[str, dict[str, float]], target: str = "proxy") -> list[dict[str, Any]]:
    proxy = medians[target]
    processes = int(target.removeprefix("proxy-w")) if target.startswith("proxy-w") else 1
    rows: list[dict[str, Any]] = []
    for title, key, rule, bound, reference in TARGET_CHECKS:
        if reference and reference not in medians:
            rows.append({"check": title, "target": target, "metric": key, "value": None, "ok": False,
                         "shown": f"not measured: {reference} is not installed"})
            continue
        if rule.startswith("ratio"):
            value = proxy[key] / medians[reference][key]
            ok = value >= bound if rule == "ratio>=" else value <= bound
            shown = f"{value:.3f} times {reference} (target {'>=' if rule == 'ratio>=' else '<='} {bound})"
        elif rule == "diff<=":
            value = proxy[key] - medians[reference][key]
            ok = value <= bound
            shown = f"{value:+.3f} ms vs {reference} (target <= +{bound} ms)"
        elif key.endswith("_peak_rss_mb") and processes > 1:
            # The bound is one process's: each relay worker is a whole interpreter of its own (~45 MB at rest).
            value = proxy[key] / processes
            ok = value < bound
            shown = f"{value:.1f} per process, {proxy[key]:.1f} for all {processes} (target < {bound} per process)"
        else:
            value = proxy[key]
            ok = value < bound
            shown = f"{value:.1f} (target < {bound})"
        rows.append({"check": title, "target": target, "metric": key, "value": value, "ok": ok, "shown": shown})
    return rows


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "aiohttp": aiohttp.__version__, "uvloop": _has("uvloop")}


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def table(medians: dict[str, dict[str, float]]) -> str:
    keys = list(next(iter(medians.values())).keys() | medians.get("proxy", {}).keys())
    order = [key for _, key, _, _, _ in TARGET_CHECKS] + [
        "nonstreamed_cpu_us_per_request", "ttfb_median_ms", "ttfb_p99_ms", "end_p99_ms", "s256_ttfb_median_ms",
        "s256_total_p99_ms", "s1024_cpu_us_per_chunk", "s1024_total_p99_ms"]
    keys = [key for key in order if any(key in row for row in medians.values())] + sorted(
        key for key in keys if key not in order)
    names = list(medians)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        cells = [f"{medians[name][key]:.3f}" if key in medians[name] else "-" for name in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def start_upstream(cores: Cores = Cores()) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "benchmarks.upstream", str(port)], cwd=HERE.parent,
                                preexec_fn=cores.pin(cores.rest))
    wait_for_port(port, upstream)
    return upstream, f"http://127.0.0.1:{port}"


def write_report(args: argparse.Namespace, report: dict[str, Any], text: str) -> None:
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


async def main_async(args: argparse.Namespace) -> int:
    # With --workers N every target gets the same N cores (a one-process target uses one of them).
    cores = Cores.for_this_machine(args.pin, max(args.workers, 1))
    if cores.rest:
        os.sched_setaffinity(0, cores.rest)  # the load generator beside the stand-in upstream
    upstream, upstream_url = await asyncio.to_thread(start_upstream, cores)
    names = ["direct", "pump", "passthrough", "proxy", "proxy-nolog"] + (
        [f"proxy-w{args.workers}"] if args.workers > 1 else []) + (
        ["nginx"] if nginx_binary() and not args.no_nginx else [])
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    steps = workloads(args.seconds, args.sequential)
    try:
        for round_number in range(1, args.rounds + 1):
            # Fresh processes every round; all of them up together, each loaded in its turn.
            targets: list[Target] = []
            try:
                for name in names:
                    targets.append(await asyncio.to_thread(start_target, name, upstream_url, cores))
                results = await measure_round(targets, steps, round_number, args.rounds)
            finally:
                for target in targets:
                    target.stop()
            for name in names:
                rounds[name].append(results[name])
    finally:
        upstream.terminate()
        upstream.wait()
    medians = {name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
               for name, runs in rounds.items()}
    # The issue allows reaching the targets with worker processes: with --workers N, proxy-wN is judged too, and
    # the run passes when one of the two configurations meets every target.
    configurations = ["proxy"] + [name for name in medians if name.startswith("proxy-w")]
    checks = [row for name in configurations for row in verdicts(medians, name)]
    report = {"machine": machine(), "pinned": {"target": sorted(cores.target), "load_and_upstream": sorted(cores.rest)},
              "rounds": args.rounds, "seconds_per_workload": args.seconds,
              "medians": medians, "per_round": rounds, "checks": checks,
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    text = table(medians) + "\n\n" + "\n".join(
        f"- {'PASS' if row['ok'] else 'MISS'} [{row['target']}] {row['check']}: {row['shown']}" for row in checks)
    print(text)
    write_report(args, report, text)
    met = any(all(row["ok"] for row in checks if row["target"] == name) for name in configurations)
    return 0 if met else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds; medians are reported (default 5)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each timed workload (default 5)")
    parser.add_argument("--sequential", type=int, default=200, help="requests in the sequential workload")
    parser.add_argument("--workers", type=int, default=0,
                        help="also measure the proxy with --workers N (target proxy-wN; informational)")
    parser.add_argument("--json", default=str(HERE / "results.json"), help="where to write the JSON report")
    parser.add_argument("--markdown", default="", help="also write the table and verdicts to this file")
    parser.add_argument("--no-nginx", action="store_true", help="leave nginx out even when installed")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=None,
                        help="run the target alone on the last core, the load generator and the stand-in upstream on "
                             f"the others (default: from {PIN_FROM_CORES} cores up)")
    args = parser.parse_args()
    use_uvloop()
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
