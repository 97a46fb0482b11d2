"""How every process of the proxy runs its event loop (the primary and each ``--workers`` relay worker)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any

GC_YOUNG_THRESHOLD = 10_000  # CPython's default is 700 allocations


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to its end, on uvloop when it is installed (a faster event loop for the relay)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def tune_garbage_collector() -> None:
    """Every request allocates a few dozen short-lived objects. Moving everything built at start-up out of the
    collector's sight (freeze) and collecting the young generation less often keeps collection off the
    relay's per-request cost; reference counting still frees almost everything at once."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
