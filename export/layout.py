"""The artifact's file names and the stored forms of its arrays (id maps, popularity order), shared by
the exporter that writes them and the reader (:mod:`export.artifact`) that reads them.

    from export.layout import USER_IDS, id_array, table_file
    table_file("user_embedding", "values")   # 'user_embedding.values.npy'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .manifest import ArtifactError

USER_IDS = "user_ids.npy"
ITEM_IDS = "item_ids.npy"
POPULARITY = "popularity.npy"
POPULARITY_ORDER = "popularity.order.npy"
SEEN_INDPTR = "seen.indptr.npy"
SEEN_INDICES = "seen.indices.npy"
INDEX_FILE = "items.faiss"
USER_TOWER = "user_tower.onnx"
SCORER = "scorer.onnx"
SCORER_INT8 = "scorer.int8.onnx"


def table_file(table: str, role: str) -> str:
    """File name of one array of a packed table (``role``: indptr, indices, lengths, values, scale)."""
    return f"{table}.{role}.npy"


def id_array(ids: Any) -> np.ndarray:
    """External ids as a fixed-width unicode array ``<U<w>`` (``w``: the longest id), the stored
    form of format 2's ``user_ids.npy`` / ``item_ids.npy``.

    Raises:
        ArtifactError: an id ends in NUL, which numpy's fixed-width strings would drop.
    """
    as_str = [str(i) for i in ids]
    if any(i.endswith("\x00") for i in as_str):
        raise ArtifactError("an external id ends in a NUL character, which a .npy string array cannot keep")
    return np.array(as_str, dtype=f"<U{max(max(map(len, as_str), default=1), 1)}")


def popularity_order(popularity: np.ndarray) -> np.ndarray:
    """Item rows by count, highest first, ties in row order (the stored ``popularity.order.npy``);
    int32 where the catalogue fits."""
    order = np.argsort(-np.asarray(popularity, dtype=np.int64), kind="stable")
    return order.astype(np.int32) if len(order) < 2**31 else order
