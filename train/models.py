"""Recommenders: MF-BPR, LightGCN and a popularity baseline.

Every embedding table is a :class:`MaskedEmbedding`: a dense ``weight`` plus a ``bool`` buffer
``mask`` of the same shape that travels in ``state_dict``. Dense models keep an all-true mask.
Models expose ``loss(users, pos_items, neg_items, weight_decay)``, ``full_scores(users)`` and
``final_embeddings()`` (the vectors that are scored: propagated ones for LightGCN).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from .graph import Adjacency, normalized_adjacency, propagate


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
