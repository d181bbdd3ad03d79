"""FAISS item indexes for maximum-inner-product search, behind one small class.

Kinds (``ItemIndex.build(kind, item_vectors, **params)``):

- ``flat``: ``IndexFlatIP``, exact.
- ``ivf``:  ``IndexIVFFlat`` with inner product; ``nlist ~ 4 sqrt(n_items)`` capped so every list
  gets >= 39 training points, ``nprobe`` searched lists.
- ``hnsw``: ``IndexHNSWFlat`` (L2) over the standard MIPS-to-L2 transform: item ``x -> [x,
  sqrt(M^2 - |x|^2)]``, query ``q -> [q, 0]`` with ``M`` the largest item norm, so the nearest
  item in L2 is the one with the largest inner product; the scores returned are recomputed true
  inner products.
- ``sq8``:  ``IndexScalarQuantizer`` (8 bits per component), inner product.
- ``pq``:   ``IndexPQ`` with ``m`` sub-quantizers (``m`` divides ``dim``), inner product.

``search`` always returns ``(scores [B, k] float32, ids [B, k] int64)``, highest score first,
``-1`` ids (and ``-inf`` scores) where fewer than ``k`` items were found. No torch here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .quality import as_queries

EXACT_KINDS = ("flat",)


# kinds whose vectors faiss can map from the file (IO_FLAG_MMAP_IFC) instead of reading them
MMAP_KINDS = ("flat", "hnsw")


def _check_kind(kind: str) -> None:
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {list(INDEX_KINDS)}")


def _ivf_params(n_items: int, dim: int) -> dict[str, Any]:
    # 4 sqrt(n) lists, but no fewer than 39 training points per list (faiss's own warning
    # threshold), at least 1 list; probing a quarter of the lists, at least 8 and at most 64
    nlist = max(1, min(int(4 * math.sqrt(n_items)), n_items // 39, 65536))
    return {"nlist": nlist, "nprobe": min(nlist, max(8, min(64, math.ceil(nlist / 4))))}


def _pq_params(n_items: int, dim: int) -> dict[str, Any]:
    # about 4 dimensions per sub-quantizer; 8 bits unless there are too few items to train
    m = max(d for d in range(1, dim + 1) if dim % d == 0 and d <= max(1, dim // 4))
    nbits = int(min(8, max(1, math.floor(math.log2(max(n_items, 2))))))
    return {"m": m, "nbits": nbits}


def _build_flat(items: np.ndarray, params: dict[str, Any]) -> tuple[faiss.Index, np.ndarray]:
    return faiss.IndexFlatIP(items.shape[1]), items


def _build_ivf(items: np.ndarray, params: dict[str, Any]) -> tuple[faiss.Index, np.ndarray]:
    dim = items.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, int(params["nlist"]), faiss.METRIC_INNER_PRODUCT)
    index.train(items)
    return index, items


def _build_hnsw(items: np.ndarray, params: dict[str, Any]) -> tuple[faiss.Index, np.ndarray]:
    """HNSW is an L2 graph: one extra component makes every item's norm ``max_norm`` (inner product
    order = L2 order for a query padded with 0); ``max_norm`` is recorded in ``params``."""
    norms = np.linalg.norm(items.astype(np.float64), axis=1)
    max_norm = float(norms.max()) if len(items) else 0.0
    params["max_norm"] = max_norm
    extra = np.sqrt(np.maximum(max_norm**2 - norms**2, 0.0)).astype(np.float32)
    index = faiss.IndexHNSWFlat(items.shape[1] + 1, int(params["M"]))
    index.hnsw.efConstruction = int(params["efConstruction"])
    return index, np.hstack([items, extra[:, None]])


def _build_sq8(items: np.ndarray, params: dict[str, Any]) -> tuple[faiss.Index, np.ndarray]:
    index = faiss.IndexScalarQuantizer(items.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    index.train(items)
    return index, items


def _build_pq(items: np.ndarray, params: dict[str, Any]) -> tuple[faiss.Index, np.ndarray]:
    dim = items.shape[1]
    m, nbits = int(params["m"]), int(params["nbits"])
    if dim % m:
        raise ValueError(f"pq: m={m} must divide dim={dim}")
    index = faiss.IndexPQ(dim, m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.train(items)
    return index, items


# The index registry: kind -> (default parameters from (n_items, dim), builder returning the
# trained index and the vectors to add). A new kind is one entry here.
_KINDS: dict[str, tuple[Any, Any]] = {
    "flat": (lambda n_items, dim: {}, _build_flat),
    "ivf": (_ivf_params, _build_ivf),
    "hnsw": (lambda n_items, dim: {"M": 32, "efConstruction": 80, "efSearch": 128}, _build_hnsw),
    "sq8": (lambda n_items, dim: {}, _build_sq8),
    "pq": (_pq_params, _build_pq),
}
INDEX_KINDS = tuple(_KINDS)  # ("flat", "ivf", "hnsw", "sq8", "pq")


def default_params(kind: str, n_items: int, dim: int) -> dict[str, Any]:
    """Parameters used when none are given (all of them end up in the manifest)."""
    _check_kind(kind)
    return _KINDS[kind][0](n_items, dim)


class ItemIndex:
    """A FAISS index over item vectors plus the kind's query transform.

    Args:
        kind: one of :data:`INDEX_KINDS`.
        index: the faiss index (for ``hnsw`` over ``dim + 1`` components).
        dim: item vector width.
        params: the kind's parameters (``nprobe``, ``efSearch``, ``max_norm``, ...).
    """

    def __init__(self, kind: str, index: faiss.Index, dim: int, params: dict[str, Any]):
        _check_kind(kind)
        self.kind = kind
        self.index = index
        self.dim = int(dim)
        self.params = dict(params)
        self.n_items = int(index.ntotal)
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = int(self.params["nprobe"])
        elif self.kind == "hnsw":
            faiss.downcast_index(self.index).hnsw.efSearch = int(self.params["efSearch"])

    # ------------------------------------------------------------------ build / save / load
    @classmethod
    def build(cls, kind: str, item_vectors: np.ndarray, **params: Any) -> "ItemIndex":
        """Build and fill an index of ``kind`` over ``[n_items, dim]`` float32 vectors.

        ``params`` override :func:`default_params`; the resolved ones are in ``.params``.
        """
        _check_kind(kind)
        items = np.ascontiguousarray(item_vectors, dtype=np.float32)
        n_items, dim = items.shape
        resolved = {**default_params(kind, n_items, dim), **params}
        index, items = _KINDS[kind][1](items, resolved)
        index.add(items)
        return cls(kind, index, dim, resolved)

    def save(self, path: str | Path) -> None:
        """Write the faiss index (``faiss.write_index``); parameters go in the manifest."""
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, kind: str, params: dict[str, Any], mmap: bool = False) -> "ItemIndex":
        """Read an index written by :meth:`save` with the parameters stored beside it.

        ``mmap``: a ``flat`` or ``hnsw`` index maps its vectors from the file
        (``faiss.IO_FLAG_MMAP_IFC``, read-only) instead of copying them, so server workers on one
        machine share one copy in the page cache; the other kinds are read into memory."""
        _check_kind(kind)
        flags = faiss.IO_FLAG_MMAP_IFC if mmap and kind in MMAP_KINDS else 0
        index = faiss.read_index(str(path), flags)
        dim = index.d - 1 if kind == "hnsw" else index.d
        return cls(kind, index, dim, params)

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by inner product.

        Args:
            queries: ``[B, dim]`` float32 (a single ``[dim]`` vector is accepted).
            k: number of items per query.
        Returns:
            ``(scores [B, k] float32, ids [B, k] int64)``, highest first; ``-1`` / ``-inf`` pad.
        """
        queries = as_queries(queries, self.dim)
        k = int(k)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if self.kind == "hnsw":
            padded = np.hstack([queries, np.zeros((len(queries), 1), dtype=np.float32)])
            _, ids = self.index.search(padded, k)
            scores = self._exact_scores(queries, ids)
            order = np.argsort(-scores, axis=1, kind="stable")
            scores = np.take_along_axis(scores, order, axis=1)
            ids = np.take_along_axis(ids, order, axis=1)
        else:
            scores, ids = self.index.search(queries, k)
        ids = ids.astype(np.int64, copy=False)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        return scores, ids

    def _exact_scores(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """True inner products ``<q, x_id>`` for the ids found (``-inf`` for ``-1``)."""
        valid = ids >= 0
        scores = np.full(ids.shape, -np.inf, dtype=np.float32)
        if valid.any():
            vectors = self.index.reconstruct_batch(ids[valid].astype(np.int64))[:, : self.dim]
            rows = np.nonzero(valid)[0]
            scores[valid] = np.einsum("nd,nd->n", queries[rows], vectors)
        return scores

    def __repr__(self) -> str:
        return f"ItemIndex(kind={self.kind!r}, n_items={self.n_items}, dim={self.dim}, params={self.params})"
