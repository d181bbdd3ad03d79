"""LightGCN's graph on the torch side: the normalised user-item adjacency, its product with the embedding
table in row blocks, and ``propagate`` (the layer mean) with a memory-lean backward.

    from train.graph import Adjacency, normalized_adjacency, propagate
    adjacency = Adjacency(normalized_adjacency(n_users, n_items, train_users, train_items))
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch


def normalized_adjacency(n_users: int, n_items: int, train_users: np.ndarray, train_items: np.ndarray) -> sp.csr_matrix:
    """Symmetric-normalised bipartite adjacency ``D^-1/2 A D^-1/2``, ``A = [[0, R], [R^T, 0]]``.

    Returns a ``[n_users + n_items, n_users + n_items]`` float32 CSR matrix. The formula lives in
    :mod:`common.propagation` (torch-free), so the artifact reader rebuilds exactly this matrix.
    """
    from common.propagation import normalized_adjacency as from_interactions

    seen = sp.csr_matrix(
        (np.ones(len(train_users), dtype=np.float32), (train_users, train_items)), shape=(n_users, n_items)
    )
    return from_interactions(seen)


def _torch_csr(matrix: sp.csr_matrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """A torch CSR tensor sharing the scipy matrix's arrays on CPU (int32 indices where they fit:
    torch's CSR product ran 1.35x faster with them than with int64 on the Gowalla graph)."""
    index_dtype = np.int32 if max(matrix.nnz, *matrix.shape) < 2**31 else np.int64
    indptr = torch.from_numpy(np.ascontiguousarray(matrix.indptr, dtype=index_dtype))
    indices = torch.from_numpy(np.ascontiguousarray(matrix.indices, dtype=index_dtype))
    data = torch.from_numpy(np.ascontiguousarray(matrix.data, dtype=np.float32))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        csr = torch.sparse_csr_tensor(indptr, indices, data, matrix.shape, check_invariants=False)
    return csr if torch.device(device).type == "cpu" else csr.to(device)


