"""The search half of :class:`export.sparse_index.SparseIndex`: exact top-k over its three layouts.

:class:`SparseSearch` is a mixin; :class:`~export.sparse_index.SparseIndex` inherits it and holds the
state it reads (``layout``, ``dim``, ``n_items``, ``fill_order`` and the built ``_shards``,
``_arrays`` or ``_postings``). The layouts and the edges of ``sparse_dot_topn`` handled here are
described in the docstring of ``export.sparse_index``. Call it through the index::

    >>> from export.sparse_index import SparseIndex
    >>> scores, ids = SparseIndex.from_table(item_csr).search(queries, k)   # [B, k] f32, i64
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .quality import as_queries


class SparseSearch:
    """``search`` and its per-layout kernels, mixed into :class:`~export.sparse_index.SparseIndex`."""

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by inner product, exact.

        Args:
            queries: ``[B, dim]`` float32 (a single ``[dim]`` vector is accepted).
            k: items per query.
        Returns:
            ``(scores [B, k] float32, ids [B, k] int64)``, highest first; ``-1`` / ``-inf`` past
            the catalogue.
        """
        queries = as_queries(queries, self.dim)
        k = int(k)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if self.layout == "prefix":
            scores, ids = self._shards.search(queries, k)
            ids = ids.astype(np.int64, copy=False)
            return np.where(ids >= 0, scores, -np.inf).astype(np.float32), ids
        if self.layout == "gaps":
            return self._search_gaps(queries, k)
        return self._search_postings(queries, k)

    def _search_gaps(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The gap-coded kernel's exact top-k; where ``fill_order`` is set, a row that reaches the
        items scoring 0 is redone here so those items come in that order (any order is exact)."""
        from . import gap_postings

        scores, ids = gap_postings.search(self._arrays, self.n_items, queries, k)
        if self.fill_order is None:
            return scores, ids
        top_n = min(k, self.n_items)
        for row in np.flatnonzero((scores[:, :top_n] <= 0).any(axis=1)):
            full = gap_postings.scores(self._arrays, self.n_items, queries[row])
            positive = np.flatnonzero(full > 0)
            positive = positive[np.lexsort((positive, -full[positive]))]
            zero = self.fill_order[full[self.fill_order] == 0]
            negative = np.flatnonzero(full < 0)
            negative = negative[np.lexsort((negative, -full[negative]))]
            merged = np.concatenate([positive, zero, negative])[:top_n]
            ids[row, :top_n] = merged
            scores[row, :top_n] = full[merged]
        return scores, ids

    def _topn(self, rows: sp.csr_matrix, top_n: int, threshold: float) -> sp.csr_matrix:
        from sparse_dot_topn.unchecked import sp_matmul_topn  # the checked one copies the postings per call

        if rows.nnz == 0 or self._postings.nnz == 0:  # every score is 0; the kernels expect some work
            return sp.csr_matrix((rows.shape[0], self.n_items), dtype=np.float32)
        return sp_matmul_topn(rows, self._postings, top_n=top_n, sort=True, threshold=threshold, density=1.0)

    def _search_postings(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n_rows = len(queries)
        top_n = min(k, self.n_items)
        scores = np.full((n_rows, k), -np.inf, dtype=np.float32)
        ids = np.full((n_rows, k), -1, dtype=np.int64)
        if top_n == 0:
            return scores, ids
        q = sp.csr_matrix(queries)  # zeros dropped: only the query's non-zero dims are walked
        q = sp.csr_matrix(
            (q.data.astype(np.float32), q.indices.astype(np.int32), q.indptr.astype(np.int32)), shape=q.shape
        )
        positive = self._topn(q, top_n, 0.0)  # scores > 0 only, sorted
        counts = np.diff(positive.indptr)
        for row in range(n_rows):
            got = counts[row]
            lo = positive.indptr[row]
            scores[row, :got] = positive.data[lo : lo + got]
            ids[row, :got] = positive.indices[lo : lo + got]
        short = np.flatnonzero(counts < top_n)
        if len(short):
            self._fill(q, short, top_n, scores, ids)
        return scores, ids

    def _fill(self, q: sp.csr_matrix, short: np.ndarray, top_n: int, scores: np.ndarray, ids: np.ndarray) -> None:
        """Complete rows with fewer than ``top_n`` positive scores: zeros, then negatives (exactly)."""
        rows = q[short]
        rows = sp.csr_matrix((rows.data, rows.indices.astype(np.int32), rows.indptr.astype(np.int32)), shape=rows.shape)
        every = self._topn(rows, top_n, -np.inf)  # all candidates, zero and negative scores included
        order = self.fill_order
        postings = self._postings
        for j, row in enumerate(short):
            lo, hi = every.indptr[j], every.indptr[j + 1]
            cand_scores, cand_ids = every.data[lo:hi], every.indices[lo:hi].astype(np.int64)
            pos = cand_scores > 0
            zero = cand_scores == 0
            neg = cand_scores < 0
            need = top_n - int(pos.sum()) - int(zero.sum())
            fill_ids = np.zeros(0, dtype=np.int64)
            if need > 0:
                # non-candidates: no posting list of the query's dims holds them
                is_candidate = np.zeros(self.n_items, dtype=bool)
                for dim in rows.indices[rows.indptr[j] : rows.indptr[j + 1]]:
                    is_candidate[postings.indices[postings.indptr[dim] : postings.indptr[dim + 1]]] = True
                ranked = np.arange(self.n_items, dtype=np.int64) if order is None else order
                fill_ids = ranked[~is_candidate[ranked]][:need]
            merged_ids = np.concatenate([cand_ids[pos], cand_ids[zero], fill_ids, cand_ids[neg]])[:top_n]
            merged_scores = np.concatenate(
                [cand_scores[pos], cand_scores[zero], np.zeros(len(fill_ids), np.float32), cand_scores[neg]]
            )[:top_n]
            ids[row, :] = -1
            scores[row, :] = -np.inf
            ids[row, : len(merged_ids)] = merged_ids
            scores[row, : len(merged_scores)] = merged_scores
