"""The Gowalla front: is the chosen DSL variant worth serving against small-dense widths and quantisation?

    make pareto-gowalla                      # train (resumable), export, compare -> results/pareto-gowalla.*
    make pareto-gowalla-report               # no training: export what has finished, compare, write
    python -m benchmarks.pareto_gowalla --runs /work/gowalla/src/runs/front --no-train --no-latency
    python -m benchmarks.pareto_gowalla --no-train --no-1m --results /tmp/front   # Gowalla's catalogue only

The steps, each skipping what is already done:

1. train every run of :data:`RUNS` that has no ``metrics.json`` (``python -m train ... --resume`` into
   ``--runs/<name>``; ``--no-train`` skips this step);
2. export every finished run as the artifacts of :func:`export_specs` (``python -m export``): the DSL
   runs through the exact sparse index, the small-dense ones through a flat index, both with fp32 and
   fp16 values, and the small-dense ones also through FAISS ``sq8`` and ``pq`` (fp32 values);
3. test NDCG@20 / Recall@20 of each over every test user (:func:`all_user_quality`);
4. ``sparserec compare`` over all of them in-process (``--no-latency``: bytes and quality only);
5. every artifact tiled to ``--items`` items and compared too (``benchmarks.pareto_tiling``, default
   1M; ``--no-1m`` skips it);
6. ``pareto-gowalla.json``, ``.md`` and ``.png`` written to ``--results`` (default results/), with a
   verdict per target (``benchmarks.pareto_report.verdicts``): met, missed or pending.

Timing refuses to start on a busy machine (1-minute load above half the CPUs) unless
``--allow-noisy``, which the files then state. Artifacts go to ``--artifacts``
(default artifacts/pareto-gowalla, git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.io import atomic_write_json, sha256_file
from common.paths import REPO_ROOT
from common.provenance import busy_reason, cpu_count, load_average

from . import harness
from .pareto_report import mark_fronts, verdicts, write
from .pareto_tiling import TILED_ITEMS, tile_all

log = logging.getLogger("benchmarks.pareto_gowalla")

QUALITY_METHOD = "test, every user; exact indexes over the served vectors, approximate ones through the index"

MF_FLAGS = (
    "--data gowalla --model mf --epochs 150 --seed 2024 --run.threads=1 --optim.lr=1e-3 --model.init_std=0.01 "
    "--optim.weight_decay=1e-4 --optim.sampling=interaction --run.eval_every=5 --run.patience=3 "
    "--run.min_epochs=10"
).split()
LIGHTGCN_FLAGS = (
    "--data gowalla --model lightgcn --epochs 200 --seed 2024 --run.threads=1 --optim.lr=1e-3 "
    "--model.init_std=0.1 --optim.weight_decay=1e-4 --run.eval_every=5 --run.patience=4 "
    "--run.min_epochs=20"
).split()
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
        return [
            sys.executable,
            "-m",
            "train",
            *self.flags,
            "--out",
            str(runs / self.name),
            "--log-level=info",
            "--no-progress",
            "--resume",
        ]


# the density each small-dense width trains at (its table keeps round(density x 64) dims)
WIDTH_DENSITY = {2: 0.03125, 3: 0.05, 4: 0.0625, 5: 0.078125, 6: 0.1, 8: 0.125, 10: 0.15625, 13: 0.2}


def _small_dense(prefix: str, model: str, width: int) -> Run:
    density = WIDTH_DENSITY[width]
    return Run(
        f"{prefix}-sd-d{width}",
        model,
        density,
        "small-dense",
        (*MODEL_FLAGS[model], f"--sparsity.density={density:g}", "--sparsity.updater=small-dense"),
        width,
    )


def _dsl(name: str, model: str, density: float, *extra: str) -> Run:
    return Run(
        name,
        model,
        density,
        "dsl",
        (
            *MODEL_FLAGS[model],
            f"--sparsity.density={density:g}",
            "--sparsity.updater=dsl",
            "--sparsity.mask_init=nmf",
            *extra,
        ),
    )


# The one list of runs (the order they train in): MF's chosen DSL variant is dsl-nmf, LightGCN's the
# sparse-serving form of it (mask_output); small-dense across widths traces the curve both must beat.
RUNS: tuple[Run, ...] = (
    _small_dense("mf", "mf", 3),
    _dsl("mf-dsl-nmf-0.05", "mf", 0.05),
    _small_dense("mf", "mf", 4),
    _small_dense("mf", "mf", 5),
    _small_dense("mf", "mf", 6),
    _dsl("mf-dsl-nmf-0.1", "mf", 0.1),
    _small_dense("mf", "mf", 8),
    _small_dense("mf", "mf", 13),
    _small_dense("mf", "mf", 2),
    _small_dense("mf", "mf", 10),
    _small_dense("lgn", "lightgcn", 3),
    _dsl("lgn-dsl-nmf-mo-0.05", "lightgcn", 0.05, "--model.mask_output=true"),
    _small_dense("lgn", "lightgcn", 6),
    _dsl("lgn-dsl-nmf-mo-0.1", "lightgcn", 0.1, "--model.mask_output=true"),
    _small_dense("lgn", "lightgcn", 4),
    _small_dense("lgn", "lightgcn", 8),
    _small_dense("lgn", "lightgcn", 13),
)


def export_specs(run: Run) -> list[dict[str, str]]:
    """The artifacts one run is exported as: ``[{"name", "index", "values"}]``."""
    if run.kind == "dsl":
        return [{"name": f"{run.name}.sparse-{v}", "index": "sparse", "values": v} for v in ("fp32", "fp16")]
    return [{"name": f"{run.name}.flat-{v}", "index": "flat", "values": v} for v in ("fp32", "fp16")] + [
        {"name": f"{run.name}.{k}-fp32", "index": k, "values": "fp32"} for k in ("sq8", "pq")
    ]


def finished(run_dir: Path) -> bool:
    """A run is finished when its folder has ``metrics.json`` (the trainer writes it last)."""
    return (run_dir / "metrics.json").is_file()


def _subprocess(command: list[str], log_path: Path | None = None) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
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
                _subprocess(
                    [
                        sys.executable,
                        "-m",
                        "export",
                        str(runs_dir / run.name),
                        "--out",
                        str(path),
                        "--index",
                        spec["index"],
                        "--values",
                        spec["values"],
                        "--no-memory",
                        "--quiet",
                        "--overwrite",
                    ]
                )
            out.setdefault(run.name, []).append(path)
    return out


# ---------------------------------------------------------------------------- rows and verdicts
def measure(paths: Sequence[Path], out: Path, latency: bool, allow_noisy: bool, seed: int) -> dict[str, Any]:
    """``sparserec compare`` over ``paths`` in-process (batch 1, one thread when timing)."""
    from sparserec.compare import CompareOptions, compare

    options = CompareOptions(
        artifacts=tuple(paths),
        out=out,
        latency=latency,
        batch_sizes=(1,),
        threads=(1,),
        allow_noisy=allow_noisy,
        seed=seed,
        progress=sys.stderr.isatty(),
    )
    return compare(options)


def all_user_quality(
    paths: Sequence[Path], runs_dir: Path, runs: Sequence[Run], cache: Path
) -> dict[str, dict[str, Any]]:
    """Test NDCG@20 / Recall@20 of each artifact over every test user (the export's own figure samples
    users): its served vectors ranked exactly against its run's own split, train and valid positives
    masked (``sparserec.compare_rows.DataQuality``). Artifacts of one run with one value dtype serve the
    same vectors through an exact index, so they share one computation. An approximate index (sq8, pq)
    ranks through itself, so its figure is what it serves. Each figure is kept in ``cache/<artifact>.json`` with
    the sha256 of the artifact's manifest, and reused while that matches."""
    from export.artifact import load_artifact
    from export.exporter.checks import _ranked_without
    from export.index import EXACT_KINDS
    from sparserec.compare_rows import QUALITY_K, DataQuality
    from train.data import Dataset

    class RunData(DataQuality):
        def __init__(self, folder: Path) -> None:
            super().__init__(str(folder))
            self.loaded = Dataset.load(folder)

        def dataset(self, training_data: dict[str, Any] | None) -> Any:
            return self.loaded

        def ranked(self, art: Any, users: np.ndarray, known_rows: Any) -> np.ndarray:
            if art.summary()["index"]["kind"] in (*EXACT_KINDS, "sparse"):
                return super().ranked(art, users, known_rows)
            # an approximate index: ranked by the index itself, deep enough to leave 20 once known items go
            depth = int(min(art.n_items, QUALITY_K + np.diff(known_rows.indptr).max(initial=0)))
            _, ids = art.load_index().search(np.ascontiguousarray(art.user_vectors()[users]), depth)
            return _ranked_without(ids, known_rows, QUALITY_K)

    out: dict[str, dict[str, Any]] = {}
    done: dict[tuple[str, str], dict[str, Any]] = {}
    data: dict[str, RunData] = {}
    for path in paths:
        run = _run_of(path.name, runs)
        manifest_sha = sha256_file(path / "manifest.json")
        cached = cache / f"{path.name}.json"
        if cached.is_file() and json.loads(cached.read_text()).get("key") == [manifest_sha, QUALITY_METHOD]:
            out[path.name] = json.loads(cached.read_text())["quality"]
            continue
        art = load_artifact(path)
        key = (run.name, art.value_dtype, art.summary()["index"]["kind"] in (*EXACT_KINDS, "sparse") or path.name)
        if key not in done:
            log.info("test quality of %s over every user", path.name)
            if run.name not in data:
                data = {run.name: RunData(runs_dir / run.name / "data")}  # one dataset held at a time
            done[key] = data[run.name](art, {"training_data": None})
        out[path.name] = done[key]
        atomic_write_json(cached, {"artifact": str(path), "key": [manifest_sha, QUALITY_METHOD], "quality": done[key]})
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
        out.append(
            {
                "artifact": name,
                "run": run.name,
                "model": run.model,
                "kind": run.kind,
                "density": run.density,
                "width": run.width,
                "index": row["index"],
                "index_layout": row.get("index_layout"),
                "values": row["value_dtype"],
                "nnz": row["nnz"],
                "n_items": row["n_items"],
                "ndcg": quality[name]["ndcg@20"],
                "recall": quality[name]["recall@20"],
                "quality_source": quality[name]["source"],
                "index_recall_vs_flat": row["quality"].get("index_recall@20_vs_flat"),
                "served_bytes": row["served_bytes"]["served"]["total"],
                "served_mapped": row["served_bytes"]["served"]["mapped"],
                "served_read": row["served_bytes"]["served"]["read"],
                "p50_ms": p50,
            }
        )
    return out


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pareto_gowalla",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=Path, default=Path("runs/pareto-gowalla"), help="run folders (<runs>/<name>)")
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts/pareto-gowalla"),
        help="artifact folders (<artifacts>/<name>, tiled ones under <artifacts>/tiled-<items>)",
    )
    parser.add_argument("--results", type=Path, default=Path("results"), help="where pareto-gowalla.* go")
    parser.add_argument("--no-train", dest="train", action="store_false", help="train nothing: use what has finished")
    parser.add_argument(
        "--no-latency",
        dest="latency",
        action="store_false",
        help="bytes and quality only: nothing timed (no load check); the files say latency is pending",
    )
    parser.add_argument("--no-1m", dest="tiled", action="store_false", help="skip the tiled catalogue")
    parser.add_argument(
        "--items", type=int, default=TILED_ITEMS, help=f"tiled catalogue size (default {TILED_ITEMS:,})"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiling perturbation and the timed users")
    harness.add_timing_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(1)
    busy = busy_reason(load_average(), cpu_count())
    # refused at once when nothing is to train first; after a training, the check before timing decides
    if args.latency and not args.allow_noisy and not args.train and busy:
        print(
            f"error: refusing to time on a busy machine: {busy}. Pass --no-latency (bytes and quality only) "
            "or --allow-noisy (the files say noisy).",
            file=sys.stderr,
        )
        return 2
    source = harness.start(argv)
    if args.train:
        train_missing(args.runs, RUNS)
    exported = export_finished(args.runs, args.artifacts, RUNS)
    done = {run.name for run in RUNS if finished(args.runs / run.name)}
    paths = [p for run in RUNS for p in exported.get(run.name, [])]
    if not paths:
        print(f"error: no finished run under {args.runs} (names: {', '.join(r.name for r in RUNS)})", file=sys.stderr)
        return 2
    quality = all_user_quality(paths, args.runs, RUNS, args.artifacts / "quality")
    tiled = tile_all(paths, args.artifacts / f"tiled-{args.items}", args.items, args.seed) if args.tiled else []
    # everything is built: the timings start now, on a quiet machine only
    if args.latency and not args.allow_noisy and busy_reason(load_average(), cpu_count()):
        print(
            f"error: refusing to time on a busy machine: {busy_reason(load_average(), cpu_count())}. Everything "
            "trained, exported and tiled is kept: rerun on a quiet machine, or pass --no-latency or --allow-noisy.",
            file=sys.stderr,
        )
        return 2
    report = measure(paths, args.artifacts / "compare", args.latency, args.allow_noisy, args.seed)
    pts = points(report, RUNS, quality)
    tiled_report, pts_tiled = None, []
    if tiled:
        tiled_report = measure(tiled, args.artifacts / "compare-tiled", args.latency, args.allow_noisy, args.seed)
        from_source = {
            name: {**q, "source": f"{name} at Gowalla's catalogue (not defined at {args.items:,} items)"}
            for name, q in quality.items()
        }
        pts_tiled = points(tiled_report, RUNS, from_source)
    mark_fronts(pts)
    mark_fronts(pts_tiled)
    reports = [r for r in (report, tiled_report) if r is not None]
    noisy = [
        r["timing"].get("busy_at_start") or r["timing"].get("busy_at_end") for r in reports if r["timing"]["noisy"]
    ]
    result = {
        "provenance": source,
        "settings": {
            "runs": str(args.runs),
            "artifacts": str(args.artifacts),
            "latency": args.latency,
            "tiled": args.tiled,
            "tiled_items": args.items if args.tiled else None,
            "seed": args.seed,
            "source_items": pts[0]["n_items"],
            "allow_noisy": args.allow_noisy,
            "compare": "sparserec.compare.compare, batch size 1, 1 thread, k = 10",
        },
        # the load when the measuring started and ended (the provenance has it at the pipeline's start)
        "timing": {
            "cpus": cpu_count(),
            "load_avg_1m_start": report["timing"]["load_avg_1m_start"],
            "load_avg_1m_end": reports[-1]["timing"]["load_avg_1m_end"],
            "noisy": bool(noisy),
            "why_noisy": "; ".join(noisy),
        },
        "runs": [
            {
                "name": r.name,
                "model": r.model,
                "kind": r.kind,
                "density": r.density,
                "width": r.width,
                "finished": r.name in done,
                "command": " ".join(["python", *r.train_command(args.runs)[1:]]),
            }
            for r in RUNS
        ],
        "verdicts": verdicts(RUNS, pts, pts_tiled, done),
        "points": pts,
        "points_tiled": pts_tiled,
        "compare_reports": {"gowalla": report, "tiled": tiled_report},
    }
    outputs = [args.results / f"pareto-gowalla.{ext}" for ext in ("json", "md", "png")]
    machine = source["machine"]
    machine["load_avg_1m_pipeline_start"] = machine["load_avg_1m"]
    if args.latency:  # the quiet-machine verdict is on the measuring: its load at start and (harness) at end
        machine["load_avg_1m"] = report["timing"]["load_avg_1m_start"]
        if not harness.may_write(source, outputs, allow_noisy=args.allow_noisy, prog="benchmarks.pareto_gowalla"):
            return 2
    else:
        machine["load_avg_1m_end"] = load_average()
    for path in write(result, args.results):
        print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
