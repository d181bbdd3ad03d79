"""Pack embedding tables with the narrowest index dtypes and fp32/fp16/int8 values.

Two layouts, each a few plain arrays (no pickle, each readable by ``np.load(allow_pickle=False)``).

``csr`` (:class:`PackedTable`, any mask):

- ``indptr``  ``[n_rows + 1]`` row pointers, ``uint32`` where ``nnz < 2**32``, else ``uint64``;
- ``indices`` ``[nnz]`` column of each non-zero, ``uint8`` for ``dim <= 256``, else ``uint16``/``uint32``;
- ``values``  ``[nnz]`` ``float32`` | ``float16`` | ``int8``;
- ``scale``   ``[n_rows]`` ``float32`` per-row scale, int8 only: ``value = int8 * scale[row]``.

``prefix`` (:class:`PrefixTable`, masks whose every row keeps a prefix ``[0, L_r)`` of the
columns, as the ``dsl-nested`` / ``dsl-mixed`` updaters train them): no column indices at all.

- ``lengths`` ``[n_rows]`` ``L_r``, ``uint8`` for ``dim <= 255``, else ``uint16``/``uint32``; the row
  pointers are ``cumsum(lengths)`` and are not stored;
- ``values``, ``scale`` as in ``csr`` (row-major, so the same arrays in the same order).

A prefix table costs ``nnz x value bytes + n_rows x 1`` (dim <= 255): about the equal-budget
small dense model plus one byte per row, where ``csr`` adds one byte of column index per value and
four bytes of row pointer per row. :func:`pack` picks ``prefix`` where the mask allows it.

The structure (which positions are stored) comes from the training mask, not from ``weight != 0``:
a regrown weight may be exactly zero and still be one of the model's non-zeros. numpy and scipy
only; the serving side imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

VALUE_DTYPES = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}
TABLE_LAYOUTS = ("csr", "prefix")
INT8_MAX = 127


def narrowest_uint(max_value: int) -> np.dtype:
    """Smallest unsigned integer dtype that holds ``max_value``."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{max_value} does not fit in 64 bits")


def index_dtype(n_cols: int) -> np.dtype:
    """Column-index dtype for a table of width ``n_cols`` (uint8 for ``n_cols <= 256``)."""
    return narrowest_uint(max(n_cols - 1, 0))


def indptr_dtype(nnz: int) -> np.dtype:
    """Row-pointer dtype: ``uint32`` where ``nnz`` fits, else ``uint64``."""
    return np.dtype(np.uint32) if nnz <= np.iinfo(np.uint32).max else np.dtype(np.uint64)


def lengths_dtype(n_cols: int) -> np.dtype:
    """Row-length dtype of a prefix table of width ``n_cols`` (uint8 for ``n_cols <= 255``)."""
    return narrowest_uint(max(n_cols, 0))


class _StoredTable:
    """What both stored layouts share: ``values [nnz]`` (plus ``scale`` for int8) of a ``shape`` table."""

    values: np.ndarray
    shape: tuple[int, int]
    scale: np.ndarray | None

    @property
    def nnz(self) -> int:
        return int(self.values.shape[0])

    @property
    def density(self) -> float:
        n = self.shape[0] * self.shape[1]
        return self.nnz / n if n else 0.0

    def _stored(self, **index_arrays: np.ndarray) -> dict[str, np.ndarray]:
        out = {**index_arrays, "values": self.values}
        if self.scale is not None:
            out["scale"] = self.scale
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (payload, no file headers)."""
        return int(sum(a.nbytes for a in self.arrays().values()))

    # What a layout provides: its stored arrays, the count of values in each row, the column of each
    # value, and an index of the stored positions into a dense [n_rows, n_cols] array (row-major order).
    def arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def row_lengths(self) -> np.ndarray:
        raise NotImplementedError

    def _columns(self) -> np.ndarray:
        raise NotImplementedError

    def _positions(self):
        raise NotImplementedError

    def row_values(self) -> np.ndarray:
        """Dequantised ``float32`` values, ``[nnz]``."""
        if self.value_dtype == "int8":
            return self.values.astype(np.float32) * np.repeat(self.scale, self.row_lengths())
        return self.values.astype(np.float32)

    def to_csr(self) -> sp.csr_matrix:
        """Dequantised ``float32`` scipy CSR (indices widened to what scipy accepts)."""
        return sp.csr_matrix(
            (self.row_values(), self._columns().astype(np.int32), self.indptr.astype(np.int64)), shape=self.shape
        )

    def to_dense_stored(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The table densified in its *stored* dtype: ``(values [n_rows, n_cols], scale [n_rows] or None)``."""
        out = np.zeros(self.shape, dtype=self.values.dtype)
        out[self._positions()] = self.values
        return out, self.scale

    def to_dense(self) -> np.ndarray:
        """Dequantised ``float32`` dense array ``[n_rows, n_cols]``."""
        out = np.zeros(self.shape, dtype=np.float32)
        out[self._positions()] = self.row_values()
        return out


