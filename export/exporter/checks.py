"""Checks of what an export wrote: the torch model's reference vectors, served top-k fidelity, held-out recall."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch

from ..quality import overlap_at_k, recall_ndcg_at_k, tie_aware_overlap_at_k, topk_by_scores
from .options import TOLERANCE_FP32, ExportError


def reference_vectors(model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """The vectors the torch model scores with (``[n_users, d]``, ``[n_items, d]``)."""
    with torch.no_grad():
        if model.kind == "pop":
            users = np.ones((model.n_users, 1), dtype=np.float32)
            return users, model.item_counts.detach().cpu().numpy().astype(np.float32)[:, None]
        user_final, item_final = model.final_embeddings()
        return user_final.detach().cpu().float().numpy(), item_final.detach().cpu().float().numpy()


def _ranked_without(ids: np.ndarray, known: sp.csr_matrix, k: int) -> np.ndarray:
    """Drop known items (and ``-1``) from ranked ids ``[U, K']``; the first ``k`` left, ``-1`` padded."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for row, ranked in enumerate(ids):
        seen = known.indices[known.indptr[row] : known.indptr[row + 1]]
        keep = ranked[(ranked >= 0) & ~np.isin(ranked, seen)][:k]
        out[row, : len(keep)] = keep
    return out


def heldout_recall(
    search: Callable[[int], np.ndarray], users: np.ndarray, heldout: sp.csr_matrix, known: sp.csr_matrix, k: int
) -> dict[str, float]:
    """Recall/NDCG@k on the held-out split of what ``search`` ranks, each user's known items dropped.

    Args:
        search: ``depth -> ids [len(users), depth]``, ranked best first (``-1`` pads).
        users: the users ranked by ``search``.
        heldout, known: ``[n_users, n_items]`` held-out positives and the positives to drop.
    """
    known_rows = known[users]
    # rank deep enough that k items are left once a user's known ones are dropped
    depth = int(min(heldout.shape[1], k + np.diff(known_rows.indptr).max(initial=0)))
    ranked = _ranked_without(search(depth), known_rows, k)
    return recall_ndcg_at_k(ranked, heldout[users], k)


def fidelity(user_vectors, item_vectors, ref_users, ref_items, seen, users, k, value_dtype) -> dict[str, Any]:
    """Served vectors and their top-k lists (seen items excluded) against the torch model's.

    Args:
        users: the users whose lists are compared (all of them unless the catalogue is huge).
    """
    user_err = float(np.abs(user_vectors - ref_users).max(initial=0.0))
    item_err = float(np.abs(item_vectors - ref_items).max(initial=0.0))
    if value_dtype == "fp32" and max(user_err, item_err) > TOLERANCE_FP32:
        raise ExportError(f"served vectors differ from torch's by {max(user_err, item_err):.3g} (> {TOLERANCE_FP32})")
    k_eff = min(k, len(item_vectors))
    strict, tie_aware = 0.0, 0.0
    batch = max(1, int(2e7 // max(len(item_vectors), 1)))
    for start in range(0, len(users), batch):
        rows = users[start : start + batch]
        block = seen[rows]
        _, got = topk_by_scores(user_vectors[rows], item_vectors, k_eff, exclude=block)
        _, want = topk_by_scores(ref_users[rows], ref_items, k_eff, exclude=block)
        reference = ref_users[rows] @ ref_items.T
        coo = block.tocoo()
        reference[coo.row, coo.col] = -np.inf
        strict += overlap_at_k(got, want) * len(rows)
        tie_aware += tie_aware_overlap_at_k(got, reference, k_eff) * len(rows)
    return {
        "definition": f"top-{k_eff} of each user from the artifact's vectors vs from the torch model, "
        f"train items excluded",
        "users": int(len(users)),
        "all_users": bool(len(users) == len(user_vectors)),
        f"overlap@{k}": strict / max(len(users), 1),
        f"tie_aware_overlap@{k}": tie_aware / max(len(users), 1),
        "max_abs_err_user_vectors": user_err,
        "max_abs_err_item_vectors": item_err,
    }
