"""The cases the in-process benchmark measures: a user table and an item table written to a folder.

Each case folder holds ``users.npy`` / ``items.npy`` (float32), the packed CSR of the items, the
ONNX scorers an ONNX backend wants, the saved sparse index where the sparse backend runs, and
``case.json`` (see `benchmarks.inference.backends`). Two kinds:

- synthetic (`make_synthetic_case`): ``ml-100k`` (943 users x 1682 items) and ``1m`` (a 2048-user
  query pool x 1,000,000 items), dim 64; at each density d < 1 a *sparse* table (one global random
  mask keeping a share d, values N(0, 1), stored dim 64), its equal-budget *small-dense* twin
  (dim = round(d x 64)), and the trained-like ``prefix`` and ``unstructured`` masks drawn from
  ``benchmarks/inference/trained_masks.json``; d = 1 is the plain dense model. Random tables: honest for
  latency and memory, meaningless for quality.
- a trained artifact (`make_artifact_case`): its served vectors, packed item rows and ONNX scorers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MASKS = Path(__file__).resolve().parent / "trained_masks.json"
DIM = 64
K = 20
DENSITIES = (1.0, 0.5, 0.2, 0.1, 0.05)
BATCHES = (1, 32, 256)
TABLES = ("dense", "sparse", "small-dense", "prefix", "unstructured")
TRAINED_MASK_TABLES = ("prefix", "unstructured")
TRAINED_MASK_BACKENDS = ("faiss-flat", "sparse")  # the sparse index and the flat index it is chosen against
SPARSE_TABLES = ("sparse",) + TRAINED_MASK_TABLES  # tables the sparse backend indexes (dense ones: faiss-flat)


@dataclass(frozen=True)
class Shape:
    """A dataset shape and how hard to measure it."""

    name: str
    n_users: int
    n_items: int
    eval_users: int  # users whose top-20 is checked against exact search
    min_time_s: float  # per batch size
    max_calls: int
    train_sample: int = 0  # faiss ivf/pq train on this many items (0: all)
    faiss: dict[str, dict[str, Any]] = field(default_factory=dict)


SHAPES = {
    "ml-100k": Shape("ml-100k", 943, 1682, eval_users=943, min_time_s=0.25, max_calls=300),
    "1m": Shape(
        "1m",
        2048,
        1_000_000,
        eval_users=100,
        min_time_s=0.5,
        max_calls=60,
        train_sample=65_536,
        faiss={"ivf": {"nlist": 1024, "nprobe": 32}, "hnsw": {"M": 16, "efConstruction": 40, "efSearch": 128}},
    ),
}


def _random_table(rng: np.random.Generator, n_rows: int, dim: int, density: float) -> tuple[np.ndarray, np.ndarray]:
    """Values N(0, 1) under a global random mask keeping about ``density`` of the entries."""
    values = rng.standard_normal((n_rows, dim), dtype=np.float32)
    if density >= 1.0:
        return values, np.ones((n_rows, dim), dtype=bool)
    mask = rng.random((n_rows, dim), dtype=np.float32) < density
    values *= mask
    return values, mask


def _write_case(
    folder: Path, users: np.ndarray, items: np.ndarray, packed, onnx_paths: dict[str, str], extra: dict[str, Any]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "users.npy", np.ascontiguousarray(users, dtype=np.float32))
    np.save(folder / "items.npy", np.ascontiguousarray(items, dtype=np.float32))
    for role, array in packed.arrays().items():
        np.save(folder / f"items.{role}.npy", array)
    (folder / "case.json").write_text(json.dumps({"onnx": onnx_paths, **extra}))


def _onnx_scorers(folder: Path, users: np.ndarray, items: np.ndarray, backends: tuple[str, ...]) -> dict[str, str]:
    """scorer.onnx (and its int8 quantisation) over these tables, if an ONNX backend wants them."""
    if not any(b.startswith("onnx") for b in backends):
        return {}
    from export.to_onnx import build_scorer, save_model

    model, _ = build_scorer(np.ascontiguousarray(users, dtype=np.float32), items)
    paths = {"fp32": str(folder / "scorer.onnx")}
    save_model(model, paths["fp32"])
    del model
    if "onnx-int8" in backends:
        paths["int8"] = str(folder / "scorer.int8.onnx")
        from export.to_onnx import quantize_scorer_int8

        quantize_scorer_int8(paths["fp32"], paths["int8"])
    return paths


def _write_sparse_index(folder: Path, packed) -> dict[str, Any]:
    """Build the sparse item index here and save its files, as the exporter does: the worker then
    loads it from the files as the service does, so its memory is the served index's, not the build's."""
    from export.sparse_index import SparseIndex

    index = SparseIndex.from_table(packed)
    (folder / "sparse").mkdir()
    entry = {
        "layout": index.layout,
        "files": index.save(folder / "sparse"),
        "params": index.params,
        "n_items": index.n_items,
        "dim": index.dim,
    }
    del index
    return entry


@dataclass
class Case:
    """One user table and item table to measure every backend on."""

    dataset: str
    table: str  # dense | sparse | small-dense | artifact
    density: float
    dim: int
    folder: Path
    shape: Shape
    params: int  # non-zeros of both tables
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.table == "artifact":
            return f"{self.dataset} {self.meta['name']}"
        return f"{self.dataset} {self.table} d={self.density:g} dim={self.dim}"


def synthetic_cases(densities: tuple[float, ...], tables: tuple[str, ...] = TABLES) -> list[tuple[str, float, int]]:
    """(table, density, dim) of the sweep: dense at 1.0; below it sparse (random mask), its small-dense
    twin, and the trained-like prefix and unstructured masks, each where ``tables`` names it."""
    out = []
    for density in densities:
        if density >= 1.0:
            out.append(("dense", 1.0, DIM))
        else:
            out.append(("sparse", density, DIM))
            out.append(("small-dense", density, max(1, round(density * DIM))))
            out += [(table, density, DIM) for table in TRAINED_MASK_TABLES]
    return [case for case in out if case[0] in tables]


def case_backends(table: str, backends: tuple[str, ...]) -> tuple[str, ...]:
    """The backends measured on a table: trained-like masks get the sparse index and flat only;
    the sparse index is measured on sparse tables (on a dense one it is faiss-flat with one shard)."""
    if table in TRAINED_MASK_TABLES:
        return tuple(b for b in backends if b in TRAINED_MASK_BACKENDS)
    return tuple(b for b in backends if b != "sparse" or table in SPARSE_TABLES)


def _trained_mask_tables(
    rng: np.random.Generator, shape: Shape, table: str, density: float, dim: int, masks: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Users and items with masks drawn from the trained profiles (values N(0, 1) under the mask).

    Prefix items are ordered by length, as the exporter orders them in the artifact's id map.
    """
    from .trained_masks import load_profiles, nearest, sample_mask

    layout = "prefix" if table == "prefix" else "unstructured"
    profile = nearest(load_profiles(masks), layout, density)
    user_mask = sample_mask(profile, "users", shape.n_users, density, dim, rng, layout)
    item_mask = sample_mask(profile, "items", shape.n_items, density, dim, rng, layout)
    if layout == "prefix":
        item_mask = item_mask[np.argsort(item_mask.sum(axis=1), kind="stable")]
    users = rng.standard_normal((shape.n_users, dim), dtype=np.float32) * user_mask
    items = rng.standard_normal((shape.n_items, dim), dtype=np.float32)
    items *= item_mask
    return users, user_mask, items, item_mask


