"""The Gowalla front: is the chosen DSL variant worth serving against small-dense widths and quantisation?

    make pareto-gowalla                      # train (resumable), export, compare -> results/pareto-gowalla.*
    make pareto-gowalla-report               # no training: export what has finished, compare, write
    python -m benchmarks.pareto_gowalla --runs /work/gowalla/src/runs/front --no-train --no-latency
    python -m benchmarks.pareto_gowalla --no-train --no-1m --results /tmp/front   # Gowalla's catalogue only

Four steps, each skipping what is already done:

1. train every run of :data:`RUNS` that has no ``metrics.json`` (``python -m train ... --resume`` into
   ``--runs/<name>``; ``--no-train`` skips this step);
2. export every finished run as the artifacts of :func:`export_specs` (``python -m export``): the DSL
   runs through the exact sparse index, the small-dense ones through a flat index, both with fp32 and
   fp16 values, and the small-dense ones also through FAISS ``sq8`` and ``pq`` (fp32 values);
3. tile every artifact to ``--items`` items (:func:`tile_artifact`, default 1M; ``--no-1m`` skips it);
4. put all of them through ``sparserec compare`` in-process (``--no-latency``: bytes and quality only)
   and write ``pareto-gowalla.json``, ``.md`` and ``.png`` to ``--results`` (default results/), with a
   verdict per target (:func:`verdicts`): met, missed or pending.

Timing refuses to start on a busy machine (1-minute load above half the CPUs) unless
``--allow-noisy``, which the files then state. Artifacts go to ``--artifacts``
(default artifacts/pareto-gowalla, git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from common.provenance import (
    busy_reason,
    cpu_count,
    load_average,
    provenance,
    provenance_line,
)

log = logging.getLogger("benchmarks.pareto_gowalla")

REPO_ROOT = Path(__file__).resolve().parents[1]
TILED_ITEMS = 1_000_000
PERTURBATION = 1e-3  # relative scale of the seeded perturbation of tiled copies (tile_artifact)

MF_FLAGS = ("--data gowalla --model mf --epochs 150 --seed 2024 --run.threads=1 --optim.lr=1e-3 --model.init_std=0.01 "
            "--optim.weight_decay=1e-4 --optim.sampling=interaction --run.eval_every=5 --run.patience=3 "
            "--run.min_epochs=10").split()
LIGHTGCN_FLAGS = ("--data gowalla --model lightgcn --epochs 200 --seed 2024 --run.threads=1 --optim.lr=1e-3 "
                  "--model.init_std=0.1 --optim.weight_decay=1e-4 --run.eval_every=5 --run.patience=4 "
                  "--run.min_epochs=20").split()
MODEL_FLAGS = {"mf": MF_FLAGS, "lightgcn": LIGHTGCN_FLAGS}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the front: ``python -m train FLAGS --out <runs>/<name> --resume``."""

    name: str
    model: str
    density: float
    kind: str  # "dsl" (the chosen DSL variant) or "small-dense"
    flags: tuple[str, ...]
    width: int | None = None  # the small-dense table width, ``round(density x 64)``; None for DSL

    def train_command(self, runs: Path) -> list[str]:
        return [sys.executable, "-m", "train", *self.flags, "--out", str(runs / self.name), "--log-level=info",
                "--no-progress", "--resume"]


# the density each small-dense width trains at (its table keeps round(density x 64) dims)
WIDTH_DENSITY = {2: 0.03125, 3: 0.05, 4: 0.0625, 5: 0.078125, 6: 0.1, 8: 0.125, 10: 0.15625, 13: 0.2}


def _small_dense(prefix: str, model: str, width: int) -> Run:
    density = WIDTH_DENSITY[width]
    return Run(f"{prefix}-sd-d{width}", model, density, "small-dense",
               (*MODEL_FLAGS[model], f"--sparsity.density={density:g}", "--sparsity.updater=small-dense"), width)


def _dsl(name: str, model: str, density: float, *extra: str) -> Run:
    return Run(name, model, density, "dsl", (*MODEL_FLAGS[model], f"--sparsity.density={density:g}",
                                             "--sparsity.updater=dsl", "--sparsity.mask_init=nmf", *extra))


