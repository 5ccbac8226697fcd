"""Time a few ways of doing the same work in alternation in one process (the same inputs, threads
and machine state for each): the kernel benchmarks' loop."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def alternate(runs: dict[str, Callable[[], object]], repeat: int, warmup: int = 3) -> dict[str, float]:
    """{name: median ms} over `repeat` rounds after `warmup`, each round running every entry once."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeat + warmup):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append((time.perf_counter() - t) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}
