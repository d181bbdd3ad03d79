"""In-process inference benchmark: latency, throughput, memory and recall of top-k backends.

    python -m loadtest.bench                                  # full sweep (~15-20 min on 2 cores)
    python -m loadtest.bench --reduced                        # ml-100k shapes, 2 densities, 2 backends (seconds)
    python -m loadtest.bench --artifacts artifacts/mf-dense,artifacts/mf-dsl-0.2   # + real ml-100k artifacts
    python -m loadtest.bench --datasets 1m --densities 1.0,0.1 --backends torch-dense,packed-scan,faiss-flat
    python -m loadtest.bench --render results/bench.json     # redo the targets table, bench.md and bench.png from the JSON
    python -m loadtest.bench --sparse-only                    # 1m: dense, small-dense and the sparse index (issue 10)

What it measures, for each case (a user table and an item table) and each backend of
`loadtest.backends` (torch dense, onnxruntime fp32 and int8, scipy CSR, our packed-sparse scan,
FAISS flat/ivf/hnsw/sq8/pq; torch and onnxruntime on CUDA when a GPU is present):
p50 / p99 latency and queries per second at batch 1, 32 and 256 (k = 20), resident memory (after
load minus before, and peak; each backend in its own fresh process, so the figures are its own),
and recall@20 against exact dense search (tie-aware: an id counts if its true score reaches the
20th best). Results: `results/bench.json`, `results/bench.md`, `results/bench.png` (latency
against memory, the Pareto front marked).

Cases:
- `ml-100k` (943 users x 1682 items) and `1m` (a 2048-user query pool x 1,000,000 items), dim 64;
- at each density d < 1 a *sparse* case (both tables under one global random mask keeping a
  share d of the entries, values N(0, 1), stored dim 64) and beside it the equal-budget
  *small-dense* case (dim = round(d x 64), all entries random), through the same backends;
  d = 1 is the plain dense model.
  These tables are random, not trained: honest for latency and memory, meaningless for quality.
- trained-like masks (issue 10), at each density d < 1: `prefix` (row lengths drawn from a trained
  dsl-mixed run's per-row length histogram, scaled to d; items ordered by length, as the exporter
  orders them) and `unstructured` (per-row counts and per-dim shares of a trained dsl run), both
  from `loadtest/trained_masks.json` (`make bench-masks`); users and items each at density d. These
  two tables are measured with the `sparse` index (export.sparse_index) and `faiss-flat` over the
  zero-filled vectors only; recall is against exact search over the zero-filled vectors.
- `--artifacts`: real trained artifacts (export.artifact.load_artifact): their served vectors,
  their own ONNX scorers, and the model's quality from the manifest. LightGCN serves dense
  propagated vectors, so its scans (scipy-csr, packed-scan) are over dense vectors: said so in the output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends import BACKENDS, CUDA_BACKENDS, EXACT_BACKENDS

log = logging.getLogger("sparserec.bench")

REPO_ROOT = Path(__file__).resolve().parent.parent
DIM = 64
K = 20
DENSITIES = (1.0, 0.5, 0.2, 0.1, 0.05)
BATCHES = (1, 32, 256)
TABLES = ("dense", "sparse", "small-dense", "prefix", "unstructured")
TRAINED_MASK_TABLES = ("prefix", "unstructured")
TRAINED_MASK_BACKENDS = ("faiss-flat", "sparse")  # the sparse index and the flat index it is chosen against
SPARSE_TABLES = ("sparse",) + TRAINED_MASK_TABLES  # tables the sparse backend indexes (dense ones: faiss-flat)


@dataclass(frozen=True)
class Shape:
    """A dataset shape and how hard to measure it."""

    name: str
    n_users: int
    n_items: int
    eval_users: int  # users whose top-20 is checked against exact search
    min_time_s: float  # per batch size
    max_calls: int
    train_sample: int = 0  # faiss ivf/pq train on this many items (0: all)
    faiss: dict[str, dict[str, Any]] = field(default_factory=dict)


SHAPES = {
    "ml-100k": Shape("ml-100k", 943, 1682, eval_users=943, min_time_s=0.25, max_calls=300),
    "1m": Shape("1m", 2048, 1_000_000, eval_users=100, min_time_s=0.5, max_calls=60, train_sample=65_536,
                faiss={"ivf": {"nlist": 1024, "nprobe": 32}, "hnsw": {"M": 16, "efConstruction": 40, "efSearch": 128}}),
}


@dataclass
class Settings:
    datasets: tuple[str, ...] = ("ml-100k", "1m")
    densities: tuple[float, ...] = DENSITIES
    backends: tuple[str, ...] = BACKENDS
    tables: tuple[str, ...] = TABLES
    masks: Path = REPO_ROOT / "loadtest" / "trained_masks.json"
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


# ---------------------------------------------------------------------------- cases
def _random_table(rng: np.random.Generator, n_rows: int, dim: int, density: float) -> tuple[np.ndarray, np.ndarray]:
    """Values N(0, 1) under a global random mask keeping about ``density`` of the entries."""
    values = rng.standard_normal((n_rows, dim), dtype=np.float32)
    if density >= 1.0:
        return values, np.ones((n_rows, dim), dtype=bool)
    mask = rng.random((n_rows, dim), dtype=np.float32) < density
    values *= mask
    return values, mask


def _write_case(folder: Path, users: np.ndarray, items: np.ndarray, packed, onnx_paths: dict[str, str],
                extra: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "users.npy", np.ascontiguousarray(users, dtype=np.float32))
    np.save(folder / "items.npy", np.ascontiguousarray(items, dtype=np.float32))
    for role, array in packed.arrays().items():
        np.save(folder / f"items.{role}.npy", array)
    (folder / "case.json").write_text(json.dumps({"onnx": onnx_paths, **extra}))


def _onnx_scorers(folder: Path, users: np.ndarray, items: np.ndarray, backends: tuple[str, ...]) -> dict[str, str]:
    """scorer.onnx (and its int8 quantisation) over these tables, if an ONNX backend wants them."""
    if not any(b.startswith("onnx") for b in backends):
        return {}
    from export.to_onnx import build_scorer, save_model

    model, _ = build_scorer(np.ascontiguousarray(users, dtype=np.float32), items)
    paths = {"fp32": str(folder / "scorer.onnx")}
    save_model(model, paths["fp32"])
    del model
    if "onnx-int8" in backends:
        paths["int8"] = str(folder / "scorer.int8.onnx")
        from export.to_onnx import quantize_scorer_int8

        quantize_scorer_int8(paths["fp32"], paths["int8"])
    return paths


def _write_sparse_index(folder: Path, packed) -> dict[str, Any]:
    """Build the sparse item index here and save its files, as the exporter does: the worker then
    loads it from the files as the service does, so its memory is the served index's, not the build's."""
    from export.sparse_index import SparseIndex

    index = SparseIndex.from_table(packed)
    (folder / "sparse").mkdir()
    entry = {"layout": index.layout, "files": index.save(folder / "sparse"), "params": index.params,
             "n_items": index.n_items, "dim": index.dim}
    del index
    return entry


@dataclass
class Case:
    """One user table and item table to measure every backend on."""

    dataset: str
    table: str  # dense | sparse | small-dense | artifact
    density: float
    dim: int
    folder: Path
    shape: Shape
    params: int  # non-zeros of both tables
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.table == "artifact":
            return f"{self.dataset} {self.meta['name']}"
        return f"{self.dataset} {self.table} d={self.density:g} dim={self.dim}"


def synthetic_cases(densities: tuple[float, ...], tables: tuple[str, ...] = TABLES) -> list[tuple[str, float, int]]:
    """(table, density, dim) of the sweep: dense at 1.0; below it sparse (random mask), its small-dense
    twin, and the trained-like prefix and unstructured masks, each where ``tables`` names it."""
    out = []
    for density in densities:
        if density >= 1.0:
            out.append(("dense", 1.0, DIM))
        else:
            out.append(("sparse", density, DIM))
            out.append(("small-dense", density, max(1, round(density * DIM))))
            out += [(table, density, DIM) for table in TRAINED_MASK_TABLES]
    return [case for case in out if case[0] in tables]


def case_backends(table: str, backends: tuple[str, ...]) -> tuple[str, ...]:
    """The backends measured on a table: trained-like masks get the sparse index and flat only;
    the sparse index is measured on sparse tables (on a dense one it is faiss-flat with one shard)."""
    if table in TRAINED_MASK_TABLES:
        return tuple(b for b in backends if b in TRAINED_MASK_BACKENDS)
    return tuple(b for b in backends if b != "sparse" or table in SPARSE_TABLES)


def _trained_mask_tables(rng: np.random.Generator, shape: Shape, table: str, density: float, dim: int,
                         masks: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Users and items with masks drawn from the trained profiles (values N(0, 1) under the mask).

    Prefix items are ordered by length, as the exporter orders them in the artifact's id map.
    """
    from .trained_masks import load_profiles, nearest, sample_mask

    layout = "prefix" if table == "prefix" else "unstructured"
    profile = nearest(load_profiles(masks), layout, density)
    user_mask = sample_mask(profile, "users", shape.n_users, density, dim, rng, layout)
    item_mask = sample_mask(profile, "items", shape.n_items, density, dim, rng, layout)
    if layout == "prefix":
        item_mask = item_mask[np.argsort(item_mask.sum(axis=1), kind="stable")]
    users = rng.standard_normal((shape.n_users, dim), dtype=np.float32) * user_mask
    items = rng.standard_normal((shape.n_items, dim), dtype=np.float32)
    items *= item_mask
    return users, user_mask, items, item_mask


