"""Fold-in latency: a folded-in user's query beside a known user's, in-process, on one artifact.

    python -m benchmarks.serving.fold_in_latency --artifact artifacts/fold-in/gowalla-mf-holdout \\
        --trained-run runs/fold-in/gowalla-mf-trained --holdout-run runs/fold-in/gowalla-mf-holdout
    make bench-fold-in-latency      # trains and exports the pair first where missing (make bench-fold-in's)

Both queries go through the real `serving.recommender.Recommender.recommend`, one query per call
(batch 1), on the same artifact:

- known: ``Query(user_id, k, exclude_seen=True)`` for a user the artifact was trained on;
- fold-in: ``Query(user_id, k, exclude_seen=True, history=<item ids>)``, the path
  ``POST /recommend {"history": ...}`` takes (history -> user vector -> index top-k with the
  history excluded).

The histories are those of a fold-in pair's hidden users (`benchmarks.fold_in.hidden_users`):
their train items, so the history lengths are the typical ones of the dataset, not a chosen
length. Known users are drawn from the users with train items in the holdout run. The two kinds
of query alternate call after call (so a load change falls on both alike); each is timed alone,
making the query is not timed; the first calls warm up (the fold-in is built on first use).

Writes ``<out>.json`` and ``<out>.md`` (atomic): p50/p99 of each, the fold-in / known ratios and
the target (fold-in p50 within 2x of the known user's). Timings go into results/ only from a quiet
machine (`benchmarks.harness`: the 1-minute load at most half the CPUs at start and end), unless
``--allow-noisy``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.fold_in import by_user, hidden_users
from common.io import atomic_write_text
from common.paths import REPO_ROOT, repo_relative
from common.timing import percentiles
from serving.fold_in import DEFAULT_RIDGE_LAMBDA
from serving.recommender import Query, Recommender
from train.data.dataset import Dataset

TARGET_RATIO = 2.0  # a folded-in user's query p50 at most this many times a known user's


def histories(trained_run: Path, holdout_run: Path) -> tuple[list[tuple[str, ...]], list[str]]:
    """The hidden users' train histories (external item ids) and the known users (external ids).

    Raises:
        ValueError: the runs are not of one dataset, or the holdout run hides no user.
    """
    full, held = Dataset.load(trained_run / "data"), Dataset.load(holdout_run / "data")
    if full.item_ids != held.item_ids or full.user_ids != held.user_ids:
        raise ValueError(f"{trained_run} and {holdout_run} were not trained on the same data")
    users = hidden_users(full, held)
    if not len(users):
        raise ValueError(f"{holdout_run} hides no user (train it with --data.holdout_users=N)")
    ids = np.asarray(full.item_ids)
    train = by_user(full.train, full.n_users)
    found = [tuple(ids[train[u]].tolist()) for u in users]
    known = np.flatnonzero(np.bincount(held.train[0], minlength=held.n_users) > 0)
    return found, [held.user_ids[u] for u in known]


def bench(
    model: Recommender, found: list[tuple[str, ...]], known: list[str], calls: int, warmup: int, k: int, seed: int
) -> dict[str, Any]:
    """p50/p99 of known and fold-in queries at batch 1, alternating; ``calls`` timed calls of each."""
    rng = np.random.default_rng(seed)
    unknown = "fold-in-latency-user"  # not an id of the artifact: the history is the only user there is
    if unknown in model.user_index:
        raise ValueError(f"the artifact knows a user {unknown!r}; pick another placeholder id")
    times: dict[str, list[float]] = {"known": [], "fold_in": []}
    lengths = []
    for call in range(warmup + calls):
        queries = {
            "known": Query(known[rng.integers(len(known))], k, True),
            "fold_in": Query(unknown, k, True, history=found[rng.integers(len(found))]),
        }
        for kind in ("known", "fold_in") if call % 2 == 0 else ("fold_in", "known"):
            query = queries[kind]
            start = time.perf_counter()
            answer = model.recommend([query])[0]
            elapsed = time.perf_counter() - start
            if answer.fallback or answer.folded_in != (kind == "fold_in"):
                raise RuntimeError(f"{kind} query answered as fallback={answer.fallback}, folded_in={answer.folded_in}")
            if call >= warmup:
                times[kind].append(elapsed)
                if kind == "fold_in":
                    lengths.append(len(query.history or ()))
    result: dict[str, Any] = {kind: percentiles(seconds) for kind, seconds in times.items()}
    result["history_length"] = {
        "p50": float(np.percentile(lengths, 50)),
        "p90": float(np.percentile(lengths, 90)),
        "max": int(max(lengths)),
        "mean": round(float(np.mean(lengths)), 2),
    }
    result["p50_ratio"] = round(result["fold_in"]["p50_ms"] / result["known"]["p50_ms"], 3)
    result["p99_ratio"] = round(result["fold_in"]["p99_ms"] / result["known"]["p99_ms"], 3)
    result["target_ratio"] = TARGET_RATIO
    result["target_met"] = bool(result["p50_ratio"] <= TARGET_RATIO)
    return result


def markdown(report: dict[str, Any]) -> str:
    r = report["result"]
    lines = [
        "# Fold-in latency: a user from their history beside a known user",
        "",
        harness.provenance_line(report["provenance"]),
        "",
        f"In-process `Recommender.recommend`, one query per call (batch 1), k = {report['k']}, seen (or "
        f"history) items excluded, on `{report['artifact']}` ({report['model_kind']}, index "
        f"{report['index_kind']}); fold-in {json.dumps(report['fold_in_settings'])}; "
        f"{report['threads']} thread(s). Histories: the train items of the {report['hidden_users']} users that "
        f"`{report['holdout_run']}` hid from training (length p50 {r['history_length']['p50']:g}, "
        f"p90 {r['history_length']['p90']:g}, max {r['history_length']['max']}); known users drawn from the "
        f"{report['known_users']} users it trained. The two kinds alternate; {report['warmup']} warm-up calls "
        "of each first.",
        "",
        harness.markdown_table(
            ["query", "p50 ms", "p99 ms", "mean ms", "calls"],
            [
                [
                    name,
                    f"{r[kind]['p50_ms']:.3f}",
                    f"{r[kind]['p99_ms']:.3f}",
                    f"{r[kind]['mean_ms']:.3f}",
                    r[kind]["n"],
                ]
                for name, kind in (("known user", "known"), ("fold-in", "fold_in"))
            ],
            "lrrrr",
        ),
        "",
        f"Fold-in / known: p50 **{r['p50_ratio']:.2f}x**, p99 {r['p99_ratio']:.2f}x (target: p50 within "
        f"{r['target_ratio']:g}x: {'met' if r['target_met'] else 'missed'}).",
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving.fold_in_latency", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--artifact", type=Path, required=True, help="the artifact served (the holdout run's export)")
    parser.add_argument("--trained-run", type=Path, required=True, help="the pair's run with every user trained")
    parser.add_argument("--holdout-run", type=Path, required=True, help="the pair's run with --data.holdout_users")
    parser.add_argument("--calls", type=int, default=1000, help="timed calls of each kind of query")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls of each kind first")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads (set OMP_NUM_THREADS alike)")
    parser.add_argument(
        "--fold-in-lambda",
        type=float,
        default=DEFAULT_RIDGE_LAMBDA,
        help="MF ridge penalty (the server's SPARSEREC_FOLD_IN_LAMBDA)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws of users and histories")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "results" / "fold-in-latency",
        help="output stem: writes STEM.json and STEM.md (default results/fold-in-latency)",
    )
    harness.add_timing_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.calls < 1 or args.warmup < 1:
        parser.error("--calls and --warmup must be >= 1")
    source = harness.start(None if argv is None else ["python", "-m", "benchmarks.serving.fold_in_latency", *argv])
    outputs = [args.out.with_suffix(".json"), args.out.with_suffix(".md")]
    try:
        harness.check_start(source, outputs, allow_noisy=args.allow_noisy)
    except harness.NoisyMachine as exc:
        print(f"benchmarks.serving.fold_in_latency: {exc}", file=sys.stderr)
        return 2
    import faiss

    from export.artifact import load_artifact

    faiss.omp_set_num_threads(args.threads)
    try:
        found, known = histories(args.trained_run, args.holdout_run)
    except ValueError as exc:
        print(f"benchmarks.serving.fold_in_latency: {exc}", file=sys.stderr)
        return 2
    art = load_artifact(args.artifact)
    model = Recommender.from_artifact(art, fold_in_lambda=args.fold_in_lambda)
    settings = model.describe_fold_in()
    if settings is None:
        print(f"benchmarks.serving.fold_in_latency: {args.artifact} has no fold-in ({art.model_kind})", file=sys.stderr)
        return 2
    report = {
        "provenance": source,
        "artifact": repo_relative(args.artifact),
        "model_kind": art.model_kind,
        "index_kind": art.index_kind,
        "fold_in_settings": settings,
        "trained_run": repo_relative(args.trained_run),
        "holdout_run": repo_relative(args.holdout_run),
        "hidden_users": len(found),
        "known_users": len(known),
        "k": args.k,
        "warmup": args.warmup,
        "threads": args.threads,
        "thread_env": {
            name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        },
        "result": bench(model, found, known, args.calls, args.warmup, args.k, args.seed),
    }
    if not harness.may_write(source, outputs, allow_noisy=args.allow_noisy, prog="benchmarks.serving.fold_in_latency"):
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(outputs[0], json.dumps(report, indent=2) + "\n")
    atomic_write_text(outputs[1], markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
