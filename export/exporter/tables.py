"""The embedding tables of an artifact: the layout of each (prefix or CSR), packed and written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..layout import table_file
from ..to_sparse import (
    PackedTable,
    PrefixTable,
    dense_bytes,
    first_non_prefix_row,
    pack_prefix_table,
    pack_table,
    packed_bytes,
    prefix_lengths,
)
from .files import save_npy
from .options import ExportError


def _choose_layout(name: str, mask: np.ndarray, wanted: str) -> tuple[str, str]:
    """``(layout, reason)`` of one table under ``--table-layout wanted``; refuses prefix for other masks."""
    is_prefix = prefix_lengths(mask) is not None
    if wanted == "csr":
        return "csr", "forced by --table-layout csr"
    if wanted == "prefix":
        if not is_prefix:
            row = first_non_prefix_row(mask)
            raise ExportError(
                f"--table-layout prefix: table {name} is not prefix-shaped (row {row} keeps columns "
                f"{np.flatnonzero(mask[row]).tolist()[:12]}, not [0, L)); prefix needs every row's "
                f"mask to be a prefix, as dsl-nested / dsl-mixed train them; use auto or csr"
            )
        return "prefix", "forced by --table-layout prefix"
    if is_prefix:
        return "prefix", "auto: every row of the mask is a prefix [0, L_r)"
    return "csr", "auto: some rows of the mask are not prefixes"


def write_tables(model, folder: Path, value_dtype: str, table_layout: str, arrays: dict[str, Any]):
    """Pack and write every sparse table; returns (table entries, packed tables, vectors spec, dim, n_layers)."""
    kind = model.kind
    entries: dict[str, Any] = {}
    packed: dict[str, PackedTable | PrefixTable] = {}
    for name, table in model.sparse_tables().items():
        mask = table.mask.detach().cpu().numpy().astype(bool)
        weight = (table.weight.detach().cpu().float() * table.mask.detach().cpu()).numpy()
        layout, reason = _choose_layout(name, mask, table_layout)
        table_packed = (pack_prefix_table if layout == "prefix" else pack_table)(weight, mask, value_dtype)
        files = {}
        for role, array in table_packed.arrays().items():
            files[role] = table_file(name, role)
            save_npy(folder, files[role], array, arrays)
        n_rows, width = table_packed.shape
        entry: dict[str, Any] = {
            "layout": layout,
            "layout_reason": reason,
            "shape": [n_rows, width],
            "nnz": table_packed.nnz,
            "density": table_packed.density,
            "value_dtype": value_dtype,
        }
        if layout == "prefix":
            entry["lengths_dtype"] = str(table_packed.lengths.dtype)
        else:
            entry["indptr_dtype"] = str(table_packed.indptr.dtype)
            entry["index_dtype"] = str(table_packed.indices.dtype)
        entry.update(
            {
                "bytes": table_packed.nbytes,
                "csr_bytes": packed_bytes(n_rows, width, table_packed.nnz, value_dtype),
                "dense_fp32_bytes": dense_bytes(n_rows, width, "fp32"),
                "files": files,
            }
        )
        entries[name] = entry
        packed[name] = table_packed
    n_users, n_items = int(model.n_users), int(model.n_items)
    if kind == "mf":
        spec = {
            "source": "tables",
            "users": {"table": "user_embedding", "start": 0, "stop": n_users},
            "items": {"table": "item_embedding", "start": 0, "stop": n_items},
        }
        return entries, packed, spec, int(model.dim), 0
    if kind == "lightgcn":
        rows = np.diff(packed["embedding"].indptr.astype(np.int64))
        width = int(model.dim)
        entries["embedding"]["row_groups"] = {
            "users": {
                "start": 0,
                "stop": n_users,
                "nnz": int(rows[:n_users].sum()),
                "density": float(rows[:n_users].sum() / max(n_users * width, 1)),
            },
            "items": {
                "start": n_users,
                "stop": n_users + n_items,
                "nnz": int(rows[n_users:].sum()),
                "density": float(rows[n_users:].sum() / max(n_items * width, 1)),
            },
        }
        spec = {
            "source": "lightgcn",
            "table": "embedding",
            "n_layers": int(model.n_layers),
            "adjacency": "seen",
            "mask_output": bool(model.mask_output),
            "formula": "E = mean_{l=0..L} A_hat^l E0, A_hat = D^-1/2 A D^-1/2, A = [[0, seen], [seen^T, 0]]",
            "users": {"start": 0, "stop": n_users},
            "items": {"start": n_users, "stop": n_users + n_items},
        }
        return entries, packed, spec, width, int(model.n_layers)
    if kind == "pop":
        return entries, packed, {"source": "popularity", "formula": "score = 1 * popularity[item]"}, 1, 0
    raise ExportError(f"cannot export model kind {kind!r} (known: mf, lightgcn, pop)")
