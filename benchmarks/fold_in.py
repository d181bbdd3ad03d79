"""Fold-in quality: users hidden from training, folded in from their train items at serving time.

    python -m benchmarks.fold_in --pair "ML-100K LightGCN" runs/A artifacts/A runs/B artifacts/B \\
        --out results/fold-in
    make bench-fold-in          # trains and exports the pairs first, then this

Each pair is two runs of one recipe on one split: a normal run (every user trained) and a run
with ``--data.holdout_users=N``, whose N users' train and valid interactions were hidden from
training (`train.data.split.choose_holdout_users`). The hidden users are those with train
interactions in the normal run's saved dataset and none in the holdout run's. For each of them
NDCG@20 and Recall@20 on their test items, all train and valid items masked, three ways:

- fold-in: the holdout artifact served by `serving.recommender.Recommender` with
  ``Query(history=<their train items>, exclude_items=<their valid items>)``, the path
  ``POST /recommend {"history": ...}`` takes;
- trained: the normal artifact, ``Query(user_id, exclude_items=<valid items>)``;
- popularity: the holdout artifact's popularity list with the same items masked.

MF: the ridge penalty is chosen per pair on the hidden users' VALID items (`LAMBDA_GRID`, train
items masked), never on test; the test figures are then taken at that penalty.

Writes ``<out>.json`` and ``<out>.md`` (atomic); every pair carries the provenance of the run
that measured it. ``--update`` keeps the pairs of an existing ``<out>.json`` that this run does
not measure (each with its own command and commit), so one pair can be added or redone without
retraining the others. Quality only, no timings (``benchmarks.serving.fold_in_latency`` times it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from common.io import atomic_write_json, atomic_write_text
from common.metrics import ndcg_at_k, recall_at_k
from common.provenance import provenance, provenance_line
from export.artifact import load_artifact
from serving.fold_in import DEFAULT_RIDGE_LAMBDA
from serving.recommender import Query, Recommender
from train.data.dataset import Dataset

K = 20
TARGET_SHARE = 0.90  # folded-in users should reach this share of their trained NDCG@20


def hidden_users(full: Dataset, holdout: Dataset) -> np.ndarray:
    """Users with train interactions in `full` and none (train or valid) in `holdout`."""
    full_train = np.bincount(full.train[0], minlength=full.n_users) > 0
    kept = (
        np.bincount(holdout.train[0], minlength=full.n_users) + np.bincount(holdout.valid[0], minlength=full.n_users)
    ) > 0
    return np.flatnonzero(full_train & ~kept)


def by_user(split: tuple[np.ndarray, np.ndarray], n_users: int) -> list[np.ndarray]:
    """Item rows of each user in `split` (users, items), in the split's order: [n_users] arrays."""
    users, items = split
    order = np.argsort(users, kind="stable")
    bounds = np.searchsorted(users[order], np.arange(n_users + 1))
    return [items[order[bounds[u] : bounds[u + 1]]] for u in range(n_users)]


def _scores(answers: list[list[str]], tests: list[set[str]]) -> dict[str, float]:
    hits = np.array([[item in test for item in (answer + [None] * K)[:K]] for answer, test in zip(answers, tests)])
    n_pos = np.array([len(t) for t in tests])
    return {"ndcg@20": float(ndcg_at_k(hits, n_pos).mean()), "recall@20": float(recall_at_k(hits, n_pos).mean())}


LAMBDA_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)


