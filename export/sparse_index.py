"""The ``sparse`` item index: exact top-k inner product whose memory and time follow the non-zeros.

Three layouts over the *served item table* (``[n_items, dim]``; its stored entries, explicit zeros
included, are the structure; everything else is a structural zero):

``prefix`` (every item row keeps a prefix ``[0, L_i)`` of the dims: dsl-nested, dsl-mixed, and
dense / small-dense as one-length cases). Items must come **ordered by length** (non-decreasing):
the exporter puts them in that order in the artifact's id map itself, so the index needs no
permutation array. One ``faiss.IndexFlatIP(L)`` per distinct (rounded) length ``L``, each wrapped
in ``faiss.IndexPreTransform(faiss.RemapDimensionsTransform(dim, L, False), ...)`` so it takes
full-width queries (the transform keeps the first ``L`` query dims), all inside
``faiss.IndexShards(dim, threaded, successive_ids=True)``. Exact: an item's zeros past its prefix
contribute nothing, whatever the query holds there. FAISS cannot serialise ``IndexShards``, so the
artifact stores ``lengths`` and ``values`` (row-major) and the shards are built at load.
``round_to=m`` rounds every length up to a multiple of ``m`` (fewer shards, a few zeros more).
Length-0 items sit in the first shard as one stored zero (they score exactly 0).

``gaps`` (any mask: dsl, set, static, prune-finetune; what ``auto`` picks where the rows are not
sorted prefixes): posting lists per dimension whose item ids are stored as bit-packed gaps (a
block of 32 gaps shares one bit width) beside float32 values, searched by a numba kernel that
walks the lists of the query's non-zero dims into an ``n_items`` accumulator and keeps the top k
with a heap (``export.gap_postings``). Ties go to the lower id; where ``fill_order`` is set, a row
that reaches the items scoring 0 takes them in that order. A loaded stream is decoded and checked
once before it is searched.

``postings`` (any mask; the older form, still read and built when asked for by name): posting lists per dimension, i.e. the
item table transposed, ``[dim, n_items]`` CSR with ``int32`` indices, searched with
``sparse_dot_topn``'s ``sp_matmul_topn`` against the queries as a scipy CSR: the work is the
posting lengths of the query's non-zero dims. Its edges, handled here (checked against the
installed 1.2.0, ``sparse_dot_topn/api.py`` and ``unchecked.py``):

- it only sees *candidates* (items sharing a dim with the query) and, with the default threshold,
  keeps only scores > 0. Non-candidates score exactly 0. So when a query has fewer than ``k``
  positive scores, its row is searched again with ``threshold=-inf`` (every candidate, zero and
  negative scores included) and filled exactly: the positives, then the items scoring 0
  (zero-score candidates, then non-candidates in ``fill_order``: popularity order when the
  serving side sets it, else id order), then the negative candidates, best first. No item scoring
  below one left out is ever returned.
- the checked ``sp_matmul_topn`` copies the posting arrays on every call (``astype`` to its index
  dtype); the ``unchecked`` entry point is called instead, with the dtypes it needs (float32 data,
  int32 indptr and indices) prepared once.
- it allocates ``n_items``-sized buffers per call: search a batch in one call (what ``search`` does).
- importing it sets ``KMP_DUPLICATE_LIB_OK`` (an LLVM/Intel OpenMP switch). faiss-cpu and
  sparse_dot_topn ship the same GNU ``libgomp`` build, which ignores it; both run in one process
  (tests/export/test_sparse_index.py searches with both in turn).

Usage (numpy, scipy, faiss; no torch)::

    >>> from export.sparse_index import SparseIndex, length_order
    >>> index = SparseIndex.from_table(item_csr)            # scipy CSR / PrefixTable / PackedTable
    >>> index = SparseIndex.from_prefix(lengths, values, dim, round_to=4)   # lengths non-decreasing
    >>> scores, ids = index.search(queries, k)               # [B, dim] float32 -> [B, k] f32, i64
    >>> files = index.save(folder)                           # {role: file name}, plain .npy
    >>> index = SparseIndex.load(folder, index.layout, files, dim, index.params)
    >>> index.describe()                                     # layout, nnz, bytes, shards, ...
    >>> order = length_order(lengths)                        # the item order a prefix index needs

``search`` returns ``(scores [B, k] float32, ids [B, k] int64)``, highest first, ``-1`` ids and
``-inf`` scores past the catalogue, like :class:`export.index.ItemIndex`. ``--index auto`` at
export times it against flat with :func:`common.timing.time_search`; ``python -m
benchmarks.export.sparse_index artifacts/NAME`` does the same on an exported artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from .sparse_search import SparseSearch

SPARSE_LAYOUTS = ("prefix", "postings", "gaps")
SPARSE_FILE_PREFIX = "items.sparse"
_INT32_MAX = np.iinfo(np.int32).max


def sparse_file(role: str) -> str:
    """File name of one array of the sparse index (``role``: lengths, values, indptr, indices)."""
    return f"{SPARSE_FILE_PREFIX}.{role}.npy"


def length_order(lengths: np.ndarray) -> np.ndarray:
    """``int64 [n_items]``: the stable order that sorts items by prefix length (shortest first)."""
    return np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")


def prefix_structure(table: sp.csr_matrix) -> np.ndarray | None:
    """Row lengths (int64) if every row of ``table``'s *stored* structure is a prefix ``[0, L)``, else None."""
    csr = sp.csr_matrix(table)
    csr.sort_indices()
    indptr = csr.indptr.astype(np.int64)
    lengths = np.diff(indptr)
    position = np.arange(csr.nnz, dtype=np.int64) - np.repeat(indptr[:-1], lengths)
    if not np.array_equal(csr.indices.astype(np.int64), position):
        return None
    return lengths