# The one list of runs (the order they train in): MF's chosen DSL variant is dsl-nmf, LightGCN's the
# sparse-serving form of it (mask_output); small-dense across widths traces the curve both must beat.
RUNS: tuple[Run, ...] = (
    _small_dense("mf", "mf", 3), _dsl("mf-dsl-nmf-0.05", "mf", 0.05), _small_dense("mf", "mf", 4),
    _small_dense("mf", "mf", 5), _small_dense("mf", "mf", 6), _dsl("mf-dsl-nmf-0.1", "mf", 0.1),
    _small_dense("mf", "mf", 8), _small_dense("mf", "mf", 13), _small_dense("mf", "mf", 2),
    _small_dense("mf", "mf", 10),
    _small_dense("lgn", "lightgcn", 3), _dsl("lgn-dsl-nmf-mo-0.05", "lightgcn", 0.05, "--model.mask_output=true"),
    _small_dense("lgn", "lightgcn", 6), _dsl("lgn-dsl-nmf-mo-0.1", "lightgcn", 0.1, "--model.mask_output=true"),
    _small_dense("lgn", "lightgcn", 4), _small_dense("lgn", "lightgcn", 8), _small_dense("lgn", "lightgcn", 13),
)
TARGET_DENSITIES = (0.05, 0.1)


def export_specs(run: Run) -> list[dict[str, str]]:
    """The artifacts one run is exported as: ``[{"name", "index", "values"}]``."""
    if run.kind == "dsl":
        return [{"name": f"{run.name}.sparse-{v}", "index": "sparse", "values": v} for v in ("fp32", "fp16")]
    return ([{"name": f"{run.name}.flat-{v}", "index": "flat", "values": v} for v in ("fp32", "fp16")]
            + [{"name": f"{run.name}.{k}-fp32", "index": k, "values": "fp32"} for k in ("sq8", "pq")])


def finished(run_dir: Path) -> bool:
    """A run is finished when its folder has ``metrics.json`` (the trainer writes it last)."""
    return (run_dir / "metrics.json").is_file()


def _subprocess(command: list[str], log_path: Path | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if log_path is None:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        output = done.stdout + done.stderr
    else:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as handle:
            done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
        output = log_path.read_text()[-3000:]
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}):\n{output[-3000:]}")


def train_missing(runs_dir: Path, runs: Sequence[Run]) -> None:
    """Train (resumably) every run without ``metrics.json``, one at a time, logs beside the run folder."""
    for run in runs:
        if finished(runs_dir / run.name):
            continue
        log.info("training %s", run.name)
        _subprocess(run.train_command(runs_dir), runs_dir / f"{run.name}.log")


def export_finished(runs_dir: Path, artifacts_dir: Path, runs: Sequence[Run]) -> dict[str, list[Path]]:
    """Export each finished run as its :func:`export_specs` artifacts (an existing one is kept)."""
    out: dict[str, list[Path]] = {}
    for run in runs:
        if not finished(runs_dir / run.name):
            continue
        for spec in export_specs(run):
            path = artifacts_dir / spec["name"]
            if not (path / "manifest.json").is_file():
                log.info("exporting %s", spec["name"])
                _subprocess([sys.executable, "-m", "export", str(runs_dir / run.name), "--out", str(path), "--index",
                             spec["index"], "--values", spec["values"], "--no-memory", "--quiet", "--overwrite"])
            out.setdefault(run.name, []).append(path)
    return out


# ---------------------------------------------------------------------------- 1M items
def tiled_item_rows(n_items: int, n_tiled: int) -> np.ndarray:
    """Source row of every tiled item: item ``j`` of the tiled table is item ``j mod n_items``."""
    return np.arange(n_tiled, dtype=np.int64) % n_items


def tile_vectors(items: np.ndarray, n_tiled: int, seed: int) -> np.ndarray:
    """``float32 [n_tiled, dim]``: the items tiled (:func:`tiled_item_rows`); copies after the first are
    multiplied entry-wise by ``1 + PERTURBATION * z``, ``z ~ N(0, 1)`` clipped to [-3, 3] (seeded), so no
    two items tie exactly and every zero stays zero (the per-row length profile is kept)."""
    rows = tiled_item_rows(len(items), n_tiled)
    tiled = np.asarray(items, dtype=np.float32)[rows]
    copies = rows.size > len(items)
    if copies:
        rng = np.random.default_rng(seed)
        noise = np.clip(rng.standard_normal((n_tiled - len(items), items.shape[1])), -3, 3).astype(np.float32)
        tiled[len(items):] *= 1 + PERTURBATION * noise
    return tiled


