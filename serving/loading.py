"""What `Recommender.from_artifact` builds from an artifact besides the search: the served item vectors,
the seen-items structure, the external id array, the lazy fold-in, a shard part's search and the
index's description.

    from serving.loading import seen_structure
    indptr, indices = seen_structure(artifact.seen_arrays(mmap=True), artifact.n_users, artifact.n_items)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from serving.backends import ItemSearch
from serving.fold_in import fold_in_from_artifact


def served_items(art: Any) -> Any:
    """The served item vectors: the sparse table where the artifact stores them so, else dense."""
    table = art.served_item_table()
    return table if table is not None else np.ascontiguousarray(art.item_vectors(), dtype=np.float32)


class LazyFoldIn:
    """The artifact's fold-in, built on first use (it reads the item vectors or propagates)."""

    def __init__(self, art: Any, ridge_lambda: float) -> None:
        self.art, self.ridge_lambda = art, ridge_lambda
        self._lock = threading.Lock()
        self._built: Any = None
        self._done = False

    def get(self) -> Any:
        if not self._done:
            with self._lock:
                if not self._done:
                    self._built = fold_in_from_artifact(self.art, self.ridge_lambda)
                    self._done = True
        return self._built


def seen_structure(
    seen: sp.spmatrix | tuple[np.ndarray, np.ndarray], n_users: int, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr, indices)`` of the seen items with columns sorted within each row (`Recommender._seen_hits`
    relies on it). Given arrays that are sorted are kept as they are (a memory map stays one)."""
    if isinstance(seen, tuple):
        indptr, indices = seen
        if len(indptr) != n_users + 1 or int(indptr[-1]) != len(indices):
            raise ValueError(
                f"seen structure: {len(indptr)} row pointers ending at {int(indptr[-1])}, "
                f"{len(indices)} indices, for {n_users} users"
            )
        # sorted within rows: every step is an increase, except where a new row starts
        steps = np.diff(indices.astype(np.int64))
        row_starts = indptr[1:-1].astype(np.int64) - 1
        steps[row_starts[(row_starts >= 0) & (row_starts < len(steps))]] = 1
        if (steps > 0).all():
            return indptr, indices
        seen = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(n_users, n_items))
    seen = sp.csr_matrix(seen)
    if seen.shape != (n_users, n_items):
        raise ValueError(f"seen has shape {seen.shape}, expected {(n_users, n_items)}")
    seen.sum_duplicates()  # also sorts column indices
    return seen.indptr, seen.indices


def external_id_array(ids: Sequence[Any]) -> np.ndarray:
    """External ids as one fixed-width numpy string array where they are short (1M ids of 7
    characters: 28 MB, against ~70 MB as Python str objects, in every worker), else as objects.
    A numpy string array is kept as it is (it may be a read-only memory map of the artifact)."""
    if isinstance(ids, np.ndarray) and ids.dtype.kind == "U":
        return ids
    as_str = [str(i) for i in ids]
    width = max(map(len, as_str), default=1)
    return np.array(as_str, dtype=f"<U{max(width, 1)}") if width <= 32 else np.array(as_str, dtype=object)


class ShardSearch:
    """The search of a shard part: items ``[start, stop)`` of the catalogue, found as ids
    ``0..stop-start`` by its own index and returned as catalogue rows (``-1`` stays ``-1``)."""

    def __init__(self, inner: ItemSearch, start: int, stop: int) -> None:
        self.inner, self.start, self.n_items = inner, int(start), int(stop) - int(start)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        found = min(int(k), self.n_items)
        if found <= 0:
            return (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
        scores, ids = self.inner.search(queries, found)
        ids = np.where(ids >= 0, ids + self.start, -1)
        if found < k:  # pad like FAISS does
            scores = np.pad(scores, ((0, 0), (0, k - found)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, k - found)), constant_values=-1)
        return scores, ids


def index_info(art: Any, index: Any, device: str) -> dict[str, Any]:
    """Kind, layout, bytes and non-zeros of the served index (a `sparse` index reports its own)."""
    entry = art.manifest.index
    if index is not None and hasattr(index, "describe"):
        info = index.describe()
    elif entry.kind == "sparse":  # on a GPU: the same arrays, as torch tensors
        info = {"kind": "sparse", "layout": entry.layout, "nnz": entry.nnz, "bytes": entry.bytes}
    else:  # a faiss kind, or dense vectors on a GPU: every entry of every item vector is stored
        file_entry = art.manifest.files.get(entry.file)
        file_bytes = None if file_entry is None else file_entry.bytes
        info = {
            "kind": entry.kind,
            "layout": "dense",
            "nnz": art.n_items * art.dim,
            "bytes": art.n_items * art.dim * 4 if device != "cpu" or entry.kind == "flat" else file_bytes,
        }
    info["device"] = device
    if entry.auto is not None:
        info["auto"] = {"chosen": entry.auto["chosen"], "timing_ms_per_query": entry.auto["timing_ms_per_query"]}
    return info
