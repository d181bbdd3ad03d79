"""The parts of an artifact's manifest: typed entries, the typed reads of JSON fields, and one parser per part.

:mod:`export.manifest` assembles them into :class:`~export.manifest.Manifest`; nothing else calls
the parsers. Every refusal is an :class:`ArtifactError` naming the manifest file, the field (as a
dotted path), its value with its JSON type, and what was expected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .to_sparse import TABLE_LAYOUTS, VALUE_DTYPES

MODEL_KINDS = ("mf", "lightgcn", "pop")
VALUE_DTYPE_NAMES = tuple(VALUE_DTYPES)  # fp32, fp16, int8
VECTOR_SOURCES = ("tables", "lightgcn", "popularity")
FAISS_KINDS = ("flat", "ivf", "hnsw", "sq8", "pq")  # export.index.INDEX_KINDS, kept here without importing faiss
INDEX_KINDS = (*FAISS_KINDS, "sparse")
SPARSE_LAYOUTS = ("prefix", "postings", "gaps")  # export.sparse_index.SPARSE_LAYOUTS (tests check both copies agree)
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ArtifactError(ValueError):
    """An artifact is missing, damaged or of an unknown format; the message names the file or field."""


# ---------------------------------------------------------------------------- field checks
class Fields:
    """Typed reads of one JSON object of the manifest; every error names ``source`` and the field path."""

    def __init__(self, obj: Any, where: str, source: str):
        self.where, self.source = where, source
        if not isinstance(obj, dict):
            self.fail(where, obj, "a JSON object")
        self.obj: dict[str, Any] = obj

    def fail(self, name: str, value: Any, expected: str) -> None:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        what = f"field {name!r}" if name else "the manifest"
        raise _error(f"{self.source}: {what} is {shown} ({json_type(value)}), expected {expected}")

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
        return file_name(value, self.path(key), self.source)

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

    def sub(self, key: str) -> "Fields":
        return Fields(self.required(key), self.path(key), self.source)

    def shape(self, key: str, ndim: int | None = None) -> tuple[int, ...]:
        value = self.required(key)
        if (
            not isinstance(value, list)
            or (ndim is not None and len(value) != ndim)
            or any(type(v) is not int or v < 0 for v in value)
        ):
            self.fail(
                self.path(key),
                value,
                f"a list of {ndim if ndim is not None else 'any number of'} non-negative integers",
            )
        return tuple(value)

    def files(self, key: str, roles: tuple[str, ...] | None = None) -> dict[str, str]:
        """A ``{role: file name}`` object (``roles``: exactly those roles)."""
        sub = self.sub(key)
        if roles is not None and set(sub.obj) != set(roles):
            sub.fail(sub.where, sub.obj, f"the roles {sorted(roles)}")
        return {role: sub.file(role) for role in sub.obj}


def json_type(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def file_name(name: str, where: str, source: str) -> str:
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
        return (
            self.layout == "prefix"
            and self.value_dtype == "fp32"
            and not self.has_scale
            and self.nnz == n_rows * n_cols
        )


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


def parse_table(top: Fields, name: str) -> TableEntry:
    entry = top.sub("tables").sub(name)
    layout = entry.str("layout", TABLE_LAYOUTS, default="csr")  # absent: written before the prefix layout
    value_dtype = entry.str("value_dtype", VALUE_DTYPE_NAMES)
    roles = {"csr": ("indptr", "indices", "values"), "prefix": ("lengths", "values")}[layout]
    roles = (*roles, "scale") if value_dtype == "int8" else roles
    typed = {"layout", "shape", "nnz", "value_dtype", "files", "bytes"}
    return TableEntry(
        layout=layout,
        shape=entry.shape("shape", 2),
        nnz=entry.int("nnz"),
        value_dtype=value_dtype,
        files=entry.files("files", roles),
        bytes=entry.int("bytes", default=0),
        extra={key: value for key, value in entry.obj.items() if key not in typed},
    )


def parse_rows(spec: Fields, side: str, tables: dict[str, TableEntry], table: str | None, count: int) -> RowRange:
    rows = spec.sub(side)
    name = rows.str("table") if table is None else table
    if name not in tables:
        rows.fail(
            rows.path("table") if table is None else f"{spec.where}.table", name, f"one of the tables {sorted(tables)}"
        )
    start, stop = rows.int("start"), rows.int("stop")
    if not start <= stop <= tables[name].shape[0] or stop - start != count:
        rows.fail(rows.where, rows.obj, f"{count} rows of table {name} ({tables[name].shape[0]} rows)")
    return RowRange(start=start, stop=stop, table=None if table is not None else name)


def parse_vectors(spec: Fields, tables: dict[str, TableEntry], n_users: int, n_items: int, n_layers: int) -> VectorSpec:
    source = spec.str("source", VECTOR_SOURCES)
    if source == "tables":
        return VectorSpec(
            source=source,
            users=parse_rows(spec, "users", tables, None, n_users),
            items=parse_rows(spec, "items", tables, None, n_items),
        )
    if source == "lightgcn":
        table = spec.str("table")
        if table not in tables:
            spec.fail(spec.path("table"), table, f"one of the tables {sorted(tables)}")
        layers = spec.int("n_layers")
        if layers != n_layers:
            spec.fail(spec.path("n_layers"), layers, f"the manifest's n_layers ({n_layers})")
        return VectorSpec(
            source=source,
            table=table,
            n_layers=layers,
            mask_output=spec.bool("mask_output", default=False),
            users=parse_rows(spec, "users", tables, table, n_users),
            items=parse_rows(spec, "items", tables, table, n_items),
        )
    return VectorSpec(source=source)


def parse_seen(seen: Fields, n_users: int, n_items: int) -> SeenEntry:
    shape = seen.shape("shape", 2)
    if shape != (n_users, n_items):
        seen.fail(seen.path("shape"), list(shape), f"[n_users, n_items] = {[n_users, n_items]}")
    return SeenEntry(shape=shape, nnz=seen.int("nnz"), files=seen.files("files", ("indptr", "indices")))


def parse_index(entry: Fields) -> IndexEntry:
    kind = entry.str("kind", INDEX_KINDS)
    params = entry.dict("params")
    auto = entry.dict("auto", optional=True)
    known = {"kind", "params", "auto", "file", "layout", "files", "nnz", "bytes"}
    extra = {key: value for key, value in entry.obj.items() if key not in known}
    if kind == "sparse":
        layout = entry.str("layout", SPARSE_LAYOUTS)
        roles = {
            "prefix": ("lengths", "values"),
            "postings": ("indptr", "indices", "values"),
            "gaps": ("indptr", "bitptr", "widths", "words", "values"),
        }[layout]
        return IndexEntry(
            kind=kind,
            params=params,
            layout=layout,
            files=entry.files("files", roles),
            nnz=entry.int("nnz"),
            bytes=entry.int("bytes"),
            auto=auto,
            extra=extra,
        )
    return IndexEntry(
        kind=kind,
        params=params,
        file=entry.file("file"),
        auto=auto,
        extra=extra,
        bytes=None if entry.raw("bytes") is None else entry.int("bytes"),
    )


def parse_shard(top: Fields, n_items: int) -> ShardEntry | None:
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
        shard.fail(
            shard.where,
            {"start": start, "stop": stop},
            f"the item range of part {index} of {count} over {n_items} items, [{want[0]}, {want[1]})",
        )
    if not SHA256_HEX.fullmatch(sha):
        shard.fail(shard.path("parent_manifest_sha256"), sha, "64 lowercase hex digits")
    return ShardEntry(index=index, count=count, start=start, stop=stop, parent_manifest_sha256=sha)


def parse_array(arrays: Fields, name: str) -> ArrayEntry:
    entry = arrays.sub(name)
    dtype = entry.str("dtype")
    try:
        np.dtype(dtype)
    except TypeError:
        entry.fail(entry.path("dtype"), dtype, "a numpy dtype name")
    return ArrayEntry(shape=entry.shape("shape"), dtype=dtype)


def parse_file_entry(files: Fields, name: str) -> FileEntry:
    entry = files.sub(name)
    sha = entry.str("sha256")
    if not SHA256_HEX.fullmatch(sha):
        entry.fail(entry.path("sha256"), sha, "64 lowercase hex digits")
    return FileEntry(sha256=sha, bytes=entry.int("bytes"))


def parse_onnx(top: Fields) -> dict[str, OnnxGraph]:
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


def parse_training(top: Fields) -> TrainingRecord:
    if top.raw("training") is None:
        return TrainingRecord()
    training = top.sub("training")
    unknown = sorted(set(training.obj) - {"run", "config", "metrics"})
    if unknown:
        training.fail(training.where, unknown, "only the fields run, config, metrics")
    return TrainingRecord(
        run=None if training.raw("run") is None else training.str("run"),
        config=training.dict("config", optional=True),
        metrics=training.dict("metrics", optional=True) or {},
    )


def parse_byte_counts(top: Fields) -> dict[str, int] | None:
    counts = top.dict("bytes", optional=True)
    if counts is None:
        return None
    sub = top.sub("bytes")
    return {key: sub.int(key) for key in counts}


def parse_strings(top: Fields, key: str) -> tuple[str, ...]:
    value = top.raw(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        top.fail(key, value, "a list of strings")
    return tuple(value)