@dataclass
class PackedTable(_StoredTable):
    """A ``[n_rows, n_cols]`` table in packed CSR form (see the module docstring)."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    shape: tuple[int, int]
    value_dtype: str
    scale: np.ndarray | None = None
    layout: ClassVar[str] = "csr"

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to store, by role."""
        return self._stored(indptr=self.indptr, indices=self.indices)

    def row_lengths(self) -> np.ndarray:
        """Stored values per row, ``[n_rows]`` int64."""
        return np.diff(self.indptr.astype(np.int64))

    def _columns(self) -> np.ndarray:
        return self.indices

    def _positions(self) -> tuple[np.ndarray, np.ndarray]:
        return np.repeat(np.arange(self.shape[0]), self.row_lengths()), self.indices.astype(np.int64)

    def to_packed(self) -> "PackedTable":
        """The CSR form (this table itself)."""
        return self


@dataclass
class PrefixTable(_StoredTable):
    """A ``[n_rows, n_cols]`` table whose row ``r`` stores columns ``[0, lengths[r])`` (module docstring).

    Offers what :class:`PackedTable` offers (``nnz``, ``indptr``, ``to_csr``, ``to_dense``, ...);
    ``indptr`` and ``to_packed()`` are computed, not stored.
    """

    lengths: np.ndarray
    values: np.ndarray
    shape: tuple[int, int]
    value_dtype: str
    scale: np.ndarray | None = None
    layout: ClassVar[str] = "prefix"

    @property
    def indptr(self) -> np.ndarray:
        """Row pointers ``[n_rows + 1]`` (``cumsum`` of the lengths, in :func:`indptr_dtype`)."""
        out = np.zeros(self.shape[0] + 1, dtype=indptr_dtype(self.nnz))
        np.cumsum(self.lengths, dtype=out.dtype, out=out[1:])
        return out

    def columns(self) -> np.ndarray:
        """Column of each stored value, ``[nnz]`` (``0..L_r-1`` for each row), in :func:`index_dtype`."""
        lengths = self.lengths.astype(np.int64)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        return (np.arange(self.nnz, dtype=np.int64) - starts).astype(index_dtype(self.shape[1]))

    def mask(self) -> np.ndarray:
        """``bool [n_rows, n_cols]``: the stored positions."""
        return np.arange(self.shape[1])[None, :] < self.lengths.astype(np.int64)[:, None]

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to store, by role."""
        return self._stored(lengths=self.lengths)

    def row_lengths(self) -> np.ndarray:
        """Stored values per row, ``[n_rows]`` int64."""
        return self.lengths.astype(np.int64)

    def _columns(self) -> np.ndarray:
        return self.columns()

    def _positions(self) -> np.ndarray:
        return self.mask()  # boolean assignment fills row-major: the stored order

    def to_packed(self) -> PackedTable:
        """The same table in CSR form (row pointers and column indices built; values shared)."""
        return PackedTable(self.indptr, self.columns(), self.values, self.shape, self.value_dtype, self.scale)


def prefix_lengths(mask: np.ndarray) -> np.ndarray | None:
    """Row lengths ``L_r`` (int64) if every row of ``mask`` is a prefix ``[0, L_r)``, else ``None``."""
    mask = np.asarray(mask, dtype=bool)
    lengths = mask.sum(axis=1)
    if mask.shape[1] > 1 and (mask[:, 1:] & ~mask[:, :-1]).any():  # a kept column after a dropped one
        return None
    return lengths.astype(np.int64)


def first_non_prefix_row(mask: np.ndarray) -> int | None:
    """The first row of ``mask`` that is not a prefix (``None`` when all are)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape[1] <= 1:
        return None
    bad = np.flatnonzero((mask[:, 1:] & ~mask[:, :-1]).any(axis=1))
    return int(bad[0]) if len(bad) else None


