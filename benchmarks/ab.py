"""Paired A/B of versions of the proxy: what one change buys, measured so that a noisy machine cannot decide it.

    python -m benchmarks.ab REVISION [REVISION ...] [--workload nonstreamed|streams] [--bursts 12] [--seconds 1.5]

Each git revision (a commit, a tag, HEAD; uncommitted changes are part of none) is exported to a temporary
directory and run from there as users run the proxy (every metric, the request log on); the bare aiohttp
passthrough runs beside them as the reference. All targets are up at once, and short bursts of one workload
alternate between them (the order reversed every other burst), so the figures compared are taken seconds apart.
Reported: each target's CPU per non-streamed request (32 clients) or per relayed chunk (256 streams at 20 ms per
token), summed over its bursts, and its ratio to the passthrough's. ``make bench`` judges the targets; this
says what a step changed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from benchmarks import use_uvloop
from benchmarks.run import HERE, Target, many_streams, nonstreamed_rps, start_target, start_upstream, warm_up


def export(revision: str, into: Path) -> Path:
    """The tree of ``revision`` in a directory of its own; a revision git does not know is a clear error."""
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=HERE.parent, capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"benchmarks.ab: cannot export revision {revision!r}: {archive.stderr.decode().strip()}")
    root = into / revision.replace("/", "_")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="data")
    return root


async def burst(target: Target, workload: str, seconds: float) -> tuple[float, float]:
    """One burst: the target's CPU seconds and the units (requests or relayed chunks) they went to."""
    before = target.cpu_seconds()
    if workload == "nonstreamed":
        results = await nonstreamed_rps(target, seconds)
        cpu = target.cpu_seconds() - before
        return cpu, results["requests_per_second"] * seconds
    results = await many_streams(target, 256, 1, "s")
    cpu = target.cpu_seconds() - before
    return cpu, cpu / results["s_cpu_us_per_chunk"] * 1e6


async def compare(revisions: list[str], workload: str, bursts: int, seconds: float) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as scratch:
        roots = {revision: export(revision, Path(scratch)) for revision in revisions}  # every one, before any start
        upstream, upstream_url = await asyncio.to_thread(start_upstream)
        targets: list[Target] = []
        try:
            for revision, root in roots.items():
                target = await asyncio.to_thread(start_target, "proxy", upstream_url, root=root)
                target.name = revision
                targets.append(target)
            targets.append(await asyncio.to_thread(start_target, "passthrough", upstream_url))
            for target in targets:
                await warm_up(target)
            spent = {target.name: [0.0, 0.0] for target in targets}
            for number in range(bursts):
                for target in targets if number % 2 == 0 else targets[::-1]:
                    print(f"burst {number + 1}/{bursts}: {target.name} …", file=sys.stderr, flush=True)
                    cpu, units = await burst(target, workload, seconds)
                    spent[target.name][0] += cpu
                    spent[target.name][1] += units
        finally:
            for target in targets:
                target.stop()
            upstream.terminate()
            upstream.wait()
    unit = "request" if workload == "nonstreamed" else "relayed chunk"
    reference = spent["passthrough"][0] / spent["passthrough"][1]
    for name, (cpu, units) in spent.items():
        print(f"{name:>20}: {cpu / units * 1e6:7.1f} µs of CPU per {unit}, {cpu / units / reference:.3f} times "
              "the passthrough's")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="+", help="git revisions of the proxy to compare (HEAD, a commit, a tag)")
    parser.add_argument("--workload", choices=("nonstreamed", "streams"), default="nonstreamed",
                        help="32 clients' non-streamed requests, or 256 streams at 20 ms per token")
    parser.add_argument("--bursts", type=int, default=12, help="bursts per target (default 12)")
    parser.add_argument("--seconds", type=float, default=1.5,
                        help="length of a non-streamed burst (a streams burst is one wave, ~1.1 s)")
    args = parser.parse_args()
    if args.bursts < 1 or args.seconds <= 0:
        parser.error("--bursts must be at least 1 and --seconds positive")
    use_uvloop()
    sys.exit(asyncio.run(compare(args.revisions, args.workload, args.bursts, args.seconds)))


if __name__ == "__main__":
    main()