def make_synthetic_case(
    root: Path,
    shape: Shape,
    table: str,
    density: float,
    dim: int,
    seed: int,
    backends: tuple[str, ...],
    masks: Path | None = None,
) -> Case:
    from export.to_sparse import pack_table

    seeds = [seed, int(density * 1000), dim, shape.n_items]
    rng = np.random.default_rng(seeds + ([TABLES.index(table)] if table in TRAINED_MASK_TABLES else []))
    meta: dict[str, Any] = {}
    if table in TRAINED_MASK_TABLES:
        users, user_mask, items, item_mask = _trained_mask_tables(
            rng, shape, table, density, dim, masks or DEFAULT_MASKS
        )
        meta = {"mask_density": {"users": float(user_mask.mean()), "items": float(item_mask.mean())}}
    else:
        kept = density if table == "sparse" else 1.0
        users, user_mask = _random_table(rng, shape.n_users, dim, kept)
        items, item_mask = _random_table(rng, shape.n_items, dim, kept)
    params = int(user_mask.sum()) + int(item_mask.sum())
    del user_mask
    packed = pack_table(items, item_mask)
    del item_mask
    folder = root / f"{shape.name}-{table}-{density:g}-{dim}"
    folder.mkdir(parents=True)
    onnx_paths = _onnx_scorers(folder, users, items, case_backends(table, backends))
    extra = {"train_sample": shape.train_sample, "faiss": shape.faiss}
    if "sparse" in case_backends(table, backends):
        extra["sparse"] = _write_sparse_index(folder, packed)
    _write_case(folder, users, items, packed, onnx_paths, extra)
    return Case(shape.name, table, density, dim, folder, shape, params, meta=meta)


