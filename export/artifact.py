"""The artifact folder: its layout, its reader and its verifier (numpy, scipy, faiss; no torch).

An artifact is one folder written by ``python -m export`` (see :mod:`export.exporter`)::

    manifest.json                  format version, shapes, dtypes, parameters, metrics, sha256 + bytes of every file
                                     (parsed and validated by export.manifest.Manifest)
    manifest.sha256                the sha256 of manifest.json itself: a hand-edited manifest is refused
    <table>.indptr.npy             each embedding table (export.to_sparse), one set per table (MF:
    <table>.indices.npy              user_embedding, item_embedding; LightGCN: embedding, users then items),
    <table>.values.npy               in the layout its manifest entry names ("layout", default "csr"):
    <table>.scale.npy                csr: indptr, indices, values; prefix: lengths, values (no indices);
    <table>.lengths.npy              int8 values: + per-row float32 scale
    seen.indptr.npy, seen.indices.npy   train interactions [n_users, n_items] (binary CSR structure,
                                     columns sorted within each row)
    popularity.npy                 int64 [n_items] train interaction counts (cold-start fallback)
    popularity.order.npy           item rows by count, highest first (stable; int32 or int64) [format 2]
    user_ids.npy, item_ids.npy     external ids (fixed-width unicode ``<U<w>``), position = internal id
                                     [format 2; format 1: user_ids.json, item_ids.json]
    items.faiss                    the item index of a faiss kind (export.index.ItemIndex), or
    items.sparse.<role>.npy          the ``sparse`` index (export.sparse_index.SparseIndex): prefix
                                     layout: lengths [n_items] (non-decreasing: the id map is in
                                     that order) + values [nnz] float32; postings layout: indptr
                                     [dim + 1] int32, indices [nnz] int32, values [nnz] float32; gaps
                                     layout (export.gap_postings): indptr, bitptr [dim + 1] int64,
                                     widths uint8, words uint64 (bit-packed item id gaps), values
                                     [nnz] float32
    user_tower.onnx, scorer.onnx   onnxruntime graphs (user -> vector; user, k -> top-k items)

The served vectors are rebuilt from the tables at load: MF reads its two tables; LightGCN
propagates its joint base table over the adjacency built from ``seen`` (``n_layers`` in the
manifest); the popularity model serves ``[1] . [count]``. Everything is ``np.load(...,
allow_pickle=False)`` or JSON.

Format 2 (this writer) differs from format 1 in two things only, both so that every array a
server reads at serving time can be memory-mapped read-only from the artifact (server workers on
one machine then share one copy in the page cache instead of each holding its own): the id maps
are ``.npy`` string arrays instead of JSON lists, and the popularity order is stored
(``"popularity": {"order": ...}``) instead of sorted in every worker. This reader reads both
formats (format 1's ids and order are built in memory, per process); a reader of format 1 refuses
a format 2 artifact by its version number.

A table entry without ``"layout"`` (artifacts written before the prefix layout existed) is
``"csr"``; the format version stays 1. The index entry of a ``sparse`` index holds ``"layout"``
(``prefix`` | ``postings`` | ``gaps``), ``"files"`` (role -> file; checksummed like every file), ``"params"``
(``round_to``, ``threaded``), ``"nnz"`` and ``"bytes"``, instead of the faiss kinds' ``"file"``;
a reader older than the sparse index refuses it as a malformed manifest (no ``file``). A reader older than the prefix layout refuses a prefix
table as a malformed manifest (its ``indptr`` file is not there) rather than misreading it.

    >>> artifact = load_artifact("artifacts/mf")          # verifies checksums and shapes first
    >>> artifact.manifest.index.kind, artifact.manifest.tables["user_embedding"].nnz
    >>> scores, items = artifact.load_index().search(artifact.user_vectors()[:2], 10)
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from common.io import sha256_file
from common.propagation import lightgcn_vectors

from .artifact_checks import check_arrays, check_files, check_onnx
from .layout import id_array, popularity_order, table_file
from .manifest import (
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_SHA256,
    READABLE_VERSIONS,
    VECTOR_SOURCES,
    ArtifactError,
    IndexEntry,
    Manifest,
    TableEntry,
    read_manifest,
    seal_manifest,
    write_manifest,
)
from .to_sparse import PackedTable, PrefixTable, binary_csr

# the format's names, its error, and the manifest's reader and writer, importable from here
__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "MANIFEST",
    "MANIFEST_SHA256",
    "VECTOR_SOURCES",
    "ArtifactError",
    "IndexEntry",
    "Manifest",
    "TableEntry",
    "read_manifest",
    "seal_manifest",
    "write_manifest",
    "Artifact",
    "load_artifact",
    "verify_artifact",
    "table_file",
    "id_array",
    "popularity_order",
    "sha256_file",
]


# ---------------------------------------------------------------------------- verify
def _check_index(folder: Path, manifest: Manifest, mmap: bool = False) -> None:
    """Open the item index the way a serving worker does (:meth:`Artifact.load_index`) and check that it
    holds the index's items at the recorded width and answers one query."""
    entry = manifest.index
    where = folder / (entry.file if entry.kind != "sparse" else MANIFEST)
    try:
        index = Artifact(folder, manifest).load_index(mmap=mmap)
    except Exception as exc:  # faiss raises RuntimeError, the sparse index ValueError: any of them is fatal here
        raise ArtifactError(f"{where}: the {entry.kind} index cannot be opened ({type(exc).__name__}: {exc})") from exc
    if entry.kind == "sparse":
        if index.n_items != manifest.index_items or index.nnz != entry.nnz:
            raise ArtifactError(
                f"{folder / MANIFEST}: the sparse index holds {index.n_items} items and {index.nnz} "
                f"non-zeros, expected {manifest.index_items} and {entry.nnz}"
            )
    else:
        width = manifest.dim + (1 if entry.kind == "hnsw" else 0)
        if index.index.ntotal != manifest.index_items or index.index.d != width:
            raise ArtifactError(
                f"{where}: {index.index.ntotal} vectors of width {index.index.d}, "
                f"expected {manifest.index_items} of width {width}"
            )
    if manifest.index_items == 0:
        return
    try:
        _, ids = index.search(np.zeros((1, manifest.dim), dtype=np.float32), 1)
    except Exception as exc:
        raise ArtifactError(f"{where}: the {entry.kind} index fails a search ({type(exc).__name__}: {exc})") from exc
    if ids.size and (int(ids.max()) >= manifest.index_items):
        raise ArtifactError(f"{where}: the {entry.kind} index answers ids beyond its {manifest.index_items} items")