def tile_artifact(source: Path, out: Path, n_tiled: int, seed: int) -> Path:
    """An MF artifact with the source's served vectors and ``n_tiled`` items tiled from its own.

    Users: the source's served user vectors (LightGCN: propagated, masked where mask_output), as an MF
    user table, its zeros the mask. Items: the served item vectors tiled (:func:`tile_vectors`), the
    mask the tiled structure of the served item table (so every tiled row has its source row's length).
    Train interactions: the source's, on the first copy. Values, index kind and sparse layout: the
    source's (FAISS parameters the defaults at ``n_tiled`` items). No held-out split: quality at
    ``n_tiled`` items is not defined.
    """
    import torch

    from export.artifact import load_artifact
    from export.exporter import ExportOptions, export_model
    from train.models import MF

    art = load_artifact(source)
    users = np.array(art.user_vectors(), dtype=np.float32)  # a writable copy
    items = np.asarray(art.item_vectors(), dtype=np.float32)
    structure = art.served_item_table()
    item_mask = None
    if structure is not None:
        source_mask = np.zeros(items.shape, dtype=bool)
        coo = structure.tocoo()
        source_mask[coo.row, coo.col] = True
        item_mask = source_mask[tiled_item_rows(art.n_items, n_tiled)]
    tiled = tile_vectors(items, n_tiled, seed)
    model = MF(art.n_users, n_tiled, art.dim)
    with torch.no_grad():
        model.user_embedding.weight.copy_(torch.from_numpy(users))
        model.item_embedding.weight.copy_(torch.from_numpy(tiled))
        if item_mask is not None:
            model.user_embedding.mask.copy_(torch.from_numpy(users != 0))
            model.item_embedding.mask.copy_(torch.from_numpy(item_mask))
        model.user_embedding.apply_mask_()
        model.item_embedding.apply_mask_()
    seen = art.seen().tocsr()
    seen.resize((art.n_users, n_tiled))
    item_ids = art.item_ids
    tiled_ids = [item_ids[j] if j < art.n_items else f"{item_ids[j % art.n_items]}#{j // art.n_items}"
                 for j in range(n_tiled)]
    index = art.manifest["index"]
    params = {"layout": index["layout"]} if index["kind"] == "sparse" else {}
    options = ExportOptions(values=art.value_dtype, index=index["kind"], index_params=params, measure_memory=False,
                            sample_users=min(200, art.n_users), seed=seed, overwrite=True, progress=False)
    training = {"tiled_from": {"artifact": str(source), "source_sha256": art.manifest.get("sha256"),
                               "source_model": art.model_kind, "n_items_source": art.n_items, "n_items": n_tiled,
                               "rule": "item j = source item j mod n_items_source; copies after the first times "
                                       f"(1 + {PERTURBATION:g} z), z ~ N(0,1) clipped to [-3, 3]", "seed": seed,
                               "source_quality": _source_quality(art)}}
    return export_model(model, out, user_ids=art.user_ids, item_ids=tiled_ids, seen=seen,
                        popularity=np.resize(art.popularity(), n_tiled), training=training, options=options)


def _source_quality(art: Any) -> float | None:
    exact = (art.manifest.get("quality") or {}).get("exact") or {}
    return exact.get("ndcg@20")


def tile_all(artifacts: Sequence[Path], out_dir: Path, n_tiled: int, seed: int) -> list[Path]:
    """:func:`tile_artifact` for each artifact into ``out_dir/<name>`` (an existing one is kept)."""
    out = []
    for path in artifacts:
        target = out_dir / path.name
        if not (target / "manifest.json").is_file():
            log.info("tiling %s to %d items", path.name, n_tiled)
            tile_artifact(path, target, n_tiled, seed)
        out.append(target)
    return out


# ---------------------------------------------------------------------------- rows and verdicts
def measure(paths: Sequence[Path], out: Path, latency: bool, allow_noisy: bool, seed: int) -> dict[str, Any]:
    """``sparserec compare`` over ``paths`` in-process (batch 1, one thread when timing)."""
    from sparserec.compare import CompareOptions, compare

    options = CompareOptions(artifacts=tuple(paths), out=out, latency=latency, batch_sizes=(1,), threads=(1,),
                             allow_noisy=allow_noisy, seed=seed, progress=sys.stderr.isatty())
    return compare(options)


