"""Mask initialisation from a Nonnegative Matrix Factorization of the train interactions (SparseRec).

SparseRec (Qu et al., "Sparser Training for On-Device Recommendation Systems", arXiv 2411.12205)
replaces the uniform random initial mask of dynamic sparse training by one taken from an NMF of
the user-item interaction matrix. ``sparsity.mask_init=nmf`` does that here:

1. ``X``: the binary train interaction matrix, users x items (scipy CSR; valid/test never enter).
2. ``X ~= P Q^T`` with ``P >= 0`` (users x d), ``Q >= 0`` (items x d), ``d`` = the embedding width,
   by Lee and Seung's multiplicative updates for the Frobenius loss (Lee & Seung, "Algorithms for
   Non-negative Matrix Factorization", NIPS 2000): ``P <- P * (X Q) / (P Q^T Q + eps)``, then
   ``Q <- Q * (X^T P) / (Q P^T P + eps)``; a few dozen iterations from a seeded random start.
   No scikit-learn: the products are a sparse-dense one (scipy) and small dense ones (numpy).
3. The mask: factor column ``k`` is embedding dimension ``k``. Entry ``(u, k)`` of the user rows is
   active where ``P[u, k]`` is among the largest of ``P``; likewise for the item rows and ``Q``.

Choices made here (the stored copy of the paper that could be read held its abstract, which says
only that the mask is initialised "using Nonnegative Matrix Factorization"; these are ours):

- **Budget split between users and items**: each row group (users, items) gets the share of the
  budget proportional to its number of entries (largest remainder for the rounding), i.e. exactly
  ``n_rows x round(density x dim)`` per group under ``budget_rule=small-dense``, the same split as
  the small-dense rival and the random mask's expectation. Not a global top-k over ``P`` and ``Q``
  together: NMF is invariant to ``P D, Q D^-1`` for any positive diagonal ``D``, so which table's
  entries are "larger" is not defined by the factorisation. Within a group the choice is global
  (a popular user may hold many dimensions, a user with no train pair none).
- **Only the mask** comes from the factors; the weights keep their random initialisation (then
  masked), so ``mask_init`` changes one thing against ``random``.
- **Ties** (e.g. the all-zero factor rows of items with no train pair) are broken by a random
  permutation drawn from the sparsifier's seeded generator, not by position, so the leftovers
  do not pile onto the first rows.
- **Prefix updaters** (``dsl-nested``, ``dsl-mixed``: every row a prefix ``[0, L_r)``): NMF picks
  single entries, which a prefix layout cannot keep, so they keep its *counts* instead: row ``r``
  starts as the prefix of length ``L_r`` = the number of entries the NMF mask gives it
  (:func:`prefix_masks`). Same counts per row, so the same budget, exactly; what the NMF
  contributes is how the budget is spread over rows (popular rows long), not which dimensions.
  With random initial weights the choice of dimensions carries nothing at the start, and a
  prefix aligns users and items by construction (a user and an item share ``min(L_u, L_i)`` dims).
- Float64, 50 iterations, ``eps = 1e-10``, start ``sqrt(mean(X) / d) * |N(0, 1)|`` (the scale
  scikit-learn's ``init='random'`` uses). Deterministic for a seed and a dataset: every rank of a
  data-parallel run computes the same masks (and the start-of-training check compares them).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

log = logging.getLogger(__name__)

MASK_INITS = ("random", "nmf")
ITERATIONS = 50
EPS = 1e-10


def interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """The binary ``[n_users, n_items]`` CSR matrix of the ``(users[i], items[i])`` pairs (duplicates count once)."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    matrix = sp.csr_matrix((np.ones(len(users), dtype=np.float64), (users, items)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def reconstruction_error(matrix: sp.spmatrix, p: np.ndarray, q: np.ndarray) -> float:
    """``||X - P Q^T||_F^2`` without forming ``P Q^T``: ``||X||^2 - 2 tr(P^T X Q) + tr(P^T P Q^T Q)``."""
    x = matrix.tocsr()
    cross = float(np.einsum("ij,ij->", p, x @ q))
    gram = float(np.einsum("ij,ij->", p.T @ p, q.T @ q))
    return max(float(x.multiply(x).sum()) - 2.0 * cross + gram, 0.0)


def nmf(
    matrix: sp.spmatrix, rank: int, iterations: int = ITERATIONS, seed: int = 0, eps: float = EPS
) -> tuple[np.ndarray, np.ndarray]:
    """Nonnegative ``P`` (rows x rank), ``Q`` (cols x rank) with ``X ~= P Q^T`` (Lee-Seung multiplicative updates).

    Args:
        matrix: a nonnegative sparse matrix (CSR or anything scipy converts).
        rank: the inner dimension ``d``.
        iterations: full updates of ``P`` then ``Q``; each does not increase ``||X - P Q^T||_F``.
        seed: seeds the random start (numpy ``default_rng``); same seed, same data: same factors.
        eps: added to the denominators (a row of ``X`` with no entry drives its factor row to 0).

    Returns:
        ``(P, Q)``, float64.
    """
    if rank < 1:
        raise ValueError(f"nmf rank must be >= 1, got {rank}")
    x = sp.csr_matrix(matrix, dtype=np.float64)
    if x.nnz and float(x.data.min()) < 0:
        raise ValueError("nmf needs a nonnegative matrix")
    xt = x.T.tocsr()
    n_rows, n_cols = x.shape
    rng = np.random.default_rng(seed)
    scale = math.sqrt(float(x.sum()) / max(n_rows * n_cols, 1) / rank)
    p = scale * np.abs(rng.standard_normal((n_rows, rank)))
    q = scale * np.abs(rng.standard_normal((n_cols, rank)))
    for _ in range(iterations):
        denominator = p @ (q.T @ q)
        denominator += eps
        p *= x @ q
        p /= denominator
        denominator = q @ (p.T @ p)
        denominator += eps
        q *= xt @ p
        q /= denominator
    return p, q