def _csr_matmul(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``matrix @ dense`` for a torch CSR ``matrix``, written into a fresh uninitialised tensor.

    Why not ``torch.sparse.mm``: on CPU it zero-fills a result and copies it before the product;
    ``addmm`` with ``beta=0`` into ``out`` skips both (0.67x the CPU time on the Gowalla graph).
    ``beta=0`` ignores ``out``'s contents, NaN included (the documented BLAS rule).
    """
    out = dense.new_empty(matrix.shape[0], dense.shape[1])
    return torch.addmm(out, matrix, dense.contiguous(), beta=0.0, alpha=1.0, out=out)


class Adjacency:
    """A symmetric sparse ``[N, N]`` matrix ``A`` (LightGCN's normalised adjacency) and the
    products propagation needs, as torch CSR products (they use torch's intra-op threads).

    ``matmul(X) = A @ X``; ``row_block(rows)`` is ``A[rows]``, whose product costs only the
    non-zeros of those rows (the last layer of a training step needs only the batch's rows).

    Args:
        matrix: symmetric ``[N, N]`` scipy CSR (float32).
        device: where the products run. Off CPU a row block is the full product, then the rows.
    """

    def __init__(self, matrix: sp.spmatrix, device: torch.device | str = "cpu"):
        self.scipy = sp.csr_matrix(matrix, dtype=np.float32)
        self.scipy.sort_indices()
        self.device = torch.device(device)
        self.torch = _torch_csr(self.scipy, self.device)
        self.shape = self.scipy.shape

    def to(self, device: torch.device | str) -> "Adjacency":
        return self if torch.device(device) == self.device else Adjacency(self.scipy, device)

    def __deepcopy__(self, memo: dict) -> "Adjacency":
        """Never changed in place, so a deep copy of a model shares it (torch CSR cannot be deep-copied)."""
        return self

    def matmul(self, dense: torch.Tensor) -> torch.Tensor:
        """``A @ dense``: ``[N, d] -> [N, d]`` (no autograd; see :class:`_Propagation`)."""
        return _csr_matmul(self.torch, dense)

    def row_block(self, rows: torch.Tensor) -> "RowBlock":
        return RowBlock(self, rows)


class RowBlock:
    """``A[rows]`` of an :class:`Adjacency`: ``matmul(X) = A[rows] @ X`` (``[N, d] -> [R, d]``) and
    ``t_matmul(G) = A[rows]^T @ G`` (``[R, d] -> [N, d]``, the backward of the first)."""

    def __init__(self, adjacency: Adjacency, rows: torch.Tensor):
        self.adjacency, self.rows = adjacency, rows
        on_cpu = adjacency.device.type == "cpu"
        self.block = adjacency.scipy[rows.numpy()] if on_cpu else None  # scipy's C++ row gather

    def matmul(self, dense: torch.Tensor) -> torch.Tensor:
        if self.block is None:
            return self.adjacency.matmul(dense)[self.rows]
        return _csr_matmul(_torch_csr(self.block), dense)

    def t_matmul(self, grad: torch.Tensor) -> torch.Tensor:
        if self.block is None:  # A^T = A: scatter the rows, then one full product
            n_rows = self.adjacency.shape[0]
            scattered = grad.new_zeros(n_rows, grad.shape[1]).index_add_(0, self.rows, grad)
            return self.adjacency.matmul(scattered)
        # the CSC arrays of A[rows] are the CSR arrays of its transpose (one linear pass)
        transposed = self.block.tocsc()
        transposed = sp.csr_matrix(
            (transposed.data, transposed.indices, transposed.indptr), shape=transposed.shape[::-1]
        )
        return _csr_matmul(_torch_csr(transposed), grad)


class _Propagation(torch.autograd.Function):
    """``mean_{l=0..L} (A^l E)[rows]`` (all rows when ``rows`` is ``None``) with a hand-written
    backward, for a symmetric ``A``; with ``rows`` also ``E[rows]`` itself (the loss's L2 term),
    so that one pass over the table serves both gradients.

    Forward: layers ``1..L-1`` are full products; layer ``L`` is needed only at ``rows`` (a row
    block product). Backward of ``out = S^T P E / (L+1)``, ``P = sum_l A^l``, ``S`` the row
    selection: ``grad_E = sum_l A^l S g / (L+1)``, by Horner's rule ``h = S g; L times: h = A h + S g``;
    the first product ``A S g = A[rows]^T g`` touches only the rows' non-zeros. Nothing is saved
    for the backward but the row block: the map is linear in ``E``.
    """

    @staticmethod
    def forward(ctx, adjacency: Adjacency, n_layers: int, rows: torch.Tensor | None, embedding: torch.Tensor):
        ctx.set_materialize_grads(False)
        base = None if rows is None else embedding[rows]
        total = embedding.clone() if rows is None else base.clone()
        current = embedding.detach()
        block = None
        for layer in range(1, n_layers + 1):
            if rows is not None and layer == n_layers:
                block = adjacency.row_block(rows)
                total += block.matmul(current)
            else:
                current = adjacency.matmul(current)
                total += current if rows is None else current[rows]
        ctx.adjacency, ctx.n_layers, ctx.rows, ctx.block = adjacency, n_layers, rows, block
        ctx.n_rows = embedding.shape[0]
        total.div_(n_layers + 1)
        return (total, base) if rows is not None else total

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None, base_grad: torch.Tensor | None = None):
        adjacency, rows, n_layers = ctx.adjacency, ctx.rows, ctx.n_layers
        if grad is None and base_grad is None:
            return None, None, None, None
        if rows is None:
            grad = grad.contiguous() / (n_layers + 1)
            out = grad.clone()
            for _ in range(n_layers):
                out = adjacency.matmul(out).add_(grad)
            return None, None, None, out
        width = (grad if grad is not None else base_grad).shape[1]
        if grad is None:
            out = base_grad.new_zeros(ctx.n_rows, width)
        else:
            grad = grad.contiguous() / (n_layers + 1)
            if n_layers == 0:
                out = grad.new_zeros(ctx.n_rows, width).index_add_(0, rows, grad)
            else:
                out = ctx.block.t_matmul(grad).index_add_(0, rows, grad)
                for _ in range(n_layers - 1):
                    out = adjacency.matmul(out).index_add_(0, rows, grad)
        if base_grad is not None:
            out.index_add_(0, rows, base_grad.contiguous())
        return None, None, None, out


def propagate(
    embedding: torch.Tensor,
    adjacency: Adjacency | sp.spmatrix,
    n_layers: int,
    rows: torch.Tensor | None = None,
    with_base: bool = False,
):
    """LightGCN propagation: ``E = mean_{l=0..L} A_hat^l E_0``. Shapes ``[N, d] -> [N, d]``.

    With ``rows`` (``long [R]``), returns ``E[rows]`` (``[R, d]``) and computes the last layer for
    those rows only: the same values and gradients as ``propagate(...)[rows]``, for less work;
    ``with_base`` returns ``(E[rows], E_0[rows])``. ``adjacency`` must be symmetric (an
    :class:`Adjacency`, or a scipy matrix wrapped on CPU).
    """
    if not isinstance(adjacency, Adjacency):
        adjacency = Adjacency(adjacency)
    if rows is None:
        if with_base:
            raise ValueError("propagate: with_base needs rows")
        return _Propagation.apply(adjacency, n_layers, None, embedding)
    final, base = _Propagation.apply(adjacency, n_layers, rows, embedding)
    return (final, base) if with_base else final