def test_quality(paths: Sequence[Path], runs_dir: Path, runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """Test NDCG@20 / Recall@20 of each artifact over every test user (the export's own figure samples
    users): its served vectors ranked exactly against its run's own split, train and valid positives
    masked (``sparserec.compare_rows.DataQuality``). Artifacts of one run with one value dtype serve the
    same vectors, so they share one computation."""
    from export.artifact import load_artifact
    from sparserec.compare_rows import DataQuality
    from train.data import Dataset

    class RunData(DataQuality):
        def __init__(self, folder: Path) -> None:
            super().__init__(str(folder))
            self.loaded = Dataset.load(folder)

        def dataset(self, training_data: dict[str, Any] | None) -> Any:
            return self.loaded

    out: dict[str, dict[str, Any]] = {}
    done: dict[tuple[str, str], dict[str, Any]] = {}
    data: dict[str, RunData] = {}
    for path in paths:
        run = _run_of(path.name, runs)
        art = load_artifact(path)
        key = (run.name, art.value_dtype)
        if key not in done:
            log.info("test quality of %s over every user", path.name)
            if run.name not in data:
                data = {run.name: RunData(runs_dir / run.name / "data")}  # one dataset held at a time
            done[key] = data[run.name](art, {"training_data": None})
        out[path.name] = done[key]
    return out


def _run_of(name: str, runs: Sequence[Run]) -> Run:
    """The run an artifact ``<run name>.<index>-<values>`` was exported from."""
    return next(run for run in runs if name.startswith(run.name + "."))


def points(report: dict[str, Any], runs: Sequence[Run], quality: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per compare row: run, model, kind, density, index, values, NDCG@20 and Recall@20
    (``quality[artifact]``; the tiled rows take their source's), served bytes, batch-1 p50 (``None``
    where untimed)."""
    out = []
    for row in report["rows"]:
        name = Path(row["path"]).name
        run = _run_of(name, runs)
        p50 = next((e["p50_ms"] for e in row.get("latency", []) if e["batch_size"] == 1), None)
        out.append({"artifact": name, "run": run.name, "model": run.model, "kind": run.kind, "density": run.density,
                    "width": run.width, "index": row["index"], "index_layout": row.get("index_layout"),
                    "values": row["value_dtype"], "nnz": row["nnz"], "n_items": row["n_items"],
                    "ndcg": quality[name]["ndcg@20"], "recall": quality[name]["recall@20"],
                    "quality_source": quality[name]["source"],
                    "index_recall_vs_flat": row["quality"].get("index_recall@20_vs_flat"),
                    "served_bytes": row["served_bytes"]["served"]["total"],
                    "served_mapped": row["served_bytes"]["served"]["mapped"],
                    "served_read": row["served_bytes"]["served"]["read"], "p50_ms": p50})
    return out


def mark_fronts(pts: list[dict[str, Any]]) -> None:
    """``front_bytes`` / ``front_latency`` on every point, the front taken within its model."""
    from sparserec.compare_front import pareto_front

    for model in {p["model"] for p in pts}:
        mine = [p for p in pts if p["model"] == model]
        for cost in ("served_bytes", "p50_ms"):
            flags = pareto_front([(p["ndcg"], p[cost]) for p in mine])
            for p, on in zip(mine, flags):
                p["front_" + ("bytes" if cost == "served_bytes" else "latency")] = on if p[cost] is not None else None


def verdict(target: Run, runs: Sequence[Run], pts: list[dict[str, Any]], done: set[str], cost: str) -> dict[str, Any]:
    """Is ``target`` (a DSL run) on the front of NDCG@20 against ``cost`` among its model's small-dense widths?

    Met: one of its artifacts has no exact small-dense artifact (flat index, any value dtype) of a
    finished width with at least its NDCG@20 and a strictly lower cost, and every width has finished.
    Missed: every one of its artifacts is beaten so by a finished width. Pending otherwise: the DSL
    run or a width still trains, or the cost was not measured. Nothing is interpolated. Quantised
    small-dense artifacts (sq8, pq) are reported beside it (their NDCG@20 is their exact model's).
    """
    widths = [r for r in runs if r.model == target.model and r.kind == "small-dense"]
    pending = sorted(r.width for r in widths if r.name not in done)
    base = {"model": target.model, "density": target.density, "run": target.name, "cost": cost,
            "widths_finished": sorted(r.width for r in widths if r.name in done), "widths_pending": pending}
    mine = [p for p in pts if p["run"] == target.name and p["ndcg"] is not None and p[cost] is not None]
    if target.name not in done:
        return {**base, "status": "pending", "why": f"{target.name} is still training"}
    if not mine:
        return {**base, "status": "pending", "why": f"{cost} not measured for {target.name}"}
    sd_names = {r.name for r in widths}
    rivals = [p for p in pts if p["run"] in sd_names and p["ndcg"] is not None]
    if any(p[cost] is None for p in rivals):
        return {**base, "status": "pending", "why": f"{cost} not measured for every small-dense artifact"}

    def beaten_by(point: dict[str, Any], kinds: tuple[str, ...]) -> list[dict[str, Any]]:
        return sorted((p for p in rivals if p["index"] in kinds and p["ndcg"] >= point["ndcg"]
                       and p[cost] < point[cost]), key=lambda p: p[cost])

    per_artifact = [{"artifact": p["artifact"], "ndcg": p["ndcg"], "cost": p[cost],
                     "beaten_by": [(b["artifact"], b["ndcg"], b[cost]) for b in beaten_by(p, ("flat",))],
                     "beaten_by_quantised": [(b["artifact"], b["ndcg"], b[cost]) for b in beaten_by(p, ("sq8", "pq"))]}
                    for p in mine]
    unbeaten = [a for a in per_artifact if not a["beaten_by"]]
    status = "missed" if not unbeaten else "pending" if pending else "met"
    return {**base, "status": status, "artifacts": per_artifact,
            "why": "" if status != "pending" else f"not beaten by the finished widths; pending widths {pending}"}


def verdicts(runs: Sequence[Run], pts: list[dict[str, Any]], pts_tiled: list[dict[str, Any]], done: set[str]
             ) -> list[dict[str, Any]]:
    """Each target: each DSL run at each target density, on served bytes (Gowalla) and batch-1 p50 (tiled)."""
    out = []
    for target in (r for r in runs if r.kind == "dsl" and r.density in TARGET_DENSITIES):
        out.append({**verdict(target, runs, pts, done, "served_bytes"), "catalogue": "gowalla"})
        out.append({**verdict(target, runs, pts_tiled, done, "p50_ms"), "catalogue": "tiled"})
    return out


# ---------------------------------------------------------------------------- report
def human_bytes(n: float | None) -> str:
    from sparserec.compare_report import human_bytes as compare_human_bytes

    return "-" if n is None else compare_human_bytes(n)


def _cost_text(cost: str, value: float | None) -> str:
    if value is None:
        return "-"
    return human_bytes(value) if cost == "served_bytes" else f"{value:.3f} ms"


def verdict_line(v: dict[str, Any]) -> str:
    """One Markdown bullet: the target, its status, and the figures it rests on."""
    what = "served bytes" if v["cost"] == "served_bytes" else "batch-1 p50"
    where = "Gowalla's catalogue" if v["catalogue"] == "gowalla" else "the tiled catalogue"
    head = f"- **{v['model']} {v['density']:g}** ({v['run']}), NDCG@20 against {what} at {where}: **{v['status']}**"
    parts = []
    for a in v.get("artifacts", []):
        text = f"{a['artifact']} {a['ndcg']:.4f} at {_cost_text(v['cost'], a['cost'])}"
        if a["beaten_by"]:
            name, ndcg, cost = a["beaten_by"][0]
            text += f" is beaten by {name} ({ndcg:.4f} at {_cost_text(v['cost'], cost)})"
        else:
            text += " is beaten by no small-dense width"
        if a["beaten_by_quantised"]:
            name, ndcg, cost = a["beaten_by_quantised"][0]
            text += f"; quantised: {name} ({ndcg:.4f}, exact model, at {_cost_text(v['cost'], cost)})"
        parts.append(text)
    tail = f" Widths measured: {v['widths_finished'] or 'none'}; pending: {v['widths_pending'] or 'none'}."
    return head + (": " + "; ".join(parts) + "." if parts else ".") + (f" {v['why']}." if v["why"] else "") + tail


def _table(pts: list[dict[str, Any]], tiled: bool) -> list[str]:
    header = ["artifact", "kind", "width / density", "index", "values", "non-zeros",
              "served (mapped + read)", "NDCG@20" + (" (source, 41k items)" if tiled else ""),
              *([] if tiled else ["Recall@20"]), "index recall@20 vs flat", "B=1 p50 ms", "front"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in sorted(pts, key=lambda p: (p["kind"], p["served_bytes"])):
        index = p["index"] + (f" {p['index_layout']}" if p.get("index_layout") else "")
        marks = [m for m in ("bytes", "latency") if p.get(f"front_{m}")]
        cells = [p["artifact"], p["kind"], f"d{p['width']}" if p["width"] else f"{p['density']:g}", index, p["values"],
                 f"{p['nnz']:,}", f"{human_bytes(p['served_bytes'])} ({human_bytes(p['served_mapped'])} + "
                 f"{human_bytes(p['served_read'])})", "-" if p["ndcg"] is None else f"{p['ndcg']:.4f}"]
        if not tiled:
            cells.append("-" if p["recall"] is None else f"{p['recall']:.4f}")
        recall = p["index_recall_vs_flat"]
        cells += ["-" if recall is None else f"{recall:.4f}",
                  "-" if p["p50_ms"] is None else f"{p['p50_ms']:.3f}", ", ".join(marks) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The results file: how it was made, what is pending, the verdicts, one table per model and catalogue."""
    timing, status = result["timing"], result["runs"]
    lines = ["# The Gowalla front: NDCG@20 against served bytes and batch-1 latency", "",
             provenance_line(result["provenance"]),
             f"Load average (1 min): {timing['load_avg_1m_start']} at start, {timing['load_avg_1m_end']} at end, "
             f"{timing['cpus']} CPUs.", ""]
    if not result["settings"]["latency"]:
        lines += ["**Latency pending**: this pass measured bytes and quality only (`--no-latency`); batch-1 latency "
                  "needs a quiet machine.", ""]
    elif timing["noisy"]:
        lines += [f"**NOISY**: timed on a busy machine ({timing['why_noisy']}), allowed by --allow-noisy; the "
                  "latencies below are not figures to quote.", ""]
    training = [r["name"] for r in status if not r["finished"]]
    lines += [f"Runs finished: {sum(r['finished'] for r in status)} of {len(status)}"
              + (f"; still training or not started: {', '.join(training)}." if training else "."), "",
              "## Verdicts", "", "Target: the chosen DSL variant is on the front of NDCG@20 against served bytes at "
              "0.05 and 0.1 for LightGCN and MF (no small-dense width reaches its NDCG@20 with fewer served bytes), "
              "and the same for batch-1 latency at the tiled catalogue. Rivals: the small-dense widths through an "
              "exact flat index, fp32 or fp16; measured widths only, nothing interpolated.", ""]
    lines += [verdict_line(v) for v in result["verdicts"]]
    n_tiled = result["settings"]["tiled_items"]
    for model in ("mf", "lightgcn"):
        mine = [p for p in result["points"] if p["model"] == model]
        if mine:
            lines += ["", f"## {model} at Gowalla's catalogue ({mine[0]['n_items']:,} items)", "", *_table(mine, False)]
        tiled = [p for p in result["points_tiled"] if p["model"] == model]
        if tiled:
            lines += ["", f"## {model} at {n_tiled:,} items (tiled)", "", *_table(tiled, True)]
    lines += ["", "## How it was made", "",
              "Every run trained with `python -m train` (the flags in `benchmarks/pareto_gowalla.py`, `RUNS`) and "
              "exported with `python -m export`. NDCG@20 and Recall@20: test, over every test user, the artifact's "
              "served vectors ranked exactly over all items against its run's own split, train and valid positives "
              "masked (`sparserec.compare_rows.DataQuality`; the export's own figure samples 1,000 users). "
              "DSL runs: the exact sparse index (postings for unstructured masks); small-dense: flat, and sq8 / pq "
              "(approximate: their NDCG@20 is the exact model's, their recall@20 against exact search is the "
              "`index recall@20 vs flat` column, over 1,000 sampled users' unfiltered top 20). Served bytes: "
              "`sparserec compare` (docs/compare.md): item index + user vectors + id maps a worker holds. "
              "Front: within a model, no other artifact has at least its NDCG@20 at no more cost."]
    if n_tiled is None:
        return "\n".join([*lines, "", "The tiled catalogue was not built (`--no-1m`): its verdicts are pending."]) + "\n"
    lines += ["", f"Tiled catalogue ({n_tiled:,} items): each Gowalla artifact becomes an MF artifact whose user table is "
              "the source's served user vectors (LightGCN: propagated, masked for mask_output) and whose item j is "
              f"the source's served item j mod {result['settings']['source_items'] or 'n_items'}; copies after the "
              f"first are multiplied entry-wise by (1 + {PERTURBATION:g} z), z ~ N(0, 1) clipped to [-3, 3], seed "
              f"{result['settings']['seed']}, so no two items tie exactly. Zeros stay zeros: every tiled row keeps "
              "its source row's stored length, so the per-row length profile and the values' distribution are the "
              "trained ones. Same value dtype, index kind and sparse layout as the source (FAISS parameters: the "
              "defaults at the tiled size); the train interactions excluded at serving are the source's, on the "
              "first copy. **Quality is not defined at the tiled size** (there is no held-out split for the copies): "
              "its NDCG@20 column is the source artifact's at Gowalla's catalogue, the quality axis of its front."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any]) -> bytes:
    """PNG: per model (rows), NDCG@20 against served bytes and batch-1 p50, at Gowalla's and the tiled catalogue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("points", "served_bytes", "served bytes, MiB", "Gowalla"), ("points", "p50_ms", "B=1 p50 ms", "Gowalla"),
              ("points_tiled", "served_bytes", "served bytes, MiB", "tiled"),
              ("points_tiled", "p50_ms", "B=1 p50 ms", "tiled")]
    fig, axes = plt.subplots(2, 4, figsize=(20, 9), dpi=100, squeeze=False)
    style = {"dsl": ("tab:red", "o"), "small-dense": ("tab:blue", "s")}
    for row, model in enumerate(("mf", "lightgcn")):
        for col, (key, cost, xlabel, where) in enumerate(panels):
            ax = axes[row][col]
            pts = [p for p in result[key] if p["model"] == model and p["ndcg"] is not None and p[cost] is not None]
            scale = 2**20 if cost == "served_bytes" else 1
            ax.set_title(f"{model}, {where}: NDCG@20 vs {xlabel.split(',')[0]}", fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test NDCG@20" + (" (source, Gowalla)" if key == "points_tiled" else ""))
            if not pts:
                ax.text(0.5, 0.5, "pending", ha="center", va="center", transform=ax.transAxes, fontsize=14,
                        color="gray")
                continue
            for p in pts:
                color, marker = style[p["kind"]]
                hollow = p["index"] in ("sq8", "pq")
                ax.scatter([p[cost] / scale], [p["ndcg"]], marker="^" if hollow else marker,
                           facecolors="none" if hollow else color, edgecolors=color, zorder=3)
                label = (f"d{p['width']}" if p["width"] else f"dsl {p['density']:g}") + f" {p['index']} {p['values']}"
                ax.annotate(label, (p[cost] / scale, p["ndcg"]), textcoords="offset points", xytext=(3, 3), fontsize=6)
            front_key = "front_bytes" if cost == "served_bytes" else "front_latency"
            front = sorted((p[cost] / scale, p["ndcg"]) for p in pts if p.get(front_key))
            if len(front) > 1:
                ax.step([c for c, _ in front], [q for _, q in front], where="post", color="black", alpha=0.4)
            ax.grid(alpha=0.3)
    fig.suptitle("Gowalla: red = DSL (sparse index), blue = small-dense (squares flat, triangles sq8/pq); "
                 "black = the front" + ("" if result["settings"]["latency"] else "; latency pending"), fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write(result: dict[str, Any], results_dir: Path) -> list[Path]:
    """``pareto-gowalla.{json,md,png}`` into ``results_dir`` (each atomically)."""
    paths = [results_dir / f"pareto-gowalla.{ext}" for ext in ("json", "md", "png")]
    atomic_write_json(paths[0], result)
    atomic_write_text(paths[1], markdown(result))
    atomic_write_bytes(paths[2], plot(result))
    return paths


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pareto_gowalla", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs/pareto-gowalla"), help="run folders (<runs>/<name>)")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/pareto-gowalla"),
                        help="artifact folders (<artifacts>/<name>, tiled ones under <artifacts>/tiled-<items>)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="where pareto-gowalla.* go")
    parser.add_argument("--no-train", dest="train", action="store_false", help="train nothing: use what has finished")
    parser.add_argument("--no-latency", dest="latency", action="store_false",
                        help="bytes and quality only: nothing timed (no load check); the files say latency is pending")
    parser.add_argument("--no-1m", dest="tiled", action="store_false", help="skip the tiled catalogue")
    parser.add_argument("--items", type=int, default=TILED_ITEMS, help=f"tiled catalogue size (default {TILED_ITEMS:,})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiling perturbation and the timed users")
    parser.add_argument("--allow-noisy", action="store_true",
                        help="time even on a busy machine (load above half the CPUs); the files say so")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(1)
    if args.latency and not args.allow_noisy and busy_reason(load_average(), cpu_count()):
        print(f"error: refusing to time on a busy machine: {busy_reason(load_average(), cpu_count())}. Pass "
              "--no-latency (bytes and quality only) or --allow-noisy (the files say noisy).", file=sys.stderr)
        return 2
    source = provenance(argv)
    if args.train:
        train_missing(args.runs, RUNS)
    exported = export_finished(args.runs, args.artifacts, RUNS)
    done = {run.name for run in RUNS if finished(args.runs / run.name)}
    paths = [p for run in RUNS for p in exported.get(run.name, [])]
    if not paths:
        print(f"error: no finished run under {args.runs} (names: {', '.join(r.name for r in RUNS)})", file=sys.stderr)
        return 2
    if args.latency and not args.allow_noisy and busy_reason(load_average(), cpu_count()):
        print(f"error: the machine became busy before timing: {busy_reason(load_average(), cpu_count())}",
              file=sys.stderr)
        return 2
    report = measure(paths, args.artifacts / "compare", args.latency, args.allow_noisy, args.seed)
    quality = test_quality(paths, args.runs, RUNS)
    pts = points(report, RUNS, quality)
    tiled_report, pts_tiled = None, []
    if args.tiled:
        tiled = tile_all(paths, args.artifacts / f"tiled-{args.items}", args.items, args.seed)
        tiled_report = measure(tiled, args.artifacts / "compare-tiled", args.latency, args.allow_noisy, args.seed)
        from_source = {name: {**q, "source": f"{name} at Gowalla's catalogue (not defined at {args.items:,} items)"}
                       for name, q in quality.items()}
        pts_tiled = points(tiled_report, RUNS, from_source)
    mark_fronts(pts)
    mark_fronts(pts_tiled)
    reports = [r for r in (report, tiled_report) if r is not None]
    noisy = [r["timing"].get("busy_at_start") or r["timing"].get("busy_at_end") for r in reports
             if r["timing"]["noisy"]]
    result = {
        "provenance": source,
        "settings": {"runs": str(args.runs), "artifacts": str(args.artifacts), "latency": args.latency,
                     "tiled": args.tiled, "tiled_items": args.items if args.tiled else None, "seed": args.seed,
                     "source_items": pts[0]["n_items"], "allow_noisy": args.allow_noisy,
                     "compare": "sparserec.compare.compare, batch size 1, 1 thread, k = 10"},
        "timing": {"cpus": cpu_count(), "load_avg_1m_start": source["machine"]["load_avg_1m"],
                   "load_avg_1m_end": load_average(), "noisy": bool(noisy), "why_noisy": "; ".join(noisy)},
        "runs": [{"name": r.name, "model": r.model, "kind": r.kind, "density": r.density, "width": r.width,
                  "finished": r.name in done, "command": " ".join(["python", *r.train_command(args.runs)[1:]])}
                 for r in RUNS],
        "verdicts": verdicts(RUNS, pts, pts_tiled, done),
        "points": pts, "points_tiled": pts_tiled,
        "compare_reports": {"gowalla": report, "tiled": tiled_report},
    }
    for path in write(result, args.results):
        print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