def make_artifact_case(root: Path, path: Path, backends: tuple[str, ...]) -> Case:
    """A case from a trained artifact: its served vectors, its packed item rows, its ONNX scorers."""
    from export.artifact import load_artifact
    from export.to_sparse import PackedTable, pack_table

    artifact = load_artifact(path)
    manifest = artifact.manifest
    users, items = artifact.user_vectors(), artifact.item_vectors()
    notes = []
    spec = manifest.vectors
    if spec.source == "tables":
        rows = spec.items
        layout = artifact.table_layout(rows.table)
        if layout != "csr":
            notes.append(
                f"{path.name}: the item table is stored in the {layout!r} layout; scipy-csr and packed-scan "
                "scan its CSR form (export.artifact.Artifact.packed_table)"
            )
        table = artifact.packed_table(rows.table)
        start, stop = rows.start, rows.stop
        pointers = table.indptr[start : stop + 1]
        first, last = int(pointers[0]), int(pointers[-1])
        packed = PackedTable(
            (pointers - pointers[0]).astype(pointers.dtype),
            table.indices[first:last],
            table.values[first:last],
            (stop - start, table.shape[1]),
            table.value_dtype,
            None if table.scale is None else table.scale[start:stop],
        )
    else:
        packed = pack_table(items)
        notes.append(
            f"{artifact.model_kind}: the served item vectors are dense ({spec.source}), "
            "so scipy-csr and packed-scan scan the dense propagated vectors"
        )
    folder = root / f"artifact-{path.name}"
    folder.mkdir(parents=True)
    onnx_paths = {}
    onnx = manifest.onnx
    if "scorer" in onnx:
        onnx_paths["fp32"] = str(artifact.file(onnx["scorer"].file))
        if "scorer_int8" in onnx:
            onnx_paths["int8"] = str(artifact.file(onnx["scorer_int8"].file))
        elif "onnx-int8" in backends:
            onnx_paths["int8"] = str(folder / "scorer.int8.onnx")
            from export.to_onnx import quantize_scorer_int8

            quantize_scorer_int8(onnx_paths["fp32"], onnx_paths["int8"])
            notes.append("onnx-int8: the artifact has no int8 scorer; quantised on the fly")
    _write_case(folder, users, items, packed, onnx_paths, {"train_sample": 0, "faiss": {}})
    shape = Shape(
        f"artifact:{path.name}",
        artifact.n_users,
        artifact.n_items,
        eval_users=artifact.n_users,
        min_time_s=SHAPES["ml-100k"].min_time_s,
        max_calls=SHAPES["ml-100k"].max_calls,
    )
    density = None if manifest.density is None else float(manifest.density)
    meta = {
        "name": path.name,
        "path": str(path),
        "model_kind": artifact.model_kind,
        "value_dtype": artifact.value_dtype,
        "density": manifest.density,
        "quality": manifest.quality,
        "index_in_artifact": artifact.index_kind,
    }
    params = manifest.nnz if manifest.nnz is not None else sum(t.nnz for t in manifest.tables.values())
    return Case(
        "ml-100k", "artifact", density if density is not None else 1.0, artifact.dim, folder, shape, params, notes, meta
    )