def make_synthetic_case(root: Path, shape: Shape, table: str, density: float, dim: int, seed: int,
                        backends: tuple[str, ...], masks: Path | None = None) -> Case:
    from export.to_sparse import pack_table

    seeds = [seed, int(density * 1000), dim, shape.n_items]
    rng = np.random.default_rng(seeds + ([TABLES.index(table)] if table in TRAINED_MASK_TABLES else []))
    meta: dict[str, Any] = {}
    if table in TRAINED_MASK_TABLES:
        users, user_mask, items, item_mask = _trained_mask_tables(rng, shape, table, density, dim,
                                                                  masks or Settings.masks)
        meta = {"mask_density": {"users": float(user_mask.mean()), "items": float(item_mask.mean())}}
    else:
        kept = density if table == "sparse" else 1.0
        users, user_mask = _random_table(rng, shape.n_users, dim, kept)
        items, item_mask = _random_table(rng, shape.n_items, dim, kept)
    params = int(user_mask.sum()) + int(item_mask.sum())
    del user_mask
    packed = pack_table(items, item_mask)
    del item_mask
    folder = root / f"{shape.name}-{table}-{density:g}-{dim}"
    folder.mkdir(parents=True)
    onnx_paths = _onnx_scorers(folder, users, items, case_backends(table, backends))
    extra = {"train_sample": shape.train_sample, "faiss": shape.faiss}
    if "sparse" in case_backends(table, backends):
        extra["sparse"] = _write_sparse_index(folder, packed)
    _write_case(folder, users, items, packed, onnx_paths, extra)
    return Case(shape.name, table, density, dim, folder, shape, params, meta=meta)


