"""Why our popularity baseline (NDCG@20 0.153) beats RecBole 1.2.1's (0.127) on the same protocol.

    make bench-pop          # = python -m benchmarks.quality.popularity  -> results/popularity.{json,md}, runs/pop

RecBole 1.2.1's ``Pop.calculate_loss`` counts with ``item_cnt[item, :] = item_cnt[item, :] + 1``:
an indexed assignment, so an item that appears several times in one batch is counted once per
batch. With RecBole's defaults Pop is also a point-wise model (``InputType.POINTWISE``), trained
one epoch (``TraditionalTrainer``) on batches of 2048 rows built from 1024 shuffled train
interactions plus one uniform negative each (``train_neg_sample_args``: uniform, 1), and
``calculate_loss`` reads the item column of every row, negatives included (the label is unused).

This script trains our popularity model on ML-100K (``python -m train --data ml-100k --model pop``;
the popularity row of the README) and scores, on the same split and with the same full-ranking
metric code, three count vectors:

- ``ours``: train interactions per item (``train.models.Popularity``);
- ``once per batch``: RecBole's indexed update over its batches of 1024 shuffled positives, the
  negatives left out (its duplicate handling, isolated);
- ``recbole default``: the same plus the uniform negatives, as RecBole 1.2.1 runs Pop by default.

Counts that saturate at the number of batches tie, so each RecBole-style vector is scored with
ties broken at random (``--tie-orders`` orders per vector), over ``--shuffles`` epoch shuffles.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.io import atomic_write_json, atomic_write_text
from common.provenance import provenance, provenance_line
from train.config import load_config
from train.data import Dataset
from train.loop import NegativeSampler, train
from train.metrics import evaluate_scores

log = logging.getLogger("sparserec.recbole_pop")
RECBOLE_BATCH_ROWS = 2048  # train_batch_size in recbole/properties/overall.yaml
RECBOLE_NEGATIVES = 1  # train_neg_sample_args.sample_num


def once_per_batch_counts(dataset: Dataset, seed: int, count_negatives: bool) -> np.ndarray:
    """RecBole 1.2.1 Pop's ``item_cnt`` after its one epoch, on our train split.

    Batches hold RecBole's 1024 shuffled positives (2048 rows with one negative each); the same
    ``seed`` gives the same batches whether the negatives are counted or not.

    Args:
        count_negatives: count each positive's uniform negative (not the user's train items) like
            the positives, as RecBole's default does; False isolates the once-per-batch update.
    Returns:
        ``[n_items]`` int64 counts.
    """
    users, items = dataset.train
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(users))
    per_batch = RECBOLE_BATCH_ROWS // (1 + RECBOLE_NEGATIVES)  # RecBole: batch_num = batch_size // times
    sampler = NegativeSampler(dataset.n_items, users, items)
    counts = np.zeros(dataset.n_items, dtype=np.int64)
    for start in range(0, len(order), per_batch):
        index = order[start : start + per_batch]
        negatives = sampler.sample(users[index], RECBOLE_NEGATIVES, rng).reshape(-1)
        batch_items = np.concatenate([items[index], negatives]) if count_negatives else items[index]
        counts[np.unique(batch_items)] += 1  # item_cnt[item, :] = item_cnt[item, :] + 1
    return counts


def score_counts(counts: np.ndarray, dataset: Dataset, tie_seed: int | None, k: int = 20) -> dict[str, float]:
    """Test metrics of ranking every item by ``counts`` (train + valid masked), our metric code.

    ``tie_seed``: ``None`` ranks with ``torch.topk`` as is; an int breaks ties in a random order.
    """
    scores = counts.astype(np.float64)
    if tie_seed is not None:  # a jitter below 1 orders equal counts at random, keeps unequal ones
        scores = scores + np.random.default_rng(tie_seed).random(len(scores)) * 0.5
    row = torch.from_numpy(scores)
    known = (dataset.csr("train") + dataset.csr("valid")).tocsr()
    return evaluate_scores(
        lambda users: row.unsqueeze(0).expand(len(users), -1).clone(),
        np.arange(dataset.n_users),
        known,
        dataset.csr("test"),
        ks=(k,),
    )


def summarize(counts_list: list[np.ndarray], dataset: Dataset, tie_orders: int) -> dict[str, Any]:
    runs = [score_counts(c, dataset, tie) for c in counts_list for tie in range(tie_orders)]
    ndcg = np.array([r["ndcg@20"] for r in runs])
    recall = np.array([r["recall@20"] for r in runs])
    top = [int(c.max()) for c in counts_list]
    tied = [int((c == c.max()).sum()) for c in counts_list]
    top20_share = [float(np.sort(c)[-20:].min() / c.max()) for c in counts_list]
    return {
        "test_ndcg@20": float(ndcg.mean()),
        "test_ndcg@20_min": float(ndcg.min()),
        "test_ndcg@20_max": float(ndcg.max()),
        "test_recall@20": float(recall.mean()),
        "max_count": top,
        "items_at_max_count": tied,
        "count_of_20th_over_max": top20_share,
        "scored": len(runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/pop", help="run folder of our popularity model (trained if absent)")
    parser.add_argument("--results", default="results", help="folder for popularity.{json,md}")
    parser.add_argument("--shuffles", type=int, default=5, help="RecBole epoch shuffles (seeds 0..n-1)")
    parser.add_argument("--tie-orders", type=int, default=5, help="random tie orders per count vector")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    run = Path(args.run)
    config = load_config(overrides=["data.name=ml-100k", "model.name=pop", f"run.out={run}", "run.threads=1"])
    metrics = train(config, progress=False)  # seconds: the popularity model has nothing to learn
    dataset = Dataset.load(run / "data")
    ours = dataset.item_popularity()
    variants = {
        "ours": summarize([ours], dataset, 1)
        | {"as_trained": {"test": metrics["test"], "seconds": metrics["seconds"]}},
        "once per batch of 1024 (negatives not counted)": summarize(
            [once_per_batch_counts(dataset, seed, False) for seed in range(args.shuffles)], dataset, args.tie_orders
        ),
        "recbole default (once per batch, its uniform negatives counted too)": summarize(
            [once_per_batch_counts(dataset, seed, True) for seed in range(args.shuffles)], dataset, args.tie_orders
        ),
    }
    record = {
        "provenance": provenance(),
        "protocol": "ML-100K, every rating a positive, per-user random 80/10/10 split (seed "
        f"{config.data.seed}), full ranking, train+valid masked, test NDCG/Recall@20",
        "recbole_reference": {
            "test_ndcg@20": 0.127,
            "test_recall@20": 0.160,
            "source": "RecBole's published ML-100K general-recommendation results (see README)",
        },
        "recbole_batch_rows": RECBOLE_BATCH_ROWS,
        "train_interactions": int(len(dataset.train[0])),
        "batches": -(-len(dataset.train[0]) // (RECBOLE_BATCH_ROWS // (1 + RECBOLE_NEGATIVES))),
        "variants": variants,
    }
    results = Path(args.results)
    atomic_write_json(results / "popularity.json", record)
    lines = [
        provenance_line(record["provenance"]),
        "",
        "# Popularity baseline: our counts against RecBole 1.2.1's",
        "",
        record["protocol"] + ".",
        "",
        "| counts | test NDCG@20 (mean, min-max) | test Recall@20 | top count | items at top count |",
        "|---|---|---|---|---|",
    ]
    for name, v in variants.items():
        lines.append(
            f"| {name} | {v['test_ndcg@20']:.4f} ({v['test_ndcg@20_min']:.4f}-{v['test_ndcg@20_max']:.4f}) | "
            f"{v['test_recall@20']:.4f} | {min(v['max_count'])}-{max(v['max_count'])} | "
            f"{min(v['items_at_max_count'])}-{max(v['items_at_max_count'])} |"
        )
    lines += [
        "",
        f"RecBole 1.2.1 reference: NDCG@20 0.127, Recall@20 0.160. RecBole-style rows: {args.shuffles} "
        f"shuffles x {args.tie_orders} random tie orders.",
    ]
    atomic_write_text(results / "popularity.md", "\n".join(lines) + "\n")
    print(json.dumps({name: round(v["test_ndcg@20"], 4) for name, v in variants.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
