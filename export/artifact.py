"""The artifact folder: its layout, its reader and its verifier (numpy, scipy, faiss; no torch).

An artifact is one folder written by ``python -m export`` (see :mod:`export.exporter`)::

    manifest.json                  format version, shapes, dtypes, parameters, metrics, sha256 + bytes of every file
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
                                     [dim + 1] int32, indices [nnz] int32, values [nnz] float32
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
(``prefix`` | ``postings``), ``"files"`` (role -> file; checksummed like every file), ``"params"``
(``round_to``, ``threaded``), ``"nnz"`` and ``"bytes"``, instead of the faiss kinds' ``"file"``;
a reader older than the sparse index refuses it as a malformed manifest (no ``file``). A reader older than the prefix layout refuses a prefix
table as a malformed manifest (its ``indptr`` file is not there) rather than misreading it.

    >>> artifact = load_artifact("artifacts/mf")          # verifies checksums and shapes first
    >>> scores, items = artifact.load_index().search(artifact.user_vectors()[:2], 10)
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from common.io import fsync_dir, sha256_file  # noqa: F401  (fsync_dir re-exported for older imports)
from common.propagation import lightgcn_vectors

from .to_sparse import TABLE_LAYOUTS, PackedTable, PrefixTable, binary_csr

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: JSON id maps and no stored popularity order (see the module docstring)
MANIFEST = "manifest.json"
USER_IDS = "user_ids.npy"
ITEM_IDS = "item_ids.npy"
POPULARITY = "popularity.npy"
POPULARITY_ORDER = "popularity.order.npy"
SEEN_INDPTR = "seen.indptr.npy"
SEEN_INDICES = "seen.indices.npy"
INDEX_FILE = "items.faiss"
USER_TOWER = "user_tower.onnx"
SCORER = "scorer.onnx"
SCORER_INT8 = "scorer.int8.onnx"
VECTOR_SOURCES = ("tables", "lightgcn", "popularity")
_REQUIRED_KEYS = ("format_version", "model_kind", "dim", "n_users", "n_items", "value_dtype", "tables",
                  "vectors", "seen", "popularity", "ids", "index", "arrays", "files")


class ArtifactError(ValueError):
    """An artifact is missing, damaged or of an unknown format; the message names the file or field."""


def table_file(table: str, role: str) -> str:
    """File name of one array of a packed table (``role``: indptr, indices, lengths, values, scale)."""
    return f"{table}.{role}.npy"


# ---------------------------------------------------------------------------- verify
def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and sanity-check ``manifest.json`` (format version and required keys)."""
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such artifact folder")
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path}: missing (not an artifact folder, or an unfinished one)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{manifest_path}: expected a JSON object")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ArtifactError(f"{manifest_path}: unknown format version {version!r} (this reader knows "
                            f"{', '.join(map(str, READABLE_VERSIONS))})")
    missing = [key for key in _REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ArtifactError(f"{manifest_path}: missing field(s) {', '.join(missing)}")
    return manifest


def table_layout(entry: dict[str, Any]) -> str:
    """The layout of a manifest table entry (``"csr"`` where absent: artifacts older than the field)."""
    return entry.get("layout", "csr")


def _check_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Every listed file exists with the recorded size and sha256."""
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{folder / MANIFEST}: field 'files' lists no files")
    for name, entry in sorted(files.items()):
        target = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{folder / MANIFEST}: file entry {name!r} leaves the artifact folder")
        if not target.is_file():
            raise ArtifactError(f"{target}: missing (listed in {MANIFEST})")
        size = target.stat().st_size
        if size != entry.get("bytes"):
            what = "truncated" if size < entry.get("bytes", 0) else "wrong size"
            raise ArtifactError(f"{target}: {what}: {size} bytes, manifest says {entry.get('bytes')}")
        if sha256_file(target) != entry.get("sha256"):
            raise ArtifactError(f"{target}: sha256 mismatch (the file was altered after export)")
    referenced = set(manifest["arrays"]) | _referenced_files(manifest)
    unlisted = sorted(name for name in referenced if name not in files)
    if unlisted:
        raise ArtifactError(f"{folder / MANIFEST}: file(s) {', '.join(unlisted)} used but not checksummed in 'files'")


def index_files(index_entry: dict[str, Any]) -> list[str]:
    """Files of the item index: ``items.faiss`` for a faiss kind, the arrays of a ``sparse`` one."""
    if index_entry["kind"] == "sparse":
        return sorted(index_entry["files"].values())
    return [index_entry["file"]]


def _referenced_files(manifest: dict[str, Any]) -> set[str]:
    names = {manifest["ids"]["users"], manifest["ids"]["items"], *index_files(manifest["index"])}
    if "order" in manifest["popularity"]:
        names.add(manifest["popularity"]["order"])
    for entry in manifest.get("onnx", {}).values():
        if isinstance(entry, dict) and "file" in entry:
            names.add(entry["file"])
    return names


def _check_arrays(folder: Path, manifest: dict[str, Any]) -> None:
    """Recorded dtype and shape of every ``.npy``, and the shapes the layout implies."""
    arrays = manifest["arrays"]
    for name, entry in sorted(arrays.items()):
        target = folder / name
        try:
            array = np.load(target, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # bad header, truncated data
            raise ArtifactError(f"{target}: cannot be read as .npy ({exc})") from exc
        if list(array.shape) != list(entry["shape"]) or str(array.dtype) != entry["dtype"]:
            raise ArtifactError(f"{target}: shape {list(array.shape)} dtype {array.dtype}, "
                                f"manifest says {entry['shape']} {entry['dtype']}")

    def shape(name: str) -> list[int]:
        if name not in arrays:
            raise ArtifactError(f"{folder / MANIFEST}: array {name} is not listed in 'arrays'")
        return list(arrays[name]["shape"])

    def expect(name: str, wanted: list[int]) -> None:
        if shape(name) != wanted:
            raise ArtifactError(f"{folder / name}: shape {shape(name)}, expected {wanted}")

    n_users, n_items = int(manifest["n_users"]), int(manifest["n_items"])
    for table, entry in manifest["tables"].items():
        n_rows, n_cols = entry["shape"]
        nnz = int(entry["nnz"])
        files = entry["files"]
        layout = table_layout(entry)
        if layout not in TABLE_LAYOUTS:
            raise ArtifactError(f"{folder / MANIFEST}: table {table} has unknown layout {layout!r} "
                                f"(this reader knows {list(TABLE_LAYOUTS)})")
        expect(files["values"], [nnz])
        if entry["value_dtype"] == "int8":
            expect(files["scale"], [n_rows])
        if n_cols != manifest["dim"]:
            raise ArtifactError(f"{folder / MANIFEST}: table {table} has {n_cols} columns, dim is {manifest['dim']}")
        if layout == "csr":
            expect(files["indptr"], [n_rows + 1])
            expect(files["indices"], [nnz])
            last = int(np.load(folder / files["indptr"], mmap_mode="r")[-1])
            if last != nnz:
                raise ArtifactError(f"{folder / files['indptr']}: last row pointer {last} != nnz {nnz}")
        else:
            expect(files["lengths"], [n_rows])
            lengths = np.load(folder / files["lengths"], mmap_mode="r")
            if not np.issubdtype(lengths.dtype, np.integer):
                raise ArtifactError(f"{folder / files['lengths']}: dtype {lengths.dtype}, expected an unsigned integer")
            lengths = np.asarray(lengths, dtype=np.int64)
            if n_rows and (lengths.min() < 0 or lengths.max() > n_cols):
                raise ArtifactError(f"{folder / files['lengths']}: row lengths outside [0, {n_cols}]")
            if int(lengths.sum()) != nnz:
                raise ArtifactError(f"{folder / files['lengths']}: row lengths sum to {int(lengths.sum())} != nnz {nnz}")
    seen = manifest["seen"]
    expect(seen["files"]["indptr"], [n_users + 1])
    expect(seen["files"]["indices"], [int(seen["nnz"])])
    expect(manifest["popularity"]["file"], [n_items])
    if "order" in manifest["popularity"]:
        _check_popularity_order(folder, manifest, expect)
    elif int(manifest["format_version"]) >= 2:
        raise ArtifactError(f"{folder / MANIFEST}: format 2 needs 'popularity': {{'order': ...}}")
    for key, count in (("users", n_users), ("items", n_items)):
        name = manifest["ids"][key]
        if name.endswith(".npy"):
            expect(name, [count])
            if np.dtype(arrays[name]["dtype"]).kind != "U":
                raise ArtifactError(f"{folder / name}: dtype {arrays[name]['dtype']}, expected a unicode string array")
            continue
        if int(manifest["format_version"]) >= 2:
            raise ArtifactError(f"{folder / MANIFEST}: format 2 keeps the {key} ids in a .npy file, not {name}")
        try:
            ids = json.loads((folder / name).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{folder / name}: not valid JSON ({exc})") from exc
        if not isinstance(ids, list) or len(ids) != count:
            raise ArtifactError(f"{folder / name}: expected a list of {count} ids")
    if manifest["index"]["kind"] == "sparse":
        _check_sparse_index(folder, manifest, expect)


def _check_popularity_order(folder: Path, manifest: dict[str, Any], expect) -> None:
    """The stored popularity order is a permutation of the items, counts non-increasing along it."""
    name, n_items = manifest["popularity"]["order"], int(manifest["n_items"])
    expect(name, [n_items])
    order = np.load(folder / name, mmap_mode="r", allow_pickle=False)
    if not np.issubdtype(order.dtype, np.integer):
        raise ArtifactError(f"{folder / name}: dtype {order.dtype}, expected integers")
    if n_items == 0:
        return
    if int(order.min()) < 0 or int(order.max()) >= n_items:
        raise ArtifactError(f"{folder / name}: item rows outside [0, {n_items})")
    hit = np.zeros(n_items, dtype=bool)
    hit[order] = True
    if not hit.all():
        raise ArtifactError(f"{folder / name}: not a permutation of the {n_items} items")
    counts = np.load(folder / manifest["popularity"]["file"], mmap_mode="r", allow_pickle=False)[order]
    if (np.diff(counts) > 0).any():
        raise ArtifactError(f"{folder / name}: counts along the order are not non-increasing")


def id_array(ids: Any) -> np.ndarray:
    """External ids as a fixed-width unicode array ``<U<w>`` (``w``: the longest id), the stored
    form of format 2's ``user_ids.npy`` / ``item_ids.npy``.

    Raises:
        ArtifactError: an id ends in NUL, which numpy's fixed-width strings would drop.
    """
    as_str = [str(i) for i in ids]
    if any(i.endswith("\x00") for i in as_str):
        raise ArtifactError("an external id ends in a NUL character, which a .npy string array cannot keep")
    return np.array(as_str, dtype=f"<U{max(max(map(len, as_str), default=1), 1)}")


def popularity_order(popularity: np.ndarray) -> np.ndarray:
    """Item rows by count, highest first, ties in row order (the stored ``popularity.order.npy``);
    int32 where the catalogue fits."""
    order = np.argsort(-np.asarray(popularity, dtype=np.int64), kind="stable")
    return order.astype(np.int32) if len(order) < 2**31 else order


def index_items(manifest: dict[str, Any]) -> int:
    """Items the index holds: ``n_items``, or a shard part's ``stop - start`` (export.shards)."""
    shard = manifest.get("shard")
    if shard is None:
        return int(manifest["n_items"])
    start, stop = int(shard["start"]), int(shard["stop"])
    if not 0 <= start <= stop <= int(manifest["n_items"]):
        raise ArtifactError(f"manifest: shard item range [{start}, {stop}) outside [0, {manifest['n_items']}]")
    return stop - start


def _check_sparse_index(folder: Path, manifest: dict[str, Any], expect) -> None:
    """Shapes and structure of a ``sparse`` index's arrays (their checksums are checked with every file)."""
    from .sparse_index import SPARSE_LAYOUTS

    entry = manifest["index"]
    n_items, dim = index_items(manifest), int(manifest["dim"])
    layout, files, nnz = entry.get("layout"), entry["files"], int(entry["nnz"])
    if layout not in SPARSE_LAYOUTS:
        raise ArtifactError(f"{folder / MANIFEST}: sparse index has unknown layout {layout!r} "
                            f"(this reader knows {list(SPARSE_LAYOUTS)})")
    wanted_roles = {"prefix": {"lengths", "values"}, "postings": {"indptr", "indices", "values"}}[layout]
    if set(files) != wanted_roles:
        raise ArtifactError(f"{folder / MANIFEST}: sparse {layout} index lists {sorted(files)}, "
                            f"expected {sorted(wanted_roles)}")
    expect(files["values"], [nnz])
    if layout == "prefix":
        expect(files["lengths"], [n_items])
        lengths = np.asarray(np.load(folder / files["lengths"], mmap_mode="r"), dtype=np.int64)
        if n_items and (lengths.min() < 0 or lengths.max() > dim):
            raise ArtifactError(f"{folder / files['lengths']}: prefix lengths outside [0, {dim}]")
        if (np.diff(lengths) < 0).any():
            raise ArtifactError(f"{folder / files['lengths']}: prefix lengths are not sorted (the item order of "
                                f"the id map must be by length)")
        if int(lengths.sum()) != nnz:
            raise ArtifactError(f"{folder / files['lengths']}: lengths sum to {int(lengths.sum())} != nnz {nnz}")
    else:
        expect(files["indptr"], [dim + 1])
        expect(files["indices"], [nnz])
        indptr = np.asarray(np.load(folder / files["indptr"], mmap_mode="r"), dtype=np.int64)
        if indptr[0] != 0 or indptr[-1] != nnz or (np.diff(indptr) < 0).any():
            raise ArtifactError(f"{folder / files['indptr']}: not row pointers of {nnz} entries")
        indices = np.load(folder / files["indices"], mmap_mode="r")
        if nnz and (int(indices.min()) < 0 or int(indices.max()) >= n_items):
            raise ArtifactError(f"{folder / files['indices']}: item ids outside [0, {n_items})")


def _check_index(folder: Path, manifest: dict[str, Any]) -> None:
    """The faiss index holds ``n_items`` vectors of the recorded width (reads the whole index)."""
    import faiss

    if manifest["index"]["kind"] == "sparse":  # its arrays' shapes are checked in _check_arrays; build it
        from .sparse_index import SparseIndex

        entry = manifest["index"]
        try:
            index = SparseIndex.load(folder, entry["layout"], entry["files"], int(manifest["dim"]), entry["params"],
                                     n_items=index_items(manifest))
        except ValueError as exc:
            raise ArtifactError(f"{folder / MANIFEST}: the sparse index cannot be built ({exc})") from exc
        if index.n_items != index_items(manifest) or index.nnz != int(entry["nnz"]):
            raise ArtifactError(f"{folder / MANIFEST}: the sparse index holds {index.n_items} items and {index.nnz} "
                                f"non-zeros, expected {index_items(manifest)} and {entry['nnz']}")
        return
    name = manifest["index"]["file"]
    try:
        index = faiss.read_index(str(folder / name))
    except Exception as exc:
        raise ArtifactError(f"{folder / name}: cannot be read by faiss ({exc})") from exc
    width = manifest["dim"] + (1 if manifest["index"]["kind"] == "hnsw" else 0)
    if index.ntotal != index_items(manifest) or index.d != width:
        raise ArtifactError(f"{folder / name}: {index.ntotal} vectors of width {index.d}, "
                            f"expected {index_items(manifest)} of width {width}")


def _check_onnx(folder: Path, manifest: dict[str, Any]) -> None:
    """Each ONNX graph parses and has the inputs and outputs the manifest promises."""
    import onnx

    for name, entry in manifest.get("onnx", {}).items():
        if not isinstance(entry, dict) or "file" not in entry:
            continue
        try:
            graph = onnx.load(str(folder / entry["file"])).graph
        except Exception as exc:
            raise ArtifactError(f"{folder / entry['file']}: cannot be read as ONNX ({exc})") from exc
        wanted_in = set(entry.get("inputs") or {})
        got_in = {i.name for i in graph.input}
        if not wanted_in <= got_in:
            raise ArtifactError(f"{folder / entry['file']}: inputs {sorted(got_in)}, expected {sorted(wanted_in)}")


def verify_artifact(path: str | Path, deep: bool = False) -> dict[str, Any]:
    """Check an artifact and return its manifest.

    Recomputes the sha256 and size of every file, checks the format version, and the dtype and
    shape of every array against the manifest and the layout (``deep`` also opens the faiss index
    and the ONNX graphs; ``python -m export verify`` is deep).

    Raises:
        ArtifactError: naming the missing, truncated, altered or inconsistent file.
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    try:
        _check_files(folder, manifest)
        _check_arrays(folder, manifest)
        if deep:
            _check_index(folder, manifest)
            _check_onnx(folder, manifest)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(f"{folder / MANIFEST}: malformed ({exc.__class__.__name__}: {exc})") from exc
    return manifest


def load_artifact(path: str | Path, verify: bool = True) -> "Artifact":
    """Open an artifact folder (verifying checksums and shapes first unless ``verify=False``)."""
    manifest = verify_artifact(path) if verify else read_manifest(path)
    return Artifact(path, manifest)


# ---------------------------------------------------------------------------- read
class Artifact:
    """Read access to an artifact folder; computed arrays are cached (built once).

    Attributes:
        path, manifest, model_kind, dim, n_users, n_items, index_kind, value_dtype,
        user_ids, item_ids (position = internal id).
    """

    def __init__(self, path: str | Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self.model_kind: str = manifest["model_kind"]
        self.dim = int(manifest["dim"])
        self.n_users = int(manifest["n_users"])
        self.n_items = int(manifest["n_items"])
        self.n_layers = int(manifest.get("n_layers", 0))
        self.index_kind: str = manifest["index"]["kind"]
        self.value_dtype: str = manifest["value_dtype"]
        self._cache: dict[str, Any] = {}
        self._lock = threading.RLock()  # a serving process may ask from several threads at once

    def __repr__(self) -> str:
        return (f"Artifact({str(self.path)!r}, model_kind={self.model_kind!r}, n_users={self.n_users}, "
                f"n_items={self.n_items}, dim={self.dim}, values={self.value_dtype}, index={self.index_kind})")

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
        """Absolute path of a file of the artifact (e.g. ``artifact.file(manifest['onnx']['scorer']['file'])``)."""
        return self.path / name

    # -- ids
    def _id_array(self, side: str, mmap: bool) -> np.ndarray:
        name = self.manifest["ids"][side]
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
        return table_layout(self._table_entry(name))

    def _table_entry(self, name: str) -> dict[str, Any]:
        if name not in self.manifest["tables"]:
            raise KeyError(f"no table {name!r}; the artifact has {sorted(self.manifest['tables'])}")
        return self.manifest["tables"][name]

    def stored_table(self, name: str) -> PackedTable | PrefixTable:
        """One table in its stored layout, its arrays exactly as on disk (:class:`PackedTable` for
        ``csr``, :class:`PrefixTable` for ``prefix``)."""
        entry = self._table_entry(name)
        files = entry["files"]
        shape = tuple(entry["shape"])
        scale = self._array(files["scale"]) if "scale" in files else None
        layout = table_layout(entry)
        if layout == "prefix":
            return PrefixTable(lengths=self._array(files["lengths"]), values=self._array(files["values"]),
                               shape=shape, value_dtype=entry["value_dtype"], scale=scale)
        if layout != "csr":
            raise ArtifactError(f"{self.path / MANIFEST}: table {name} has unknown layout {layout!r}")
        return PackedTable(
            indptr=self._array(files["indptr"]),
            indices=self._array(files["indices"]),
            values=self._array(files["values"]),
            shape=shape,
            value_dtype=entry["value_dtype"],
            scale=scale,
        )

    def packed_table(self, name: str) -> PackedTable:
        """One table as packed CSR :class:`PackedTable`, whatever its stored layout (a ``csr`` table's
        arrays exactly as on disk; a ``prefix`` table's row pointers and column indices rebuilt from
        its lengths, values and scale as on disk)."""
        return self.stored_table(name).to_packed()

    def tables(self) -> dict[str, sp.csr_matrix]:
        """The stored base tables, dequantised to ``float32`` CSR, by name."""
        return self._cached("tables", lambda: {name: self.stored_table(name).to_csr() for name in self.manifest["tables"]})

    # -- served vectors
    def _vectors(self) -> tuple[np.ndarray, np.ndarray]:
        spec = self.manifest["vectors"]
        source = spec["source"]
        if source == "tables":
            users = self._rows(spec["users"])
            items = self._rows(spec["items"])
        elif source == "lightgcn":
            stored = self.stored_table(spec["table"])
            # mask_output: the stored structure is the mask (a kept weight may be exactly 0)
            mask = None
            if spec.get("mask_output"):
                packed = stored.to_packed()
                mask = np.zeros(packed.shape, dtype=bool)
                mask[np.repeat(np.arange(packed.shape[0]), np.diff(packed.indptr.astype(np.int64))),
                     packed.indices.astype(np.int64)] = True
            users, items = lightgcn_vectors(stored.to_dense(), self.seen(), int(spec["n_layers"]), mask)
        elif source == "popularity":
            users = np.ones((self.n_users, 1), dtype=np.float32)
            items = self.popularity().astype(np.float32)[:, None]
        else:
            raise ArtifactError(f"{self.path / MANIFEST}: unknown vector source {source!r} (known: {VECTOR_SOURCES})")
        return np.ascontiguousarray(users, dtype=np.float32), np.ascontiguousarray(items, dtype=np.float32)

    def _rows(self, where: dict[str, Any], mmap: bool = False) -> np.ndarray:
        entry = self._table_entry(where["table"])
        start, stop = int(where["start"]), int(where["stop"])
        if mmap and self._dense_prefix(entry):  # the stored values are the dense rows: map them
            values = self._array(entry["files"]["values"], mmap=True)
            return values.reshape(-1, int(entry["shape"][1]))[start:stop]
        table = self.stored_table(where["table"]).to_dense()
        return table[start:stop]

    def _dense_prefix(self, entry: dict[str, Any]) -> bool:
        """A ``prefix`` fp32 table whose every row is full: its values file is the dense table, row-major."""
        n_rows, n_cols = entry["shape"]
        return (table_layout(entry) == "prefix" and entry["value_dtype"] == "fp32" and "scale" not in entry["files"]
                and int(entry["nnz"]) == n_rows * n_cols)

    def _both(self) -> tuple[np.ndarray, np.ndarray]:
        users, items = self._cached("vectors", self._vectors)
        for array in (users, items):
            array.setflags(write=False)
        return users, items

    def _side(self, side: str, mmap: bool = False) -> np.ndarray:
        """One side's vectors; MF tables are densified one side at a time, so a service that reads
        only the users never holds dense item vectors. ``mmap``: where the stored table is already
        dense fp32 (an MF table at density 1), its rows are mapped from the file, not copied."""
        spec = self.manifest["vectors"]
        if spec["source"] != "tables":
            return self._both()[0 if side == "users" else 1]
        key = f"{side}_vectors{'_mapped' if mmap else ''}"
        return self._cached(key, lambda: np.ascontiguousarray(self._rows(spec[side], mmap=mmap), dtype=np.float32))

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
        spec = self.manifest["vectors"]
        if spec["source"] == "tables":
            where = spec["items"]
            return self.stored_table(where["table"]).to_csr()[int(where["start"]): int(where["stop"])]
        if spec["source"] == "lightgcn" and spec.get("mask_output"):
            rows = self.stored_table(spec["table"]).to_csr()[int(spec["items"]["start"]): int(spec["items"]["stop"])]
            rows = sp.csr_matrix(rows)
            item_rows = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
            rows.data = np.ascontiguousarray(self.item_vectors()[item_rows, rows.indices], dtype=np.float32)
            return rows
        return None

    # -- interactions, popularity, index
    def seen(self) -> sp.csr_matrix:
        """``[n_users, n_items]`` float32 CSR of train interactions (ones)."""
        files = self.manifest["seen"]["files"]
        return self._cached("seen", lambda: binary_csr(self._array(files["indptr"]), self._array(files["indices"]),
                                                       (self.n_users, self.n_items)))

    def seen_arrays(self, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(indptr [n_users + 1], indices [nnz])`` of the train interactions as stored (narrow
        unsigned dtypes, columns sorted within a row); ``mmap``: mapped read-only."""
        files = self.manifest["seen"]["files"]
        def build() -> tuple[np.ndarray, np.ndarray]:
            arrays = self._array(files["indptr"], mmap=mmap), self._array(files["indices"], mmap=mmap)
            for array in arrays:
                array.setflags(write=False)
            return arrays
        return self._cached(f"seen_arrays{'_mapped' if mmap else ''}", build)

    def popularity(self, mmap: bool = False) -> np.ndarray:
        """``int64 [n_items]`` train interaction counts (``mmap``: mapped read-only)."""
        def build() -> np.ndarray:
            counts = self._array(self.manifest["popularity"]["file"], mmap=mmap)
            return counts if counts.dtype == np.int64 else counts.astype(np.int64)
        return self._cached(f"popularity{'_mapped' if mmap else ''}", build)

    def popularity_order(self, mmap: bool = False) -> np.ndarray:
        """Item rows by count, highest first, ties by row (stored in format 2, ``mmap``: mapped
        read-only; sorted here for a format 1 artifact)."""
        name = self.manifest["popularity"].get("order")
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
        entry = self.manifest["index"]
        if entry["kind"] == "sparse":
            from .sparse_index import SparseIndex

            return SparseIndex.load(self.path, entry["layout"], entry["files"], self.dim, entry["params"],
                                    n_items=index_items(self.manifest), mmap=mmap)
        from .index import ItemIndex

        return ItemIndex.load(self.path / entry["file"], entry["kind"], entry["params"], mmap=mmap)

    def sparse_index_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of a ``sparse`` index by role (for the GPU path, which builds its own tensors)."""
        from .sparse_index import read_arrays

        entry = self.manifest["index"]
        if entry["kind"] != "sparse":
            raise ArtifactError(f"{self.path / MANIFEST}: index kind is {entry['kind']!r}, not sparse")
        return read_arrays(self.path, entry["files"])

    def summary(self) -> dict[str, Any]:
        """A short description (for ``GET /info``): model, sizes, density, index."""
        m = self.manifest
        return {
            "format_version": m["format_version"],
            "model_kind": self.model_kind,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "dim": self.dim,
            "n_layers": self.n_layers,
            "value_dtype": self.value_dtype,
            "density": m.get("density"),
            "nnz": m.get("nnz"),
            "index": {"kind": self.index_kind, "params": m["index"]["params"],
                      "recall@20_vs_flat": m["index"].get("recall@20_vs_flat"),
                      **{key: m["index"][key] for key in ("layout", "nnz", "bytes", "auto") if key in m["index"]}},
            "bytes": {"total": sum(f["bytes"] for f in m["files"].values()),
                      "tables": sum(t["bytes"] for t in m["tables"].values())},
            "table_layouts": {name: table_layout(entry) for name, entry in m["tables"].items()},
            "serving_dense": m.get("serving_dense", []),
        }
