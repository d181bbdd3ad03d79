"""The in-process benchmark's sweep: every case, every backend in its own worker process, recall, progress.

`run_bench(Settings(...))` plans the cases, prepares each (`benchmarks.inference.cases`), runs one
`python -m benchmarks.inference.worker` per backend (fresh process: its memory is its own), scores the
returned ids against exact search (`benchmarks.inference.recall`), saves the JSON after every case (an
interrupted sweep keeps what it measured) and writes the report (`benchmarks.inference.report`).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from common.io import atomic_write_text
from common.paths import REPO_ROOT, repo_relative

from .backends import BACKENDS, CUDA_BACKENDS, EXACT_BACKENDS
from .cases import (
    BATCHES,
    DEFAULT_MASKS,
    DENSITIES,
    SHAPES,
    TABLES,
    Case,
    K,
    case_backends,
    make_artifact_case,
    make_synthetic_case,
    synthetic_cases,
)
from .recall import kth_best_scores, served_recall
from .report import json_default, write_report

log = logging.getLogger("sparserec.bench")


@dataclass
class Settings:
    datasets: tuple[str, ...] = ("ml-100k", "1m")
    densities: tuple[float, ...] = DENSITIES
    backends: tuple[str, ...] = BACKENDS
    tables: tuple[str, ...] = TABLES
    masks: Path = DEFAULT_MASKS
    batches: tuple[int, ...] = BATCHES
    artifacts: tuple[Path, ...] = ()
    threads: int = os.cpu_count() or 1
    max_call_s: float = 3.0
    point_budget_s: float = 5.0  # per batch size: fewer timed calls (at least 2) where they would take longer
    warmup_calls: int = 2
    min_calls: int = 5
    time_scale: float = 1.0  # multiplies every shape's min_time_s
    hnsw_large_densities: tuple[float, ...] = (1.0,)
    seed: int = 0
    out: Path = Path("results")
    name: str = "bench"
    worker_timeout_s: float = 900.0
    reduced: bool = False
    allow_noisy: bool = False  # write into results/ even from a busy machine (the report says noisy)


def _worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_worker(case: Case, backend: str, settings: Settings) -> dict[str, Any]:
    """One backend on one case in a fresh process; its measurements plus recall@20."""
    shape = case.shape
    spec = {
        "case": str(case.folder),
        "backend": backend,
        "threads": settings.threads,
        "k": K,
        "batches": list(settings.batches),
        "eval_users": shape.eval_users,
        "max_call_s": settings.max_call_s,
        "min_time_s": shape.min_time_s * settings.time_scale,
        "min_calls": settings.min_calls,
        "max_calls": shape.max_calls,
        "point_budget_s": settings.point_budget_s,
        "warmup_calls": settings.warmup_calls,
        "seed": settings.seed,
        "eval_out": str(case.folder / f"eval-{backend}.npy"),
    }
    spec_path = case.folder / f"spec-{backend}.json"
    out_path = case.folder / f"out-{backend}.json"
    spec_path.write_text(json.dumps(spec))
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.inference.worker", str(spec_path), str(out_path)],
            cwd=REPO_ROOT,
            env=_worker_env(settings.threads),
            capture_output=True,
            text=True,
            timeout=settings.worker_timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"backend": backend, "error": f"worker timed out after {settings.worker_timeout_s:.0f} s"}
    if done.returncode != 0 or not out_path.is_file():
        return {"backend": backend, "error": f"worker exited with {done.returncode}: {done.stderr[-1500:]}"}
    result = json.loads(out_path.read_text())
    result["wall_s"] = time.monotonic() - started  # the worker process, start to end
    if "skipped" not in result:
        ids = np.load(spec["eval_out"])
        users = np.load(case.folder / "users.npy", mmap_mode="r")[: len(ids)]
        items = np.load(case.folder / "items.npy", mmap_mode="r")
        result["recall@20"] = served_recall(ids, np.asarray(users), items, case.meta["kth"], K)
        result["eval_users"] = int(len(ids))
    return result


def _skip_reason(case: Case, backend: str, settings: Settings, unavailable: dict[str, str]) -> str | None:
    if backend in unavailable:
        return unavailable[backend]
    if (
        backend == "faiss-hnsw"
        and case.shape.n_items >= 500_000
        and case.table != "artifact"
        and not any(abs(case.density - d) < 1e-9 for d in settings.hnsw_large_densities)
    ):
        return (
            f"hnsw at {case.shape.n_items:,} items built only at densities {list(settings.hnsw_large_densities)} "
            "(minutes of graph building per table on 2 cores); --hnsw-large-densities to add more"
        )
    if backend.startswith("onnx") and not json.loads((case.folder / "case.json").read_text())["onnx"]:
        return "no ONNX scorer for this case"
    return None


# ---------------------------------------------------------------------------- the sweep
def _point(case: Case, result: dict[str, Any]) -> dict[str, Any]:
    point = {
        "dataset": case.dataset,
        "table": case.table,
        "density": case.density,
        "dim": case.dim,
        "params": case.params,
        "n_items": case.shape.n_items,
        "n_users": case.shape.n_users,
        "device": "cuda" if "cuda" in result["backend"] else "cpu",
        "exact": result["backend"] in EXACT_BACKENDS,
        **result,
    }
    if case.table == "artifact":
        point["artifact"] = {k: v for k, v in case.meta.items() if k != "kth"}
    elif "mask_density" in case.meta:
        point["mask_density"] = case.meta["mask_density"]
    if case.notes:
        point["notes"] = case.notes
    return point


def _progress(index: int, total: int, case: Case, point: dict[str, Any], started: float) -> None:
    elapsed = time.monotonic() - started
    eta = elapsed / index * (total - index)
    if "error" in point:
        what = "ERROR: " + point["error"].strip().splitlines()[-1][:200]
    elif "skipped" in point:
        what = f"skipped: {point['skipped']}"[:200]
    else:
        lat = point["latency"]
        cells = []
        for batch, entry in lat.items():
            cells.append(
                f"B={batch} " + (f"{entry['p50_ms']:.2f}/{entry['p99_ms']:.2f} ms" if "p50_ms" in entry else "skip")
            )
        what = (
            f"build {point['build_s']:.1f} s, RSS +{point['rss_loaded_bytes'] / 2**20:.1f} MiB, "
            f"{', '.join(cells)}, recall {point['recall@20']:.3f}"
        )
    print(
        f"[{index}/{total} {elapsed / 60:.1f} min, ~{eta / 60:.1f} min left] {case.label} {point['backend']}: {what}",
        flush=True,
    )


def run_bench(settings: Settings) -> dict[str, Any]:
    """The whole sweep; writes ``{out}/{name}.json``, ``.md`` and ``.png``; returns the report.

    Raises :class:`benchmarks.harness.NoisyMachine` (at the start, or before writing the report) where
    the machine is busy and ``out`` is under results/, unless ``settings.allow_noisy``. Until the end the
    points are saved to ``{name}.partial.json`` (under runs/ when ``out`` is results/), so an
    interrupted sweep keeps what it measured.
    """
    outputs = [settings.out / f"{settings.name}{suffix}" for suffix in (".json", ".md", ".png")]
    source = harness.start()
    harness.check_start(source, outputs, allow_noisy=settings.allow_noisy)
    settings.out.mkdir(parents=True, exist_ok=True)
    partial = (
        REPO_ROOT / "runs" if harness.in_results(settings.out) else settings.out
    ) / f"{settings.name}.partial.json"
    partial.parent.mkdir(parents=True, exist_ok=True)
    plan: list[tuple[str, Any]] = []
    for dataset in settings.datasets:
        for table, density, dim in synthetic_cases(settings.densities, settings.tables):
            plan.append(("synthetic", (SHAPES[dataset], table, density, dim)))
    for path in settings.artifacts:
        plan.append(("artifact", path))
    total = sum(
        len(case_backends(what[1] if kind == "synthetic" else "artifact", settings.backends)) for kind, what in plan
    )
    points: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    started = time.monotonic()
    index = 0
    root = Path(tempfile.mkdtemp(prefix="sparserec-bench-"))
    report = {
        "provenance": source,
        "settings": _settings_dict(settings),
        "machine": _machine(),
        "complete": False,
        "case_errors": [],
        "points": points,
    }
    try:
        for kind, what in plan:
            t0 = time.monotonic()
            try:
                if kind == "synthetic":
                    shape, table, density, dim = what
                    case = make_synthetic_case(
                        root, shape, table, density, dim, settings.seed, settings.backends, settings.masks
                    )
                else:
                    case = make_artifact_case(root, what, settings.backends)
                users = np.load(case.folder / "users.npy")[: case.shape.eval_users]
                case.meta["kth"] = kth_best_scores(users, np.load(case.folder / "items.npy", mmap_mode="r"), K)
            except Exception as exc:  # one bad case (an artifact that does not load) must not end the sweep
                log.exception("case %s failed", what)
                report["case_errors"].append(
                    {
                        "case": str(what)
                        if kind == "artifact"
                        else f"{what[0].name} {what[1]} d={what[2]:g} dim={what[3]}",
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                )
                index += len(case_backends(what[1] if kind == "synthetic" else "artifact", settings.backends))
                continue
            print(
                f"case {case.label}: {case.params:,} parameters, prepared in {time.monotonic() - t0:.1f} s", flush=True
            )
            for backend in case_backends(case.table, settings.backends):
                index += 1
                reason = _skip_reason(case, backend, settings, unavailable)
                result = {"backend": backend, "skipped": reason} if reason else run_worker(case, backend, settings)
                if backend in CUDA_BACKENDS and "skipped" in result:
                    unavailable[backend] = result["skipped"]
                point = _point(case, result)
                points.append(point)
                _progress(index, total, case, point, started)
            shutil.rmtree(case.folder, ignore_errors=True)
            # saved after every case, so an interrupted sweep keeps what it measured
            report.update(notes=_notes(settings, unavailable), seconds=time.monotonic() - started)
            atomic_write_text(partial, json.dumps(report, indent=2, default=json_default))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report.update(notes=_notes(settings, unavailable), seconds=time.monotonic() - started, complete=True)
    harness.finish(source, outputs, allow_noisy=settings.allow_noisy)  # raises before writing where refused
    write_report(report, settings.out, settings.name)
    partial.unlink(missing_ok=True)
    return report


def _settings_dict(settings: Settings) -> dict[str, Any]:
    out = {key: getattr(settings, key) for key in settings.__dataclass_fields__}
    out["artifacts"] = [repo_relative(p) for p in settings.artifacts]
    out["masks"] = repo_relative(settings.masks)
    out["out"] = repo_relative(settings.out)
    out["shapes"] = {name: SHAPES[name].__dict__ for name in settings.datasets}
    out["k"] = K
    return out


def _machine() -> dict[str, Any]:
    info = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        pass
    return info


def _notes(settings: Settings, unavailable: dict[str, str]) -> list[str]:
    notes = [
        "Synthetic cases are random tables (values N(0,1); sparse: one global random mask over each table "
        "keeping the stated share of entries; small-dense: the equal-budget model with dim = round(density x 64)). "
        "They are honest for latency and memory, not for quality; recall@20 is against exact dense search over the "
        "same tables.",
        "Each backend is measured in its own fresh process: memory is resident memory after load minus before "
        "(library imported and warmed first), and the peak (VmHWM) minus the same baseline. payload = bytes of the "
        "backend's own data structure.",
        f"k = {K}; threads = {settings.threads} per backend (scipy-csr is single-threaded; packed-scan splits item "
        "blocks over a thread pool); numpy/scipy scans score queries in blocks of 32.",
        "Timings come from one run on a shared machine: compare ratios within a run; absolute times hold only "
        "for the machine listed.",
        "The 1m shape trains faiss ivf and pq on a 65,536-item random sample (ivf nlist 1024, nprobe 32; hnsw M 16, "
        "efConstruction 40, efSearch 128) to fit the time budget; ml-100k uses export.index.default_params.",
    ]
    for backend, reason in sorted(unavailable.items()):
        notes.append(f"{backend} skipped: {reason}")
    if not any(b in settings.backends for b in CUDA_BACKENDS):
        notes.append("CUDA backends not requested")
    return notes
