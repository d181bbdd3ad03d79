"""In-process timing: the latency loop, and the median ms/query of an index's ``search``.

    from common.timing import time_calls, time_search
    seconds = time_calls(lambda rows: index.search(rows, 20), lambda: next_rows(), warmup=2, min_calls=5,
                         max_calls=300, min_time_s=0.25)
    figures = time_search(index, queries, k=20)     # {"batch_1_ms_per_query": ..., "batch_32_ms_per_query": ...}

``time_calls`` is the one home of the loop behind `benchmarks.serving.latency` (the served
`Recommender`) and `benchmarks.inference.worker` (each top-k backend in its own process): warm-up calls first (not
returned), then timed calls until ``max_calls``, or until at least ``min_calls`` and
``min_time_s`` seconds since the warm-ups. Only the call is timed; making its input is not.
``percentiles(seconds)`` summarises such a list in milliseconds (p50, p99, mean, count).
``time_search`` is the rough comparison ``python -m export --index auto`` makes between the sparse
and the flat index, and ``benchmarks.export.sparse_index`` on an exported artifact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

Input = TypeVar("Input")


def time_calls(
    call: Callable[[Input], Any],
    next_input: Callable[[], Input],
    *,
    warmup: int,
    min_calls: int,
    max_calls: int,
    min_time_s: float,
    give_up_s: float = float("inf"),
) -> list[float]:
    """Seconds of each timed ``call(next_input())``, warm-ups excluded.

    Args:
        call: the work to time; next_input: makes its argument (outside the timed region).
        warmup: untimed calls first; a warm-up slower than ``give_up_s`` is returned as the only
            timing (one slow call is all the answer there is).
        min_calls, max_calls: timed calls at least / at most (``max_calls`` wins).
        min_time_s: once ``min_calls`` are done, stop when this many seconds have passed since the warm-ups.
    Returns:
        ``[seconds]`` of each timed call, in order (``1 <= len <= max(max_calls, 1)``).
    """
    times: list[float] = []
    calls = 0
    started = time.perf_counter()
    while True:
        argument = next_input()
        start = time.perf_counter()
        call(argument)
        elapsed = time.perf_counter() - start
        calls += 1
        if calls <= warmup:
            if elapsed > give_up_s:
                return [elapsed]
            started = time.perf_counter()
            continue
        times.append(elapsed)
        if len(times) >= max_calls or (len(times) >= min_calls and time.perf_counter() - started >= min_time_s):
            return times


def percentiles(seconds: list[float]) -> dict[str, float]:
    """``{"p50_ms", "p99_ms", "mean_ms", "n"}`` of timings in seconds (p99 of fewer than 100 samples is
    close to the max)."""
    if not len(seconds):
        raise ValueError("percentiles of no timings")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "n": int(len(ms)),
    }


def time_search(
    index: Any,
    queries: np.ndarray,
    k: int,
    batch_sizes: tuple[int, ...] = (1, 32),
    repeats: int = 3,
    max_queries: int = 200,
) -> dict[str, float]:
    """Median milliseconds per query of ``index.search`` at each batch size (in-process, warm).

    Used by ``--index auto`` at export; rough (a shared machine is noisy), hence interleaved
    repeats and medians, and compared only between indexes timed in the same call sequence.

    Returns:
        ``{"batch_1_ms_per_query": ..., "batch_32_ms_per_query": ...}``.
    """
    queries = np.ascontiguousarray(queries[:max_queries], dtype=np.float32)
    index.search(queries[:1], k)  # first call pays for lazy set-up
    out = {}
    for batch in batch_sizes:
        batch = max(1, min(batch, len(queries)))
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            n = 0
            for start in range(0, len(queries), batch):
                index.search(queries[start : start + batch], k)
                n += len(queries[start : start + batch])
            samples.append((time.perf_counter() - started) * 1e3 / max(n, 1))
        out[f"batch_{batch}_ms_per_query"] = float(np.median(samples))
    return out
