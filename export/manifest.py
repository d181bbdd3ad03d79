"""The artifact's ``manifest.json`` as a typed, validated value, and its self-check sidecar.

One place parses the manifest (:meth:`Manifest.from_json`), one place writes it
(:func:`write_manifest`); every reader uses attributes::

    >>> manifest = read_manifest("artifacts/mf")       # checks manifest.sha256, then parses
    >>> manifest.index.kind, manifest.n_items, manifest.tables["user_embedding"].nnz
    >>> write_manifest(folder, Manifest.from_json(obj))  # manifest.json + manifest.sha256

Parsing refuses, naming the field, its value and what was expected: an unknown or non-integer
``format_version`` (``true``, ``2.0`` and ``"1"`` are not versions), unknown top-level fields,
counts that are not non-negative integers, an unknown model kind, value dtype, table layout,
vector source or index kind, a vector row range outside its table, and a ``shard`` range that is
not the range its ``index`` / ``count`` give for ``n_items`` items.

The sidecar ``manifest.sha256`` holds the sha256 of the exact bytes of ``manifest.json`` (64 hex
digits and a newline). ``manifest.json`` lists the sha256 of every other file, so with the
sidecar the whole folder is covered: a hand-edited manifest is refused at load.

Free-form records the exporter keeps for people (``training``, ``quality``, ``fidelity``,
``exporter``, ``lightgcn_output``, the ONNX graphs' figures, the index's recall figures) are
kept as read; :meth:`Manifest.to_json` gives back exactly the JSON that was parsed.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.io import atomic_write_bytes, sha256_file

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: JSON id maps and no stored popularity order (see export.artifact)
MANIFEST = "manifest.json"
MANIFEST_SHA256 = "manifest.sha256"
MODEL_KINDS = ("mf", "lightgcn", "pop")
VALUE_DTYPES = ("fp32", "fp16", "int8")  # export.to_sparse.VALUE_DTYPES's keys
TABLE_LAYOUTS = ("csr", "prefix")  # export.to_sparse.TABLE_LAYOUTS
VECTOR_SOURCES = ("tables", "lightgcn", "popularity")
FAISS_KINDS = ("flat", "ivf", "hnsw", "sq8", "pq")  # export.index.INDEX_KINDS (kept here: no faiss import)
INDEX_KINDS = (*FAISS_KINDS, "sparse")
SPARSE_LAYOUTS = ("prefix", "postings")  # export.sparse_index.SPARSE_LAYOUTS
_TOP_LEVEL = ("format_version", "model_kind", "dim", "n_users", "n_items", "n_layers", "value_dtype", "nnz",
              "density", "tables", "vectors", "serving_dense", "seen", "popularity", "ids", "index", "item_order",
              "onnx", "arrays", "files", "fidelity", "quality", "lightgcn_output", "training", "exporter", "bytes",
              "shard")
_REQUIRED = ("format_version", "model_kind", "dim", "n_users", "n_items", "value_dtype", "tables", "vectors", "seen",
             "popularity", "ids", "index", "arrays", "files")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ArtifactError(ValueError):
    """An artifact is missing, damaged or of an unknown format; the message names the file or field."""


# ---------------------------------------------------------------------------- field checks
class _Fields:
    """Typed reads of one JSON object of the manifest; every error names ``source`` and the field path."""

    def __init__(self, obj: Any, where: str, source: str):
        self.where, self.source = where, source
        if not isinstance(obj, dict):
            self.fail(where, obj, "a JSON object")
        self.obj: dict[str, Any] = obj

    def fail(self, name: str, value: Any, expected: str) -> None:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise _error(f"{self.source}: field {name!r} is {shown} ({_json_type(value)}), expected {expected}")

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return key in self.obj

    def raw(self, key: str, default: Any = None) -> Any:
        return self.obj.get(key, default)

    def required(self, key: str) -> Any:
        if key not in self.obj:
            raise _error(f"{self.source}: field {self.path(key)!r} is missing")
        return self.obj[key]

    def int(self, key: str, minimum: int = 0, default: int | None = None) -> int:
        value = self.required(key) if default is None else self.obj.get(key, default)
        if type(value) is not int or value < minimum:  # bool is an int subclass: excluded on purpose
            self.fail(self.path(key), value, f"an integer >= {minimum}")
        return value

    def str(self, key: str, choices: tuple[str, ...] | None = None, default: str | None = None) -> str:
        value = self.required(key) if default is None else self.obj.get(key, default)
        if not isinstance(value, str) or (choices is not None and value not in choices):
            self.fail(self.path(key), value, f"one of {list(choices)}" if choices else "a string")
        return value

    def file(self, key: str) -> str:
        """A file name inside the artifact folder (relative, no ``..``)."""
        value = self.str(key)
        return _file_name(value, self.path(key), self.source)

    def bool(self, key: str, default: bool | None = None) -> bool:
        value = self.required(key) if default is None else self.obj.get(key, default)
        if not isinstance(value, bool):
            self.fail(self.path(key), value, "true or false")
        return value

    def number(self, key: str) -> float | None:
        """An optional finite number (``None`` where absent or null)."""
        value = self.obj.get(key)
        if value is None:
            return None
        if type(value) not in (int, float) or not math.isfinite(value):
            self.fail(self.path(key), value, "a finite number or null")
        return value

    def dict(self, key: str, optional: bool = False) -> dict[str, Any] | None:
        if optional and self.obj.get(key) is None:
            return None
        value = self.required(key)
        if not isinstance(value, dict):
            self.fail(self.path(key), value, "a JSON object")
        return value

    def sub(self, key: str) -> "_Fields":
        return _Fields(self.required(key), self.path(key), self.source)

    def shape(self, key: str, ndim: int | None = None) -> tuple[int, ...]:
        value = self.required(key)
        if (not isinstance(value, list) or (ndim is not None and len(value) != ndim)
                or any(type(v) is not int or v < 0 for v in value)):
            self.fail(self.path(key), value, f"a list of {ndim if ndim is not None else 'any number of'} "
                                             f"non-negative integers")
        return tuple(value)

    def files(self, key: str, roles: tuple[str, ...] | None = None) -> dict[str, str]:
        """A ``{role: file name}`` object (``roles``: exactly those roles)."""
        sub = self.sub(key)
        if roles is not None and set(sub.obj) != set(roles):
            sub.fail(sub.where, sub.obj, f"the roles {sorted(roles)}")
        return {role: sub.file(role) for role in sub.obj}


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


def _file_name(name: str, where: str, source: str) -> str:
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise _error(f"{source}: field {where!r} is {name!r}, expected a file name inside the artifact folder")
    return name


def _error(message: str) -> ArtifactError:
    return ArtifactError(message)


def shard_bounds(n_items: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous ``[start, stop)`` item ranges covering ``n_items`` (sizes differ by <= 1)."""
    if count < 1 or count > max(n_items, 1):
        raise ValueError(f"--shards must be in [1, {n_items}] for {n_items} items, got {count}")
    edges = np.linspace(0, n_items, count + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


# ---------------------------------------------------------------------------- the typed parts
@dataclass(frozen=True)
class FileEntry:
    """sha256 and size of one file of the artifact (``files`` in the manifest)."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class ArrayEntry:
    """Recorded shape and dtype of one ``.npy`` (``arrays`` in the manifest)."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class TableEntry:
    """One stored embedding table: ``layout`` (csr | prefix), ``shape`` (rows, dim), its files by role
    (csr: indptr, indices, values; prefix: lengths, values; int8: + scale). ``extra``: the exporter's
    figures (why this layout, index dtypes, bytes in other layouts, LightGCN's user/item row groups)."""

    layout: str
    shape: tuple[int, int]
    nnz: int
    value_dtype: str
    files: dict[str, str]
    bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_scale(self) -> bool:
        return "scale" in self.files

    @property
    def dense_prefix(self) -> bool:
        """A ``prefix`` fp32 table whose every row is full: its values file is the dense table, row-major."""
        n_rows, n_cols = self.shape
        return (self.layout == "prefix" and self.value_dtype == "fp32" and not self.has_scale
                and self.nnz == n_rows * n_cols)


@dataclass(frozen=True)
class RowRange:
    """Rows ``[start, stop)`` of a table (``table`` is ``None`` where the spec names one table for both sides)."""

    start: int
    stop: int
    table: str | None = None


@dataclass(frozen=True)
class VectorSpec:
    """How the served vectors are rebuilt from the tables (``vectors`` in the manifest).

    ``source``: ``tables`` (MF: ``users`` / ``items`` name a table and rows), ``lightgcn`` (``table``
    propagated ``n_layers`` times over ``seen``; ``mask_output``: times the base mask), or
    ``popularity`` (no table).
    """

    source: str
    users: RowRange | None = None
    items: RowRange | None = None
    table: str | None = None
    n_layers: int = 0
    mask_output: bool = False


@dataclass(frozen=True)
class SeenEntry:
    """The train interactions ``[n_users, n_items]`` as CSR structure: ``files`` indptr and indices."""

    shape: tuple[int, int]
    nnz: int
    files: dict[str, str]


@dataclass(frozen=True)
class PopularityEntry:
    """``file``: counts per item; ``order``: item rows by count, highest first (format 2; ``None`` in format 1)."""

    file: str
    order: str | None


@dataclass(frozen=True)
class IdsEntry:
    """Files of the external id maps (``.npy`` string arrays; format 1: JSON lists)."""

    users: str
    items: str


@dataclass(frozen=True)
class IndexEntry:
    """The item index: a faiss ``kind`` in ``file``, or ``sparse`` with ``layout`` and ``files`` by role.

    ``params``: the kind's parameters; ``auto``: the export's timing choice, where ``--index auto``
    decided; ``extra``: the measured figures (recall against exact search, build time, ...).
    """

    kind: str
    params: dict[str, Any]
    file: str | None = None
    layout: str | None = None
    files: dict[str, str] | None = None
    nnz: int | None = None
    bytes: int | None = None
    auto: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.kind in ("flat", "sparse")

    def file_names(self) -> list[str]:
        """Files of the item index: ``items.faiss`` for a faiss kind, the arrays of a ``sparse`` one."""
        return sorted(self.files.values()) if self.kind == "sparse" else [self.file]


@dataclass(frozen=True)
class OnnxGraph:
    """One ONNX graph of the artifact: its file, the input names it promises, and its figures (``info``)."""

    file: str
    inputs: tuple[str, ...]
    info: dict[str, Any]


@dataclass(frozen=True)
class TrainingRecord:
    """The training run the artifact came from: its folder, its resolved config and its metrics (as
    the trainer wrote them; empty where the model was exported without a run)."""

    run: str | None = None
    config: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardEntry:
    """A shard part (export.shards): part ``index`` of ``count``, serving item rows ``[start, stop)``."""

    index: int
    count: int
    start: int
    stop: int
    parent_manifest_sha256: str

    @property
    def n_items(self) -> int:
        return self.stop - self.start


# ---------------------------------------------------------------------------- the manifest
@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of an artifact. Build one with :meth:`from_json`, never by hand.

    Attributes:
        format_version: 1 or 2 (see export.artifact); model_kind: mf | lightgcn | pop; dim, n_users,
        n_items, n_layers; value_dtype: fp32 | fp16 | int8; nnz, density: over all tables;
        tables, vectors, seen, popularity, ids, index, arrays, files, onnx, shard (typed parts);
        training (run, config, metrics); quality, fidelity, lightgcn_output, exporter, bytes,
        serving_dense, item_order: the exporter's records, as written.
    """

    format_version: int
    model_kind: str
    dim: int
    n_users: int
    n_items: int
    n_layers: int
    value_dtype: str
    nnz: int | None
    density: float | None
    tables: dict[str, TableEntry]
    vectors: VectorSpec
    seen: SeenEntry
    popularity: PopularityEntry
    ids: IdsEntry
    index: IndexEntry
    arrays: dict[str, ArrayEntry]
    files: dict[str, FileEntry]
    onnx: dict[str, OnnxGraph]
    shard: ShardEntry | None
    training: TrainingRecord
    quality: dict[str, Any] | None
    fidelity: dict[str, Any] | None
    lightgcn_output: dict[str, Any] | None
    exporter: dict[str, Any] | None
    bytes: dict[str, int] | None
    serving_dense: tuple[str, ...]
    item_order: str | None
    _json: dict[str, Any] = field(repr=False, compare=False)

    # -- derived answers, decided here once
    @property
    def index_items(self) -> int:
        """Items the index holds: ``n_items``, or a shard part's ``stop - start``."""
        return self.n_items if self.shard is None else self.shard.n_items

    @property
    def total_bytes(self) -> int:
        return sum(entry.bytes for entry in self.files.values())

    @property
    def table_bytes(self) -> int:
        return sum(entry.bytes for entry in self.tables.values())

    def referenced_files(self) -> set[str]:
        """Every file the manifest points at (ids, index, popularity order, ONNX graphs)."""
        names = {self.ids.users, self.ids.items, *self.index.file_names()}
        if self.popularity.order is not None:
            names.add(self.popularity.order)
        names.update(graph.file for graph in self.onnx.values())
        return names

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON object (a copy of what was parsed, in its key order)."""
        return copy.deepcopy(self._json)

    def to_text(self) -> str:
        """The exact text of ``manifest.json`` (indented JSON, keys in written order, final newline)."""
        return json.dumps(self._json, indent=2, sort_keys=False) + "\n"

    # -- parsing, the one place
    @classmethod
    def from_json(cls, obj: Any, source: str = MANIFEST) -> "Manifest":
        """Parse and validate a manifest JSON object (as ``json.load`` gives it).

        Raises:
            ArtifactError: naming ``source``, the field, its value and what was expected.
        """
        top = _Fields(obj, "", source)
        version = top.required("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            top.fail("format_version", version, f"an integer format version this reader knows "
                                                f"({', '.join(map(str, READABLE_VERSIONS))})")
        missing = [key for key in _REQUIRED if key not in top.obj]
        if missing:
            raise _error(f"{source}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(top.obj) - set(_TOP_LEVEL))
        if unknown:
            raise _error(f"{source}: unknown field(s) {', '.join(unknown)} (known: {', '.join(_TOP_LEVEL)})")
        n_users, n_items, dim = top.int("n_users"), top.int("n_items"), top.int("dim", minimum=1)
        tables = {name: _table(top, name) for name in top.dict("tables")}
        for name, table in tables.items():
            if table.shape[1] != dim:
                raise _error(f"{source}: table {name} has {table.shape[1]} columns, dim is {dim}")
        n_layers = top.int("n_layers", default=0)
        vectors = _vectors(top.sub("vectors"), tables, n_users, n_items, n_layers)
        popularity = top.sub("popularity")
        order = popularity.file("order") if popularity.has("order") else None
        if order is None and version >= 2:
            raise _error(f"{source}: format 2 needs field 'popularity.order'")
        shard = _shard(top, n_items)
        index = _index(top.sub("index"))
        arrays_obj, files_obj = top.dict("arrays"), top.dict("files")
        manifest = cls(
            format_version=version,
            model_kind=top.str("model_kind", MODEL_KINDS),
            dim=dim, n_users=n_users, n_items=n_items, n_layers=n_layers,
            value_dtype=top.str("value_dtype", VALUE_DTYPES),
            nnz=None if top.raw("nnz") is None else top.int("nnz"),
            density=top.number("density"),
            tables=tables,
            vectors=vectors,
            seen=_seen(top.sub("seen"), n_users, n_items),
            popularity=PopularityEntry(file=popularity.file("file"), order=order),
            ids=IdsEntry(users=top.sub("ids").file("users"), items=top.sub("ids").file("items")),
            index=index,
            arrays={_file_name(name, f"arrays.{name}", source): _array(top.sub("arrays"), name) for name in arrays_obj},
            files={_file_name(name, f"files.{name}", source): _file_entry(top.sub("files"), name)
                   for name in files_obj},
            onnx=_onnx(top),
            shard=shard,
            training=_training(top),
            quality=top.dict("quality", optional=True),
            fidelity=top.dict("fidelity", optional=True),
            lightgcn_output=top.dict("lightgcn_output", optional=True),
            exporter=top.dict("exporter", optional=True),
            bytes=_byte_counts(top),
            serving_dense=_strings(top, "serving_dense"),
            item_order=None if top.raw("item_order") is None else top.str("item_order"),
            _json=copy.deepcopy(obj),
        )
        return manifest


def _table(top: _Fields, name: str) -> TableEntry:
    entry = top.sub("tables").sub(name)
    layout = entry.str("layout", TABLE_LAYOUTS, default="csr")  # absent: written before the prefix layout
    value_dtype = entry.str("value_dtype", VALUE_DTYPES)
    roles = {"csr": ("indptr", "indices", "values"), "prefix": ("lengths", "values")}[layout]
    roles = (*roles, "scale") if value_dtype == "int8" else roles
    typed = {"layout", "shape", "nnz", "value_dtype", "files", "bytes"}
    return TableEntry(layout=layout, shape=entry.shape("shape", 2), nnz=entry.int("nnz"), value_dtype=value_dtype,
                      files=entry.files("files", roles), bytes=entry.int("bytes", default=0),
                      extra={key: value for key, value in entry.obj.items() if key not in typed})


def _rows(spec: _Fields, side: str, tables: dict[str, TableEntry], table: str | None, count: int) -> RowRange:
    rows = spec.sub(side)
    name = rows.str("table") if table is None else table
    if name not in tables:
        rows.fail(rows.path("table") if table is None else f"{spec.where}.table", name,
                  f"one of the tables {sorted(tables)}")
    start, stop = rows.int("start"), rows.int("stop")
    if not start <= stop <= tables[name].shape[0] or stop - start != count:
        rows.fail(rows.where, rows.obj, f"{count} rows of table {name} ({tables[name].shape[0]} rows)")
    return RowRange(start=start, stop=stop, table=None if table is not None else name)


def _vectors(spec: _Fields, tables: dict[str, TableEntry], n_users: int, n_items: int, n_layers: int) -> VectorSpec:
    source = spec.str("source", VECTOR_SOURCES)
    if source == "tables":
        return VectorSpec(source=source, users=_rows(spec, "users", tables, None, n_users),
                          items=_rows(spec, "items", tables, None, n_items))
    if source == "lightgcn":
        table = spec.str("table")
        if table not in tables:
            spec.fail(spec.path("table"), table, f"one of the tables {sorted(tables)}")
        layers = spec.int("n_layers")
        if layers != n_layers:
            spec.fail(spec.path("n_layers"), layers, f"the manifest's n_layers ({n_layers})")
        return VectorSpec(source=source, table=table, n_layers=layers,
                          mask_output=spec.bool("mask_output", default=False),
                          users=_rows(spec, "users", tables, table, n_users),
                          items=_rows(spec, "items", tables, table, n_items))
    return VectorSpec(source=source)


def _seen(seen: _Fields, n_users: int, n_items: int) -> SeenEntry:
    shape = seen.shape("shape", 2)
    if shape != (n_users, n_items):
        seen.fail(seen.path("shape"), list(shape), f"[n_users, n_items] = {[n_users, n_items]}")
    return SeenEntry(shape=shape, nnz=seen.int("nnz"), files=seen.files("files", ("indptr", "indices")))


def _index(entry: _Fields) -> IndexEntry:
    kind = entry.str("kind", INDEX_KINDS)
    params = entry.dict("params")
    auto = entry.dict("auto", optional=True)
    known = {"kind", "params", "auto", "file", "layout", "files", "nnz", "bytes"}
    extra = {key: value for key, value in entry.obj.items() if key not in known}
    if kind == "sparse":
        layout = entry.str("layout", SPARSE_LAYOUTS)
        roles = {"prefix": ("lengths", "values"), "postings": ("indptr", "indices", "values")}[layout]
        return IndexEntry(kind=kind, params=params, layout=layout, files=entry.files("files", roles),
                          nnz=entry.int("nnz"), bytes=entry.int("bytes"), auto=auto, extra=extra)
    return IndexEntry(kind=kind, params=params, file=entry.file("file"), auto=auto, extra=extra,
                      bytes=None if entry.raw("bytes") is None else entry.int("bytes"))


def _shard(top: _Fields, n_items: int) -> ShardEntry | None:
    if top.raw("shard") is None:
        return None
    shard = top.sub("shard")
    index, count = shard.int("index"), shard.int("count", minimum=1)
    start, stop = shard.int("start"), shard.int("stop")
    sha = shard.str("parent_manifest_sha256")
    if index >= count:
        shard.fail(shard.path("index"), index, f"a part number below count ({count})")
    if count > max(n_items, 1):
        shard.fail(shard.path("count"), count, f"at most n_items ({n_items}) parts")
    want = shard_bounds(n_items, count)[index]
    if (start, stop) != want:
        shard.fail(shard.where, {"start": start, "stop": stop},
                   f"the item range of part {index} of {count} over {n_items} items, [{want[0]}, {want[1]})")
    if not _SHA256.fullmatch(sha):
        shard.fail(shard.path("parent_manifest_sha256"), sha, "64 lowercase hex digits")
    return ShardEntry(index=index, count=count, start=start, stop=stop, parent_manifest_sha256=sha)


def _array(arrays: _Fields, name: str) -> ArrayEntry:
    entry = arrays.sub(name)
    dtype = entry.str("dtype")
    try:
        np.dtype(dtype)
    except TypeError:
        entry.fail(entry.path("dtype"), dtype, "a numpy dtype name")
    return ArrayEntry(shape=entry.shape("shape"), dtype=dtype)


def _file_entry(files: _Fields, name: str) -> FileEntry:
    entry = files.sub(name)
    sha = entry.str("sha256")
    if not _SHA256.fullmatch(sha):
        entry.fail(entry.path("sha256"), sha, "64 lowercase hex digits")
    return FileEntry(sha256=sha, bytes=entry.int("bytes"))


def _onnx(top: _Fields) -> dict[str, OnnxGraph]:
    """The graphs of ``onnx`` (its entries with a ``file``; other entries are figures, e.g. ``opset``)."""
    if top.raw("onnx") is None:
        return {}
    onnx = top.sub("onnx")
    graphs = {}
    for name, value in onnx.obj.items():
        if isinstance(value, dict) and "file" in value:
            graph = onnx.sub(name)
            inputs = graph.dict("inputs", optional=True) or {}
            graphs[name] = OnnxGraph(file=graph.file("file"), inputs=tuple(inputs), info=value)
    return graphs


def _training(top: _Fields) -> TrainingRecord:
    if top.raw("training") is None:
        return TrainingRecord()
    training = top.sub("training")
    unknown = sorted(set(training.obj) - {"run", "config", "metrics"})
    if unknown:
        training.fail(training.where, unknown, "only the fields run, config, metrics")
    return TrainingRecord(run=None if training.raw("run") is None else training.str("run"),
                          config=training.dict("config", optional=True),
                          metrics=training.dict("metrics", optional=True) or {})


def _byte_counts(top: _Fields) -> dict[str, int] | None:
    counts = top.dict("bytes", optional=True)
    if counts is None:
        return None
    sub = top.sub("bytes")
    return {key: sub.int(key) for key in counts}


def _strings(top: _Fields, key: str) -> tuple[str, ...]:
    value = top.raw(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        top.fail(key, value, "a list of strings")
    return tuple(value)


# ---------------------------------------------------------------------------- reading and writing
def manifest_digest(text: bytes) -> str:
    """The sidecar's content for manifest bytes ``text``: their sha256, 64 hex digits."""
    import hashlib

    return hashlib.sha256(text).hexdigest()


def read_manifest(path: str | Path, check_sidecar: bool = True) -> Manifest:
    """Read ``manifest.json`` of artifact folder ``path``: check it against ``manifest.sha256``, then parse it.

    ``check_sidecar=False`` only for :func:`seal_manifest` (accepting a manifest written before the
    self-check).

    Raises:
        ArtifactError: naming the missing, altered or malformed file or field.
    """
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise _error(f"{folder}: no such artifact folder")
    if not manifest_path.is_file():
        raise _error(f"{manifest_path}: missing (not an artifact folder, or an unfinished one)")
    try:
        text = manifest_path.read_bytes()
    except OSError as exc:
        raise _error(f"{manifest_path}: cannot be read ({exc})") from exc
    if check_sidecar:
        _check_sidecar(folder, text)
    try:
        obj = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise _error(f"{manifest_path}: not valid JSON ({exc})") from exc
    return Manifest.from_json(obj, source=str(manifest_path))


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _check_sidecar(folder: Path, text: bytes) -> None:
    sidecar = folder / MANIFEST_SHA256
    if not sidecar.is_file():
        raise _error(f"{sidecar}: missing, so {folder / MANIFEST} is not covered by a checksum (an artifact "
                     f"written before the manifest self-check, or the file was removed); re-export the artifact, "
                     f"or run `python -m export seal {folder}` to accept its manifest as it is")
    try:
        recorded = sidecar.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise _error(f"{sidecar}: cannot be read ({exc})") from exc
    if not _SHA256.fullmatch(recorded):
        raise _error(f"{sidecar}: holds {recorded[:80]!r}, expected the 64 hex digits of the manifest's sha256")
    if manifest_digest(text) != recorded:
        raise _error(f"{folder / MANIFEST}: sha256 mismatch with {MANIFEST_SHA256} (the manifest was edited "
                     f"after export); re-export the artifact")


def write_manifest(folder: str | Path, manifest: Manifest) -> str:
    """Write ``manifest.json`` and its sidecar ``manifest.sha256`` into ``folder`` (each atomically;
    the sidecar second, so a crash between leaves a manifest that is refused, never one that is
    trusted unchecked). Returns the manifest's sha256."""
    folder = Path(folder)
    text = manifest.to_text().encode("utf-8")
    digest = manifest_digest(text)
    atomic_write_bytes(folder / MANIFEST, text)
    atomic_write_bytes(folder / MANIFEST_SHA256, (digest + "\n").encode())
    return digest


def seal_manifest(folder: str | Path) -> str:
    """Write ``manifest.sha256`` for the ``manifest.json`` as it is now (after parsing it); returns the sha256.

    For an artifact written before the self-check: the caller verifies the folder first
    (``python -m export seal`` does), since sealing trusts the manifest's content.
    """
    folder = Path(folder)
    read_manifest(folder, check_sidecar=False)
    digest = sha256_file(folder / MANIFEST)
    atomic_write_bytes(folder / MANIFEST_SHA256, (digest + "\n").encode())
    return digest
