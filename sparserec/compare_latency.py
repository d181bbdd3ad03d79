"""``sparserec compare``'s timings: in-process ``Recommender`` latency, HTTP latency through a real
server, a locust load test, each for one artifact (``sparserec.compare.compare`` calls them per row).

    from sparserec.compare_latency import in_process_latency
    rows = in_process_latency(Recommender.from_artifact(art), options)   # [{threads, batch_size, p50_ms, ...}]
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.provenance import cpu_count
from common.timing import percentiles, time_calls

from .compare_rows import CompareOptions

log = logging.getLogger("sparserec.compare")


def in_process_latency(model: Any, options: CompareOptions) -> list[dict[str, Any]]:
    """p50/p99 of ``Recommender.recommend`` (seen items excluded) per thread count and batch size."""
    from serving.backends import set_cpu_threads
    from serving.recommender import Query

    user_ids = list(model.user_index)
    rows = []
    try:
        for threads in options.threads:
            set_cpu_threads(threads)  # FAISS's OpenMP pool: what SPARSEREC_THREADS sets in a server
            for batch_size in options.batch_sizes:
                rng = np.random.default_rng(options.seed)

                def queries(size: int = batch_size) -> list[Query]:  # random known users, made outside the timing
                    return [Query(user_ids[i], options.k, True) for i in rng.integers(0, len(user_ids), size)]

                times = time_calls(
                    model.recommend,
                    queries,
                    warmup=2,
                    min_calls=min(5, options.max_calls),
                    max_calls=options.max_calls,
                    min_time_s=options.min_time_s,
                )
                rows.append({"threads": threads, "batch_size": batch_size, **percentiles(times)})
    finally:
        set_cpu_threads(cpu_count())
    return rows


def http_latency(path: Path, user_ids: list[str], options: CompareOptions, log_dir: Path) -> dict[str, Any]:
    """p50/p99 of sequential POST /recommend through a real server (started on a free port, stopped by PID)."""
    import httpx

    from serving.config import thread_env
    from serving.process import ServerProcess, free_port, serving_command, serving_env

    threads = options.threads[0]
    port = free_port()
    server = ServerProcess(
        serving_command(path.resolve(), port, threads=threads, workers=1),
        serving_env(**thread_env(threads), SPARSEREC_MMAP=str(int(options.mmap))),
        port,
        log_path=log_dir / f"{path.name}.server.log",
    )
    rng = np.random.default_rng(options.seed)
    warmup = 20
    times = []
    try:
        started = time.perf_counter()
        server.wait_ready(300)
        startup_s = time.perf_counter() - started
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for call in range(warmup + options.requests):
                body = {"user_id": user_ids[int(rng.integers(len(user_ids)))], "k": options.k, "exclude_seen": True}
                start = time.perf_counter()
                response = client.post("/recommend", json=body)
                elapsed = time.perf_counter() - start
                if response.status_code != 200:
                    raise RuntimeError(
                        f"{path.name}: POST /recommend answered {response.status_code}: {response.text[:300]}"
                    )
                if call >= warmup:
                    times.append(elapsed)
    finally:
        server.stop()
    return {
        **percentiles(times),
        "server_threads": threads,
        "startup_s": round(startup_s, 2),
        "warmup_requests": warmup,
    }


def locust_load(path: Path, name: str, options: CompareOptions, folder: Path) -> dict[str, Any]:
    """A ``python -m loadtest run`` subprocess on this artifact: its requests per second and failures."""
    from serving.process import REPO_ROOT, serving_env

    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "loadtest",
        "run",
        "--artifact",
        str(path.resolve()),
        "--users",
        str(options.locust_users),
        "--duration",
        f"{options.locust_duration_s:g}s",
        "--server-threads",
        str(options.threads[0]),
        "--seed",
        str(options.seed),
        "--results",
        str(folder.resolve()),
        "--name",
        name,
    ]
    done = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=serving_env(),
        capture_output=True,
        text=True,
        timeout=options.locust_duration_s + 600,
    )
    report = folder / f"loadtest-{name}.json"
    if done.returncode == 2 or not report.is_file():
        raise RuntimeError(f"{name}: python -m loadtest run failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    result = json.loads(report.read_text())
    return {
        "users": options.locust_users,
        "duration_s": options.locust_duration_s,
        "rps": result["rps"],
        "requests": result["requests"],
        "failures": result["failures"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "report": str(report),
    }


def _or_error(measure, label: str, what: str) -> dict[str, Any]:
    """``measure()``, or ``{"error": ...}`` when its server or load test failed (the other rows still run)."""
    from serving.process import ServerFailed

    try:
        return measure()
    except (ServerFailed, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        log.error("%s: %s failed: %s", label, what, exc)
        return {"error": f"{type(exc).__name__}: {str(exc)[:2000]}"}


def errors(report: dict[str, Any]) -> list[str]:
    """``NAME HTTP|locust: message`` for every measurement that failed."""
    return [
        f"{row['name']} {part}: {row[part]['error'].splitlines()[0]}"
        for row in report["rows"]
        for part in ("http", "locust")
        if isinstance(row.get(part), dict) and "error" in row[part]
    ]