def quantize_values(
    values: np.ndarray, rows: np.ndarray, n_rows: int, value_dtype: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Cast ``float32`` non-zeros to ``value_dtype``.

    Args:
        values: ``[nnz]`` float32.
        rows: ``[nnz]`` row of each value (for int8's per-row scale).
        n_rows: number of rows.
        value_dtype: ``fp32`` | ``fp16`` | ``int8``.
    Returns:
        ``(values [nnz] in the new dtype, scale [n_rows] float32 or None)``. int8 is symmetric per
        row: ``scale = max|row| / 127``, ``q = round(v / scale)``; an all-zero row gets scale 0.
    """
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"unknown value dtype {value_dtype!r}; choose one of {sorted(VALUE_DTYPES)}")
    values = np.asarray(values, dtype=np.float32)
    if value_dtype == "fp32":
        return values.copy(), None
    if value_dtype == "fp16":
        limit = np.finfo(np.float16).max
        return np.clip(values, -limit, limit).astype(np.float16), None
    max_abs = np.zeros(n_rows, dtype=np.float32)
    np.maximum.at(max_abs, rows, np.abs(values))
    scale = (max_abs / INT8_MAX).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(values / safe[rows]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return quantized, scale


def pack_table(weight: np.ndarray, mask: np.ndarray | None = None, value_dtype: str = "fp32") -> PackedTable:
    """Pack a dense table (its non-zero structure given by ``mask``) as CSR.

    Args:
        weight: ``[n_rows, n_cols]`` float array (the masked weights).
        mask: ``[n_rows, n_cols]`` bool; ``None`` stores ``weight != 0``.
        value_dtype: ``fp32`` | ``fp16`` | ``int8``.
    """
    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D table, got shape {weight.shape}")
    mask = weight != 0 if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {mask.shape} != weight shape {weight.shape}")
    n_rows, n_cols = weight.shape
    rows, cols = np.nonzero(mask)  # row-major order: CSR order
    counts = np.bincount(rows, minlength=n_rows)
    nnz = int(rows.shape[0])
    indptr = np.zeros(n_rows + 1, dtype=indptr_dtype(nnz))
    np.cumsum(counts, out=indptr[1:])
    values, scale = quantize_values(weight[rows, cols], rows, n_rows, value_dtype)
    return PackedTable(indptr, cols.astype(index_dtype(n_cols)), values, (n_rows, n_cols), value_dtype, scale)


def pack_prefix_table(weight: np.ndarray, mask: np.ndarray | None = None, value_dtype: str = "fp32") -> PrefixTable:
    """Pack a dense table whose mask rows are all prefixes ``[0, L_r)`` (see :class:`PrefixTable`).

    Args:
        weight: ``[n_rows, n_cols]`` float array (the masked weights).
        mask: ``[n_rows, n_cols]`` bool; ``None`` stores ``weight != 0``.
        value_dtype: ``fp32`` | ``fp16`` | ``int8`` (same values and per-row scale as :func:`pack_table`).
    Raises:
        ValueError: a row of the mask is not a prefix (the message names the first one).
    """
    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D table, got shape {weight.shape}")
    mask = weight != 0 if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {mask.shape} != weight shape {weight.shape}")
    lengths = prefix_lengths(mask)
    if lengths is None:
        row = first_non_prefix_row(mask)
        raise ValueError(
            f"mask is not prefix-shaped: row {row} keeps columns "
            f"{np.flatnonzero(mask[row]).tolist()[:12]}, not a prefix [0, L)"
        )
    n_rows, n_cols = weight.shape
    rows = np.repeat(np.arange(n_rows), lengths)
    values, scale = quantize_values(weight[mask], rows, n_rows, value_dtype)  # row-major: the stored order
    return PrefixTable(lengths.astype(lengths_dtype(n_cols)), values, (n_rows, n_cols), value_dtype, scale)


def pack(
    weight: np.ndarray, mask: np.ndarray | None = None, value_dtype: str = "fp32", layout: str = "auto"
) -> PackedTable | PrefixTable:
    """Pack a table as ``prefix`` where every mask row is a prefix (``layout="auto"``), else ``csr``.

    ``layout="prefix"`` refuses (``ValueError``) a mask that is not prefix-shaped; ``"csr"`` always packs CSR.
    """
    if layout not in ("auto", *TABLE_LAYOUTS):
        raise ValueError(f"unknown table layout {layout!r}; choose one of {['auto', *TABLE_LAYOUTS]}")
    if layout == "csr":
        return pack_table(weight, mask, value_dtype)
    if layout == "auto":
        structure = np.asarray(weight) != 0 if mask is None else np.asarray(mask, dtype=bool)
        if structure.ndim != 2 or prefix_lengths(structure) is None:
            return pack_table(weight, mask, value_dtype)
    return pack_prefix_table(weight, mask, value_dtype)


def pack_csr(matrix: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Structure of a binary sparse matrix (e.g. the train interactions) with narrow dtypes.

    Returns:
        ``(indptr [n_rows + 1], indices [nnz])``, duplicates summed away and columns sorted.
    """
    csr = sp.csr_matrix(matrix)
    csr.sum_duplicates()
    csr.sort_indices()
    indptr = csr.indptr.astype(indptr_dtype(csr.nnz))
    indices = csr.indices.astype(index_dtype(csr.shape[1]))
    return indptr, indices


def binary_csr(indptr: np.ndarray, indices: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """A ``float32`` all-ones CSR from stored structure arrays."""
    return sp.csr_matrix(
        (np.ones(len(indices), dtype=np.float32), indices.astype(np.int32), indptr.astype(np.int64)), shape=shape
    )


def dense_bytes(n_rows: int, dim: int, value_dtype: str) -> int:
    """Bytes of a dense table; int8 includes its per-row ``float32`` scale."""
    itemsize = np.dtype(VALUE_DTYPES[value_dtype]).itemsize
    return n_rows * dim * itemsize + (n_rows * 4 if value_dtype == "int8" else 0)


def packed_bytes(n_rows: int, dim: int, nnz: int, value_dtype: str) -> int:
    """Bytes of a packed CSR table without building it (same arithmetic as :func:`pack_table`)."""
    itemsize = np.dtype(VALUE_DTYPES[value_dtype]).itemsize
    return (
        (n_rows + 1) * indptr_dtype(nnz).itemsize
        + nnz * index_dtype(dim).itemsize
        + nnz * itemsize
        + (n_rows * 4 if value_dtype == "int8" else 0)
    )


def prefix_bytes(n_rows: int, dim: int, nnz: int, value_dtype: str) -> int:
    """Bytes of a prefix table without building it (same arithmetic as :func:`pack_prefix_table`)."""
    itemsize = np.dtype(VALUE_DTYPES[value_dtype]).itemsize
    return n_rows * lengths_dtype(dim).itemsize + nnz * itemsize + (n_rows * 4 if value_dtype == "int8" else 0)
