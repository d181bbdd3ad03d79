"""Full-ranking top-K metrics: Recall@K, NDCG@K, Precision@K, HitRate@K.

Every item is ranked for every evaluated user; known positives (train, and valid when testing)
are masked to ``-inf`` before the top-K, so they can neither hit nor push a held-out item down.
Users with no held-out positive are left out of the averages. The per-row formulas (hits, recall,
NDCG, ...) are common/metrics.py's, shared with the export's checks.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import scipy.sparse as sp
import torch

from common.metrics import hit_rate_at_k, hits_at_k, ndcg_at_k, precision_at_k, recall_at_k

__all__ = [
    "METRIC_NAMES",
    "evaluate_scores",
    "hit_rate_at_k",
    "hits_at_k",
    "mask_known",
    "ndcg_at_k",
    "precision_at_k",
    "recall_at_k",
    "reference_metrics",
]

METRIC_NAMES = ("recall", "ndcg", "precision", "hit")


def mask_known(scores: torch.Tensor, known: sp.csr_matrix) -> torch.Tensor:
    """Set ``scores[b, i] = -inf`` where ``known[b, i]`` is non-zero (in place).

    Args:
        scores: ``[B, n_items]`` float scores.
        known: ``[B, n_items]`` CSR of items to exclude, one row per score row.
    """
    counts = np.diff(known.indptr)
    rows = torch.from_numpy(np.repeat(np.arange(known.shape[0]), counts)).to(scores.device)
    cols = torch.from_numpy(known.indices.astype(np.int64)).to(scores.device)
    scores[rows, cols] = -torch.inf
    return scores


def evaluate_scores(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    users: np.ndarray,
    known: sp.csr_matrix,
    heldout: sp.csr_matrix,
    ks: Iterable[int] = (20,),
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Average the metrics over ``users`` by ranking every item.

    Args:
        score_fn: maps ``[B]`` user ids (torch int64) to ``[B, n_items]`` scores.
        users: user ids to evaluate; those without held-out positives are skipped.
        known: ``[n_users, n_items]`` CSR of positives to mask (train, plus valid when testing).
        heldout: ``[n_users, n_items]`` CSR of the positives to find.
        ks: cut-offs.
    Returns:
        ``{"recall@20": ..., "ndcg@20": ..., "precision@20": ..., "hit@20": ..., "n_users": ...}``.
    """
    ks = sorted(set(ks))
    max_k = max(ks)
    n_positives_all = np.diff(heldout.indptr)
    users = np.asarray(users, dtype=np.int64)
    users = users[n_positives_all[users] > 0]
    sums = {f"{name}@{k}": 0.0 for k in ks for name in METRIC_NAMES}
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = score_fn(torch.from_numpy(batch).to(device)).float()
        scores = mask_known(scores, known[batch])
        k_eff = min(max_k, scores.shape[1])
        topk = torch.topk(scores, k_eff, dim=1).indices.cpu().numpy()
        hits = hits_at_k(topk, heldout[batch])
        n_pos = n_positives_all[batch]
        for k in ks:
            h = hits[:, :k]
            sums[f"recall@{k}"] += float(recall_at_k(h, n_pos).sum())
            sums[f"ndcg@{k}"] += float(ndcg_at_k(h, n_pos).sum())
            sums[f"precision@{k}"] += float(precision_at_k(h).sum())
            sums[f"hit@{k}"] += float(hit_rate_at_k(h).sum())
    n = max(len(users), 1)
    result = {key: value / n for key, value in sums.items()}
    result["n_users"] = int(len(users))
    return result


def reference_metrics(scores: np.ndarray, known: list[set[int]], heldout: list[set[int]], k: int) -> dict[str, float]:
    """Plain-Python reference used by the tests: one user at a time, no vectorisation."""
    totals = {f"{name}@{k}": 0.0 for name in METRIC_NAMES}
    counted = 0
    for user, row in enumerate(scores):
        if not heldout[user]:
            continue
        counted += 1
        candidates = [(float(s), i) for i, s in enumerate(row) if i not in known[user]]
        candidates.sort(key=lambda pair: -pair[0])
        ranked = [i for _, i in candidates[:k]]
        n_hits = sum(1 for i in ranked if i in heldout[user])
        dcg = sum(1.0 / math.log2(r + 2) for r, i in enumerate(ranked) if i in heldout[user])
        idcg = sum(1.0 / math.log2(r + 2) for r in range(min(len(heldout[user]), k)))
        totals[f"recall@{k}"] += n_hits / len(heldout[user])
        totals[f"ndcg@{k}"] += dcg / idcg
        totals[f"precision@{k}"] += n_hits / k
        totals[f"hit@{k}"] += 1.0 if n_hits else 0.0
    return {key: value / max(counted, 1) for key, value in totals.items()}
