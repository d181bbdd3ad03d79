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
kept as read; :meth:`Manifest.to_json` gives back exactly the JSON that was parsed. The parts and
their parsers are in :mod:`export.manifest_parts`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.io import atomic_write_bytes, sha256_file
from common.jsonsafe import loads_unique

from .manifest_parts import (
    MODEL_KINDS,
    SHA256_HEX,
    VALUE_DTYPE_NAMES,
    VECTOR_SOURCES,
    ArrayEntry,
    ArtifactError,
    Fields,
    FileEntry,
    IdsEntry,
    IndexEntry,
    OnnxGraph,
    PopularityEntry,
    RowRange,
    SeenEntry,
    ShardEntry,
    TableEntry,
    TrainingRecord,
    VectorSpec,
    file_name,
    parse_array,
    parse_byte_counts,
    parse_file_entry,
    parse_index,
    parse_onnx,
    parse_seen,
    parse_shard,
    parse_strings,
    parse_table,
    parse_training,
    parse_vectors,
    shard_bounds,
)

__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "MANIFEST",
    "MANIFEST_SHA256",
    "MODEL_KINDS",
    "VECTOR_SOURCES",
    "ArtifactError",
    "Manifest",
    "ArrayEntry",
    "FileEntry",
    "IdsEntry",
    "IndexEntry",
    "OnnxGraph",
    "PopularityEntry",
    "RowRange",
    "SeenEntry",
    "ShardEntry",
    "TableEntry",
    "TrainingRecord",
    "VectorSpec",
    "manifest_digest",
    "read_manifest",
    "seal_manifest",
    "shard_bounds",
    "write_manifest",
]

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: JSON id maps and no stored popularity order (see export.artifact)
MANIFEST = "manifest.json"
MANIFEST_SHA256 = "manifest.sha256"
_TOP_LEVEL = (
    "format_version",
    "model_kind",
    "dim",
    "n_users",
    "n_items",
    "n_layers",
    "value_dtype",
    "nnz",
    "density",
    "tables",
    "vectors",
    "serving_dense",
    "seen",
    "popularity",
    "ids",
    "index",
    "item_order",
    "onnx",
    "arrays",
    "files",
    "fidelity",
    "quality",
    "lightgcn_output",
    "training",
    "exporter",
    "bytes",
    "shard",
)
_REQUIRED = (
    "format_version",
    "model_kind",
    "dim",
    "n_users",
    "n_items",
    "value_dtype",
    "tables",
    "vectors",
    "seen",
    "popularity",
    "ids",
    "index",
    "arrays",
    "files",
)


def _error(message: str) -> ArtifactError:
    return ArtifactError(message)


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
        top = Fields(obj, "", source)
        version = top.required("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            top.fail(
                "format_version",
                version,
                f"an integer format version this reader knows ({', '.join(map(str, READABLE_VERSIONS))})",
            )
        missing = [key for key in _REQUIRED if key not in top.obj]
        if missing:
            raise _error(f"{source}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(top.obj) - set(_TOP_LEVEL))
        if unknown:
            raise _error(f"{source}: unknown field(s) {', '.join(unknown)} (known: {', '.join(_TOP_LEVEL)})")
        n_users, n_items, dim = top.int("n_users"), top.int("n_items"), top.int("dim", minimum=1)
        tables = {name: parse_table(top, name) for name in top.dict("tables")}
        for name, table in tables.items():
            if table.shape[1] != dim:
                raise _error(f"{source}: table {name} has {table.shape[1]} columns, dim is {dim}")
        n_layers = top.int("n_layers", default=0)
        vectors = parse_vectors(top.sub("vectors"), tables, n_users, n_items, n_layers)
        popularity = top.sub("popularity")
        order = popularity.file("order") if popularity.has("order") else None
        if order is None and version >= 2:
            raise _error(f"{source}: format 2 needs field 'popularity.order'")
        shard = parse_shard(top, n_items)
        index = parse_index(top.sub("index"))
        arrays_obj, files_obj = top.dict("arrays"), top.dict("files")
        manifest = cls(
            format_version=version,
            model_kind=top.str("model_kind", MODEL_KINDS),
            dim=dim,
            n_users=n_users,
            n_items=n_items,
            n_layers=n_layers,
            value_dtype=top.str("value_dtype", VALUE_DTYPE_NAMES),
            nnz=None if top.raw("nnz") is None else top.int("nnz"),
            density=top.number("density"),
            tables=tables,
            vectors=vectors,
            seen=parse_seen(top.sub("seen"), n_users, n_items),
            popularity=PopularityEntry(file=popularity.file("file"), order=order),
            ids=IdsEntry(users=top.sub("ids").file("users"), items=top.sub("ids").file("items")),
            index=index,
            arrays={
                file_name(name, f"arrays.{name}", source): parse_array(top.sub("arrays"), name) for name in arrays_obj
            },
            files={
                file_name(name, f"files.{name}", source): parse_file_entry(top.sub("files"), name) for name in files_obj
            },
            onnx=parse_onnx(top),
            shard=shard,
            training=parse_training(top),
            quality=top.dict("quality", optional=True),
            fidelity=top.dict("fidelity", optional=True),
            lightgcn_output=top.dict("lightgcn_output", optional=True),
            exporter=top.dict("exporter", optional=True),
            bytes=parse_byte_counts(top),
            serving_dense=parse_strings(top, "serving_dense"),
            item_order=None if top.raw("item_order") is None else top.str("item_order"),
            _json=copy.deepcopy(obj),
        )
        return manifest


# ---------------------------------------------------------------------------- reading and writing
def manifest_digest(text: bytes) -> str:
    """The sidecar's content for manifest bytes ``text``: their sha256, 64 hex digits."""
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
        obj = loads_unique(text.decode("utf-8"))  # a key twice: DuplicateKeyError, a ValueError
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise _error(f"{manifest_path}: not valid JSON ({exc})") from exc
    return Manifest.from_json(obj, source=str(manifest_path))


def _check_sidecar(folder: Path, text: bytes) -> None:
    sidecar = folder / MANIFEST_SHA256
    if not sidecar.is_file():
        raise _error(
            f"{sidecar}: missing, so {folder / MANIFEST} is not covered by a checksum (an artifact "
            f"written before the manifest self-check, or the file was removed); re-export the artifact, "
            f"or run `python -m export seal {folder}` to accept its manifest as it is"
        )
    try:
        recorded = sidecar.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise _error(f"{sidecar}: cannot be read ({exc})") from exc
    if not SHA256_HEX.fullmatch(recorded):
        raise _error(f"{sidecar}: holds {recorded[:80]!r}, expected the 64 hex digits of the manifest's sha256")
    if manifest_digest(text) != recorded:
        raise _error(
            f"{folder / MANIFEST}: sha256 mismatch with {MANIFEST_SHA256} (the manifest was edited "
            f"after export); re-export the artifact"
        )


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
