"""In-process inference benchmark: latency, throughput, memory and recall of top-k backends.

    python -m benchmarks.inference.bench                                  # full sweep (~15-20 min on 2 cores)
    python -m benchmarks.inference.bench --reduced                        # ml-100k shapes, 2 densities, 2 backends (seconds)
    python -m benchmarks.inference.bench --artifacts artifacts/mf-dense,artifacts/mf-dsl-0.2   # + real ml-100k artifacts
    python -m benchmarks.inference.bench --datasets 1m --densities 1.0,0.1 --backends torch-dense,packed-scan,faiss-flat
    python -m benchmarks.inference.bench --render results/bench-sparse.json   # redo the targets table, .md and .png from the JSON
    python -m benchmarks.inference.bench --sparse-only                    # 1m: dense, small-dense and the sparse index (issue 10)

What it measures, for each case (a user table and an item table) and each backend of
`benchmarks.inference.backends` (torch dense, onnxruntime fp32 and int8, scipy CSR, our packed-sparse scan,
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
  from `benchmarks/inference/trained_masks.json` (`make bench-masks`); users and items each at density d. These
  two tables are measured with the `sparse` index (export.sparse_index) and `faiss-flat` over the
  zero-filled vectors only; recall is against exact search over the zero-filled vectors.
- `--artifacts`: real trained artifacts (export.artifact.load_artifact): their served vectors,
  their own ONNX scorers, and the model's quality from the manifest. LightGCN serves dense
  propagated vectors, so its scans (scipy-csr, packed-scan) are over dense vectors: said so in the output.

This module is the command line; the parts, one concept each: `benchmarks.inference.cases` (the tables
measured), `benchmarks.inference.backends` (one class per top-k backend), `benchmarks.inference.worker` (one backend
in a fresh process), `benchmarks.inference.recall` (tie-aware recall against exact search), `benchmarks.inference.sweep`
(the plan, the workers, progress), `benchmarks.inference.report` (Markdown, targets, JSON) and `benchmarks.inference.plot`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from benchmarks import harness

from .backends import BACKENDS
from .cases import SHAPES, TABLES, TRAINED_MASK_BACKENDS, TRAINED_MASK_TABLES
from .report import write_report
from .sweep import Settings, run_bench


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
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.inference.bench",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--reduced",
        action="store_true",
        help="ml-100k shapes, densities 1.0 and 0.2, torch-dense and faiss-flat, few iterations",
    )
    parser.add_argument("--datasets", type=_names(tuple(SHAPES)), default=None, help=f"of {list(SHAPES)}")
    parser.add_argument("--densities", type=_floats, default=None, help="default 1.0,0.5,0.2,0.1,0.05")
    parser.add_argument("--backends", type=_names(BACKENDS), default=None, help=f"of {list(BACKENDS)}")
    parser.add_argument("--batches", type=_ints, default=None, help="default 1,32,256")
    parser.add_argument("--tables", type=_names(TABLES), default=None, help=f"synthetic tables, of {list(TABLES)}")
    parser.add_argument(
        "--masks",
        type=Path,
        default=None,
        help="trained mask profiles for the prefix/unstructured tables (benchmarks/inference/trained_masks.json)",
    )
    parser.add_argument(
        "--sparse-only",
        action="store_true",
        help="issue 10's comparison: 1m, tables dense, small-dense, prefix, unstructured, backends "
        "faiss-flat and sparse, one thread (name bench-sparse)",
    )
    parser.add_argument("--artifacts", default="", help="comma-separated artifact folders (ml-100k quality)")
    parser.add_argument("--threads", type=int, default=None, help="threads per backend (default: all CPUs)")
    parser.add_argument("--max-call-s", type=float, default=None, help="skip a batch size whose calls take longer (3)")
    parser.add_argument("--time-scale", type=float, default=None, help="multiply the time spent per point (1.0)")
    parser.add_argument(
        "--hnsw-large-densities",
        type=_floats,
        default=None,
        help="densities at which to build hnsw on the 1m shape (default 1.0)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results"), help="report folder (default results/)")
    parser.add_argument("--name", default=None, help="report file stem (default bench, or bench-reduced)")
    harness.add_timing_flags(parser)
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="only recompute the derived parts (targets, .md, .png) of an existing report JSON",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if args.reduced:
        settings = Settings(
            datasets=("ml-100k",),
            densities=(1.0, 0.2),
            backends=("torch-dense", "faiss-flat", "sparse"),
            time_scale=0.1,
            min_calls=3,
            warmup_calls=1,
            name="bench-reduced",
        )
    if args.sparse_only:
        settings = Settings(
            datasets=("1m",),
            backends=TRAINED_MASK_BACKENDS,
            tables=("dense", "small-dense") + TRAINED_MASK_TABLES,
            threads=1,
            name="bench-sparse",
            max_call_s=60.0,
        )  # batch 256 over 1M items takes seconds on one shared core: keep it
    for key in (
        "datasets",
        "densities",
        "backends",
        "batches",
        "tables",
        "masks",
        "threads",
        "max_call_s",
        "time_scale",
        "hnsw_large_densities",
        "name",
    ):
        value = getattr(args, key)
        if value is not None:
            setattr(settings, key, value)
    settings.seed, settings.out, settings.reduced = args.seed, args.out, args.reduced
    settings.allow_noisy = args.allow_noisy
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
    print(
        f"bench: datasets {list(settings.datasets)}, densities {list(settings.densities)}, "
        f"backends {list(settings.backends)}, tables {list(settings.tables)}, batches {list(settings.batches)}, artifacts "
        f"{[str(p) for p in settings.artifacts]}, {settings.threads} threads -> {settings.out}/{settings.name}.*",
        flush=True,
    )
    try:
        report = run_bench(settings)
    except harness.NoisyMachine as exc:
        print(f"benchmarks.inference.bench: {exc}", file=sys.stderr)
        return 2
    errors = [p for p in report["points"] if "error" in p] + report["case_errors"]
    print(
        f"-> {settings.out}/{settings.name}.json, .md, .png ({len(report['points'])} points, "
        f"{len(errors)} errors, {report['seconds'] / 60:.1f} min)"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
