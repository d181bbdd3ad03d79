"""The served user vectors as a row store: compressed where the model's user rows are sparse.

A serving worker reads a user's vector only for the users of a request, so the vectors of a masked
model (DSL MF, LightGCN trained with ``model.mask_output=true``) are held as compressed rows and
densified per batch, exactly as the dense table held them:

    from serving.user_rows import UserRows, user_rows_from_artifact
    store = user_rows_from_artifact(artifact, mmap=True)   # what Recommender.from_artifact holds
    vectors = store.rows(np.array([0, 5, 7]))            # float32 [3, dim], the served vectors
    store.nbytes, store.arrays()                         # the footprint (serving.footprint)

Three forms, each a few numpy arrays:

- ``dense``: ``vectors float32 [n_users, dim]`` (dense models, small-dense models, LightGCN without
  mask_output, and any table whose compressed form would not be smaller);
- ``csr``: ``indptr`` (row pointers), ``indices`` (column of each value, uint8 for dim <= 256),
  ``values`` (as stored: fp32, fp16, or int8 with a per-row ``scale``);
- ``prefix``: row ``r`` holds columns ``[0, lengths[r])``: ``lengths`` (uint8 for dim <= 255),
  ``values`` (as stored, + ``scale``) and ``block_starts`` (the value offset of every
  :data:`PREFIX_BLOCK`-th row, one int64 per block), so a row's offset is its block's start plus
  the lengths before it in the block, and no per-row pointer is held.

Values are dequantised exactly as ``export.to_sparse`` does it (``astype(float32)``, times the row's
scale for int8), so ``rows`` returns bit for bit the rows of the dense table the artifact would
build (an entry outside the mask is ``+0.0``). With ``mmap`` the stored arrays stay read-only maps of
the artifact's files (SPARSEREC_MMAP=1); computed vectors (LightGCN) are read into memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from export.to_sparse import PackedTable, PrefixTable, narrowest_uint

PREFIX_BLOCK = 64  # rows per stored offset of a prefix store: 1/8 byte per row, <= 63 lengths summed per look-up
KINDS = ("dense", "csr", "prefix")


class UserRows:
    """Served user vectors ``[n_users, dim]``; ``rows(indices)`` densifies the rows asked for.

    Build with :meth:`dense`, :meth:`from_table` or :func:`user_rows_from_artifact`.
    """

    def __init__(self, kind: str, shape: tuple[int, int], arrays: dict[str, np.ndarray], base: int = 0) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown user-row kind {kind!r}; choose one of {list(KINDS)}")
        self.kind, self.shape, self._arrays, self._base = kind, (int(shape[0]), int(shape[1])), arrays, int(base)
        self.dtype = np.dtype(np.float32)

    # -- construction
    @classmethod
    def dense(cls, vectors: np.ndarray) -> UserRows:
        """Dense rows, kept as given where already float32 and C-contiguous (a memory map stays one)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"user vectors must be 2-d [n_users, dim], got shape {vectors.shape}")
        return cls("dense", vectors.shape, {"vectors": vectors})

    @classmethod
    def from_table(
        cls, table: PackedTable | PrefixTable, start: int = 0, stop: int | None = None, values: np.ndarray | None = None
    ) -> UserRows:
        """Rows ``[start, stop)`` of a stored table, in its own layout (its arrays sliced, not copied).

        Args:
            table: a stored table (``Artifact.stored_table``), arrays possibly memory-mapped.
            start, stop: the user rows of the table (``stop`` None: to the end).
            values: float32 ``[nnz of rows start..stop]``, values replacing the stored ones (in
                the stored order; LightGCN's masked propagated vectors on the table's structure).
        """
        n_rows, dim = table.shape
        stop = n_rows if stop is None else int(stop)
        if not 0 <= start <= stop <= n_rows:
            raise ValueError(f"user rows [{start}, {stop}) outside a table of {n_rows} rows")
        if isinstance(table, PrefixTable):
            lengths = table.lengths[start:stop]
            first = int(table.lengths[:start].sum(dtype=np.int64))
            last = first + int(lengths.sum(dtype=np.int64))
            # offset of every PREFIX_BLOCK-th row, counted from the first user value
            block_starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])[::PREFIX_BLOCK].astype(np.int64)
            arrays = {"lengths": lengths, "block_starts": block_starts}
            kind, base = "prefix", 0
        else:
            indptr = table.indptr[start : stop + 1]
            first, last = int(indptr[0]), int(indptr[-1])
            arrays = {"indptr": indptr, "indices": table.indices[first:last]}
            kind, base = "csr", first
        if values is None:
            arrays["values"] = table.values[first:last]
            if table.scale is not None:
                arrays["scale"] = table.scale[start:stop]
        else:
            values = np.ascontiguousarray(values, dtype=np.float32)
            if values.shape != (last - first,):
                raise ValueError(f"values: {values.shape[0]} given for {last - first} stored entries")
            arrays["values"] = values
        return cls(kind, (stop - start, dim), arrays, base=base)

    # -- reading
    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def dim(self) -> int:
        return self.shape[1]

    def __len__(self) -> int:
        return self.shape[0]

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays this store holds, by role (every byte it keeps is in one of them)."""
        return dict(self._arrays)

    @property
    def nbytes(self) -> int:
        """Bytes of the held arrays (mapped or read)."""
        return int(sum(a.nbytes for a in self._arrays.values()))

    def rows(self, indices: Any) -> np.ndarray:
        """``float32 [B, dim]``: the served vectors of user rows ``indices`` (int ``[B]``), in order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_rows):
            raise IndexError(f"user rows must lie in [0, {self.n_rows}), got {idx.min()}..{idx.max()}")
        if self.kind == "dense":
            return np.ascontiguousarray(self._arrays["vectors"][idx], dtype=np.float32)
        starts, counts = self._extents(idx)
        total = int(counts.sum())
        out = np.zeros((len(idx), self.dim), dtype=np.float32)
        if total == 0:
            return out
        # positions of the wanted rows' values, without a Python loop
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        positions = np.repeat(starts, counts) + within
        columns = within if self.kind == "prefix" else self._arrays["indices"][positions].astype(np.int64)
        values = self._arrays["values"][positions].astype(np.float32)
        if "scale" in self._arrays:  # int8: value * its row's scale, as export.to_sparse dequantises
            values = values * np.repeat(self._arrays["scale"][idx], counts)
        out[np.repeat(np.arange(len(idx)), counts), columns] = values
        return out

    def to_dense(self) -> np.ndarray:
        """``float32 [n_users, dim]``: every row (offline use; a worker densifies per request)."""
        return self.rows(np.arange(self.n_rows))

    def _extents(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(offset into the held values, count) of each row in ``idx``, int64 ``[B]`` each."""
        if self.kind == "csr":
            indptr = self._arrays["indptr"]
            starts = indptr[idx].astype(np.int64)
            return starts - self._base, indptr[idx + 1].astype(np.int64) - starts
        lengths = self._arrays["lengths"]
        counts = lengths[idx].astype(np.int64)
        block = idx // PREFIX_BLOCK
        first = block * PREFIX_BLOCK
        # the lengths of the rows before each wanted row within its block ([B, PREFIX_BLOCK - 1] at most)
        offsets = np.arange(PREFIX_BLOCK - 1, dtype=np.int64)
        before = first[:, None] + offsets[None, :]
        keep = before < idx[:, None]
        in_block = np.where(keep, lengths[np.minimum(before, self.n_rows - 1)].astype(np.int64), 0).sum(axis=1)
        return self._arrays["block_starts"][block] + in_block, counts

    def describe(self) -> dict[str, Any]:
        """Kind, shape, non-zeros held and bytes (for /info and reports)."""
        nnz = self.n_rows * self.dim if self.kind == "dense" else int(self._arrays["values"].shape[0])
        return {
            "kind": self.kind,
            "shape": list(self.shape),
            "nnz": nnz,
            "bytes": self.nbytes,
            "value_dtype": str(self._arrays["vectors" if self.kind == "dense" else "values"].dtype),
        }


def narrowed(store: UserRows) -> UserRows:
    """The same rows as a read copy that owns its arrays (a slice of a whole table's arrays would keep
    all of them alive), a CSR store's row pointers in the narrowest unsigned dtype; only for stores
    not served from the artifact's files."""
    if store.kind == "dense":
        return store
    arrays = {role: np.array(array, copy=True) for role, array in store.arrays().items()}
    if store.kind == "prefix":
        return UserRows("prefix", store.shape, arrays)
    indptr = arrays["indptr"].astype(np.int64) - store._base
    arrays["indptr"] = indptr.astype(narrowest_uint(int(indptr[-1]) if len(indptr) else 0))
    return UserRows("csr", store.shape, arrays, base=0)


def user_rows_from_artifact(art: Any, mmap: bool = False) -> UserRows:
    """The served user vectors of an ``export.artifact.Artifact`` in the cheapest exact form.

    MF (``tables``): the user rows of the stored table in its own layout, where that is smaller
    than ``4 x dim`` bytes a row (else dense, mapped where ``mmap`` and the table is dense fp32).
    LightGCN with ``mask_output``: the masked propagated rows on the stored table's structure.
    Otherwise (propagated LightGCN, popularity) the dense vectors.
    """
    spec = art.manifest.vectors
    dense_bytes = art.n_users * art.dim * 4
    if spec.source == "tables":
        table = art.stored_table(spec.users.table, mmap=mmap)
        store = UserRows.from_table(table, spec.users.start, spec.users.stop)
        if store.nbytes < dense_bytes:
            return store if mmap else narrowed(store)
    elif spec.source == "lightgcn" and spec.mask_output:
        table = art.stored_table(spec.table)
        users = art.user_vectors()
        structure = UserRows.from_table(table, spec.users.start, spec.users.stop)
        rows, columns = _stored_positions(structure)
        store = narrowed(UserRows.from_table(table, spec.users.start, spec.users.stop, values=users[rows, columns]))
        if store.nbytes < dense_bytes:
            return store
    return UserRows.dense(art.user_vectors(mmap=mmap))


def _stored_positions(store: UserRows) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) int64 ``[nnz]`` of every held value of a compressed store, in the held order."""
    idx = np.arange(store.n_rows, dtype=np.int64)
    starts, counts = store._extents(idx)
    rows = np.repeat(idx, counts)
    if store.kind == "prefix":
        return rows, np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return rows, store.arrays()["indices"].astype(np.int64)
