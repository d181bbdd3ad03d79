"""Measure one backend on one case in a fresh process (run by `benchmarks.inference.bench`, not by hand).

    python -m benchmarks.inference.worker SPEC.json OUT.json

Order, so that the memory figures are the backend's own: import and warm the backend's library
on a toy problem and load the query vectors, then take the resident-memory baseline; build the
backend (load its files, build the index); measure resident memory again (after load); answer the
recall queries; time each batch size; read the peak (``VmHWM``). All deltas are against the baseline.

Timing per batch size: a few warm-up calls, then calls until `min_time_s` has passed (at least
`min_calls`, at most `max_calls`; fewer, down to 2, where the estimated calls would exceed
`point_budget_s`). A batch size whose estimated call time (from the previous
one, scaled by batch size) exceeds `max_call_s` is skipped and the reason recorded.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from common.timing import time_calls


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _time_batches(backend, n_users: int, spec: dict) -> dict:
    out: dict[str, dict] = {}
    rng = np.random.default_rng(spec.get("seed", 0))
    previous: tuple[int, float] | None = None
    for batch in spec["batches"]:
        if previous is not None:
            estimate = previous[1] * batch / previous[0]
            if estimate > spec["max_call_s"]:
                out[str(batch)] = {"skipped": f"estimated {estimate:.1f} s per call > max {spec['max_call_s']:g} s"}
                continue
        pool = rng.integers(0, n_users, size=(64, batch))
        warm, min_calls = spec["warmup_calls"], spec["min_calls"]
        if previous is not None and estimate * (warm + min_calls) > spec["point_budget_s"]:
            # slow calls: one warm-up is enough, and fewer timed calls keep the sweep in its budget
            warm, min_calls = 1, max(2, min(min_calls, int(spec["point_budget_s"] / estimate)))
        rows = itertools.cycle(pool)
        times = time_calls(
            lambda batch_rows: backend.search(batch_rows, spec["k"]),
            lambda: next(rows),
            warmup=warm,
            min_calls=min_calls,
            max_calls=spec["max_calls"],
            min_time_s=spec["min_time_s"],
            give_up_s=spec["max_call_s"],
        )
        ms = np.asarray(times) * 1e3
        out[str(batch)] = {
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()),
            "qps": float(batch * len(ms) / (ms.sum() / 1e3)),
            "calls": len(ms),
        }
        previous = (batch, float(np.median(ms)) / 1e3)
    return out


def measure(spec: dict) -> dict:
    from benchmarks.inference.backends import BackendUnavailable, build, warm_runtime

    folder = Path(spec["case"])
    name, threads = spec["backend"], int(spec["threads"])
    users = np.load(folder / "users.npy")
    eval_rows = np.arange(min(spec["eval_users"], len(users)), dtype=np.int64)
    result: dict = {"backend": name}
    try:
        warm_runtime(name, threads)
        gc.collect()
        base = _rss()
        t0 = time.perf_counter()
        backend = build(name, folder, users, threads)
        result["build_s"] = time.perf_counter() - t0
    except BackendUnavailable as exc:
        return {**result, "skipped": str(exc)}
    gc.collect()
    result["rss_base_bytes"] = base
    result["rss_loaded_bytes"] = _rss() - base
    result["payload_bytes"] = int(backend.payload_bytes)
    if hasattr(backend, "params"):
        result["backend_params"] = backend.params
    ids = np.concatenate([backend.search(eval_rows[s : s + 32], spec["k"]) for s in range(0, len(eval_rows), 32)])
    np.save(spec["eval_out"], ids)
    result["latency"] = _time_batches(backend, len(users), spec)
    result["rss_after_bytes"] = _rss() - base
    result["rss_peak_bytes"] = _peak_rss() - base
    if hasattr(backend, "gpu_peak_bytes"):
        result["gpu_peak_bytes"] = backend.gpu_peak_bytes()
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(measure(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