def lambda_on_valid(
    artifact: Path, users: np.ndarray, train: list[np.ndarray], valid: list[np.ndarray]
) -> dict[str, float]:
    """MF: NDCG@20 of the hidden users on their VALID items (train items masked) for each ridge
    penalty of LAMBDA_GRID: how SPARSEREC_FOLD_IN_LAMBDA's default was chosen (never on test)."""
    from serving.fold_in import RidgeFoldIn, user_row_budget

    art = load_artifact(artifact)
    items = Recommender.from_artifact(art).item_table()
    out = {}
    for ridge_lambda in LAMBDA_GRID:
        fold = RidgeFoldIn(items, user_row_budget(art), ridge_lambda)
        hits, n_pos = [], []
        for u in users:
            if not len(valid[u]):
                continue
            scores = np.asarray(items @ fold.vector(train[u]), dtype=np.float64).ravel()
            scores[train[u]] = -np.inf
            hits.append(np.isin(np.argsort(-scores, kind="stable")[:K], valid[u]))
            n_pos.append(len(valid[u]))
        out[f"{ridge_lambda:g}"] = float(ndcg_at_k(np.array(hits), np.array(n_pos)).mean())
    return out


def evaluate_pair(
    name: str, trained_run: Path, trained_artifact: Path, holdout_run: Path, holdout_artifact: Path
) -> dict[str, Any]:
    full = Dataset.load(trained_run / "data")
    held = Dataset.load(holdout_run / "data")
    if full.item_ids != held.item_ids or full.user_ids != held.user_ids:
        raise ValueError(f"{name}: the two runs were not trained on the same data")
    users = hidden_users(full, held)
    if not len(users):
        raise ValueError(f"{name}: {holdout_run} hides no user (train it with --data.holdout_users=N)")
    train, valid, test = (by_user(split, full.n_users) for split in (full.train, full.valid, full.test))
    ids = np.asarray(full.item_ids)
    trained = Recommender.from_artifact(load_artifact(trained_artifact))
    folded = Recommender.from_artifact(load_artifact(holdout_artifact))
    by_lambda = None
    if (folded.describe_fold_in() or {}).get("kind") == "ridge":  # the penalty is chosen on valid, never test
        by_lambda = lambda_on_valid(holdout_artifact, users, train, valid)
        best = max(by_lambda, key=lambda lam: by_lambda[lam])  # first of equals: dict order, smallest penalty
        folded = Recommender.from_artifact(load_artifact(holdout_artifact), fold_in_lambda=float(best))
    tests = [set(ids[test[u]].tolist()) for u in users]
    answers: dict[str, list[list[str]]] = {"fold_in": [], "trained": [], "popularity": []}
    for u in users:
        history, masked = tuple(ids[train[u]].tolist()), tuple(ids[valid[u]].tolist())
        user_id = full.user_ids[u]
        answers["fold_in"].append(
            folded.recommend([Query(user_id, K, True, exclude_items=masked, history=history)])[0].item_ids
        )
        answers["trained"].append(trained.recommend([Query(user_id, K, True, exclude_items=masked)])[0].item_ids)
        answers["popularity"].append(folded.popular(Query(user_id, K), folded.item_rows(history + masked)).item_ids)
    result = {
        "name": name,
        "users": int(len(users)),
        "k": K,
        "model_kind": load_artifact(trained_artifact).model_kind,
        "runs": {"trained": str(trained_run), "holdout": str(holdout_run)},
        "fold_in_settings": folded.describe_fold_in(),
        **{way: _scores(found, tests) for way, found in answers.items()},
    }
    if by_lambda is not None:
        result["valid_ndcg@20_by_ridge_lambda"] = by_lambda
    share = result["fold_in"]["ndcg@20"] / result["trained"]["ndcg@20"] if result["trained"]["ndcg@20"] else None
    result["fold_in_over_trained"] = share
    result["target_met"] = bool(
        share is not None and share >= TARGET_SHARE and result["fold_in"]["ndcg@20"] > result["popularity"]["ndcg@20"]
    )
    return result


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Fold-in: users hidden from training, served from their history",
        "",
        provenance_line(report["provenance"]),
        "",
        *(
            ["Rows from more than one run (`--update`): each pair's own command and commit are listed at the end.", ""]
            if len({json.dumps(r.get("provenance", report["provenance"]), sort_keys=True) for r in report["pairs"]}) > 1
            else []
        ),
        f"NDCG@20 / Recall@20 of the hidden users on their test items (train and valid items masked). "
        f"Target: fold-in >= {TARGET_SHARE:.0%} of the same users trained, and above popularity.",
        "",
        "| pair | users | fold-in NDCG@20 | trained NDCG@20 | popularity NDCG@20 | fold-in / trained | "
        "fold-in R@20 | trained R@20 | popularity R@20 | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["pairs"]:
        r.setdefault("provenance", report["provenance"])
        share = "n/a" if r["fold_in_over_trained"] is None else f"{r['fold_in_over_trained']:.3f}"
        lines.append(
            f"| {r['name']} | {r['users']} | {r['fold_in']['ndcg@20']:.4f} | {r['trained']['ndcg@20']:.4f} | "
            f"{r['popularity']['ndcg@20']:.4f} | {share} | {r['fold_in']['recall@20']:.4f} | "
            f"{r['trained']['recall@20']:.4f} | {r['popularity']['recall@20']:.4f} | "
            f"{'met' if r['target_met'] else 'missed'} |"
        )
    lines += [
        "",
        "Fold-in settings per pair: "
        + "; ".join(f"{r['name']}: {json.dumps(r['fold_in_settings'])}" for r in report["pairs"]),
        "",
    ]
    for r in report["pairs"]:
        if "valid_ndcg@20_by_ridge_lambda" in r:
            sweep = ", ".join(f"{lam}: {v:.4f}" for lam, v in r["valid_ndcg@20_by_ridge_lambda"].items())
            lines += [
                f"{r['name']}: the ridge penalty (SPARSEREC_FOLD_IN_LAMBDA, relative to the history's mean "
                f"Gram eigenvalue) on the hidden users' VALID items, NDCG@20 by lambda: {sweep}. "
                f"The row above is at the best of these ({r['fold_in_settings']['ridge_lambda']:g}); test "
                "was not looked at to choose it. "
                f"The served default ({DEFAULT_RIDGE_LAMBDA:g}) is the best on ML-100K MF valid.",
                "",
            ]
    lines += ["Each pair's measurement:", ""]
    lines += [
        f"- {r['name']}: `{r['provenance'].get('command')}` at commit `{r['provenance'].get('commit')}` on "
        f"{r['provenance'].get('date')}"
        for r in report["pairs"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fold_in", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pair",
        nargs=5,
        action="append",
        required=True,
        metavar=("NAME", "TRAINED_RUN", "TRAINED_ARTIFACT", "HOLDOUT_RUN", "HOLDOUT_ARTIFACT"),
    )
    parser.add_argument("--out", default="results/fold-in", help="writes OUT.json and OUT.md")
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the pairs of an existing OUT.json that this run does not measure (by name)",
    )
    args = parser.parse_args(argv)
    source = provenance(None if argv is None else ["python", "-m", "benchmarks.fold_in", *argv])
    kept: list[dict[str, Any]] = []
    if args.update and Path(args.out + ".json").is_file():
        old = json.loads(Path(args.out + ".json").read_text())
        kept = [{**pair, "provenance": pair.get("provenance", old["provenance"])} for pair in old["pairs"]]
    pairs = []
    for name, trained_run, trained_art, holdout_run, holdout_art in args.pair:
        result = evaluate_pair(name, Path(trained_run), Path(trained_art), Path(holdout_run), Path(holdout_art))
        result["provenance"] = source
        print(json.dumps(result), file=sys.stderr, flush=True)
        pairs.append(result)
    new = {pair["name"]: pair for pair in pairs}
    merged = [new.pop(pair["name"], pair) for pair in kept]  # a pair measured again takes its old place
    report = {"provenance": source, "pairs": merged + list(new.values())}
    atomic_write_json(Path(args.out + ".json"), report)
    atomic_write_text(Path(args.out + ".md"), markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
