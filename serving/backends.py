"""Item-search backends: given user vectors, the top-k items by inner product.

Both expose `search(queries float32 [B, dim], k) -> (scores float32 [B, k], ids int64 [B, k])`,
highest first, id -1 where fewer than k items were found (the FAISS convention), so the seen-item
filtering in `serving.recommender` is one code path whatever the device.

- `FaissSearch` (SPARSEREC_DEVICE=cpu): the artifact's own index; exact for `flat` and `sparse`
  (export.sparse_index: FAISS prefix shards or sparse_dot_topn posting lists), approximate for
  `ivf`, `hnsw`, `sq8`, `pq`.
- `TorchSearch` (SPARSEREC_DEVICE=cuda): exact scores `queries @ item_vectors.T` and `torch.topk`
  on the GPU; equal to the CPU path on a `flat` index. torch is imported here only, lazily, so the
  CPU service never loads it.
- `TorchSparseSearch` (SPARSEREC_DEVICE=cuda, `sparse` index): the same answers from the sparse
  index's arrays: prefix layout as one matmul per length bucket, postings and gaps layouts (gaps
  decoded at load) as a CSR (int32 indices) sparse-dense matmul, then `torch.topk`; tested
  against the CPU path.
"""

from __future__ import annotations

import logging
import warnings
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)


def _top_k(torch, scores, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [B, k] float32, ids [B, k] int64)``, best first, of a ``[B, n_items]`` torch tensor;
    padded like FAISS (``-inf``, ``-1``) where there are fewer than ``k`` items."""
    k_found = min(k, scores.shape[1])
    top = torch.topk(scores, k_found, dim=1, largest=True, sorted=True)
    values = top.values.float().cpu().numpy()
    ids = top.indices.cpu().numpy().astype(np.int64)
    if k_found < k:
        pad = k - k_found
        values = np.pad(values, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return values, ids


class ItemSearch(Protocol):
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class FaissSearch:
    """Top-k through an index object with the export reader's `search(queries, k)`."""

    def __init__(self, index: ItemSearch) -> None:
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=np.int64)


class TorchSearch:
    """Exact inner-product top-k on a torch device.

    Args:
        item_vectors: float32 [n_items, dim], copied to the device once.
        device: a torch device string, "cuda" in production; "cpu" works too (used by tests to
            check this code path on machines without a GPU).
    """

    def __init__(self, item_vectors: np.ndarray, device: str = "cuda") -> None:
        import torch  # lazy: only the GPU path pays for torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("SPARSEREC_DEVICE=cuda but torch sees no CUDA device")
        # Full fp32 matmul (no TF32), so scores match the CPU index to float rounding.
        torch.set_float32_matmul_precision("highest")
        self.torch = torch
        self.device = torch.device(device)
        items = np.ascontiguousarray(item_vectors, dtype=np.float32)
        self.items = torch.from_numpy(items).to(self.device)
        self.n_items = items.shape[0]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
            return _top_k(torch, q @ self.items.T, k)


class TorchSparseSearch:
    """Exact inner-product top-k on a torch device from a ``sparse`` index's arrays.

    Args:
        layout: ``prefix`` (arrays ``lengths`` non-decreasing, ``values`` row-major) or ``postings``
            (arrays ``indptr``, ``indices``, ``values``: the item table transposed, ``[dim, n_items]``)
            or ``gaps`` (export.gap_postings; decoded here into the postings form).
        arrays: the index arrays by role (``export.artifact.Artifact.sparse_index_arrays``).
        dim, n_items: vector width and catalogue size.
        device: "cuda" in production; "cpu" runs the same code (tests without a GPU).
    """

    def __init__(
        self, layout: str, arrays: dict[str, np.ndarray], dim: int, n_items: int, device: str = "cuda"
    ) -> None:
        import scipy.sparse as sp
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("SPARSEREC_DEVICE=cuda but torch sees no CUDA device")
        torch.set_float32_matmul_precision("highest")  # no TF32: scores match the CPU index
        self.torch = torch
        self.device = torch.device(device)
        self.layout, self.dim, self.n_items = layout, int(dim), int(n_items)
        if layout == "prefix":
            lengths = np.asarray(arrays["lengths"], dtype=np.int64)
            values = np.asarray(arrays["values"], dtype=np.float32)
            starts = np.concatenate([[0], np.cumsum(lengths)])
            bounds = np.concatenate([[0], np.flatnonzero(np.diff(lengths)) + 1, [len(lengths)]])
            # one [n_bucket, L] block per distinct length; empty rows score 0 and need no block
            self.buckets = []
            for first, last in zip(bounds[:-1], bounds[1:]):
                width = int(lengths[first]) if last > first else 0
                if width == 0:
                    continue
                block = values[starts[first] : starts[last]].reshape(last - first, width)
                self.buckets.append((int(first), int(last), width, torch.from_numpy(block.copy()).to(self.device)))
        elif layout in ("postings", "gaps"):
            if layout == "gaps":  # the gap-coded lists as plain CSR postings
                from export.gap_postings import decode, validate

                validate(arrays, dim, n_items)
                indptr, indices, values = decode(arrays)
                arrays = {"indptr": indptr, "indices": indices, "values": values}
            postings = sp.csr_matrix((arrays["values"], arrays["indices"], arrays["indptr"]), shape=(dim, n_items))
            items = postings.transpose().tocsr()  # [n_items, dim], keeps explicit zeros
            items.sort_indices()
            with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and tested here
                warnings.simplefilter("ignore", UserWarning)
                self.items = torch.sparse_csr_tensor(
                    torch.from_numpy(items.indptr.astype(np.int32)),
                    torch.from_numpy(items.indices.astype(np.int32)),
                    torch.from_numpy(items.data.astype(np.float32)),
                    size=(n_items, dim),
                    device=self.device,
                    check_invariants=True,
                )  # once, at load
        else:
            raise ValueError(f"unknown sparse layout {layout!r}")

    def scores(self, queries: np.ndarray):
        """``[B, n_items]`` exact scores on the device (a torch tensor)."""
        torch = self.torch
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
        if self.layout == "prefix":
            out = torch.zeros((q.shape[0], self.n_items), dtype=torch.float32, device=self.device)
            for first, last, width, block in self.buckets:
                out[:, first:last] = q[:, :width] @ block.T
            return out
        return (self.items @ q.T).T  # CSR [n_items, dim] @ dense [dim, B]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.inference_mode():
            return _top_k(self.torch, self.scores(queries), k)


def set_cpu_threads(threads: int) -> None:
    """Pin FAISS's OpenMP pool (the env vars in serving.config pin BLAS at process start)."""
    import faiss

    faiss.omp_set_num_threads(int(threads))
    logger.info("FAISS OpenMP threads: %d", threads)
