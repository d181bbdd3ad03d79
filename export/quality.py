"""Top-k lists and how well two of them agree (numpy; used at export, by the item indexes and the benchmarks)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from common.metrics import hits_at_k, ndcg_at_k, recall_at_k


def as_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """A query batch for an item index: ``[B, dim]`` C-contiguous float32 (one ``[dim]`` vector becomes
    ``[1, dim]``); any other shape raises ``ValueError`` naming the expected one."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None, :]
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"queries must be [B, {dim}] float32, got shape {queries.shape}")
    return queries


def top_k_rows(scores: np.ndarray, k: int, ids: np.ndarray | None = None, ordered: bool = True) -> np.ndarray:
    """Columns of the ``k`` largest entries of each row, best first; ties broken by the lower id.

    The project's one top-k rule (the exporter's exact rankings, the benchmark's numpy and scipy
    scans). It holds at the cut-off too: of several entries tied with the k-th best score the lower
    ids are kept. ``argpartition`` places the k-th and (k+1)-th best; only rows where those two tie
    are redone over the whole row.

    Args:
        scores: ``[B, n]`` float.
        ids: ``[B, n]`` the ids that break ties (default: the column index).
        ordered: ``False`` returns the same columns in no particular order (cheaper, for a merge).
    Returns:
        ``int64 [B, min(k, n)]`` columns of ``scores``.
    """
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k <= 0:
        return np.zeros((n_rows, 0), dtype=np.int64)
    if k == n_cols:
        part = np.broadcast_to(np.arange(n_cols), scores.shape)
    else:
        part = np.argpartition(-scores, k, axis=1)[:, : k + 1]  # the k best, then the (k+1)-th
        part_scores = np.take_along_axis(scores, part, axis=1)
        kth = part_scores[:, :k].min(axis=1)
        straddle = np.flatnonzero(part_scores[:, k] == kth)  # a tie across the cut-off
        part = part[:, :k].copy()
        for row in straddle:
            above = np.flatnonzero(scores[row] > kth[row])
            tied = np.flatnonzero(scores[row] == kth[row])
            if ids is not None:
                tied = tied[np.argsort(ids[row, tied], kind="stable")]
            part[row] = np.r_[above, tied[: k - len(above)]]
    if not ordered:
        return part.astype(np.int64, copy=False)
    part_scores = np.take_along_axis(scores, part, axis=1)
    tie_key = part if ids is None else np.take_along_axis(ids, part, axis=1)
    order = np.lexsort((tie_key, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1).astype(np.int64, copy=False)


def topk_by_scores(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None = None,
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product, best first; ties broken by the lower item id (:func:`top_k_rows`).

    Args:
        user_vectors: ``[U, d]``; item_vectors: ``[I, d]``.
        exclude: optional ``[U, I]`` CSR of items to leave out (scored ``-inf``).
    Returns:
        ``(scores [U, k] float32, ids [U, k] int64)``; ``-1`` ids where fewer than ``k`` remain.
    """
    n_users, n_items = len(user_vectors), len(item_vectors)
    k_eff = min(k, n_items)
    out_scores = np.full((n_users, k), -np.inf, dtype=np.float32)
    out_ids = np.full((n_users, k), -1, dtype=np.int64)
    items_t = np.ascontiguousarray(np.asarray(item_vectors, dtype=np.float32).T)
    for start in range(0, n_users, batch_size):
        stop = min(start + batch_size, n_users)
        scores = np.asarray(user_vectors[start:stop], dtype=np.float32) @ items_t
        if exclude is not None:
            block = exclude[start:stop].tocoo()
            scores[block.row, block.col] = -np.inf
        ids = top_k_rows(scores, k_eff)
        top = np.take_along_axis(scores, ids, axis=1)
        out_scores[start:stop, :k_eff] = top
        out_ids[start:stop, :k_eff] = np.where(np.isfinite(top), ids, -1)
    return out_scores, out_ids


def overlap_at_k(got: np.ndarray, want: np.ndarray) -> float:
    """Mean ``|got_u & want_u| / |want_u|`` over rows (``-1`` ignored). Shapes ``[U, k]``."""
    hits = total = 0
    for got_row, want_row in zip(got, want):
        want_set = want_row[want_row >= 0]
        hits += len(np.intersect1d(got_row[got_row >= 0], want_set))
        total += len(want_set)
    return float(hits / max(total, 1))


def tie_aware_recall(
    got: np.ndarray, got_scores: np.ndarray, kth: np.ndarray, wanted: np.ndarray, atol: float = 1e-6, rtol: float = 0.0
) -> float:
    """Share of the wanted top-k slots holding an item whose exact score reaches the exact k-th best.

    The project's one tie-aware recall: an item tied with the k-th best counts as correct, as
    faiss's own contrib tests tolerate ties, and scores are compared with a tolerance
    ``atol + rtol * |kth|`` for summation order.

    Args:
        got: ``[U, k]`` returned ids (``-1``: none; never a hit).
        got_scores: ``[U, k]`` the exact (reference) scores of those ids (any value where ``got`` is -1).
        kth: ``[U]`` the exact k-th best score of each row.
        wanted: ``[U]`` how many items each row should hold (``min(k, items it may return)``).
    """
    kth = np.asarray(kth, dtype=np.float64)
    tolerance = atol + (rtol * np.abs(kth) if rtol else 0.0)
    good = (got >= 0) & (np.asarray(got_scores) >= (kth - tolerance)[:, None])
    return float(good.sum() / max(int(np.sum(wanted)), 1))


def tie_aware_overlap_at_k(got: np.ndarray, reference_scores: np.ndarray, k: int, atol: float = 1e-6) -> float:
    """:func:`tie_aware_recall` of ``got`` against a full reference score matrix.

    Args:
        got: ``[U, k]`` ids from the artifact (``-1`` ignored).
        reference_scores: ``[U, I]`` scores of the trained model, seen items at ``-inf``.
    """
    kth = -np.sort(-reference_scores, axis=1)[:, k - 1]
    got_scores = np.take_along_axis(reference_scores, np.where(got >= 0, got, 0), axis=1)
    wanted = np.minimum(np.isfinite(reference_scores).sum(axis=1), k)
    return tie_aware_recall(got, got_scores, kth, wanted, atol=atol)


def recall_ndcg_at_k(ranked: np.ndarray, heldout: sp.csr_matrix, k: int) -> dict[str, float]:
    """Recall@k and NDCG@k (binary gains), averaged over rows with held-out items.

    The formulas are common/metrics.py's (the same as training's evaluation).

    Args:
        ranked: ``[U, >=k]`` item ids, best first, known positives already removed (``-1``: no item).
        heldout: ``[U, I]`` CSR of held-out positives, one row per ranked row.
    """
    n_pos = np.diff(heldout.indptr)
    users = np.nonzero(n_pos > 0)[0]
    rows = np.asarray(ranked)[users, :k]
    hits = hits_at_k(rows, heldout[users]) & (rows >= 0)
    n = max(len(users), 1)
    return {
        f"recall@{k}": float(recall_at_k(hits, n_pos[users]).sum() / n),
        f"ndcg@{k}": float(ndcg_at_k(hits, n_pos[users]).sum() / n),
        "n_users": int(len(users)),
    }