def make_artifact_case(root: Path, path: Path, backends: tuple[str, ...]) -> Case:
    """A case from a trained artifact: its served vectors, its packed item rows, its ONNX scorers."""
    from export.artifact import load_artifact
    from export.to_sparse import PackedTable, pack_table

    artifact = load_artifact(path)
    manifest = artifact.manifest
    users, items = artifact.user_vectors(), artifact.item_vectors()
    notes = []
    spec = manifest["vectors"]
    if spec["source"] == "tables":
        layout = getattr(artifact, "table_layout", lambda name: "csr")(spec["items"]["table"])
        if layout != "csr":
            notes.append(f"{path.name}: the item table is stored in the {layout!r} layout; scipy-csr and packed-scan "
                         "scan its CSR form (export.artifact.Artifact.packed_table)")
        table = artifact.packed_table(spec["items"]["table"])
        start, stop = int(spec["items"]["start"]), int(spec["items"]["stop"])
        pointers = table.indptr[start: stop + 1]
        first, last = int(pointers[0]), int(pointers[-1])
        packed = PackedTable((pointers - pointers[0]).astype(pointers.dtype), table.indices[first:last],
                             table.values[first:last], (stop - start, table.shape[1]), table.value_dtype,
                             None if table.scale is None else table.scale[start:stop])
    else:
        packed = pack_table(items)
        notes.append(f"{artifact.model_kind}: the served item vectors are dense ({spec['source']}), "
                     "so scipy-csr and packed-scan scan the dense propagated vectors")
    folder = root / f"artifact-{path.name}"
    folder.mkdir(parents=True)
    onnx_paths = {}
    onnx = manifest.get("onnx", {})
    if "scorer" in onnx:
        onnx_paths["fp32"] = str(artifact.file(onnx["scorer"]["file"]))
        if "scorer_int8" in onnx:
            onnx_paths["int8"] = str(artifact.file(onnx["scorer_int8"]["file"]))
        elif "onnx-int8" in backends:
            onnx_paths["int8"] = str(folder / "scorer.int8.onnx")
            from export.to_onnx import quantize_scorer_int8

            quantize_scorer_int8(onnx_paths["fp32"], onnx_paths["int8"])
            notes.append("onnx-int8: the artifact has no int8 scorer; quantised on the fly")
    _write_case(folder, users, items, packed, onnx_paths, {"train_sample": 0, "faiss": {}})
    shape = Shape(f"artifact:{path.name}", artifact.n_users, artifact.n_items, eval_users=artifact.n_users,
                  min_time_s=SHAPES["ml-100k"].min_time_s, max_calls=SHAPES["ml-100k"].max_calls)
    density = manifest.get("density")
    density = float(density) if isinstance(density, (int, float)) else None
    meta = {"name": path.name, "path": str(path), "model_kind": artifact.model_kind, "value_dtype": artifact.value_dtype,
            "density": manifest.get("density"), "quality": manifest.get("quality"),
            "index_in_artifact": artifact.index_kind}
    nnz = manifest.get("nnz")
    params = int(nnz) if isinstance(nnz, (int, float)) else int(sum(t["nnz"] for t in manifest["tables"].values()))
    return Case("ml-100k", "artifact", density if density is not None else 1.0, artifact.dim, folder, shape,
                params, notes, meta)


