"""Garbage-collector settings for a long-running daemon with a large, long-lived heap.

A 10,000-rig daemon holds hundreds of thousands of long-lived objects (identities, drivers,
last observations, guard state). CPython's default thresholds (700, 10, 10) make it scan all of
them in a full collection two or three times per tick — measured at about half of the decide +
guards time (docs/benchmarks.md). Almost everything rigpilot allocates per tick is freed by
reference counting, so the cyclic collector has little to find. After start-up the daemon
therefore moves the heap it has built into the permanent generation (``gc.freeze``: never
scanned again) and raises the first threshold, so young collections run less often and full
ones rarely. Cyclic garbage is still collected, just in larger batches.
"""

from __future__ import annotations

import gc
from typing import Final

THRESHOLDS: Final = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect once, freeze what survives, and raise the thresholds (idempotent)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
