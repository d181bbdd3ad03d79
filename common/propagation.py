"""LightGCN propagation with scipy (no torch), so a reader can rebuild the served vectors.

Mirrors ``train.graph.normalized_adjacency`` and ``train.graph.propagate`` operation for
operation, in ``float32``: ``E = 1/(L+1) * sum_{l=0..L} A_hat^l E_0``, ``A_hat = D^-1/2 A D^-1/2``,
``A = [[0, R], [R^T, 0]]`` with ``R`` the binary train interactions.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def normalized_adjacency(seen: sp.csr_matrix) -> sp.csr_matrix:
    """Symmetric-normalised bipartite adjacency from the ``[n_users, n_items]`` interactions.

    Returns:
        ``[n_users + n_items, n_users + n_items]`` float32 CSR.
    """
    n_users, n_items = seen.shape
    coo = sp.coo_matrix(seen)
    users, items = coo.row.astype(np.int64), coo.col.astype(np.int64)
    n = n_users + n_items
    rows = np.concatenate([users, items + n_users])
    cols = np.concatenate([items + n_users, users])
    adj = sp.coo_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, n)).tocsr()
    adj.sum_duplicates()
    adj.data[:] = 1.0
    degree = np.asarray(adj.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        inv_sqrt = np.where(degree > 0, degree**-0.5, 0.0).astype(np.float32)
    scale = sp.diags(inv_sqrt)
    return (scale @ adj @ scale).tocsr().astype(np.float32)


def propagate(embedding: np.ndarray, norm_adj: sp.csr_matrix, n_layers: int) -> np.ndarray:
    """``E = mean_{l=0..L} A_hat^l E_0``. Shapes ``[N, d] -> [N, d]`` float32."""
    current = np.ascontiguousarray(embedding, dtype=np.float32)
    total = current.copy()
    for _ in range(n_layers):
        current = np.asarray(norm_adj @ current, dtype=np.float32)
        total += current
    return total / np.float32(n_layers + 1)


def lightgcn_vectors(
    base: np.ndarray, seen: sp.csr_matrix, n_layers: int, output_mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Served LightGCN vectors from the joint base table ``[n_users + n_items, d]``.

    Args:
        output_mask: ``bool [n_users + n_items, d]``, the base table's mask, for a model trained
            with ``model.mask_output=true``: the propagated vectors are multiplied by it, as the
            model's forward pass does (``train.models.LightGCN``).

    Returns:
        ``(users [n_users, d], items [n_items, d])`` float32.
    """
    n_users = seen.shape[0]
    final = propagate(base, normalized_adjacency(seen), n_layers)
    if output_mask is not None:
        final *= output_mask
    return final[:n_users], final[n_users:]