# ---------------------------------------------------------------------------- recall
def exact_top_k(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """The k-th best exact score per user, ``float32 [U]`` (dense scan, blocks of items)."""
    best = np.full((len(users), 0), -np.inf, dtype=np.float32)
    block = max(1024, 2**25 // max(len(users), 1))  # at most ~128 MiB of scores at a time
    for start in range(0, len(items), block):
        scores = users @ np.asarray(items[start: start + block]).T
        keep = min(k, scores.shape[1])
        part = np.partition(scores, scores.shape[1] - keep, axis=1)[:, -keep:]
        best = np.concatenate([best, part], axis=1)
        if best.shape[1] > k:
            best = np.partition(best, best.shape[1] - k, axis=1)[:, -k:]
    return best.min(axis=1)


def tie_aware_recall(ids: np.ndarray, users: np.ndarray, items: np.ndarray, kth: np.ndarray, k: int) -> float:
    """Share of the k slots holding an item whose exact score reaches the exact k-th best.

    Ties at the cut-off (common in sparse tables, where many scores are exactly 0) count as hits,
    as in faiss's own tests; scores are compared with a small tolerance for summation order.
    """
    hits = 0
    for row, wanted in enumerate(ids):
        valid = wanted[wanted >= 0][:k]
        if len(valid):
            scores = items[valid] @ users[row]
            tolerance = 1e-4 * max(1.0, abs(float(kth[row])))
            hits += int(np.sum(scores >= kth[row] - tolerance))
    return hits / (len(ids) * k)


# ---------------------------------------------------------------------------- workers
def _worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_worker(case: Case, backend: str, settings: Settings) -> dict[str, Any]:
    """One backend on one case in a fresh process; its measurements plus recall@20."""
    shape = case.shape
    spec = {"case": str(case.folder), "backend": backend, "threads": settings.threads, "k": K,
            "batches": list(settings.batches), "eval_users": shape.eval_users, "max_call_s": settings.max_call_s,
            "min_time_s": shape.min_time_s * settings.time_scale, "min_calls": settings.min_calls,
            "max_calls": shape.max_calls, "point_budget_s": settings.point_budget_s, "warmup_calls": settings.warmup_calls, "seed": settings.seed,
            "eval_out": str(case.folder / f"eval-{backend}.npy")}
    spec_path = case.folder / f"spec-{backend}.json"
    out_path = case.folder / f"out-{backend}.json"
    spec_path.write_text(json.dumps(spec))
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "loadtest.bench_worker", str(spec_path), str(out_path)],
                              cwd=REPO_ROOT, env=_worker_env(settings.threads), capture_output=True, text=True,
                              timeout=settings.worker_timeout_s)
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
        result["recall@20"] = tie_aware_recall(ids, np.asarray(users), items, case.meta["kth"], K)
        result["eval_users"] = int(len(ids))
    return result


def _skip_reason(case: Case, backend: str, settings: Settings, unavailable: dict[str, str]) -> str | None:
    if backend in unavailable:
        return unavailable[backend]
    if backend == "faiss-hnsw" and case.shape.n_items >= 500_000 and case.table != "artifact" and \
            not any(abs(case.density - d) < 1e-9 for d in settings.hnsw_large_densities):
        return (f"hnsw at {case.shape.n_items:,} items built only at densities {list(settings.hnsw_large_densities)} "
                "(minutes of graph building per table on 2 cores); --hnsw-large-densities to add more")
    if backend.startswith("onnx") and not json.loads((case.folder / "case.json").read_text())["onnx"]:
        return "no ONNX scorer for this case"
    return None


# ---------------------------------------------------------------------------- the sweep
def _point(case: Case, result: dict[str, Any]) -> dict[str, Any]:
    point = {"dataset": case.dataset, "table": case.table, "density": case.density, "dim": case.dim,
             "params": case.params, "n_items": case.shape.n_items, "n_users": case.shape.n_users,
             "device": "cuda" if "cuda" in result["backend"] else "cpu",
             "exact": result["backend"] in EXACT_BACKENDS, **result}
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
            cells.append(f"B={batch} " + (f"{entry['p50_ms']:.2f}/{entry['p99_ms']:.2f} ms" if "p50_ms" in entry else "skip"))
        what = (f"build {point['build_s']:.1f} s, RSS +{point['rss_loaded_bytes'] / 2**20:.1f} MiB, "
                f"{', '.join(cells)}, recall {point['recall@20']:.3f}")
    print(f"[{index}/{total} {elapsed / 60:.1f} min, ~{eta / 60:.1f} min left] {case.label} {point['backend']}: {what}",
          flush=True)


def run_bench(settings: Settings) -> dict[str, Any]:
    """The whole sweep; writes ``{out}/{name}.json``, ``.md`` and ``.png``; returns the report."""
    settings.out.mkdir(parents=True, exist_ok=True)
    plan: list[tuple[str, Any]] = []
    for dataset in settings.datasets:
        for table, density, dim in synthetic_cases(settings.densities, settings.tables):
            plan.append(("synthetic", (SHAPES[dataset], table, density, dim)))
    for path in settings.artifacts:
        plan.append(("artifact", path))
    total = sum(len(case_backends(what[1] if kind == "synthetic" else "artifact", settings.backends))
                for kind, what in plan)
    points: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    started = time.monotonic()
    index = 0
    root = Path(tempfile.mkdtemp(prefix="sparserec-bench-"))
    from common.provenance import provenance

    report = {"provenance": provenance(), "settings": _settings_dict(settings), "machine": _machine(), "complete": False,
              "case_errors": [], "points": points}
    try:
        for kind, what in plan:
            t0 = time.monotonic()
            try:
                if kind == "synthetic":
                    shape, table, density, dim = what
                    case = make_synthetic_case(root, shape, table, density, dim, settings.seed, settings.backends,
                                               settings.masks)
                else:
                    case = make_artifact_case(root, what, settings.backends)
                users = np.load(case.folder / "users.npy")[: case.shape.eval_users]
                case.meta["kth"] = exact_top_k(users, np.load(case.folder / "items.npy", mmap_mode="r"), K)
            except Exception as exc:  # one bad case (an artifact that does not load) must not end the sweep
                log.exception("case %s failed", what)
                report["case_errors"].append({"case": str(what) if kind == "artifact" else
                                              f"{what[0].name} {what[1]} d={what[2]:g} dim={what[3]}",
                                              "error": f"{type(exc).__name__}: {exc}"})
                index += len(case_backends(what[1] if kind == "synthetic" else "artifact", settings.backends))
                continue
            print(f"case {case.label}: {case.params:,} parameters, prepared in {time.monotonic() - t0:.1f} s", flush=True)
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
            (settings.out / f"{settings.name}.json").write_text(json.dumps(report, indent=2, default=_json_default))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report.update(notes=_notes(settings, unavailable), seconds=time.monotonic() - started, complete=True)
    write_report(report, settings.out, settings.name)
    return report


