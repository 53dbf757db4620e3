"""Keeping Python's cyclic garbage collector out of real-time latency tails.

After torch.compile has built and recorded its graphs the process holds millions of long-lived Python
objects (FX graphs, guards, inductor caches). Every full (generation-2) collection walks all of them, which
can stall one request for many milliseconds: the tail, not the median, of a 120 images/s loop. Freezing the
heap once warm-up is over moves those objects into the permanent generation, so later collections only walk
what requests allocate. Objects frozen stay uncollected if they later form garbage cycles, so an engine that
froze the heap thaws it when unloaded and the next collection sees everything again.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


def freeze_heap() -> int:
    """Collect once, then move every live object into the permanent generation; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def thaw_heap() -> None:
    """Undo freeze_heap (for example when the engine that froze it is unloaded)."""
    gc.unfreeze()


@dataclass
class GcPauses:
    """Collections seen while a block ran: count per generation, total and longest pause in ms."""

    collections: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0, 2: 0})
    total_ms: float = 0.0
    max_ms: float = 0.0

    def as_dict(self) -> dict:
        return {
            "gc_collections": {f"gen{g}": n for g, n in self.collections.items()},
            "gc_total_ms": self.total_ms,
            "gc_max_ms": self.max_ms,
        }


@contextmanager
def gc_pauses() -> Iterator[GcPauses]:
    """Measure the garbage collector's pauses in this block (all threads: gc runs in whichever one allocates)."""
    pauses, started = GcPauses(), {}

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
        elif "t" in started:
            ms = (time.perf_counter() - started.pop("t")) * 1000
            pauses.collections[info["generation"]] = pauses.collections.get(info["generation"], 0) + 1
            pauses.total_ms += ms
            pauses.max_ms = max(pauses.max_ms, ms)

    gc.callbacks.append(callback)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(callback)
