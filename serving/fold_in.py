"""Fold-in: a served user vector for someone the artifact does not know, from their item history.

    from serving.fold_in import fold_in_from_artifact
    fold = fold_in_from_artifact(load_artifact("artifacts/mf"), ridge_lambda=10.0)
    vector = fold.vector(np.array([3, 17, 42]))        # item rows of the history -> float32 [dim]

Built from the arrays every artifact already holds (no extra export step):

- MF (`RidgeFoldIn`): the user vector solving the regularised least squares on the history's
  item vectors, ``u = (V_h^T V_h + lambda' I)^-1 V_h^T 1`` (each history item should score 1;
  ``lambda' = lambda ||V_h||_F^2 / d``, relative to the mean eigenvalue of ``V_h^T V_h``),
  with the sparsity budget of a trained user row: the solve runs over the dims the history's
  items use; where that is more than the budget (the mean non-zeros of the trained user rows,
  rounded), the `budget` dims of largest |u| are kept and the least squares solved again on them,
  so the vector holds exactly `budget` non-zeros (fewer only where the history uses fewer dims).
- LightGCN (`GraphFoldIn`): the propagation rule applied to a new row of the graph. The new user
  u has no trained base row (``e_u^(0) = 0``) and links to the history items H; with the
  symmetric normalisation ``1 / sqrt(|H| (d_i + 1))`` (d_i: item i's train degree, +1 for u),
  ``e_u^(l+1) = sum_{i in H} e_i^(l)' / sqrt(|H| (d_i + 1))`` and the served vector is
  ``mean_{l=0..L} e_u^(l)``. The item layers ``e_i^(l)`` are those of the trained graph
  (propagated from the artifact's base table and train interactions, once, at load), each rescaled
  by ``sqrt(d_i / (d_i + 1))`` for the degree u adds: exact for 1 and 2 layers; with 3 or more,
  u's own influence on its neighbours' neighbours is left out. A model trained with
  ``model.mask_output=true`` masks trained rows by their own mask; a folded-in user has none and
  keeps the dense vector.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from common.propagation import normalized_adjacency

# relative to the history's mean Gram eigenvalue (see `_ridge`); chosen on the valid items of users
# hidden from training (ML-100K MF, results/fold-in.md says how), never on test
DEFAULT_RIDGE_LAMBDA = 10.0


def _dense_rows(table: Any, rows: np.ndarray) -> np.ndarray:
    picked = table[rows]
    return np.asarray(picked.toarray() if sp.issparse(picked) else picked, dtype=np.float64)


def _ridge(vectors: np.ndarray, ridge_lambda: float) -> np.ndarray:
    """``(V^T V + lambda' I)^-1 V^T 1`` for ``V`` float64 [h, d], ``lambda' = ridge_lambda *
    ||V||_F^2 / d`` (the mean eigenvalue of ``V^T V``), so one setting fits any scale of item vectors."""
    scale = float((vectors * vectors).sum()) / vectors.shape[1]
    gram = vectors.T @ vectors + ridge_lambda * max(scale, 1e-12) * np.eye(vectors.shape[1])
    return np.linalg.solve(gram, vectors.sum(axis=0))


class RidgeFoldIn:
    """MF fold-in (module docstring).

    Args:
        items: the served item vectors, [n_items, dim] (scipy CSR or numpy).
        budget: most non-zeros of a folded-in vector.
        ridge_lambda: the ridge penalty (> 0).
    """

    kind = "ridge"

    def __init__(self, items: Any, budget: int, ridge_lambda: float = DEFAULT_RIDGE_LAMBDA) -> None:
        if ridge_lambda <= 0:
            raise ValueError(f"ridge_lambda must be > 0, got {ridge_lambda}")
        self.items, self.dim = items, int(items.shape[1])
        self.budget = max(1, min(int(budget), self.dim))
        self.ridge_lambda = float(ridge_lambda)

    def vector(self, rows: np.ndarray) -> np.ndarray:
        """float32 [dim] for the history's item rows."""
        history = _dense_rows(self.items, np.asarray(rows, dtype=np.int64))
        out = np.zeros(self.dim, dtype=np.float32)
        dims = np.flatnonzero(np.abs(history).sum(axis=0) > 0)  # the dims the history's items use
        if len(dims) == 0:
            return out
        solution = _ridge(history[:, dims], self.ridge_lambda)
        if len(dims) > self.budget:
            dims = np.sort(dims[np.argsort(-np.abs(solution), kind="stable")[: self.budget]])
            solution = _ridge(history[:, dims], self.ridge_lambda)
        out[dims] = solution
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "budget": self.budget, "ridge_lambda": self.ridge_lambda}


class GraphFoldIn:
    """LightGCN fold-in (module docstring).

    Args:
        base: the joint base table, float32 [n_users + n_items, dim].
        seen: [n_users, n_items] train interactions.
        n_layers: propagation layers L.
    """

    kind = "propagation"

    def __init__(self, base: np.ndarray, seen: sp.csr_matrix, n_layers: int) -> None:
        n_users, n_items = seen.shape
        self.n_layers = int(n_layers)
        adj = normalized_adjacency(sp.csr_matrix(seen))
        current = np.ascontiguousarray(base, dtype=np.float32)
        layers = [current[n_users:].copy()]
        for _ in range(max(self.n_layers - 1, 0)):  # item layers 0..L-1 feed the user's 1..L
            current = np.asarray(adj @ current, dtype=np.float32)
            layers.append(current[n_users:].copy())
        self.item_layers = np.stack(layers)  # [L, n_items, dim]
        degree = np.bincount(sp.csr_matrix(seen).indices, minlength=n_items).astype(np.float64)
        self.item_degree = degree
        self.dim = int(base.shape[1])

    def vector(self, rows: np.ndarray) -> np.ndarray:
        """float32 [dim] for the history's item rows (distinct)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros(self.dim, dtype=np.float64)
        if self.n_layers == 0 or len(rows) == 0:
            return out.astype(np.float32)
        degree = self.item_degree[rows]
        weights = 1.0 / np.sqrt(len(rows) * (degree + 1.0))
        rescale = np.sqrt(degree / (degree + 1.0))  # the item's own normalisation with u added
        for layer in range(self.n_layers):
            item_rows = self.item_layers[layer][rows].astype(np.float64)
            if layer > 0:
                item_rows = item_rows * rescale[:, None]
            out += weights @ item_rows
        return (out / (self.n_layers + 1)).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_layers": self.n_layers}


def user_row_budget(art: Any) -> int:
    """Mean non-zeros of the trained MF user rows (rounded, at least 1)."""
    where = art.manifest.vectors.users
    indptr = art.packed_table(where.table).indptr.astype(np.int64)
    start, stop = where.start, where.stop
    return max(1, round((indptr[stop] - indptr[start]) / max(stop - start, 1)))


def fold_in_from_artifact(
    art: Any, ridge_lambda: float = DEFAULT_RIDGE_LAMBDA, items: Any = None
) -> RidgeFoldIn | GraphFoldIn | None:
    """The fold-in of an artifact's model kind, or None where it has none (popularity).

    Args:
        items: the served item vectors where the caller already holds them (MF).
    """
    spec = art.manifest.vectors
    source = spec.source
    if source == "tables":
        if items is None:
            items = art.served_item_table()
            items = art.item_vectors() if items is None else items
        return RidgeFoldIn(items, user_row_budget(art), ridge_lambda)
    if source == "lightgcn":
        return GraphFoldIn(art.stored_table(spec.table).to_dense(), art.seen(), spec.n_layers)
    return None