def _settings_dict(settings: Settings) -> dict[str, Any]:
    out = {key: getattr(settings, key) for key in settings.__dataclass_fields__}
    out["artifacts"] = [str(p) for p in settings.artifacts]
    out["masks"] = str(settings.masks)
    out["out"] = str(settings.out)
    out["shapes"] = {name: SHAPES[name].__dict__ for name in settings.datasets}
    out["k"] = K
    return out


def _machine() -> dict[str, Any]:
    info = {"host": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "processor": platform.processor()}
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


# ---------------------------------------------------------------------------- report
def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.2f}" if value < 10 * 2**20 else f"{value / 2**20:.0f}"


def _latency_cell(point: dict[str, Any], batch: int) -> str:
    entry = point.get("latency", {}).get(str(batch))
    if not entry:
        return "-"
    if "p50_ms" not in entry:
        return "skip"
    return f"{entry['p50_ms']:.3g} / {entry['p99_ms']:.3g}"


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    batches = settings["batches"]
    from common.provenance import provenance_line

    lines = ["# Inference benchmark", ""] + ([provenance_line(report["provenance"]), ""] if "provenance" in report else []) + [
             f"Machine: {report['machine'].get('cpu', report['machine'].get('processor'))}, "
             f"{report['machine']['cpus']} CPUs ({report['machine']['host']}); {settings['threads']} threads per backend; "
             f"run took {report['seconds'] / 60:.1f} min.", ""]
    lines += [f"- {note}" for note in report["notes"]]
    lines += [f"- **case not measured**: {e['case']}: {e['error']}" for e in report.get("case_errors", [])]
    datasets = list(dict.fromkeys(p["dataset"] if p["table"] != "artifact" else "artifacts" for p in report["points"]))
    head = (["table", "density", "dim", "params", "backend", "recall@20", "build s", "payload MiB", "RSS MiB", "peak MiB"]
            + [f"B={b} p50/p99 ms" for b in batches] + [f"QPS B={batches[-1]}"])
    for dataset in datasets:
        chosen = [p for p in report["points"]
                  if (p["table"] == "artifact") == (dataset == "artifacts") and (dataset == "artifacts" or p["dataset"] == dataset)]
        lines += ["", f"## {dataset}" + (f" ({chosen[0]['n_users']} users x {chosen[0]['n_items']:,} items)" if chosen and dataset != "artifacts" else ""), "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---|" + "---:|" * (len(head) - 5)]
        for p in chosen:
            table = p["artifact"]["name"] if p["table"] == "artifact" else p["table"]
            first = [table, f"{p['density']:g}", str(p["dim"]), f"{p['params']:,}", p["backend"]]
            if "skipped" in p or "error" in p:
                reason = (p.get("skipped") or p.get("error") or "").replace("|", "/").replace("\n", " ")[:120]
                lines.append("| " + " | ".join(first + [f"skipped: {reason}"] + [""] * (len(head) - 6)) + " |")
                continue
            last = p["latency"].get(str(batches[-1]), {})
            lines.append("| " + " | ".join(first + [
                f"{p['recall@20']:.3f}", f"{p['build_s']:.2f}", _mib(p["payload_bytes"]), _mib(p["rss_loaded_bytes"]),
                _mib(p["rss_peak_bytes"]), *[_latency_cell(p, b) for b in batches],
                f"{last['qps']:.0f}" if "qps" in last else "-"]) + " |")
        if dataset != "artifacts":
            lines += _versus_small_dense(chosen, batches)
            lines += _sparse_index_targets(chosen)
        if dataset == "artifacts":
            for name, quality in {p["artifact"]["name"]: p["artifact"].get("quality") for p in chosen}.items():
                exact = (quality or {}).get("exact", {})
                if exact:
                    lines.append(f"\n{name}: model quality on its test split (exact search, from the manifest): "
                                 f"recall@20 {exact.get('recall@20', float('nan')):.4f}, ndcg@20 {exact.get('ndcg@20', float('nan')):.4f}")
            for note in sorted({n for p in chosen for n in p.get("notes", [])}):
                lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


