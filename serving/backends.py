"""Item-search backends: given user vectors, the top-k items by inner product.

Both expose `search(queries float32 [B, dim], k) -> (scores float32 [B, k], ids int64 [B, k])`,
highest first, id -1 where fewer than k items were found (the FAISS convention), so the seen-item
filtering in `serving.recommender` is one code path whatever the device.

- `FaissSearch` (SPARSEREC_DEVICE=cpu): the artifact's own index; exact for `flat`, approximate
  for `ivf`, `hnsw`, `sq8`, `pq`.
- `TorchSearch` (SPARSEREC_DEVICE=cuda): exact scores `queries @ item_vectors.T` and `torch.topk`
  on the GPU; equal to the CPU path on a `flat` index. torch is imported here only, lazily, so the
  CPU service never loads it.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)


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
        k_found = min(k, self.n_items)
        with torch.inference_mode():
            q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
            top = torch.topk(q @ self.items.T, k_found, dim=1, largest=True, sorted=True)
            scores = top.values.float().cpu().numpy()
            ids = top.indices.cpu().numpy().astype(np.int64)
        if k_found < k:  # pad like FAISS does
            pad = k - k_found
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return scores, ids


def set_cpu_threads(threads: int) -> None:
    """Pin FAISS's OpenMP pool (the env vars in serving.config pin BLAS at process start)."""
    import faiss

    faiss.omp_set_num_threads(int(threads))
    logger.info("FAISS OpenMP threads: %d", threads)
