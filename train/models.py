"""Recommenders: MF-BPR, LightGCN and a popularity baseline.

Every embedding table is a :class:`MaskedEmbedding`: a dense ``weight`` plus a ``bool`` buffer
``mask`` of the same shape that travels in ``state_dict``. Dense models keep an all-true mask.
Models expose ``loss(users, pos_items, neg_items, weight_decay)``, ``full_scores(users)`` and
``final_embeddings()`` (the vectors that are scored: propagated ones for LightGCN).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn


class MaskedEmbedding(nn.Module):
    """An embedding table whose non-zeros are given by a ``bool`` mask buffer.

    Args:
        n_rows: number of rows.
        dim: embedding width.
        init_std: std of the normal initialisation.
        generator: optional torch generator for a reproducible initialisation.
    """

    def __init__(self, n_rows: int, dim: int, init_std: float = 0.1, generator: torch.Generator | None = None):
        super().__init__()
        weight = torch.empty(n_rows, dim)
        weight.normal_(0.0, init_std, generator=generator)
        self.weight = nn.Parameter(weight)
        self.register_buffer("mask", torch.ones(n_rows, dim, dtype=torch.bool))

    @property
    def n_rows(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Zero the weights outside the mask (in place)."""
        self.weight.mul_(self.mask)

    def nnz(self) -> int:
        return int(self.mask.sum())

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.weight[index]


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking loss. Shapes: ``[B]`` and ``[B]`` (or ``[B, n_neg]``)."""
    if neg_scores.dim() == 2:
        pos_scores = pos_scores.unsqueeze(1)
    return -F.logsigmoid(pos_scores - neg_scores).mean()


def l2_on_batch(*tensors: torch.Tensor) -> torch.Tensor:
    """LightGCN's regulariser: sum of squared entries / 2 / batch size."""
    batch = tensors[0].shape[0]
    return sum(t.pow(2).sum() for t in tensors) / 2.0 / batch


class MF(nn.Module):
    """Matrix factorisation scored by a dot product, trained with BPR.

    Args:
        n_users, n_items: table sizes.
        dim: embedding width.
    """

    kind = "mf"

    def __init__(
        self, n_users: int, n_items: int, dim: int, init_std: float = 0.1, generator: torch.Generator | None = None
    ):
        super().__init__()
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.user_embedding = MaskedEmbedding(n_users, dim, init_std, generator)
        self.item_embedding = MaskedEmbedding(n_items, dim, init_std, generator)

    def sparse_tables(self) -> dict[str, MaskedEmbedding]:
        """Tables that share the global non-zero budget, by state_dict prefix."""
        return {"user_embedding": self.user_embedding, "item_embedding": self.item_embedding}

    def row_groups(self) -> dict[str, tuple[str, slice]]:
        """Named row ranges for logging the budget split: group -> (table, rows)."""
        return {
            "users": ("user_embedding", slice(0, self.n_users)),
            "items": ("item_embedding", slice(0, self.n_items)),
        }

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(users [n_users, dim], items [n_items, dim])``."""
        return self.user_embedding.weight, self.item_embedding.weight

    def loss(
        self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor, weight_decay: float
    ) -> torch.Tensor:
        u = self.user_embedding(users)
        p = self.item_embedding(pos_items)
        n = self.item_embedding(neg_items)
        pos = (u * p).sum(-1)
        neg = (u.unsqueeze(1) * n).sum(-1) if n.dim() == 3 else (u * n).sum(-1)
        return bpr_loss(pos, neg) + weight_decay * l2_on_batch(u, p, n)

    @torch.no_grad()
    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item. Shape ``[len(users), n_items]``."""
        return self.user_embedding(users) @ self.item_embedding.weight.T


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