def split_budget(budget: int, sizes: list[int]) -> list[int]:
    """``budget`` split proportionally to ``sizes`` (largest remainder; ties: the earlier part)."""
    total = sum(sizes)
    if not 0 <= budget <= total:
        raise ValueError(f"budget {budget} outside [0, {total}]")
    exact = [budget * s / total for s in sizes]
    parts = [int(math.floor(e)) for e in exact]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[: budget - sum(parts)]:
        parts[i] += 1
    return parts


def top_entries(scores: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``bool`` mask (shape of ``scores``) of its ``k`` largest entries; ties broken by a seeded random order."""
    flat = scores.reshape(-1).to(torch.float64)
    permutation = torch.randperm(flat.numel(), generator=generator)
    order = torch.sort(flat[permutation], descending=True, stable=True).indices
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[permutation[order[:k]]] = True
    return keep.reshape(scores.shape)


def masks_from_factors(
    shapes: list[torch.Size], groups: list[tuple[int, slice, np.ndarray]], budget: int, generator: torch.Generator
) -> list[Tensor]:
    """Masks for ``[rows, dim]`` tables holding exactly ``budget`` entries, chosen from factor magnitudes.

    Args:
        shapes: the tables' shapes.
        groups: ``(table index, row slice, factor [rows, dim])`` per row group; together they cover
            every row of every table once.
        budget: non-zeros over all tables.
        generator: breaks ties among equal factor entries.

    Returns:
        CPU ``bool`` masks, one per table; group ``g`` holds ``split_budget(budget, entries)[g]``
        entries, its largest factor entries.
    """
    masks = [torch.zeros(tuple(s), dtype=torch.bool) for s in shapes]
    covered = [torch.zeros(int(s[0]), dtype=torch.int64) for s in shapes]
    for table, rows, factor in groups:
        expected = covered[table][rows].shape + (int(shapes[table][1]),)
        if tuple(factor.shape) != expected:
            raise ValueError(
                f"factor of shape {tuple(factor.shape)} for rows {rows} of table {table}; expected {expected}"
            )
        covered[table][rows] += 1
    for i, c in enumerate(covered):
        if not bool((c == 1).all()):
            raise ValueError(f"row groups must cover every row of table {i} exactly once")
    parts = split_budget(budget, [int(np.asarray(f).size) for _, _, f in groups])
    for (table, rows, factor), k in zip(groups, parts):
        masks[table][rows] = top_entries(torch.from_numpy(np.asarray(factor, dtype=np.float64)), k, generator)
    return masks


def prefix_masks(masks: list[Tensor]) -> list[Tensor]:
    """Each ``[rows, dim]`` mask with every row made the prefix ``[0, L_r)`` of its own count ``L_r``
    (same count per row, so the same total)."""
    out = []
    for mask in masks:
        lengths = mask.sum(dim=1, keepdim=True)
        out.append(torch.arange(mask.shape[1], device=mask.device).unsqueeze(0) < lengths)
    return out


def nmf_masks(
    shapes: list[torch.Size],
    row_groups: dict[str, tuple[int, slice]],
    users: np.ndarray,
    items: np.ndarray,
    budget: int,
    seed: int,
    generator: torch.Generator,
    iterations: int = ITERATIONS,
) -> tuple[list[Tensor], dict]:
    """SparseRec's initial masks: NMF of the train interactions, the largest factor entries (see the module doc).

    Args:
        shapes: the masked tables' ``[rows, dim]`` shapes (one width for all).
        row_groups: ``{"users": (table index, rows), "items": (table index, rows)}``.
        users, items: the train pairs.
        budget: non-zeros over all tables.
        seed: the NMF start's seed (the run's).
        generator: breaks ties among equal factor entries.

    Returns:
        ``(masks, info)``; ``info`` has the NMF's ``seconds``, ``rank``, ``iterations`` and the
        relative reconstruction error ``||X - P Q^T||_F / ||X||_F``.
    """
    if set(row_groups) != {"users", "items"}:
        raise ValueError(f"mask_init=nmf needs the row groups users and items, got {sorted(row_groups)}")
    dims = {int(s[1]) for s in shapes}
    if len(dims) != 1:
        raise ValueError(f"mask_init=nmf needs one embedding width over the tables, got {sorted(dims)}")
    rank = dims.pop()
    user_table, user_rows = row_groups["users"]
    item_table, item_rows = row_groups["items"]
    n_users = len(range(*user_rows.indices(int(shapes[user_table][0]))))
    n_items = len(range(*item_rows.indices(int(shapes[item_table][0]))))
    matrix = interaction_matrix(users, items, n_users, n_items)
    start = time.perf_counter()
    p, q = nmf(matrix, rank, iterations=iterations, seed=seed)
    seconds = time.perf_counter() - start
    norm = math.sqrt(float(matrix.nnz)) or 1.0
    info = {
        "seconds": round(seconds, 3),
        "rank": rank,
        "iterations": iterations,
        "relative_error": round(math.sqrt(reconstruction_error(matrix, p, q)) / norm, 6),
        "shape": [n_users, n_items],
        "nnz": int(matrix.nnz),
    }
    masks = masks_from_factors(shapes, [(user_table, user_rows, p), (item_table, item_rows, q)], budget, generator)
    return masks, info
