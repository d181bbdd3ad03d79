"""The artifact's item order: items sorted by prefix length where a sparse index may use the prefix layout."""

from __future__ import annotations

import copy

import numpy as np
import scipy.sparse as sp
import torch

from ..sparse_index import length_order
from ..to_sparse import prefix_lengths
from .options import ExportError, ExportOptions


def _served_item_mask(model) -> np.ndarray | None:
    """``bool [n_items, dim]``: the structure of the served item vectors, ``None`` where dense."""
    if model.kind == "mf":
        return model.item_embedding.mask.detach().cpu().numpy().astype(bool)
    if model.kind == "lightgcn" and model.mask_output:
        return model.embedding.mask.detach().cpu().numpy().astype(bool)[model.n_users :]
    return None


def prefix_item_order(model, options: ExportOptions) -> np.ndarray | None:
    """The stable by-length item order where a sparse index may use the prefix layout, else None
    (also None where the items are already in that order)."""
    if options.index not in ("auto", "sparse") or options.index_params.get("layout", "auto") in ("postings", "gaps"):
        return None
    mask = _served_item_mask(model)
    lengths = None if mask is None else prefix_lengths(mask)
    if lengths is None or bool((np.diff(lengths) >= 0).all()):
        return None
    return length_order(lengths)


def reorder_items(model, order: np.ndarray):
    """A copy of ``model`` whose item ``i`` is the original item ``order[i]`` (the caller's is untouched)."""
    model = copy.deepcopy(model)
    index = torch.from_numpy(np.asarray(order, dtype=np.int64))
    with torch.no_grad():
        if model.kind == "mf":
            table = model.item_embedding
            rows = index
        elif model.kind == "lightgcn":
            from train.models import Adjacency

            table = model.embedding
            rows = torch.cat([torch.arange(model.n_users), model.n_users + index])
            full = rows.numpy()
            model.adjacency = Adjacency(sp.csr_matrix(model.norm_adj_csr[full][:, full]))
            model._cache = None
        else:
            raise ExportError(f"cannot reorder the items of a {model.kind!r} model")
        table.weight.data = table.weight.data[rows].clone()
        table.mask.copy_(table.mask[rows])
    return model