class LightGCN(nn.Module):
    """LightGCN (He et al., SIGIR 2020) over one joint user+item table.

    ``E_final = 1/(L+1) * sum_{l=0..L} A_hat^l E_0`` where ``A_hat = D^-1/2 A D^-1/2``; a score is
    ``<e_u, e_i>``. The joint table lets a global sparsity budget split itself between users and
    items.

    Args:
        n_users, n_items: table sizes.
        dim: embedding width.
        n_layers: propagation depth ``L``.
        norm_adj: ``[n_users + n_items]^2`` normalised adjacency (scipy CSR).
        mask_output: multiply the propagated vectors by the base table's mask inside the forward
            pass (issue 10, option (c)), so the scored vectors keep the budget's non-zeros and
            training scores exactly what a sparse index serves.
    """

    kind = "lightgcn"

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        n_layers: int,
        norm_adj: sp.spmatrix,
        init_std: float = 0.1,
        generator: torch.Generator | None = None,
        mask_output: bool = False,
    ):
        super().__init__()
        self.n_users, self.n_items, self.dim, self.n_layers = n_users, n_items, dim, n_layers
        self.mask_output = bool(mask_output)
        self.embedding = MaskedEmbedding(n_users + n_items, dim, init_std, generator)
        self.adjacency = Adjacency(norm_adj)  # symmetric; not a buffer: rebuilt from the data
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def norm_adj_csr(self) -> sp.csr_matrix:
        return self.adjacency.scipy

    def adjacency_for(self, device: torch.device) -> Adjacency:
        """The adjacency with its products on ``device`` (a copy is made once per device)."""
        self.adjacency = self.adjacency.to(device)
        return self.adjacency

    def sparse_tables(self) -> dict[str, MaskedEmbedding]:
        return {"embedding": self.embedding}

    def row_groups(self) -> dict[str, tuple[str, slice]]:
        return {
            "users": ("embedding", slice(0, self.n_users)),
            "items": ("embedding", slice(self.n_users, self.n_users + self.n_items)),
        }

    def propagated_rows(self, rows: torch.Tensor | None = None, with_base: bool = False):
        """Propagated vectors of the joint table's ``rows`` (``[R, d]``; all ``[N, d]`` when ``None``);
        ``with_base`` also returns the table's own rows ``[R, d]`` (see :func:`propagate`)."""
        weight = self.embedding.weight
        out = propagate(weight, self.adjacency_for(weight.device), self.n_layers, rows, with_base)
        if not self.mask_output:
            return out
        # option (c), model.mask_output: the scored vectors keep only the base table's non-zeros
        mask = self.embedding.mask if rows is None else self.embedding.mask[rows]
        return (out[0] * mask, out[1]) if with_base else out * mask

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        final = self.propagated_rows()
        return final[: self.n_users], final[self.n_users :]

    def loss(
        self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor, weight_decay: float
    ) -> torch.Tensor:
        # BPR needs the propagated vectors of the batch's rows only: propagate just those
        rows = torch.cat([users, pos_items.reshape(-1) + self.n_users, neg_items.reshape(-1) + self.n_users])
        final, ego = self.batch_rows(rows, row_block=rows.device.type == "cpu")  # ego: layer 0, for the L2 term
        u, p, n = self._split(final, users, pos_items, neg_items)
        pos = (u * p).sum(-1)
        neg = (u.unsqueeze(1) * n).sum(-1) if n.dim() == 3 else (u * n).sum(-1)
        return bpr_loss(pos, neg) + weight_decay * l2_on_batch(*self._split(ego, users, pos_items, neg_items))

    def batch_rows(self, rows: torch.Tensor, row_block: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Propagated and layer-0 vectors of ``rows`` (``[R, d]`` each, repeats allowed). ``row_block``
        (on CPU): the last layer for the distinct rows only. Off CPU a row block costs a full product
        anyway, and ``unique`` would wait for the GPU: the full table is propagated, then indexed."""
        if not row_block:
            return self.propagated_rows()[rows], self.embedding.weight[rows]
        needed, where = torch.unique(rows, return_inverse=True)
        final, ego = self.propagated_rows(needed, with_base=True)
        return final[where], ego[where]

    @staticmethod
    def _split(rows: torch.Tensor, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor):
        """``[B + P + M, d]`` rows of the concatenated batch -> user, positive, negative vectors."""
        n_users, n_pos = users.numel(), pos_items.numel()
        return (
            rows[:n_users],
            rows[n_users : n_users + n_pos].reshape(*pos_items.shape, -1),
            rows[n_users + n_pos :].reshape(*neg_items.shape, -1),
        )

    @torch.no_grad()
    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        user_final, item_final = self.final_embeddings() if self._cache is None else self._cache
        return user_final[users] @ item_final.T

    @torch.no_grad()
    def cache_embeddings(self, enabled: bool) -> None:
        """Propagate once for a whole evaluation pass (``enabled``) or drop the cache."""
        self._cache = self.final_embeddings() if enabled else None


class Popularity(nn.Module):
    """Scores every item by its number of training interactions (no parameters to learn)."""

    kind = "pop"

    def __init__(self, n_users: int, n_items: int, train_items: np.ndarray):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        counts = np.bincount(train_items, minlength=n_items).astype(np.float32)
        self.register_buffer("item_counts", torch.from_numpy(counts))

    def sparse_tables(self) -> dict[str, MaskedEmbedding]:
        return {}

    def row_groups(self) -> dict[str, tuple[str, slice]]:
        return {}

    @torch.no_grad()
    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        return self.item_counts.unsqueeze(0).expand(len(users), -1).clone()


def _build_mf(
    n_users: int,
    n_items: int,
    dim: int,
    n_layers: int,
    train_users: np.ndarray,
    train_items: np.ndarray,
    init_std: float,
    generator: torch.Generator | None,
    mask_output: bool,
) -> nn.Module:
    return MF(n_users, n_items, dim, init_std, generator)


def _build_lightgcn(
    n_users: int,
    n_items: int,
    dim: int,
    n_layers: int,
    train_users: np.ndarray,
    train_items: np.ndarray,
    init_std: float,
    generator: torch.Generator | None,
    mask_output: bool,
) -> nn.Module:
    adj = normalized_adjacency(n_users, n_items, train_users, train_items)
    return LightGCN(n_users, n_items, dim, n_layers, adj, init_std, generator, mask_output)


def _build_pop(
    n_users: int,
    n_items: int,
    dim: int,
    n_layers: int,
    train_users: np.ndarray,
    train_items: np.ndarray,
    init_std: float,
    generator: torch.Generator | None,
    mask_output: bool,
) -> nn.Module:
    return Popularity(n_users, n_items, train_items)


# The model registry: `model.name` -> a builder taking build_model's arguments. A new model is one
# entry here (and its class above); the config check lists these names.
MODELS = {"mf": _build_mf, "lightgcn": _build_lightgcn, "pop": _build_pop}


def build_model(
    name: str,
    n_users: int,
    n_items: int,
    dim: int,
    n_layers: int,
    train_users: np.ndarray,
    train_items: np.ndarray,
    init_std: float = 0.1,
    generator: torch.Generator | None = None,
    mask_output: bool = False,
) -> nn.Module:
    """Build a model from the registry; a wrong name raises ``ValueError`` listing the choices.

    ``mask_output`` (LightGCN only) masks the propagated vectors by the base table's mask."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    return builder(n_users, n_items, dim, n_layers, train_users, train_items, init_std, generator, mask_output)