def verify_artifact(path: str | Path, deep: bool = False, index: bool = False, mmap: bool = False) -> Manifest:
    """Check an artifact and return its manifest.

    Checks ``manifest.json`` against its sidecar ``manifest.sha256`` and parses it (types, version,
    ranges), then recomputes the sha256 and size of every file and checks the dtype and shape of
    every array against the manifest and the layout. ``index`` also opens the item index the way a
    serving worker does (``mmap`` as the worker will) and runs one search; ``deep`` does that and
    opens the ONNX graphs (``python -m export verify`` is deep; ``python -m serving`` checks the
    index before it starts workers).

    Raises:
        ArtifactError: naming the missing, truncated, altered or inconsistent file or field.
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    try:
        check_files(folder, manifest)
        check_arrays(folder, manifest)
        if deep or index:
            _check_index(folder, manifest, mmap=mmap)
        if deep:
            check_onnx(folder, manifest)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(f"{folder / MANIFEST}: malformed ({exc.__class__.__name__}: {exc})") from exc
    return manifest


def load_artifact(path: str | Path, verify: bool = True) -> "Artifact":
    """Open an artifact folder (verifying checksums and shapes first unless ``verify=False``; the
    manifest itself is always checked against its sidecar and parsed)."""
    manifest = verify_artifact(path) if verify else read_manifest(path)
    return Artifact(path, manifest)


# ---------------------------------------------------------------------------- read
class Artifact:
    """Read access to an artifact folder; computed arrays are cached (built once).

    Attributes:
        path, manifest (:class:`~export.manifest.Manifest`), model_kind, dim, n_users, n_items,
        n_layers, index_kind, value_dtype, user_ids, item_ids (position = internal id).
    """

    def __init__(self, path: str | Path, manifest: Manifest):
        if not isinstance(manifest, Manifest):
            raise TypeError(f"Artifact needs a parsed Manifest (Manifest.from_json), got {type(manifest).__name__}")
        self.path = Path(path)
        self.manifest = manifest
        self.model_kind: str = manifest.model_kind
        self.dim = manifest.dim
        self.n_users = manifest.n_users
        self.n_items = manifest.n_items
        self.n_layers = manifest.n_layers
        self.index_kind: str = manifest.index.kind
        self.value_dtype: str = manifest.value_dtype
        self._cache: dict[str, Any] = {}
        self._lock = threading.RLock()  # a serving process may ask from several threads at once

    def __repr__(self) -> str:
        return (
            f"Artifact({str(self.path)!r}, model_kind={self.model_kind!r}, n_users={self.n_users}, "
            f"n_items={self.n_items}, dim={self.dim}, values={self.value_dtype}, index={self.index_kind})"
        )

    def _cached(self, key: str, build):
        with self._lock:
            if key not in self._cache:
                value = build()
                if isinstance(value, np.ndarray):
                    value.setflags(write=False)  # shared by every caller: nobody may change it
                self._cache[key] = value
            return self._cache[key]

    def _array(self, name: str, mmap: bool = False) -> np.ndarray:
        """One ``.npy`` of the artifact, read into memory or (``mmap``) mapped read-only: a mapped
        array's pages live in the page cache, shared by every process that maps the file."""
        return np.load(self.path / name, allow_pickle=False, mmap_mode="r" if mmap else None)

    def file(self, name: str) -> Path:
        """Absolute path of a file of the artifact (e.g. ``artifact.file(artifact.manifest.onnx['scorer'].file)``)."""
        return self.path / name

    # -- ids
    def _id_array(self, side: str, mmap: bool) -> np.ndarray:
        name = self.manifest.ids.users if side == "users" else self.manifest.ids.items
        if name.endswith(".npy"):
            return self._array(name, mmap=mmap)
        return id_array(json.loads((self.path / name).read_text()))  # format 1: per process, not mapped

    def user_id_array(self, mmap: bool = False) -> np.ndarray:
        """External user ids, ``<U<w>`` ``[n_users]`` (``mmap``: mapped read-only, format 2)."""
        return self._cached(f"user_id_array{'_mapped' if mmap else ''}", lambda: self._id_array("users", mmap))

    def item_id_array(self, mmap: bool = False) -> np.ndarray:
        """External item ids, ``<U<w>`` ``[n_items]`` (``mmap``: mapped read-only, format 2)."""
        return self._cached(f"item_id_array{'_mapped' if mmap else ''}", lambda: self._id_array("items", mmap))

    @property
    def user_ids(self) -> list[str]:
        """External user ids as a list (position = internal id)."""
        return self._cached("user_ids", lambda: self.user_id_array(mmap=True).tolist())

    @property
    def item_ids(self) -> list[str]:
        """External item ids as a list (position = internal id)."""
        return self._cached("item_ids", lambda: self.item_id_array(mmap=True).tolist())

    def user_index(self) -> dict[str, int]:
        """External user id -> internal row."""
        return self._cached("user_index", lambda: {u: i for i, u in enumerate(self.user_ids)})

    def item_index(self) -> dict[str, int]:
        """External item id -> internal row."""
        return self._cached("item_index", lambda: {u: i for i, u in enumerate(self.item_ids)})

    # -- tables
    def table_layout(self, name: str) -> str:
        """``"csr"`` or ``"prefix"``: how table ``name`` is stored."""
        return self._table_entry(name).layout

    def _table_entry(self, name: str) -> TableEntry:
        if name not in self.manifest.tables:
            raise KeyError(f"no table {name!r}; the artifact has {sorted(self.manifest.tables)}")
        return self.manifest.tables[name]

    def stored_table(self, name: str, mmap: bool = False) -> PackedTable | PrefixTable:
        """One table in its stored layout, its arrays exactly as on disk (:class:`PackedTable` for
        ``csr``, :class:`PrefixTable` for ``prefix``; ``mmap``: mapped read-only)."""
        entry = self._table_entry(name)
        files = entry.files
        scale = self._array(files["scale"], mmap=mmap) if entry.has_scale else None
        if entry.layout == "prefix":
            return PrefixTable(
                lengths=self._array(files["lengths"], mmap=mmap),
                values=self._array(files["values"], mmap=mmap),
                shape=entry.shape,
                value_dtype=entry.value_dtype,
                scale=scale,
            )
        return PackedTable(
            indptr=self._array(files["indptr"], mmap=mmap),
            indices=self._array(files["indices"], mmap=mmap),
            values=self._array(files["values"], mmap=mmap),
            shape=entry.shape,
            value_dtype=entry.value_dtype,
            scale=scale,
        )

    def packed_table(self, name: str) -> PackedTable:
        """One table as packed CSR :class:`PackedTable`, whatever its stored layout (a ``csr`` table's
        arrays exactly as on disk; a ``prefix`` table's row pointers and column indices rebuilt from
        its lengths, values and scale as on disk)."""
        return self.stored_table(name).to_packed()

    def tables(self) -> dict[str, sp.csr_matrix]:
        """The stored base tables, dequantised to ``float32`` CSR, by name."""
        return self._cached("tables", lambda: {name: self.stored_table(name).to_csr() for name in self.manifest.tables})

    # -- served vectors
    def _vectors(self) -> tuple[np.ndarray, np.ndarray]:
        spec = self.manifest.vectors
        if spec.source == "tables":
            users = self._rows(spec.users.table, spec.users)
            items = self._rows(spec.items.table, spec.items)
        elif spec.source == "lightgcn":
            stored = self.stored_table(spec.table)
            # mask_output: the stored structure is the mask (a kept weight may be exactly 0)
            mask = None
            if spec.mask_output:
                packed = stored.to_packed()
                mask = np.zeros(packed.shape, dtype=bool)
                mask[
                    np.repeat(np.arange(packed.shape[0]), np.diff(packed.indptr.astype(np.int64))),
                    packed.indices.astype(np.int64),
                ] = True
            users, items = lightgcn_vectors(stored.to_dense(), self.seen(), spec.n_layers, mask)
        else:  # popularity (the manifest's parser admits no other source)
            users = np.ones((self.n_users, 1), dtype=np.float32)
            items = self.popularity().astype(np.float32)[:, None]
        return np.ascontiguousarray(users, dtype=np.float32), np.ascontiguousarray(items, dtype=np.float32)

    def _rows(self, table: str, rows, mmap: bool = False) -> np.ndarray:
        entry = self._table_entry(table)
        if mmap and entry.dense_prefix:  # the stored values are the dense rows: map them
            values = self._array(entry.files["values"], mmap=True)
            return values.reshape(-1, entry.shape[1])[rows.start : rows.stop]
        return self.stored_table(table).to_dense()[rows.start : rows.stop]

    def _both(self) -> tuple[np.ndarray, np.ndarray]:
        users, items = self._cached("vectors", self._vectors)
        for array in (users, items):
            array.setflags(write=False)
        return users, items

    def _side(self, side: str, mmap: bool = False) -> np.ndarray:
        """One side's vectors; MF tables are densified one side at a time, so a service that reads
        only the users never holds dense item vectors. ``mmap``: where the stored table is already
        dense fp32 (an MF table at density 1), its rows are mapped from the file, not copied."""
        spec = self.manifest.vectors
        if spec.source != "tables":
            return self._both()[0 if side == "users" else 1]
        rows = spec.users if side == "users" else spec.items
        key = f"{side}_vectors{'_mapped' if mmap else ''}"
        return self._cached(
            key, lambda: np.ascontiguousarray(self._rows(rows.table, rows, mmap=mmap), dtype=np.float32)
        )

    def user_vectors(self, mmap: bool = False) -> np.ndarray:
        """``float32 [n_users, dim]``: the served user vectors (LightGCN: propagated; ``mmap``:
        mapped read-only where the stored table is dense fp32, else computed as without it)."""
        return self._side("users", mmap=mmap)

    def item_vectors(self) -> np.ndarray:
        """``float32 [n_items, dim]``: the served item vectors (LightGCN: propagated)."""
        return self._side("items")

    def served_item_table(self) -> sp.csr_matrix | None:
        """``float32 [n_items, dim]`` CSR of the served item vectors whose stored entries are the
        structure (the mask: a kept weight may be exactly 0), or ``None`` where they are dense
        (LightGCN without mask_output, popularity). MF: the item table's rows; LightGCN with
        mask_output: the masked propagated item rows."""
        spec = self.manifest.vectors
        if spec.source == "tables":
            return self.stored_table(spec.items.table).to_csr()[spec.items.start : spec.items.stop]
        if spec.source == "lightgcn" and spec.mask_output:
            rows = sp.csr_matrix(self.stored_table(spec.table).to_csr()[spec.items.start : spec.items.stop])
            item_rows = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
            rows.data = np.ascontiguousarray(self.item_vectors()[item_rows, rows.indices], dtype=np.float32)
            return rows
        return None

    # -- interactions, popularity, index
    def seen(self) -> sp.csr_matrix:
        """``[n_users, n_items]`` float32 CSR of train interactions (ones)."""
        files = self.manifest.seen.files
        return self._cached(
            "seen",
            lambda: binary_csr(
                self._array(files["indptr"]), self._array(files["indices"]), (self.n_users, self.n_items)
            ),
        )

    def seen_arrays(self, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(indptr [n_users + 1], indices [nnz])`` of the train interactions as stored (narrow
        unsigned dtypes, columns sorted within a row); ``mmap``: mapped read-only."""
        files = self.manifest.seen.files

        def build() -> tuple[np.ndarray, np.ndarray]:
            arrays = self._array(files["indptr"], mmap=mmap), self._array(files["indices"], mmap=mmap)
            for array in arrays:
                array.setflags(write=False)
            return arrays

        return self._cached(f"seen_arrays{'_mapped' if mmap else ''}", build)

    def popularity(self, mmap: bool = False) -> np.ndarray:
        """``int64 [n_items]`` train interaction counts (``mmap``: mapped read-only)."""

        def build() -> np.ndarray:
            counts = self._array(self.manifest.popularity.file, mmap=mmap)
            return counts if counts.dtype == np.int64 else counts.astype(np.int64)

        return self._cached(f"popularity{'_mapped' if mmap else ''}", build)

    def popularity_order(self, mmap: bool = False) -> np.ndarray:
        """Item rows by count, highest first, ties by row (stored in format 2, ``mmap``: mapped
        read-only; sorted here for a format 1 artifact)."""
        name = self.manifest.popularity.order
        if name is None:
            return self._cached("popularity_order", lambda: popularity_order(self.popularity()))
        return self._cached(f"popularity_order{'_mapped' if mmap else ''}", lambda: self._array(name, mmap=mmap))

    def load_index(self, mmap: bool = False) -> "ItemIndex | SparseIndex":
        """The item index with its kind's parameters (a new object on every call): a faiss
        :class:`~export.index.ItemIndex`, or a :class:`~export.sparse_index.SparseIndex` (prefix
        shards built here). Both answer ``search(queries, k) -> (scores, ids)``. ``mmap``: map
        the index's vectors from the files where the kind allows (faiss flat/hnsw, sparse
        postings), so processes serving one artifact share them. A shard part's index holds only
        its items, ids ``0..stop-start`` (``shard`` in the manifest, see export.shards)."""
        entry = self.manifest.index
        if entry.kind == "sparse":
            from .sparse_index import SparseIndex

            return SparseIndex.load(
                self.path,
                entry.layout,
                entry.files,
                self.dim,
                entry.params,
                n_items=self.manifest.index_items,
                mmap=mmap,
            )
        from .index import ItemIndex

        return ItemIndex.load(self.path / entry.file, entry.kind, entry.params, mmap=mmap)

    def sparse_index_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of a ``sparse`` index by role (for the GPU path, which builds its own tensors)."""
        from .sparse_index import read_arrays

        entry = self.manifest.index
        if entry.kind != "sparse":
            raise ArtifactError(f"{self.path / MANIFEST}: index kind is {entry.kind!r}, not sparse")
        return read_arrays(self.path, entry.files)

    def summary(self) -> dict[str, Any]:
        """A short description (for ``GET /info``): model, sizes, density, index."""
        m = self.manifest
        index: dict[str, Any] = {
            "kind": self.index_kind,
            "params": m.index.params,
            "recall@20_vs_flat": m.index.extra.get("recall@20_vs_flat"),
        }
        if m.index.layout is not None:
            index["layout"] = m.index.layout
        if m.index.nnz is not None:
            index["nnz"] = m.index.nnz
        if m.index.bytes is not None:
            index["bytes"] = m.index.bytes
        if m.index.auto is not None:
            index["auto"] = m.index.auto
        return {
            "format_version": m.format_version,
            "model_kind": self.model_kind,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "dim": self.dim,
            "n_layers": self.n_layers,
            "value_dtype": self.value_dtype,
            "density": m.density,
            "nnz": m.nnz,
            "index": index,
            "bytes": {"total": m.total_bytes, "tables": m.table_bytes},
            "table_layouts": {name: entry.layout for name, entry in m.tables.items()},
            "serving_dense": list(m.serving_dense),
        }