def _versus_small_dense(points: list[dict[str, Any]], batches: list[int]) -> list[str]:
    """Sparse against its equal-budget small-dense twin, backend by backend (ratios < 1: sparse wins)."""
    by_key = {(p["table"], p["density"], p["backend"]): p for p in points if "latency" in p}
    rows = []
    for (table, density, backend), sparse in by_key.items():
        small = by_key.get(("small-dense", density, backend))
        if table != "sparse" or small is None:
            continue
        cells = []
        for batch in batches:
            a, b = sparse["latency"].get(str(batch), {}), small["latency"].get(str(batch), {})
            cells.append(f"{a['p50_ms'] / b['p50_ms']:.2f}" if "p50_ms" in a and "p50_ms" in b else "-")
        # resident-memory deltas under 1 MiB are page and allocator noise: no ratio of those
        rss = (f"{sparse['rss_loaded_bytes'] / small['rss_loaded_bytes']:.2f}"
               if min(sparse["rss_loaded_bytes"], small["rss_loaded_bytes"]) >= 2**20 else "-")
        rows.append(f"| {density:g} | {backend} | {small['dim']} | "
                    f"{sparse['payload_bytes'] / max(small['payload_bytes'], 1):.2f} | {rss} | " + " | ".join(cells)
                    + f" | {sparse['recall@20']:.3f} / {small['recall@20']:.3f} |")
    if not rows:
        return []
    return ["", "Sparse (dim 64) against the equal-budget small-dense model, same backend: ratios sparse / small-dense "
            "(below 1: sparse is smaller or faster).", "",
            "| density | backend | small dim | payload ratio | RSS ratio | " + " | ".join(f"B={b} p50 ratio" for b in batches)
            + " | recall@20 sparse / small |", "|---:|---|---:|---:|---:|" + "---:|" * len(batches) + "---:|", *rows]


# issue 10's targets, checked on the 1m shape (one thread); memory = resident memory after load
PREFIX_TARGETS = {"densities": (0.2, 0.1, 0.05), "memory": 1.15, "latency": 1.2, "batches": (1, 256)}
UNSTRUCTURED_TARGETS = {"memory": 2.2, "batch1_latency": {0.1: 1.5, 0.05: 1.0}}