def _rounded(lengths: np.ndarray, round_to: int, dim: int) -> np.ndarray:
    """Shard width of each row: length rounded up to a multiple of ``round_to``, at least 1, at most ``dim``."""
    m = max(1, int(round_to))
    return np.minimum(dim, np.maximum(1, -(-lengths // m) * m)).astype(np.int64)


def _shard_blocks(lengths: np.ndarray, round_to: int, dim: int) -> list[tuple[int, int, int]]:
    """``(first row, stop row, width)`` of each shard of sorted ``lengths``, found by binary search
    (no temporary of n_items entries: the allocator would keep it as resident memory)."""
    widths = np.unique(_rounded(np.arange(dim + 1), round_to, dim))
    blocks, first = [], 0
    for width in widths:
        stop = int(np.searchsorted(lengths, width, side="right"))  # every row of length <= width
        if stop > first:
            blocks.append((first, stop, int(width)))
            first = stop
    return blocks


class SparseIndex(SparseSearch):
    """Exact maximum-inner-product search over a sparse item table (module docstring).

    Build with :meth:`from_table`, :meth:`from_prefix` or :meth:`from_csr`; read with :meth:`load`.

    Attributes:
        kind: ``"sparse"``.
        layout: ``"prefix"``, ``"gaps"`` or ``"postings"``.
        n_items, dim, nnz: catalogue size, vector width, stored entries of the item table.
        params: what the manifest records (``layout``, ``round_to``, ``threaded``, ...).
        fill_order: ``gaps`` and ``postings``: order in which zero-score items fill a short list
            (``None``: id order). The service sets it to its popularity order.
    """

    kind = "sparse"

    def __init__(self, layout: str, dim: int, n_items: int, nnz: int, params: dict[str, Any]):
        if layout not in SPARSE_LAYOUTS:
            raise ValueError(f"unknown sparse layout {layout!r}; choose one of {list(SPARSE_LAYOUTS)}")
        self.layout = layout
        self.dim = int(dim)
        self.n_items = int(n_items)
        self.nnz = int(nnz)
        self.params = {"layout": layout, **params}
        self.fill_order: np.ndarray | None = None
        self._arrays: dict[str, np.ndarray] = {}  # what save() writes
        # prefix
        self._shards = None
        self._keep: list[Any] = []  # python references of the faiss sub-objects
        self._shard_widths: list[int] = []
        self._stored_values = 0
        # postings
        self._postings: sp.csr_matrix | None = None

    # ------------------------------------------------------------------ build
    @classmethod
    def from_table(cls, table: Any, layout: str = "auto", **params: Any) -> "SparseIndex":
        """Index an item table.

        Args:
            table: ``[n_items, dim]``: a scipy sparse matrix (stored entries = structure), an
                ``export.to_sparse`` ``PrefixTable`` / ``PackedTable``, or a dense array (every
                entry stored).
            layout: ``auto`` (prefix where every row is a prefix and rows are sorted by length,
                else gaps), ``prefix``, ``gaps`` or ``postings``.
            params: ``round_to``, ``threaded`` (prefix).
        """
        if layout not in ("auto", *SPARSE_LAYOUTS):
            raise ValueError(f"unknown sparse layout {layout!r}; choose one of {['auto', *SPARSE_LAYOUTS]}")
        if hasattr(table, "to_csr"):
            if getattr(table, "layout", None) == "prefix" and layout in ("auto", "prefix"):
                lengths = np.asarray(table.lengths, dtype=np.int64)
                if layout == "prefix" or bool((np.diff(lengths) >= 0).all()):
                    return cls.from_prefix(lengths, table.row_values(), table.shape[1], **params)
            table = table.to_csr()
        if not sp.issparse(table):
            dense = np.ascontiguousarray(table, dtype=np.float32)
            n_items, dim = dense.shape
            table = sp.csr_matrix(
                (
                    dense.ravel(),
                    np.tile(np.arange(dim, dtype=np.int32), n_items),
                    np.arange(0, n_items * dim + 1, dim, dtype=np.int64),
                ),
                shape=dense.shape,
            )
        csr = sp.csr_matrix(table, dtype=np.float32)
        if layout in ("auto", "prefix"):
            lengths = prefix_structure(csr)
            sorted_ok = lengths is not None and bool((np.diff(lengths) >= 0).all())
            if layout == "prefix" or sorted_ok:
                if lengths is None:
                    raise ValueError("layout prefix: some item rows are not prefixes [0, L) of the dims")
                csr.sort_indices()
                return cls.from_prefix(lengths, csr.data, csr.shape[1], **params)
        unknown = set(params) - {"fill_order"}
        if unknown:
            raise ValueError(f"{'gaps' if layout == 'auto' else layout} layout takes no parameter(s) {sorted(unknown)}")
        return cls.from_csr(csr, layout="gaps" if layout == "auto" else layout, **params)

    @classmethod
    def from_prefix(
        cls,
        lengths: np.ndarray,
        values: np.ndarray,
        dim: int,
        round_to: int = 1,
        threaded: bool = False,
        keep_arrays: bool = True,
    ) -> "SparseIndex":
        """Prefix layout from row lengths and row-major values.

        Args:
            lengths: ``[n_items]`` prefix length of each item, **non-decreasing** (see
                :func:`length_order`), each in ``[0, dim]``.
            values: ``float32 [sum(lengths)]``, row ``i``'s ``L_i`` values in order.
            dim: full vector width (queries are ``[B, dim]``).
            round_to: round every length up to a multiple of this (1: one shard per distinct length).
            threaded: let ``IndexShards`` search its shards in parallel threads.
            keep_arrays: keep ``lengths`` and ``values`` for :meth:`save` / :meth:`arrays`; a loaded
                index drops them, so only FAISS's copy (4 bytes per stored value) stays in memory.
        """
        lengths = np.asarray(lengths)  # kept in its (narrow) dtype: no n_items-sized int64 copy
        if lengths.dtype.kind not in "iu":
            raise ValueError(f"prefix lengths must be integers, got {lengths.dtype}")
        values = np.asarray(values, dtype=np.float32)
        dim = int(dim)
        if lengths.ndim != 1 or (len(lengths) and (int(lengths.min()) < 0 or int(lengths.max()) > dim)):
            raise ValueError(f"prefix lengths must be a vector of values in [0, {dim}]")
        if len(lengths) > 1 and (lengths[1:] < lengths[:-1]).any():
            first = int(np.flatnonzero(lengths[1:] < lengths[:-1])[0]) + 1
            raise ValueError(
                f"prefix lengths must be non-decreasing (item {first} is shorter than item "
                f"{first - 1}); reorder the items with export.sparse_index.length_order"
            )
        if values.shape != (int(lengths.sum(dtype=np.int64)),):
            raise ValueError(
                f"values: expected [{int(lengths.sum(dtype=np.int64))}] (sum of lengths), got {values.shape}"
            )
        if int(round_to) < 1:
            raise ValueError(f"round_to must be >= 1, got {round_to}")
        index = cls("prefix", dim, len(lengths), len(values), {"round_to": int(round_to), "threaded": bool(threaded)})
        index._build_shards(lengths, values)
        if keep_arrays:
            index._arrays = {
                "lengths": lengths.astype(np.uint8 if dim <= 255 else np.uint32),
                "values": np.ascontiguousarray(values),
            }
        return index

    def _build_shards(self, lengths: np.ndarray, values: np.ndarray) -> None:
        import faiss

        round_to, threaded = int(self.params["round_to"]), bool(self.params["threaded"])
        shards = faiss.IndexShards(self.dim, threaded, True)
        stored, offset = 0, 0
        for first, stop, width in _shard_blocks(lengths, round_to, self.dim):
            block_lengths = lengths[first:stop]
            count = int(block_lengths.sum(dtype=np.int64))
            block_values = values[offset : offset + count]
            offset += count
            if count == (stop - first) * width:  # no padding: a view of the values
                vectors = block_values.reshape(stop - first, width)
            else:
                vectors = np.zeros((stop - first, width), dtype=np.float32)
                vectors[np.arange(width)[None, :] < block_lengths[:, None]] = block_values
            flat = faiss.IndexFlatIP(width)
            flat.add(np.ascontiguousarray(vectors))  # faiss keeps its own copy
            remap = faiss.RemapDimensionsTransform(self.dim, width, False)
            wrapped = faiss.IndexPreTransform(remap, flat)
            shards.add_shard(wrapped)
            self._keep += [flat, remap, wrapped]
            self._shard_widths.append(width)
            stored += (stop - first) * width
        self._shards = shards
        self._stored_values = stored

    @classmethod
    def from_csr(cls, table: sp.spmatrix, fill_order: np.ndarray | None = None, layout: str = "gaps") -> "SparseIndex":
        """Posting-list layout (``gaps``, or the older ``postings``) from an item table
        ``[n_items, dim]`` (stored entries = structure)."""
        if layout not in ("gaps", "postings"):
            raise ValueError(f"from_csr builds the gaps or postings layout, not {layout!r}")
        csr = sp.csr_matrix(table, dtype=np.float32)
        n_items, dim = csr.shape
        if csr.nnz > _INT32_MAX or n_items > _INT32_MAX:
            raise ValueError(f"{layout} layout holds int32 item ids: {csr.nnz} non-zeros / {n_items} items is too many")
        postings = csr.transpose().tocsr()  # [dim, n_items]; keeps explicit zeros
        postings.sort_indices()
        if layout == "gaps":
            from . import gap_postings

            arrays = gap_postings.encode(postings.indptr, postings.indices, postings.data, n_items)
            return cls._from_gaps(arrays, dim, n_items, fill_order, validate=False)
        return cls._from_postings(postings.indptr, postings.indices, postings.data, dim, n_items, fill_order)

    @classmethod
    def _from_gaps(
        cls,
        arrays: dict[str, np.ndarray],
        dim: int,
        n_items: int,
        fill_order: np.ndarray | None = None,
        validate: bool = True,
    ) -> "SparseIndex":
        from . import gap_postings

        # plain ndarray views (a mapped file stays mapped): what the compiled kernels take
        arrays = {role: np.asarray(arrays[role]) for role in gap_postings.ROLES if role in arrays}
        if validate:  # the kernel reads without bounds checks: a file is checked before it is searched
            gap_postings.validate(arrays, dim, n_items)
        index = cls("gaps", dim, n_items, len(arrays["values"]), {})
        index._arrays = arrays
        if fill_order is not None:
            index.fill_order = np.asarray(fill_order, dtype=np.int64)
        return index

    @classmethod
    def _from_postings(
        cls, indptr, indices, values, dim: int, n_items: int, fill_order: np.ndarray | None = None
    ) -> "SparseIndex":
        indptr = np.ascontiguousarray(indptr, dtype=np.int32)
        indices = np.ascontiguousarray(indices, dtype=np.int32)
        values = np.ascontiguousarray(values, dtype=np.float32)
        if indptr.shape != (dim + 1,) or int(indptr[-1]) != len(indices) or len(values) != len(indices):
            raise ValueError(
                f"postings: indptr {indptr.shape} (last {int(indptr[-1]) if len(indptr) else None}), "
                f"indices {indices.shape}, values {values.shape} disagree for dim {dim}"
            )
        if len(indices) and (indices.min() < 0 or indices.max() >= n_items):
            raise ValueError(f"postings: item ids outside [0, {n_items})")
        index = cls("postings", dim, n_items, len(values), {})
        index._postings = sp.csr_matrix((values, indices, indptr), shape=(dim, n_items))
        index._arrays = {"indptr": indptr, "indices": indices, "values": values}
        if fill_order is not None:
            index.fill_order = np.asarray(fill_order, dtype=np.int64)
        return index

    # ------------------------------------------------------------------ save / load
    def save(self, folder: str | Path) -> dict[str, str]:
        """Write the index arrays as ``.npy`` into ``folder``; returns ``{role: file name}``."""
        folder = Path(folder)
        files = {}
        for role, array in self.arrays().items():
            files[role] = sparse_file(role)
            with open(folder / files[role], "wb") as handle:
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
        return files

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays :meth:`save` writes, by role."""
        if not self._arrays:
            raise ValueError(
                "this prefix index was loaded without its arrays (keep_arrays=False); "
                "read them with export.sparse_index.read_arrays"
            )
        return dict(self._arrays)

    @classmethod
    def load(
        cls,
        folder: str | Path,
        layout: str,
        files: dict[str, str],
        dim: int,
        params: dict[str, Any],
        n_items: int | None = None,
        keep_arrays: bool = False,
        mmap: bool = False,
    ) -> "SparseIndex":
        """Read an index written by :meth:`save` (prefix shards are built here; the arrays read are
        dropped afterwards unless ``keep_arrays``). ``mmap``: the arrays are mapped (see
        :func:`read_arrays`); a ``postings`` index searches them in place, so workers share
        them; a ``prefix`` index copies the values into FAISS either way."""
        arrays = read_arrays(folder, files, mmap=mmap)  # a prefix index copies the values into FAISS, then drops these
        return cls.from_arrays(layout, arrays, dim, params, n_items, keep_arrays=keep_arrays)

    @classmethod
    def from_arrays(
        cls,
        layout: str,
        arrays: dict[str, np.ndarray],
        dim: int,
        params: dict[str, Any],
        n_items: int | None = None,
        keep_arrays: bool = True,
    ) -> "SparseIndex":
        """Rebuild from the arrays of :meth:`arrays` / :func:`read_arrays`."""
        if layout == "prefix":
            return cls.from_prefix(
                arrays["lengths"],
                arrays["values"],
                dim,
                round_to=int(params.get("round_to", 1)),
                threaded=bool(params.get("threaded", False)),
                keep_arrays=keep_arrays,
            )
        if layout == "postings":
            if n_items is None:
                raise ValueError("postings layout: n_items is needed to load")
            return cls._from_postings(arrays["indptr"], arrays["indices"], arrays["values"], dim, n_items)
        if layout == "gaps":
            if n_items is None:
                raise ValueError("gaps layout: n_items is needed to load")
            try:
                return cls._from_gaps(arrays, dim, n_items)
            except KeyError as exc:
                raise ValueError(f"gaps layout: missing array {exc}") from exc
        raise ValueError(f"unknown sparse layout {layout!r}; choose one of {list(SPARSE_LAYOUTS)}")

    # ------------------------------------------------------------------ describe
    @property
    def nbytes(self) -> int:
        """Bytes the searchable structure holds (faiss vectors / posting arrays), not counting Python objects."""
        if self.layout == "prefix":
            return 4 * self._stored_values
        if self.layout == "gaps":
            from . import gap_postings

            return gap_postings.nbytes(self._arrays)
        p = self._postings
        return int(p.data.nbytes + p.indices.nbytes + p.indptr.nbytes)

    def describe(self) -> dict[str, Any]:
        """What ``/info`` and the manifest show: layout, non-zeros, bytes, shards."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "layout": self.layout,
            "n_items": self.n_items,
            "dim": self.dim,
            "nnz": self.nnz,
            "bytes": self.nbytes,
            "bytes_per_nnz": round(self.nbytes / self.nnz, 3) if self.nnz else None,
        }
        if self.layout == "prefix":
            out.update(
                {
                    "shards": len(self._shard_widths),
                    "shard_widths": sorted(set(self._shard_widths)),
                    "stored_values": self._stored_values,
                    "padding_values": self._stored_values - self.nnz,
                    "round_to": self.params["round_to"],
                    "threaded": self.params["threaded"],
                }
            )
        return out

    def __repr__(self) -> str:
        return (
            f"SparseIndex(layout={self.layout!r}, n_items={self.n_items}, dim={self.dim}, nnz={self.nnz}, "
            f"bytes={self.nbytes})"
        )


def read_arrays(folder: str | Path, files: dict[str, str], mmap: bool = False) -> dict[str, np.ndarray]:
    """The sparse index arrays of an artifact folder, by role (``np.load``, no pickle; ``mmap``:
    memory-mapped copy-on-write (``mmap_mode="c"``): pages are shared with every process mapping
    the file and a write would stay private (none happens); not ``"r"``, because sparse_dot_topn
    (nanobind) refuses read-only arrays)."""
    return {
        role: np.load(Path(folder) / name, allow_pickle=False, mmap_mode="c" if mmap else None)
        for role, name in files.items()
    }
