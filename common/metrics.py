"""Top-K ranking metrics on numpy arrays: hits, Recall@K, NDCG@K, Precision@K, HitRate@K.

The one home of the formulas: train/metrics.py (full-ranking evaluation in torch) and
export/quality.py (the artifact's quality checks, torch-free) both use them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def hits_at_k(topk_items: np.ndarray, positives: sp.csr_matrix) -> np.ndarray:
    """Whether each ranked item is a held-out positive.

    Args:
        topk_items: ``[B, K]`` int item ids, best first.
        positives: ``[B, n_items]`` CSR of held-out positives, one row per ranked row.
    Returns:
        ``[B, K]`` bool.
    """
    n_items = positives.shape[1]
    batch = topk_items.shape[0]
    pos_rows = np.repeat(np.arange(batch, dtype=np.int64), np.diff(positives.indptr))
    pos_keys = pos_rows * n_items + positives.indices.astype(np.int64)
    ranked_keys = np.arange(batch, dtype=np.int64)[:, None] * n_items + topk_items.astype(np.int64)
    return np.isin(ranked_keys, pos_keys)


def recall_at_k(hits: np.ndarray, n_positives: np.ndarray) -> np.ndarray:
    """``[B, K]`` bool hits, ``[B]`` positives per user -> ``[B]`` recall."""
    return hits.sum(axis=1) / n_positives


def precision_at_k(hits: np.ndarray) -> np.ndarray:
    """``[B, K]`` bool -> ``[B]`` precision (hits / K)."""
    return hits.sum(axis=1) / hits.shape[1]


def hit_rate_at_k(hits: np.ndarray) -> np.ndarray:
    """``[B, K]`` bool -> ``[B]`` 1.0 if any hit."""
    return hits.any(axis=1).astype(np.float64)


def ndcg_at_k(hits: np.ndarray, n_positives: np.ndarray) -> np.ndarray:
    """``[B, K]`` bool hits, ``[B]`` positives -> ``[B]`` NDCG with binary gains.

    ``DCG = sum_r hit_r / log2(r + 2)``; the ideal DCG places ``min(n_pos, K)`` hits first.
    """
    k = hits.shape[1]
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = (hits * discounts).sum(axis=1)
    ideal = np.cumsum(discounts)[np.minimum(n_positives, k) - 1]
    return dcg / ideal
