"""Tiny models for the export tests: MF and LightGCN with random or prefix masks, and their export.

from export_models import N_ITEMS, N_USERS, export_flat, export_tiny, prefix_model, sparse_model
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from export.exporter import ExportOptions, export_model
from train.models import build_model

N_USERS, N_ITEMS, DIM = 40, 70, 16


def interactions(seed: int = 0, n: int = 400):
    rng = np.random.default_rng(seed)
    users = np.concatenate([np.arange(N_USERS), rng.integers(0, N_USERS, n)])  # every user has history
    items = np.concatenate([rng.integers(0, N_ITEMS, N_USERS), rng.integers(0, N_ITEMS, n)])
    pairs = np.unique(users * N_ITEMS + items)
    return pairs // N_ITEMS, pairs % N_ITEMS


def sparse_model(kind: str, density: float = 0.3, seed: int = 0, dim: int = DIM):
    """A model of ``kind`` with random masks at ``density`` applied (like a DSL checkpoint)."""
    users, items = interactions(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(kind, N_USERS, N_ITEMS, dim, 2, users, items, generator=generator)
    for table in model.sparse_tables().values():
        table.mask.copy_(torch.rand(table.mask.shape, generator=generator) < density)
        table.weight.data[0, :] = 0.0  # a kept weight may be exactly zero (regrown): still stored
        table.apply_mask_()
    seen = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(N_USERS, N_ITEMS))
    return model.eval(), seen


def prefix_model(kind: str, density: float = 0.3, seed: int = 0, dim: int = DIM):
    """A model whose masks keep a prefix [0, L_r) of every row (like a dsl-nested checkpoint).

    Lengths are random around ``density x dim`` and include empty and full rows.
    """
    model, seen = sparse_model(kind, density, seed, dim)
    generator = torch.Generator().manual_seed(seed + 1)
    for table in model.sparse_tables().values():
        n_rows, width = table.mask.shape
        lengths = torch.randint(0, max(2, int(2 * density * width)), (n_rows,), generator=generator).clamp(max=width)
        lengths[1], lengths[2] = 0, width
        table.mask.copy_(torch.arange(width)[None, :] < lengths[:, None])
        table.weight.data.normal_(0, 0.1, generator=generator)
        table.weight.data[3, 0] = 0.0  # a kept weight that is exactly zero: still stored
        table.apply_mask_()
    return model, seen


def export_tiny(model, seen, out: Path, heldout=None, **options) -> Path:
    """Export ``model`` with ids ``u<n>`` / ``i<n>``, no memory measurement and no progress output."""
    options.setdefault("measure_memory", False)
    options.setdefault("progress", False)
    return export_model(
        model,
        out,
        user_ids=[f"u{u}" for u in range(N_USERS)],
        item_ids=[f"i{i}" for i in range(N_ITEMS)],
        seen=seen,
        heldout=heldout,
        training={"config": {"note": "unit test"}, "metrics": {}},
        options=ExportOptions(**options),
    )


def export_flat(model, seen, out: Path, **options) -> Path:
    """:func:`export_tiny` with a flat index unless asked otherwise (deterministic: auto would choose by
    a timing)."""
    options.setdefault("index", "flat")
    return export_tiny(model, seen, out, **options)
