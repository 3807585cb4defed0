"""Side-by-side timing used by every benchmark case.

Every figure in ``benchmarks/RESULTS.md`` is a ratio of two implementations measured in the same
process, on the same inputs, with warm-up (compilation) excluded, as the median of repeats, and
with ``jax.block_until_ready`` so asynchronous dispatch is not mistaken for speed.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def median_seconds(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs.

    ``fn`` takes no arguments (close over inputs) and its result is blocked on, so the time
    covers the device work, not just the dispatch.
    """
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], *, repeats: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each named ``fn``, timed in alternation (A B A B ...).

    Alternating the implementations spreads machine noise (other processes, frequency changes)
    over all of them equally, which matters for ratios close to 1.
    """
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def row(case: str, config: str, impl_s: float, reference: str, reference_s: float,
        target: str, **extra: Any) -> dict[str, Any]:
    """One result row: jaxreg's median seconds against a reference's, and their ratio."""
    return {
        "case": case,
        "config": config,
        "jaxreg_s": impl_s,
        "reference": reference,
        "reference_s": reference_s,
        "ratio": impl_s / reference_s,
        "target": target,
        **extra,
    }
