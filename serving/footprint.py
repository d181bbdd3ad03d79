"""Served bytes: what a serving worker holds to answer, counted from its loaded structures.

    from serving.footprint import served_bytes
    model = Recommender.from_artifact(artifact, mmap=True)        # as a server worker loads it
    footprint = served_bytes(model, index_file_bytes)   # the FAISS index file's size (None: sparse)
    footprint["served"]     # {"mapped": ..., "read": ..., "total": ...}: index + user vectors + id maps

Each part of a `serving.recommender.Recommender` is counted where it lives:

- **mapped**: a read-only memory map of an artifact file (``SPARSEREC_MMAP=1``, the default): its
  pages sit in the page cache, shared by every worker process on the machine;
- **read**: memory of this process (read from a file, or computed at load: LightGCN's propagated
  vectors, sparse tables made dense, FAISS's own copy of a prefix index's values).

The user vectors are counted by the arrays of the worker's `serving.user_rows.UserRows` (a dense
array, or a masked model's compressed rows). A numpy array is mapped when its buffer is a memory map (its ``base`` chain reaches one). The index
is counted by kind: a ``sparse`` index by its own ``nbytes`` (mapped where its arrays are maps); a
FAISS index by its file's bytes (FAISS holds in memory what it serialises: codes, centroids,
lists, graph), of which the vectors of a ``flat`` or ``hnsw`` index loaded with ``mmap`` are mapped.
The user-id map is a Python dict, counted with ``sys.getsizeof`` of the dict, its keys and its
(non-cached) int values. Exact for what it counts: no allocator slack, no interpreter or library
code, nothing measured.

``served`` adds the index, the user vectors and the two id maps. The seen items and popularity
(the same for every model trained on one dataset) are counted apart, under ``also_held``.
"""

from __future__ import annotations

import mmap
import sys
from typing import Any

import numpy as np

SERVED_PARTS = ("index", "user_vectors", "user_ids", "item_ids")
ALSO_HELD_PARTS = ("seen", "popularity")


def is_mapped(array: Any) -> bool:
    """Whether a numpy array's buffer is a memory map (a view of an ``np.memmap`` included)."""
    seen_ids = set()
    while array is not None and id(array) not in seen_ids:
        if isinstance(array, (np.memmap, mmap.mmap)):
            return True
        seen_ids.add(id(array))
        array = getattr(array, "base", None)
    return False


def _split(mapped: int = 0, read: int = 0) -> dict[str, int]:
    return {"mapped": int(mapped), "read": int(read)}


def array_bytes(*arrays: np.ndarray) -> dict[str, int]:
    """``{"mapped", "read"}`` bytes of numpy arrays (an object array also counts the objects it points to)."""
    out = _split()
    for array in arrays:
        array = np.asarray(array) if not isinstance(array, np.ndarray) else array
        nbytes = int(array.nbytes)
        if array.dtype == object:
            nbytes += sum(sys.getsizeof(item) for item in array.ravel())
        out["mapped" if is_mapped(array) else "read"] += nbytes
    return out


def dict_bytes(mapping: dict) -> int:
    """Bytes of a str -> int dict: the dict, its keys, and its int values outside CPython's small-int cache."""
    small = range(-5, 257)
    return (
        sys.getsizeof(mapping)
        + sum(sys.getsizeof(key) for key in mapping)
        + sum(sys.getsizeof(value) for value in mapping.values() if value not in small)
    )


def searched_index(search: Any) -> Any:
    """The index object behind a backend (``FaissSearch.index``; a shard part's inner search's), or ``None``."""
    while search is not None and not hasattr(search, "index"):
        search = getattr(search, "inner", None)
    return None if search is None else search.index


def index_bytes(index: Any, file_bytes: int | None = None) -> dict[str, int]:
    """``{"mapped", "read"}`` bytes of a loaded item index (module docstring); ``file_bytes``: the size
    of a FAISS index's file (a ``sparse`` index counts its own arrays)."""
    if index is None:
        raise ValueError("no index object to count (a GPU backend holds its own tensors)")
    if getattr(index, "kind", None) == "sparse":
        total = int(index.nbytes)
        try:
            arrays = index.arrays().values()
        except ValueError:  # a loaded prefix index keeps only FAISS's copy of its values
            arrays = ()
        mapped = sum(int(a.nbytes) for a in arrays if is_mapped(a))
        return _split(min(mapped, total), total - min(mapped, total))
    if file_bytes is None:
        raise ValueError(f"a {index.kind} index is counted by its file's bytes: pass file_bytes")
    total = int(file_bytes)
    from export.index import MMAP_KINDS  # the kinds FAISS maps (IO_FLAG_MMAP_IFC) when asked to

    mapped = min(total, _faiss_mapped_codes(index.index)) if index.kind in MMAP_KINDS else 0
    return _split(mapped, total - mapped)


def _faiss_mapped_codes(faiss_index: Any) -> int:
    """Bytes of a flat / HNSW index's vectors that FAISS holds as a map of the file (0: owned memory)."""
    import faiss

    index = faiss.downcast_index(faiss_index)
    storage = faiss.downcast_index(index.storage) if hasattr(index, "storage") else index
    codes = getattr(storage, "codes", None)
    if codes is None or not hasattr(codes, "is_owned") or bool(codes.is_owned):
        return 0
    return int(codes.byte_size())


def served_bytes(model: Any, index_file_bytes: int | None = None) -> dict[str, Any]:
    """What a worker serving ``model`` (a ``Recommender``) holds, by part, mapped and read apart.

    Args:
        model: a ``serving.recommender.Recommender`` on the CPU path (its search holds the index).
        index_file_bytes: size of the artifact's FAISS index file (``None`` for a ``sparse`` index).

    Returns:
        ``{"parts": {part: {"mapped", "read"}}, "served": {"mapped", "read", "total"},
        "also_held": {"mapped", "read", "total"}}`` in bytes; ``served`` sums
        :data:`SERVED_PARTS`, ``also_held`` :data:`ALSO_HELD_PARTS`.
    """
    parts = {
        "index": index_bytes(searched_index(model.search), index_file_bytes),
        "user_vectors": array_bytes(*model.user_rows.arrays().values()),
        "user_ids": _split(read=dict_bytes(model.user_index)),
        "item_ids": array_bytes(model.item_ids),
        "seen": array_bytes(model.seen_indptr, model.seen_indices),
        "popularity": array_bytes(model.popularity, model.popular_order),
    }

    def total(names: tuple[str, ...]) -> dict[str, int]:
        mapped = sum(parts[name]["mapped"] for name in names)
        read = sum(parts[name]["read"] for name in names)
        return {"mapped": mapped, "read": read, "total": mapped + read}

    return {"parts": parts, "served": total(SERVED_PARTS), "also_held": total(ALSO_HELD_PARTS)}
