"""Recall of a benchmark backend's top-k against exact search, tie-aware, without the full score matrix.

The rule is `export.quality.tie_aware_recall` (the exporter's too): a returned item counts if its
exact score reaches the exact k-th best (ties at the cut-off, common in sparse tables where many
scores are exactly 0, are hits). Here the k-th best is found by a blocked scan, so a million items
never need a ``[U, n_items]`` score matrix.
"""

from __future__ import annotations

import numpy as np

from export.quality import tie_aware_recall

RTOL = ATOL = 1e-4  # summation order differs between backends (float32)


def kth_best_scores(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """The k-th best exact score per user, ``float32 [U]`` (dense scan in blocks of items).

    Args:
        users: ``[U, d]``; items: ``[I, d]`` (a memory map is fine: read block by block).
    """
    best = np.full((len(users), 0), -np.inf, dtype=np.float32)
    block = max(1024, 2**25 // max(len(users), 1))  # at most ~128 MiB of scores at a time
    for start in range(0, len(items), block):
        scores = users @ np.asarray(items[start : start + block]).T
        keep = min(k, scores.shape[1])
        part = np.partition(scores, scores.shape[1] - keep, axis=1)[:, -keep:]
        best = np.concatenate([best, part], axis=1)
        if best.shape[1] > k:
            best = np.partition(best, best.shape[1] - k, axis=1)[:, -k:]
    return best.min(axis=1)


def served_recall(ids: np.ndarray, users: np.ndarray, items: np.ndarray, kth: np.ndarray, k: int) -> float:
    """Tie-aware recall@k of ``ids [U, k]`` (``-1``: none) for ``users [U, d]`` over ``items [I, d]``,
    given ``kth`` from :func:`kth_best_scores`."""
    ids = np.asarray(ids)[:, :k]
    got_scores = np.full(ids.shape, -np.inf, dtype=np.float32)
    for row, wanted in enumerate(ids):
        valid = wanted >= 0
        if valid.any():
            got_scores[row, valid] = np.asarray(items[wanted[valid]]) @ users[row]
    return tie_aware_recall(ids, got_scores, kth, np.full(len(ids), min(k, len(items))), atol=ATOL, rtol=RTOL)
