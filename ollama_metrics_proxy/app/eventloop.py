"""How every process of the proxy runs its event loop (the primary and each ``--workers`` relay worker)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any

GC_YOUNG_THRESHOLD = 10_000  # CPython's default is 700 allocations


def run_event_loop(main: Coroutine[Any, Any, None], choice: str = "auto") -> None:
    """Run ``main`` to its end on the loop ``--event-loop`` chose: ``auto`` is uvloop when it is installed (a
    faster event loop for the relay), else asyncio's own."""
    loop_factory = None if choice == "asyncio" else uvloop_factory()
    # Run outside any ``except`` block: an exception being handled there would become the context of every
    # exception raised while the program runs.
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main)


def uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when uvloop is installed, else None (asyncio's own loop)."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def tune_garbage_collector() -> None:
    """Every request allocates a few dozen short-lived objects. Moving everything built at start-up out of the
    collector's sight (freeze) and collecting the young generation less often keeps collection off the
    relay's per-request cost; reference counting still frees almost everything at once."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
