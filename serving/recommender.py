"""Top-K recommendation over an artifact: user -> vector -> item search -> drop seen items.

Pure numpy/scipy, no HTTP and no BentoML, so it is unit-tested and benchmarked in-process; the
service in `serving.service` only validates requests and calls `Recommender.recommend`.

Seen items are dropped after the search, not inside it: FAISS takes one ID filter per call, which
does not fit a batch of users with different histories. So each user asks the index for
k + n_seen items (always enough for an exact index; users of similar need share one search), every
user's own seen items are removed with one vectorised look-up in the CSR matrix of train
interactions, and rows an approximate index left short are searched again with a larger k.

Memory: every array this class reads at serving time (item ids, seen items, popularity and its
order, the index, user vectors where stored dense) can be a read-only memory map of the artifact
(`from_artifact(mmap=True)`, SPARSEREC_MMAP=1), so server workers on one machine share one copy in
the page cache. What each worker still holds itself: the user-id dict (one entry per user) and
user vectors computed at load (sparse or LightGCN tables).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from serving.backends import FaissSearch, ItemSearch, TorchSearch, TorchSparseSearch

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Query:
    user_id: str
    k: int = 10
    exclude_seen: bool = True


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """Items highest score first; `fallback` marks the popularity list for unknown users."""

    user_id: str
    item_ids: list[str]
    scores: list[float]
    fallback: bool


class Recommender:
    """Answers batches of top-K queries from in-memory artifact arrays.

    Args:
        user_ids: external user ids, row order of `user_vectors` and `seen`.
        item_ids: external item ids, the ids the search returns index into (a numpy string
            array is kept as given: it may be a memory map).
        user_vectors: float32 [n_users, dim].
        seen: CSR [n_users, n_items], non-zero where the user interacted in training; or its
            structure `(indptr [n_users + 1], indices [nnz])` with columns sorted within each row,
            kept as given (memory maps stay maps).
        popularity: int64 [n_items], interaction counts (the cold-start fallback).
        search: an `ItemSearch` over the item vectors.
        popular_order: item rows by count, highest first (stable); sorted here when not given.
    """

    def __init__(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        user_vectors: np.ndarray,
        seen: sp.spmatrix | tuple[np.ndarray, np.ndarray],
        popularity: np.ndarray,
        search: ItemSearch,
        popular_order: np.ndarray | None = None,
    ) -> None:
        self.n_users, self.n_items = len(user_ids), len(item_ids)
        if isinstance(user_ids, np.ndarray):
            user_ids = user_ids.tolist()
        self.user_index = {str(u): i for i, u in enumerate(user_ids)}
        self.item_ids = _id_array(item_ids)
        self.user_vectors = np.ascontiguousarray(user_vectors, dtype=np.float32)
        self.seen_indptr, self.seen_indices = _seen_structure(seen, self.n_users, self.n_items)
        self.popularity = np.asarray(popularity)
        self.popular_order = (np.argsort(-self.popularity, kind="stable") if popular_order is None
                              else np.asarray(popular_order))
        self.search = search
        # what /info shows about the index being searched (from_artifact fills it in)
        self.index_info: dict[str, Any] = {"kind": type(search).__name__}
        if (self.user_vectors.shape[0] != self.n_users or self.popularity.shape != (self.n_items,)
                or self.popular_order.shape != (self.n_items,)
                or (len(self.seen_indices) and int(self.seen_indices.max()) >= self.n_items)):
            raise ValueError(
                f"inconsistent arrays: {self.n_users} user ids, {self.n_items} item ids, "
                f"user_vectors {self.user_vectors.shape}, popularity {self.popularity.shape}, "
                f"popular_order {self.popular_order.shape}, seen rows {len(self.seen_indptr) - 1}"
            )

    @classmethod
    def from_artifact(cls, art: Any, device: str = "cpu", mmap: bool = False) -> Recommender:
        """Build from an `export.artifact` reader object (see the reader contract).

        A `sparse` index is searched on CPU through its own object (FAISS prefix shards or
        sparse_dot_topn posting lists) and on CUDA by `TorchSparseSearch` from the same arrays;
        the other kinds as before. `index_info` records layout, bytes and non-zeros for /info.
        `mmap`: map the index files (see `Artifact.load_index`) and every other array read at
        serving time (ids, seen items, popularity and its order; user vectors stored dense), read-only. A shard part (export.shards)
        searches its own items only; its ids are shifted back to catalogue rows, so seen items,
        item ids and popularity stay the whole catalogue's.
        """
        entry = art.manifest.index
        index = None
        shard = art.manifest.shard
        if shard is not None and device != "cpu":
            raise ValueError("a shard part is served on cpu only (SPARSEREC_DEVICE=cpu)")
        if device == "cpu":
            index = art.load_index(mmap=mmap)
            search: ItemSearch = FaissSearch(index)
            if shard is not None:
                search = ShardSearch(search, shard.start, shard.stop)
        elif art.index_kind == "sparse":
            search = TorchSparseSearch(entry.layout, art.sparse_index_arrays(), art.dim, art.n_items, device=device)
        else:
            search = TorchSearch(art.item_vectors(), device=device)
        rec = cls(
            user_ids=art.user_id_array(mmap=mmap),
            item_ids=art.item_id_array(mmap=mmap),
            user_vectors=art.user_vectors(mmap=mmap),
            seen=art.seen_arrays(mmap=mmap),
            popularity=art.popularity(mmap=mmap),
            popular_order=art.popularity_order(mmap=mmap),
            search=search,
        )
        if index is not None and getattr(index, "layout", None) in ("postings", "gaps"):
            order = rec.popular_order  # zero-score items fill a short list by popularity
            if shard is not None:  # the shard's own items, as its index's ids
                order = order[(order >= shard.start) & (order < shard.stop)] - shard.start
            index.fill_order = order
        rec.index_info = _index_info(art, index, device)
        return rec

    def describe_index(self) -> dict[str, Any]:
        """The index being searched: kind, layout, bytes, non-zeros, device (for /info)."""
        return dict(self.index_info)

    def recommend(self, queries: Sequence[Query]) -> list[Recommendation]:
        """Answer all queries (known users searched together), in the order of `queries`."""
        results: list[Recommendation | None] = [None] * len(queries)
        known: list[int] = []
        rows: list[int] = []
        for pos, query in enumerate(queries):
            row = self.user_index.get(query.user_id)
            if row is None:
                results[pos] = self.popular(query)
            else:
                known.append(pos)
                rows.append(row)
        if known:
            ks = np.array([queries[p].k for p in known], dtype=np.int64)
            exclude = np.array([queries[p].exclude_seen for p in known], dtype=bool)
            found = self.top_items(np.asarray(rows, dtype=np.int64), ks, exclude)
            for pos, (ids, scores) in zip(known, found):
                results[pos] = Recommendation(
                    user_id=queries[pos].user_id,
                    item_ids=self.item_ids[ids].tolist(),
                    scores=scores.tolist(),
                    fallback=False,
                )
        return results  # type: ignore[return-value]

    def popular(self, query: Query) -> Recommendation:
        """The k most popular items (no history to exclude), marked as a fallback."""
        k = min(query.k, self.n_items)
        return Recommendation(
            user_id=query.user_id,
            item_ids=self.item_ids[self.popular_order[:k]].tolist(),
            scores=self.popularity[self.popular_order[:k]].astype(np.float64).tolist(),
            fallback=True,
        )

    def top_items(
        self, rows: np.ndarray, ks: np.ndarray, exclude_seen: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top items of known users, seen items removed where asked.

        Args:
            rows: int64 [B] internal user rows.
            ks: int64 [B] items wanted per row.
            exclude_seen: bool [B].
        Returns:
            B pairs (item rows int64 [<=k], scores float32 [<=k]), highest first; exactly k
            unless the catalogue minus the user's seen items holds fewer.
        """
        n_seen = np.where(exclude_seen, self._n_seen(rows), 0)
        wanted = np.minimum(ks, self.n_items - n_seen)
        # k + n_seen candidates always hold k unseen ones when the index is exact.
        needed = np.minimum(self.n_items, ks + n_seen)
        # FAISS's top-k selection costs about linearly in k, so one heavy user (hundreds of seen
        # items) must not make the whole batch fetch hundreds: rows are searched in groups of
        # similar need (powers of two), one search per group (ML-100K, 256 users: 27 ms -> 9 ms).
        group_of = np.ceil(np.log2(np.maximum(needed, 1))).astype(np.int64)
        group_of[wanted <= 0] = -1  # users who have seen every item: nothing to search for
        out: list[tuple[np.ndarray, np.ndarray]] = [
            (np.zeros(0, np.int64), np.zeros(0, np.float32))] * len(rows)
        for group in np.unique(group_of[group_of >= 0]):
            members = np.flatnonzero(group_of == group)
            self._search_group(members, int(needed[members].max()), rows, wanted, exclude_seen, out)
        return out

    def _search_group(self, todo: np.ndarray, fetch: int, rows: np.ndarray, wanted: np.ndarray,
                      exclude_seen: np.ndarray, out: list) -> None:
        """Search rows `todo` (positions in the batch) with k=`fetch`, filter, write into `out`;
        search again with a larger k for rows an approximate index left short."""
        vectors = self.user_vectors[rows[todo]]
        while True:
            scores, ids = self.search.search(vectors, fetch)
            valid = ids >= 0
            ex = exclude_seen[todo]
            if ex.any():
                valid &= ~self._seen_hits(rows[todo], ids, ex)
            take = valid & (np.cumsum(valid, axis=1) <= wanted[todo, None])
            got = take.sum(axis=1)
            for j, b in enumerate(todo):
                out[b] = (ids[j, take[j]], scores[j, take[j]])
            short = got < wanted[todo]
            if not short.any() or fetch >= self.n_items:
                return
            fetch = min(self.n_items, 2 * fetch)
            logger.debug("re-searching %d rows with k=%d", int(short.sum()), fetch)
            todo, vectors = todo[short], vectors[short]

    def _n_seen(self, rows: np.ndarray) -> np.ndarray:
        """int64 [B]: train interactions of each user row."""
        return self.seen_indptr[rows + 1].astype(np.int64) - self.seen_indptr[rows].astype(np.int64)

    def _seen_hits(self, rows: np.ndarray, ids: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        """bool [B, K]: ids[b, j] is among the seen items of rows[b] (only where exclude[b]).

        One sorted look-up for the whole batch: the (batch row, item) pairs become keys
        b * n_items + item, ascending because CSR column indices are sorted within a row.
        """
        # int64 at once: the stored pointers may be unsigned, and the offsets below can be negative
        starts = self.seen_indptr[rows].astype(np.int64)
        counts = np.where(exclude, self.seen_indptr[rows + 1].astype(np.int64) - starts, 0)
        total = int(counts.sum())
        if total == 0:
            return np.zeros(ids.shape, dtype=bool)
        # positions of all wanted rows' entries in seen.indices, without scipy fancy indexing
        offsets = np.repeat(starts - (np.cumsum(counts) - counts), counts)
        items = self.seen_indices[offsets + np.arange(total)].astype(np.int64)
        batch_rows = np.repeat(np.arange(len(rows), dtype=np.int64), counts)
        seen_keys = batch_rows * self.n_items + items
        keys = np.arange(len(rows), dtype=np.int64)[:, None] * self.n_items + ids
        pos = np.minimum(np.searchsorted(seen_keys, keys), total - 1)
        return (seen_keys[pos] == keys) & (ids >= 0)


def _seen_structure(seen: sp.spmatrix | tuple[np.ndarray, np.ndarray], n_users: int,
                    n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr, indices)`` of the seen items with columns sorted within each row (`_seen_hits`
    relies on it). Given arrays that are sorted are kept as they are (a memory map stays one)."""
    if isinstance(seen, tuple):
        indptr, indices = seen
        if len(indptr) != n_users + 1 or int(indptr[-1]) != len(indices):
            raise ValueError(f"seen structure: {len(indptr)} row pointers ending at {int(indptr[-1])}, "
                             f"{len(indices)} indices, for {n_users} users")
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


def _id_array(ids: Sequence[Any]) -> np.ndarray:
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


def _index_info(art: Any, index: Any, device: str) -> dict[str, Any]:
    """Kind, layout, bytes and non-zeros of the served index (a `sparse` index reports its own)."""
    entry = art.manifest.index
    if index is not None and hasattr(index, "describe"):
        info = index.describe()
    elif entry.kind == "sparse":  # on a GPU: the same arrays, as torch tensors
        info = {"kind": "sparse", "layout": entry.layout, "nnz": entry.nnz, "bytes": entry.bytes}
    else:  # a faiss kind, or dense vectors on a GPU: every entry of every item vector is stored
        file_entry = art.manifest.files.get(entry.file)
        file_bytes = None if file_entry is None else file_entry.bytes
        info = {"kind": entry.kind, "layout": "dense", "nnz": art.n_items * art.dim,
                "bytes": art.n_items * art.dim * 4 if device != "cpu" or entry.kind == "flat" else file_bytes}
    info["device"] = device
    if entry.auto is not None:
        info["auto"] = {"chosen": entry.auto["chosen"], "timing_ms_per_query": entry.auto["timing_ms_per_query"]}
    return info