def sparse_index_targets(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sparse index on trained-like masks against the equal-budget small-dense flat index and the
    dense dim-64 flat index of the same run: ratios, and issue 10's targets met or missed."""
    by_key = {(p["table"], p["density"], p["backend"]): p for p in points if "latency" in p}
    dense = by_key.get(("dense", 1.0, "faiss-flat"))
    rows = []
    for (table, density, backend), point in sorted(by_key.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        small = by_key.get(("small-dense", density, "faiss-flat"))
        if table not in TRAINED_MASK_TABLES or backend != "sparse" or small is None:
            continue
        row: dict[str, Any] = {"table": table, "density": density, "layout": point.get("backend_params", {}).get("layout"),
                               "small_dim": small["dim"], "recall@20": point["recall@20"],
                               "payload_bytes": point["payload_bytes"], "rss_bytes": point["rss_loaded_bytes"],
                               "memory_vs_small": point["rss_loaded_bytes"] / max(small["rss_loaded_bytes"], 1),
                               "payload_vs_small": point["payload_bytes"] / max(small["payload_bytes"], 1)}
        for batch in BATCHES:
            a, b = point["latency"].get(str(batch), {}), small["latency"].get(str(batch), {})
            row[f"p50_ms_b{batch}"] = a.get("p50_ms")
            row[f"latency_vs_small_b{batch}"] = a["p50_ms"] / b["p50_ms"] if "p50_ms" in a and "p50_ms" in b else None
        flat = by_key.get((table, density, "faiss-flat"))
        if flat:
            row["latency_vs_zero_filled_flat_b1"] = (point["latency"]["1"]["p50_ms"] / flat["latency"]["1"]["p50_ms"]
                                                     if "p50_ms" in point["latency"].get("1", {}) and
                                                     "p50_ms" in flat["latency"].get("1", {}) else None)
        if dense:
            row["dense_memory_over_this"] = dense["rss_loaded_bytes"] / max(point["rss_loaded_bytes"], 1)
            row["dense_payload_over_this"] = dense["payload_bytes"] / max(point["payload_bytes"], 1)
        # memory both ways: payload (the index's own arrays) and RSS (what the loaded process holds)
        checks = {"recall 1.0": point["recall@20"] == 1.0}
        if table == "prefix" and any(abs(density - d) < 1e-9 for d in PREFIX_TARGETS["densities"]):
            limit = PREFIX_TARGETS["memory"]
            checks[f"payload <= {limit}x small-dense"] = row["payload_vs_small"] <= limit
            checks[f"RSS <= {limit}x small-dense"] = row["memory_vs_small"] <= limit
            for batch in PREFIX_TARGETS["batches"]:
                ratio = row.get(f"latency_vs_small_b{batch}")
                checks[f"B={batch} p50 <= {PREFIX_TARGETS['latency']}x small-dense"] = (
                    ratio is not None and ratio <= PREFIX_TARGETS["latency"])
            if dense:
                factor = 1 / (2 * density)
                checks[f"dense payload >= {factor:g}x this"] = row["dense_payload_over_this"] >= factor
                checks[f"dense RSS >= {factor:g}x this"] = row["dense_memory_over_this"] >= factor
        if table == "unstructured":
            limit = UNSTRUCTURED_TARGETS["memory"]
            checks[f"payload <= {limit}x small-dense"] = row["payload_vs_small"] <= limit
            checks[f"RSS <= {limit}x small-dense"] = row["memory_vs_small"] <= limit
            for target_density, limit in UNSTRUCTURED_TARGETS["batch1_latency"].items():
                if abs(density - target_density) < 1e-9:
                    ratio = row.get("latency_vs_small_b1")
                    name = f"B=1 p50 {'<=' if limit > 1 else '<'} {limit:g}x small-dense"
                    checks[name] = ratio is not None and (ratio <= limit if limit > 1 else ratio < limit)
        row["checks"] = checks
        rows.append(row)
    return rows


def _sparse_index_targets(points: list[dict[str, Any]]) -> list[str]:
    rows = sparse_index_targets(points)
    if not rows:
        return []

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = ["", "Sparse index (issue 10) on trained-like masks against the equal-budget small-dense flat index "
             "(ratios this / small-dense; memory = RSS after load) and the dense dim-64 flat index; targets checked "
             "as issue 10 states them (1m shape, one thread).", "",
             "| table | density | layout | small dim | payload MiB | RSS MiB | RSS ratio | payload ratio | "
             "B=1 p50 ratio | B=32 p50 ratio | B=256 p50 ratio | B=1 vs zero-filled flat | dense payload / this | "
             "dense RSS / this | recall@20 | targets |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        verdict = "; ".join(f"{'met' if ok else '**missed**'}: {name}" for name, ok in r["checks"].items())
        lines.append(f"| {r['table']} | {r['density']:g} | {r['layout']} | {r['small_dim']} | {_mib(r['payload_bytes'])} "
                     f"| {_mib(r['rss_bytes'])} | {ratio(r['memory_vs_small'])} | {ratio(r['payload_vs_small'])} | "
                     f"{ratio(r.get('latency_vs_small_b1'))} | {ratio(r.get('latency_vs_small_b32'))} | "
                     f"{ratio(r.get('latency_vs_small_b256'))} | {ratio(r.get('latency_vs_zero_filled_flat_b1'))} | "
                     f"{ratio(r.get('dense_payload_over_this'))} | {ratio(r.get('dense_memory_over_this'))} | "
                     f"{r['recall@20']:.3f} | {verdict} |")
    return lines


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i])


PARETO_MIN_RECALL = 0.9


def plot(report: dict[str, Any], path: Path, batch: int = 1) -> None:
    """Latency (p50 at ``batch``) against resident memory after load, one panel per dataset.

    The Pareto front is drawn over the points with recall@20 >= ``PARETO_MIN_RECALL`` (a fast,
    small index that returns the wrong items is no trade-off); the others are drawn faded.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [p for p in report["points"] if "latency" in p and "p50_ms" in p["latency"].get(str(batch), {})]
    datasets = list(dict.fromkeys(p["dataset"] if p["table"] != "artifact" else "artifacts" for p in measured))
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(7.5 * max(1, len(datasets)), 7), squeeze=False)
    backends = list(dict.fromkeys(p["backend"] for p in measured))
    colors = {b: plt.cm.tab20(i % 20) for i, b in enumerate(backends)}
    markers = {"dense": "*", "sparse": "o", "small-dense": "s", "prefix": "P", "unstructured": "X", "artifact": "D"}
    for axis, dataset in zip(axes[0], datasets):
        chosen = [p for p in measured if (p["table"] == "artifact") == (dataset == "artifacts")
                  and (dataset == "artifacts" or p["dataset"] == dataset)]
        xy = [(max(p["rss_loaded_bytes"], 4096) / 2**20, p["latency"][str(batch)]["p50_ms"]) for p in chosen]
        good = [p["recall@20"] >= PARETO_MIN_RECALL for p in chosen]
        for p, (x, y), ok in zip(chosen, xy, good):
            axis.scatter(x, y, color=colors[p["backend"]], marker=markers.get(p["table"], "o"), s=55,
                         alpha=0.85 if ok else 0.2, edgecolors="none")
            label = f"{p['density']:g}" if p["table"] != "artifact" else p["artifact"]["name"]
            axis.annotate(label, (x, y), fontsize=6, alpha=0.6 if ok else 0.25, xytext=(3, 2), textcoords="offset points")
        eligible = [i for i, ok in enumerate(good) if ok]
        front = [eligible[i] for i in pareto_front([xy[i] for i in eligible])]
        if front:
            axis.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "k--", lw=1, label="Pareto front")
            axis.scatter([xy[i][0] for i in front], [xy[i][1] for i in front], s=160, facecolors="none",
                         edgecolors="black", lw=1)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("resident memory after load (MiB, log; floor 4 KiB)")
        axis.set_ylabel(f"p50 latency at batch {batch} (ms, log)")
        axis.set_title(f"{dataset}: latency vs memory (labels: density)")
        axis.grid(True, which="both", alpha=0.3)
    handles = [plt.Line2D([], [], color=colors[b], marker="o", ls="", label=b) for b in backends]
    handles += [plt.Line2D([], [], color="gray", marker=m, ls="", label=t) for t, m in markers.items()]
    handles.append(plt.Line2D([], [], color="black", ls="--",
                              label=f"Pareto front (circled) of recall@20 >= {PARETO_MIN_RECALL:g}; faded: below"))
    fig.legend(handles=handles, loc="lower center", ncol=min(8, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path, name: str) -> None:
    report["sparse_index_targets"] = {dataset: sparse_index_targets([p for p in report["points"]
                                                                     if p["dataset"] == dataset])
                                      for dataset in dict.fromkeys(p["dataset"] for p in report["points"])}
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out / f"{name}.md").write_text(markdown(report))
    plot(report, out / f"{name}.png")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------------------- CLI
def _floats(text: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in text.split(",") if v.strip())
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: densities in (0, 1], comma-separated")
    return values


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: positive integers, comma-separated")
    return tuple(sorted(values))


def _names(choices: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        unknown = [v for v in values if v not in choices]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"unknown {unknown or text!r}; choose from {list(choices)}")
        return values
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reduced", action="store_true",
                        help="ml-100k shapes, densities 1.0 and 0.2, torch-dense and faiss-flat, few iterations")
    parser.add_argument("--datasets", type=_names(tuple(SHAPES)), default=None, help=f"of {list(SHAPES)}")
    parser.add_argument("--densities", type=_floats, default=None, help="default 1.0,0.5,0.2,0.1,0.05")
    parser.add_argument("--backends", type=_names(BACKENDS), default=None, help=f"of {list(BACKENDS)}")
    parser.add_argument("--batches", type=_ints, default=None, help="default 1,32,256")
    parser.add_argument("--tables", type=_names(TABLES), default=None, help=f"synthetic tables, of {list(TABLES)}")
    parser.add_argument("--masks", type=Path, default=None,
                        help="trained mask profiles for the prefix/unstructured tables (loadtest/trained_masks.json)")
    parser.add_argument("--sparse-only", action="store_true",
                        help="issue 10's comparison: 1m, tables dense, small-dense, prefix, unstructured, backends "
                             "faiss-flat and sparse, one thread (name bench-sparse)")
    parser.add_argument("--artifacts", default="", help="comma-separated artifact folders (ml-100k quality)")
    parser.add_argument("--threads", type=int, default=None, help="threads per backend (default: all CPUs)")
    parser.add_argument("--max-call-s", type=float, default=None, help="skip a batch size whose calls take longer (3)")
    parser.add_argument("--time-scale", type=float, default=None, help="multiply the time spent per point (1.0)")
    parser.add_argument("--hnsw-large-densities", type=_floats, default=None,
                        help="densities at which to build hnsw on the 1m shape (default 1.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results"), help="report folder (default results/)")
    parser.add_argument("--name", default=None, help="report file stem (default bench, or bench-reduced)")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="only recompute the derived parts (targets, .md, .png) of an existing report JSON")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if args.reduced:
        settings = Settings(datasets=("ml-100k",), densities=(1.0, 0.2), backends=("torch-dense", "faiss-flat", "sparse"),
                            time_scale=0.1, min_calls=3, warmup_calls=1, name="bench-reduced")
    if args.sparse_only:
        settings = Settings(datasets=("1m",), backends=TRAINED_MASK_BACKENDS,
                            tables=("dense", "small-dense") + TRAINED_MASK_TABLES, threads=1, name="bench-sparse",
                            max_call_s=60.0)  # batch 256 over 1M items takes seconds on one shared core: keep it
    for key in ("datasets", "densities", "backends", "batches", "tables", "masks", "threads", "max_call_s",
                "time_scale", "hnsw_large_densities", "name"):
        value = getattr(args, key)
        if value is not None:
            setattr(settings, key, value)
    settings.seed, settings.out, settings.reduced = args.seed, args.out, args.reduced
    settings.artifacts = tuple(Path(p.strip()) for p in args.artifacts.split(",") if p.strip())
    return settings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from export.to_onnx import drop_preprocess_advice

    logging.getLogger().addFilter(drop_preprocess_advice)
    if args.render:  # the derived parts (targets table, markdown, plot) again from the measured points
        report = json.loads(args.render.read_text())
        write_report(report, args.render.parent, args.render.stem)
        print(f"-> {args.render.with_suffix('.md')}, {args.render.with_suffix('.png')}")
        return 0
    settings = settings_from_args(args)
    for path in settings.artifacts:
        if not (path / "manifest.json").is_file():
            print(f"error: {path}: not an artifact folder (no manifest.json)", file=sys.stderr)
            return 2
    print(f"bench: datasets {list(settings.datasets)}, densities {list(settings.densities)}, "
          f"backends {list(settings.backends)}, tables {list(settings.tables)}, batches {list(settings.batches)}, artifacts "
          f"{[str(p) for p in settings.artifacts]}, {settings.threads} threads -> {settings.out}/{settings.name}.*",
          flush=True)
    report = run_bench(settings)
    errors = [p for p in report["points"] if "error" in p] + report["case_errors"]
    print(f"-> {settings.out}/{settings.name}.json, .md, .png ({len(report['points'])} points, "
          f"{len(errors)} errors, {report['seconds'] / 60:.1f} min)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
