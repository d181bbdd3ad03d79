"""Write an artifact folder from a trained model, checking what it wrote as it goes.

``export_run(run_dir, out, options)`` loads a finished training run (``train.checkpoint.
load_trained``) and calls ``export_model``, which:

1. packs every embedding table (mask = structure) with fp32/fp16/int8 values, in the ``prefix``
   layout where every row of its mask is a prefix ``[0, L_r)`` (dsl-nested / dsl-mixed; no column
   indices), else as CSR (``--table-layout`` forces one; ``prefix`` refuses other masks);
2. stores the train interactions, popularity counts and id maps;
3. reads the served vectors back through :class:`export.artifact.Artifact` (LightGCN: propagated
   with scipy) and compares them, and the top-20 lists they give, with the torch model;
4. writes ``user_tower.onnx`` and ``scorer.onnx`` and checks them in onnxruntime against torch;
   optionally an int8 dynamically quantised scorer; measures the session memory of both layouts;
5. builds the item index and measures its recall@20 against exact search: ``--index auto`` (the
   default) builds the exact ``sparse`` index (export.sparse_index) where the served item vectors
   are sparse, times it against a flat faiss index over the zero-filled vectors on sampled users,
   keeps the faster and records both figures; dense vectors keep ``flat``. Where the served item
   rows are prefixes, the items are first put in prefix-length order *in the artifact itself*
   (id map, tables, seen columns, popularity), which the prefix layout needs;
6. writes ``manifest.json`` with sha256 and size of every file, verifies the folder, and renames
   it into place. Everything happens in a temp folder beside the target; any failure (or Ctrl-C)
   removes it, so an interrupted export leaves no artifact folder behind.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from common.io import fsync_dir, replace_folder, sha256_file

from . import to_onnx
from .artifact import (FORMAT_VERSION, INDEX_FILE, ITEM_IDS, MANIFEST, POPULARITY, POPULARITY_ORDER, SCORER,
                       SCORER_INT8, SEEN_INDICES, SEEN_INDPTR, USER_IDS, USER_TOWER, Artifact, ArtifactError, id_array,
                       index_files, popularity_order, table_file, verify_artifact)
from .index import EXACT_KINDS, INDEX_KINDS, ItemIndex
from .sparse_index import SparseIndex, length_order, sparse_file, time_search
from .quality import overlap_at_k, recall_ndcg_at_k, tie_aware_overlap_at_k, topk_by_scores
from .to_sparse import (TABLE_LAYOUTS, VALUE_DTYPES, PackedTable, PrefixTable, dense_bytes, first_non_prefix_row,
                        pack_csr, pack_prefix_table, pack_table, packed_bytes, prefix_lengths)

log = logging.getLogger("sparserec.export")

ONNX_LAYOUTS = ("auto", "dense", "packed")
INDEX_CHOICES = ("auto", "sparse", *INDEX_KINDS)
SPARSE_PARAMS = ("layout", "round_to", "threaded")
# LightGCN's served vectors: auto = masked for a model trained with model.mask_output (option c),
# else propagated (a); masked on a standard model is option (b), measured at 0.74x test NDCG@20 on
# the demo's dsl-mixed 0.2 run (issue 10), hence not the default
LIGHTGCN_OUTPUTS = ("auto", "propagated", "masked")
TABLE_LAYOUT_CHOICES = ("auto", *TABLE_LAYOUTS)
TOLERANCE_FP32 = 1e-5
FULL_RANKING_LIMIT = 5e8  # users x items scored for the all-user figures; beyond it the user sample


class ExportError(RuntimeError):
    """The export could not be written or failed one of its own checks."""


@dataclass(frozen=True)
class ExportOptions:
    """How to export.

    Attributes:
        values: stored value dtype of the tables: fp32 | fp16 | int8.
        table_layout: auto (prefix where every mask row is a prefix [0, L_r), else csr) | csr |
            prefix (refused, with the first offending row named, when a mask is not prefix-shaped).
        index: item index kind: auto (sparse or flat, whichever answers faster at export, where the
            served item vectors are sparse; flat where dense) | sparse | flat | ivf | hnsw | sq8 | pq.
        index_params: overrides of :func:`export.index.default_params`; for sparse: layout
            (auto | prefix | postings), round_to (prefix lengths rounded up to a multiple), threaded.
        lightgcn_output: LightGCN's served vectors: auto (masked for a mask_output model, else
            propagated) | propagated (dense, option a) | masked (each row times its own mask: b, or c
            for a mask_output model). Both qualities are measured and stored.
        timing_users: sampled users whose queries time the ``auto`` choice.
        onnx_layout: user rows in ONNX: auto (packed where its arrays are smaller) | dense | packed.
        onnx_int8: also write ``scorer.int8.onnx`` (onnxruntime dynamic quantisation) and measure it.
        measure_memory: measure onnxruntime session RSS of both user-tower layouts (subprocesses).
        sample_users: users sampled for index recall and ONNX checks.
        k: cut-off of every top-k figure.
        seed: seed of the user sample.
        overwrite: replace an existing artifact folder.
        progress: show a progress bar on stderr.
    """

    values: str = "fp32"
    table_layout: str = "auto"
    index: str = "auto"
    index_params: dict[str, Any] = field(default_factory=dict)
    lightgcn_output: str = "auto"
    timing_users: int = 200
    onnx_layout: str = "auto"
    onnx_int8: bool = False
    measure_memory: bool = True
    sample_users: int = 1000
    k: int = 20
    seed: int = 0
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.values not in VALUE_DTYPES:
            raise ValueError(f"values: unknown dtype {self.values!r}; choose one of {list(VALUE_DTYPES)}")
        if self.table_layout not in TABLE_LAYOUT_CHOICES:
            raise ValueError(f"table_layout: unknown layout {self.table_layout!r}; "
                             f"choose one of {list(TABLE_LAYOUT_CHOICES)}")
        if self.index not in INDEX_CHOICES:
            raise ValueError(f"index: unknown kind {self.index!r}; choose one of {list(INDEX_CHOICES)}")
        if self.lightgcn_output not in LIGHTGCN_OUTPUTS:
            raise ValueError(f"lightgcn_output: unknown choice {self.lightgcn_output!r}; "
                             f"choose one of {list(LIGHTGCN_OUTPUTS)}")
        if self.onnx_layout not in ONNX_LAYOUTS:
            raise ValueError(f"onnx_layout: unknown layout {self.onnx_layout!r}; choose one of {list(ONNX_LAYOUTS)}")


# ---------------------------------------------------------------------------- small helpers
def _save_npy(folder: Path, name: str, array: np.ndarray, arrays: dict[str, Any]) -> None:
    """Write one ``.npy`` (no pickle, fsynced) and record its shape and dtype."""
    array = np.ascontiguousarray(array)
    with open(folder / name, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    arrays[name] = {"shape": list(array.shape), "dtype": str(array.dtype)}


def _save_json(path: Path, obj: Any) -> None:
    with open(path, "w") as handle:
        handle.write(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _sha256_entries(folder: Path) -> dict[str, dict[str, Any]]:

    entries = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            name = path.relative_to(folder).as_posix()
            entries[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return entries


class _Stages:
    """A progress bar over the named stages of an export (stderr; off with ``progress=False``)."""

    def __init__(self, names: list[str], enabled: bool):
        self.bar = tqdm(total=len(names), desc="export", unit="step", disable=not enabled, leave=False)
        self.started = time.perf_counter()

    def __call__(self, name: str) -> None:
        log.debug("export: %s", name)
        self.bar.set_description(f"export: {name}")

    def done(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _reference_vectors(model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """The vectors the torch model scores with (``[n_users, d]``, ``[n_items, d]``)."""
    with torch.no_grad():
        if model.kind == "pop":
            users = np.ones((model.n_users, 1), dtype=np.float32)
            return users, model.item_counts.detach().cpu().numpy().astype(np.float32)[:, None]
        user_final, item_final = model.final_embeddings()
        return user_final.detach().cpu().float().numpy(), item_final.detach().cpu().float().numpy()


def _ranked_without(ids: np.ndarray, known: sp.csr_matrix, k: int) -> np.ndarray:
    """Drop known items (and ``-1``) from ranked ids ``[U, K']``; the first ``k`` left, ``-1`` padded."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for row, ranked in enumerate(ids):
        seen = known.indices[known.indptr[row]: known.indptr[row + 1]]
        keep = ranked[(ranked >= 0) & ~np.isin(ranked, seen)][:k]
        out[row, : len(keep)] = keep
    return out


# ---------------------------------------------------------------------------- the export
def export_model(
    model: torch.nn.Module,
    out: str | Path,
    *,
    user_ids: list[str],
    item_ids: list[str],
    seen: sp.spmatrix,
    popularity: np.ndarray | None = None,
    heldout: sp.spmatrix | None = None,
    known_for_heldout: sp.spmatrix | None = None,
    training: dict[str, Any] | None = None,
    options: ExportOptions = ExportOptions(),
) -> Path:
    """Write ``model`` as an artifact folder at ``out`` (atomically).

    Args:
        model: a ``train.models`` model in eval mode with its masks applied.
        out: the artifact folder to create.
        user_ids, item_ids: external ids, position = internal id.
        seen: ``[n_users, n_items]`` train interactions (excluded at serving, LightGCN's graph).
        popularity: ``int64 [n_items]`` counts; default: column sums of ``seen``.
        heldout: optional ``[n_users, n_items]`` test positives, for recall@k of what is served.
        known_for_heldout: positives to mask before ranking for ``heldout`` (train + valid).
        training: ``{"config": ..., "metrics": ...}`` stored in the manifest.
        options: :class:`ExportOptions`.
    Returns:
        The artifact folder.
    """
    out = Path(out)
    if out.exists() and not options.overwrite:
        raise ExportError(f"{out}: already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    model, output_choice = _choose_lightgcn_output(model, options.lightgcn_output)
    seen = sp.csr_matrix(seen)
    heldout = None if heldout is None else sp.csr_matrix(heldout)
    known_for_heldout = None if known_for_heldout is None else sp.csr_matrix(known_for_heldout)
    order = _prefix_item_order(model, options)
    if order is not None:  # the prefix layout's item order, kept in the artifact's own id map
        model = _reorder_items(model, order)
        item_ids = [item_ids[i] for i in order]
        seen, heldout, known_for_heldout = (None if m is None else m[:, order] for m in (seen, heldout, known_for_heldout))
        popularity = None if popularity is None else np.asarray(popularity)[order]
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write(model, tmp, user_ids=user_ids, item_ids=item_ids, seen=sp.csr_matrix(seen), popularity=popularity,
               heldout=None if heldout is None else sp.csr_matrix(heldout),
               known_for_heldout=None if known_for_heldout is None else sp.csr_matrix(known_for_heldout),
               training=training or {}, options=options, output_choice=output_choice,
               item_order=None if order is None else "items sorted by prefix length (stable)")
        try:
            replace_folder(tmp, out, options.overwrite)
        except FileExistsError as exc:
            raise ExportError(f"{out}: appeared during the export; not replacing it") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("export: wrote %s", out)
    return out


def _served_item_mask(model) -> np.ndarray | None:
    """``bool [n_items, dim]``: the structure of the served item vectors, ``None`` where dense."""
    if model.kind == "mf":
        return model.item_embedding.mask.detach().cpu().numpy().astype(bool)
    if model.kind == "lightgcn" and getattr(model, "mask_output", False):
        return model.embedding.mask.detach().cpu().numpy().astype(bool)[model.n_users:]
    return None


def _prefix_item_order(model, options: ExportOptions) -> np.ndarray | None:
    """The stable by-length item order where a sparse index may use the prefix layout, else None
    (also None where the items are already in that order)."""
    if options.index not in ("auto", "sparse") or options.index_params.get("layout", "auto") == "postings":
        return None
    mask = _served_item_mask(model)
    lengths = None if mask is None else prefix_lengths(mask)
    if lengths is None or bool((np.diff(lengths) >= 0).all()):
        return None
    return length_order(lengths)


def _reorder_items(model, order: np.ndarray):
    """A copy of ``model`` whose item ``i`` is the original item ``order[i]`` (the caller's is untouched)."""
    model = copy.deepcopy(model)
    index = torch.from_numpy(np.asarray(order, dtype=np.int64))
    with torch.no_grad():
        if model.kind == "mf":
            table = model.item_embedding
            rows = index
        elif model.kind == "lightgcn":
            from train.models import Adjacency

            table = model.embedding
            rows = torch.cat([torch.arange(model.n_users), model.n_users + index])
            full = rows.numpy()
            model.adjacency = Adjacency(sp.csr_matrix(model.norm_adj_csr[full][:, full]))
            model._cache = None
        else:
            raise ExportError(f"cannot reorder the items of a {model.kind!r} model")
        table.weight.data = table.weight.data[rows].clone()
        table.mask.copy_(table.mask[rows])
    return model


def _choose_lightgcn_output(model, wanted: str) -> tuple[Any, dict[str, Any] | None]:
    """(model to export, description) for LightGCN's served vectors; other models pass through."""
    if model.kind != "lightgcn":
        return model, None
    trained = bool(getattr(model, "mask_output", False))
    if wanted == "auto":
        wanted = "masked" if trained else "propagated"
        reason = ("auto: the model was trained with model.mask_output=true, so it serves what it was trained on"
                  if trained else "auto: masking a model trained without mask_output cost 0.74x test NDCG@20 in "
                                  "the first measurement (issue 10), so propagated (dense) vectors are served")
    else:
        reason = f"forced by --lightgcn-output {wanted}"
    if wanted == "propagated" and trained:
        raise ExportError("--lightgcn-output propagated: this model was trained with model.mask_output=true; its "
                          "unmasked propagated vectors are not what it was trained to score (use auto or masked)")
    option = "c" if trained else ("b" if wanted == "masked" else "a")
    if option == "b":  # the masked forward pass on a copy: every check below compares against it
        model = copy.deepcopy(model)
        model.mask_output = True
        model._cache = None
    names = {"a": "propagated vectors (dense)", "b": "propagated vectors masked by each row's own mask (at serving)",
             "c": "masked propagated vectors, trained so (model.mask_output=true)"}
    return model, {"served": wanted, "option": option, "what": names[option], "reason": reason,
                   "trained_with_mask_output": trained}


def _lightgcn_output_quality(model, output_choice: dict[str, Any], users: np.ndarray, heldout, known,
                             k: int) -> dict[str, Any]:
    """Test Recall/NDCG@k of the propagated and the masked vectors of this model, and their top-k overlap."""
    saved = model.mask_output
    vectors = {}
    try:
        for name, flag in (("propagated", False), ("masked", True)):
            model.mask_output, model._cache = flag, None
            vectors[name] = _reference_vectors(model)
    finally:
        model.mask_output, model._cache = saved, None
    k_eff = min(k, model.n_items)
    ranked = {}
    for name, (user_vectors, item_vectors) in vectors.items():
        _, ranked[name] = topk_by_scores(user_vectors[users], item_vectors, k_eff, exclude=known[users])
    out = dict(output_choice)
    out.update({f"test_{name}": recall_ndcg_at_k(ids, heldout[users], k_eff) for name, ids in ranked.items()})
    out[f"overlap@{k_eff}_masked_vs_propagated"] = overlap_at_k(ranked["masked"], ranked["propagated"])
    ndcg = f"ndcg@{k_eff}"
    base = out["test_propagated"].get(ndcg)
    out[f"{ndcg}_masked_over_propagated"] = (out["test_masked"][ndcg] / base) if base else None
    out["users"] = int(len(users))
    out["served_nnz"] = int(model.embedding.mask.sum()) if output_choice["served"] == "masked" else \
        int(model.embedding.weight.numel())
    return out


def _write(model, folder: Path, *, user_ids, item_ids, seen: sp.csr_matrix, popularity, heldout, known_for_heldout,
           training: dict[str, Any], options: ExportOptions, output_choice: dict[str, Any] | None = None,
           item_order: str | None = None) -> None:
    kind = model.kind
    n_users, n_items = int(model.n_users), int(model.n_items)
    if seen.shape != (n_users, n_items):
        raise ExportError(f"seen interactions have shape {seen.shape}, the model has {(n_users, n_items)}")
    if len(user_ids) != n_users or len(item_ids) != n_items:
        raise ExportError(f"id maps have {len(user_ids)} users / {len(item_ids)} items, the model "
                          f"has {n_users} / {n_items}")
    k = options.k
    rng = np.random.default_rng(options.seed)
    sample = np.sort(rng.choice(n_users, size=min(options.sample_users, n_users), replace=False))
    stages = _Stages(["tables", "vectors", "onnx", "index", "manifest"], options.progress)
    arrays: dict[str, Any] = {}
    try:
        # 1-2. tables, interactions, popularity, ids ------------------------------------------
        stages("tables")
        tables, packed, vectors_spec, dim, n_layers = _write_tables(model, folder, options.values,
                                                                    options.table_layout, arrays)
        seen_indptr, seen_indices = pack_csr(seen)
        seen = sp.csr_matrix((np.ones(len(seen_indices), np.float32), seen_indices.astype(np.int32),
                              seen_indptr.astype(np.int64)), shape=(n_users, n_items))
        _save_npy(folder, SEEN_INDPTR, seen_indptr, arrays)
        _save_npy(folder, SEEN_INDICES, seen_indices, arrays)
        if kind == "pop":  # the popularity model's only parameters are its counts: serve exactly those
            popularity = model.item_counts.detach().cpu().numpy()
        elif popularity is None:
            popularity = np.asarray(seen.sum(axis=0)).ravel()
        popularity = np.asarray(popularity).astype(np.int64)
        _save_npy(folder, POPULARITY, popularity, arrays)
        _save_npy(folder, POPULARITY_ORDER, popularity_order(popularity), arrays)
        try:  # .npy string arrays, so that servers map them (format 2)
            _save_npy(folder, USER_IDS, id_array(user_ids), arrays)
            _save_npy(folder, ITEM_IDS, id_array(item_ids), arrays)
        except ArtifactError as exc:
            raise ExportError(str(exc)) from exc
        total_nnz = sum(t["nnz"] for t in tables.values())
        total_entries = sum(t["shape"][0] * t["shape"][1] for t in tables.values())
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "model_kind": kind,
            "dim": dim,
            "n_users": n_users,
            "n_items": n_items,
            "n_layers": n_layers,
            "value_dtype": options.values,
            "nnz": int(total_nnz),
            "density": (total_nnz / total_entries) if total_entries else None,
            "tables": tables,
            "vectors": vectors_spec,
            "serving_dense": ["user_vectors", "item_vectors"],
            "seen": {"shape": [n_users, n_items], "nnz": int(len(seen_indices)),
                     "files": {"indptr": SEEN_INDPTR, "indices": SEEN_INDICES}},
            "popularity": {"file": POPULARITY, "order": POPULARITY_ORDER, "source": "train interaction counts"},
            "ids": {"users": USER_IDS, "items": ITEM_IDS},
            "index": {"kind": options.index, "file": INDEX_FILE, "params": {}},
            "item_order": item_order or "as trained",
            "onnx": {},
            "arrays": arrays,
            "files": {},
        }
        stages.done()

        # 3. served vectors, read back from disk, against torch ---------------------------------
        stages("vectors")
        artifact = Artifact(folder, manifest)
        user_vectors, item_vectors = artifact.user_vectors(), artifact.item_vectors()
        ref_users, ref_items = _reference_vectors(model)
        # every user where brute-force ranking is affordable, else the sample
        ranked_users = np.arange(n_users) if n_users * n_items <= FULL_RANKING_LIMIT else sample
        manifest["fidelity"] = _fidelity(user_vectors, item_vectors, ref_users, ref_items, seen, ranked_users, k,
                                         options.values)
        known = None if heldout is None else (known_for_heldout if known_for_heldout is not None else seen)
        if heldout is not None:
            _, served = topk_by_scores(user_vectors[ranked_users], item_vectors, min(k, n_items),
                                       exclude=known[ranked_users])
            manifest["quality"] = {"split": "test",
                                   "known_excluded": "train" if known_for_heldout is None else "train + valid",
                                   "exact": recall_ndcg_at_k(served, heldout[ranked_users], min(k, n_items))}
        if output_choice is not None:
            if heldout is not None:
                output_choice = _lightgcn_output_quality(model, output_choice, ranked_users, heldout, known, k)
            manifest["lightgcn_output"] = output_choice
            log.info("export: LightGCN serves %s (option %s; %s)", output_choice["what"], output_choice["option"],
                     output_choice["reason"])
        stages.done()

        # 4. ONNX ---------------------------------------------------------------------------------
        stages("onnx")
        manifest["onnx"] = _write_onnx(folder, packed, vectors_spec, user_vectors, item_vectors, ref_users, ref_items,
                                       sample, k, options, heldout, known)
        stages.done()

        # 5. faiss ---------------------------------------------------------------------------------
        stages("index")
        manifest["index"] = _write_index(folder, item_vectors, user_vectors, artifact.served_item_table(), sample, k,
                                         options, arrays, heldout, known)
        if heldout is not None and "test_recall" in manifest["index"]:
            manifest["quality"]["index"] = manifest["index"].pop("test_recall")
        stages.done()

        # 6. manifest, checksums, verification ------------------------------------------------------
        stages("manifest")
        manifest["training"] = training
        manifest["exporter"] = {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "options": {key: value for key, value in asdict(options).items() if key not in ("progress", "overwrite")},
            "versions": _versions(),
        }
        manifest["files"] = _sha256_entries(folder)
        manifest["bytes"] = _bytes_by_component(manifest)
        _save_json(folder / MANIFEST, manifest)
        fsync_dir(folder)
        verify_artifact(folder)
        stages.done()
    finally:
        stages.close()


def _bytes_by_component(manifest: dict[str, Any]) -> dict[str, int]:
    """File bytes of the artifact by what they hold (tables, index, onnx, interactions, ...)."""
    files = manifest["files"]
    groups = {
        "tables": {name for t in manifest["tables"].values() for name in t["files"].values()},
        "index": set(index_files(manifest["index"])),
        "onnx": {entry["file"] for entry in manifest["onnx"].values() if isinstance(entry, dict) and "file" in entry},
        "seen": set(manifest["seen"]["files"].values()),
        "ids": set(manifest["ids"].values()),
        "popularity": {manifest["popularity"]["file"], manifest["popularity"]["order"]},
    }
    out = {"total": sum(f["bytes"] for f in files.values())}
    out.update({group: sum(files[name]["bytes"] for name in names if name in files) for group, names in groups.items()})
    return out


def _versions() -> dict[str, str]:
    import faiss
    import onnx
    import onnxruntime
    import scipy

    return {"numpy": np.__version__, "scipy": scipy.__version__, "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "faiss": faiss.__version__}


def _choose_layout(name: str, mask: np.ndarray, wanted: str) -> tuple[str, str]:
    """``(layout, reason)`` of one table under ``--table-layout wanted``; refuses prefix for other masks."""
    is_prefix = prefix_lengths(mask) is not None
    if wanted == "csr":
        return "csr", "forced by --table-layout csr"
    if wanted == "prefix":
        if not is_prefix:
            row = first_non_prefix_row(mask)
            raise ExportError(f"--table-layout prefix: table {name} is not prefix-shaped (row {row} keeps columns "
                              f"{np.flatnonzero(mask[row]).tolist()[:12]}, not [0, L)); prefix needs every row's "
                              f"mask to be a prefix, as dsl-nested / dsl-mixed train them; use auto or csr")
        return "prefix", "forced by --table-layout prefix"
    if is_prefix:
        return "prefix", "auto: every row of the mask is a prefix [0, L_r)"
    return "csr", "auto: some rows of the mask are not prefixes"


def _write_tables(model, folder: Path, value_dtype: str, table_layout: str, arrays: dict[str, Any]):
    """Pack and write every sparse table; returns (table entries, packed tables, vectors spec, dim, n_layers)."""
    kind = model.kind
    entries: dict[str, Any] = {}
    packed: dict[str, PackedTable | PrefixTable] = {}
    for name, table in model.sparse_tables().items():
        mask = table.mask.detach().cpu().numpy().astype(bool)
        weight = (table.weight.detach().cpu().float() * table.mask.detach().cpu()).numpy()
        layout, reason = _choose_layout(name, mask, table_layout)
        table_packed = (pack_prefix_table if layout == "prefix" else pack_table)(weight, mask, value_dtype)
        files = {}
        for role, array in table_packed.arrays().items():
            files[role] = table_file(name, role)
            _save_npy(folder, files[role], array, arrays)
        n_rows, width = table_packed.shape
        entry: dict[str, Any] = {
            "layout": layout,
            "layout_reason": reason,
            "shape": [n_rows, width],
            "nnz": table_packed.nnz,
            "density": table_packed.density,
            "value_dtype": value_dtype,
        }
        if layout == "prefix":
            entry["lengths_dtype"] = str(table_packed.lengths.dtype)
        else:
            entry["indptr_dtype"] = str(table_packed.indptr.dtype)
            entry["index_dtype"] = str(table_packed.indices.dtype)
        entry.update({
            "bytes": table_packed.nbytes,
            "csr_bytes": packed_bytes(n_rows, width, table_packed.nnz, value_dtype),
            "dense_fp32_bytes": dense_bytes(n_rows, width, "fp32"),
            "files": files,
        })
        entries[name] = entry
        packed[name] = table_packed
    n_users, n_items = int(model.n_users), int(model.n_items)
    if kind == "mf":
        spec = {"source": "tables",
                "users": {"table": "user_embedding", "start": 0, "stop": n_users},
                "items": {"table": "item_embedding", "start": 0, "stop": n_items}}
        return entries, packed, spec, int(model.dim), 0
    if kind == "lightgcn":
        rows = np.diff(packed["embedding"].indptr.astype(np.int64))
        width = int(model.dim)
        entries["embedding"]["row_groups"] = {
            "users": {"start": 0, "stop": n_users, "nnz": int(rows[:n_users].sum()),
                      "density": float(rows[:n_users].sum() / max(n_users * width, 1))},
            "items": {"start": n_users, "stop": n_users + n_items, "nnz": int(rows[n_users:].sum()),
                      "density": float(rows[n_users:].sum() / max(n_items * width, 1))},
        }
        spec = {"source": "lightgcn", "table": "embedding", "n_layers": int(model.n_layers), "adjacency": "seen",
                "mask_output": bool(getattr(model, "mask_output", False)),
                "formula": "E = mean_{l=0..L} A_hat^l E0, A_hat = D^-1/2 A D^-1/2, A = [[0, seen], [seen^T, 0]]",
                "users": {"start": 0, "stop": n_users}, "items": {"start": n_users, "stop": n_users + n_items}}
        return entries, packed, spec, width, int(model.n_layers)
    if kind == "pop":
        return entries, packed, {"source": "popularity", "formula": "score = 1 * popularity[item]"}, 1, 0
    raise ExportError(f"cannot export model kind {kind!r} (known: mf, lightgcn, pop)")


def _fidelity(user_vectors, item_vectors, ref_users, ref_items, seen, users, k, value_dtype) -> dict[str, Any]:
    """Served vectors and their top-k lists (seen items excluded) against the torch model's.

    Args:
        users: the users whose lists are compared (all of them unless the catalogue is huge).
    """
    user_err = float(np.abs(user_vectors - ref_users).max(initial=0.0))
    item_err = float(np.abs(item_vectors - ref_items).max(initial=0.0))
    if value_dtype == "fp32" and max(user_err, item_err) > TOLERANCE_FP32:
        raise ExportError(f"served vectors differ from torch's by {max(user_err, item_err):.3g} (> {TOLERANCE_FP32})")
    k_eff = min(k, len(item_vectors))
    strict, tie_aware = 0.0, 0.0
    batch = max(1, int(2e7 // max(len(item_vectors), 1)))
    for start in range(0, len(users), batch):
        rows = users[start: start + batch]
        block = seen[rows]
        _, got = topk_by_scores(user_vectors[rows], item_vectors, k_eff, exclude=block)
        _, want = topk_by_scores(ref_users[rows], ref_items, k_eff, exclude=block)
        reference = ref_users[rows] @ ref_items.T
        coo = block.tocoo()
        reference[coo.row, coo.col] = -np.inf
        strict += overlap_at_k(got, want) * len(rows)
        tie_aware += tie_aware_overlap_at_k(got, reference, k_eff) * len(rows)
    return {
        "definition": f"top-{k_eff} of each user from the artifact's vectors vs from the torch model, "
                      f"train items excluded",
        "users": int(len(users)),
        "all_users": bool(len(users) == len(user_vectors)),
        f"overlap@{k}": strict / max(len(users), 1),
        f"tie_aware_overlap@{k}": tie_aware / max(len(users), 1),
        "max_abs_err_user_vectors": user_err,
        "max_abs_err_item_vectors": item_err,
    }


def _write_onnx(folder: Path, packed: dict[str, PackedTable | PrefixTable], vectors_spec, user_vectors, item_vectors,
                ref_users, ref_items, sample, k, options: ExportOptions, heldout=None, known=None) -> dict[str, Any]:
    """Write the user tower and the scorer, check them in onnxruntime, measure their memory."""
    dim = user_vectors.shape[1]
    user_table = packed.get("user_embedding") if vectors_spec["source"] == "tables" else None
    candidates: dict[str, Any] = {"dense": to_onnx.DenseRows(np.ascontiguousarray(user_vectors))}
    if user_table is not None:  # MF: the stored values exactly, dense in their dtype or packed
        candidates = {"dense": to_onnx.DenseRows(*user_table.to_dense_stored()), "packed": user_table}
    layout = options.onnx_layout
    reason = "forced by --onnx-layout"
    if layout == "packed" and user_table is None:
        layout, reason = "dense", f"{vectors_spec['source']} users are dense at serving time (packed needs MF tables)"
    elif layout == "auto":
        if user_table is None:
            layout, reason = "dense", f"{vectors_spec['source']} user vectors are dense at serving time"
        else:
            dense_size, packed_size = candidates["dense"].nbytes, to_onnx.packed_rows_nbytes(user_table)
            layout = "packed" if packed_size < dense_size else "dense"
            reason = f"packed user rows {packed_size} B vs dense {dense_size} B"
    tower, tower_info = to_onnx.build_user_tower(candidates[layout], dim)
    scorer, _ = to_onnx.build_scorer(candidates[layout], item_vectors)
    to_onnx.save_model(tower, folder / USER_TOWER)
    to_onnx.save_model(scorer, folder / SCORER)

    all_users = np.arange(len(user_vectors))
    tower_session = to_onnx.session(folder / USER_TOWER)
    onnx_users = to_onnx.run_tower(tower_session, all_users)
    err_artifact = float(np.abs(onnx_users - user_vectors).max(initial=0.0))
    err_torch = float(np.abs(onnx_users - ref_users).max(initial=0.0))
    if err_artifact > TOLERANCE_FP32:
        raise ExportError(f"{USER_TOWER}: differs from the artifact's user vectors by {err_artifact:.3g}")
    if options.values == "fp32" and err_torch > TOLERANCE_FP32:
        raise ExportError(f"{USER_TOWER}: differs from torch by {err_torch:.3g} (> {TOLERANCE_FP32})")

    k_eff = min(k, len(item_vectors))
    scorer_session = to_onnx.session(folder / SCORER)
    onnx_scores, onnx_items = to_onnx.run_scorer(scorer_session, sample, k_eff)
    reference = ref_users[sample] @ ref_items.T
    want_scores = -np.sort(-reference, axis=1)[:, :k_eff]
    score_err = float(np.abs(onnx_scores - want_scores).max(initial=0.0))
    # ids may differ only among tied scores: the torch score of every returned id must reach
    # torch's own k-th best score
    id_agreement = tie_aware_overlap_at_k(onnx_items, reference, k_eff)
    if options.values == "fp32" and (score_err > TOLERANCE_FP32 * max(1.0, float(np.abs(want_scores).max(initial=0))) or
                                     id_agreement < 1.0):
        raise ExportError(f"{SCORER}: top-{k_eff} differs from torch (score err {score_err:.3g}, id agreement "
                          f"{id_agreement:.4f})")
    info: dict[str, Any] = {
        "opset": to_onnx.OPSET,
        "user_tower": {
            "file": USER_TOWER, "inputs": {"user": "int64 [B]"}, "outputs": {"user_vector": f"float32 [B, {dim}]"},
            **tower_info, "layout_reason": reason,
            "holds": ("propagated LightGCN user vectors" + (" times the base mask (mask_output)" if
                      vectors_spec.get("mask_output") else " (dense)")) if vectors_spec["source"] == "lightgcn"
            else f"the user table's stored {options.values} values" + (
                (" as packed CSR arrays" if user_table.layout == "csr" else
                 " as packed prefix arrays (row pointers and values, no column indices)")
                if layout == "packed" else ", dense"),
            "initializer_bytes": to_onnx.initializer_bytes(tower),
            "max_abs_err_vs_torch": err_torch, "max_abs_err_vs_artifact": err_artifact, "checked_users": len(all_users),
        },
        "scorer": {
            "file": SCORER, "inputs": {"user": "int64 [B]", "k": "int64 [1]"},
            "outputs": {"scores": "float32 [B, k]", "items": "int64 [B, k]"},
            "layout": layout, "items": "dense [d, n_items] initializer; MatMul then TopK; seen items not excluded",
            "initializer_bytes": to_onnx.initializer_bytes(scorer),
            "max_abs_score_err_vs_torch": score_err, f"tie_aware_agreement@{k_eff}_vs_torch": id_agreement,
            "checked_users": len(sample),
        },
    }
    if options.measure_memory:
        info["memory"] = _measure_onnx_memory(folder, candidates, layout, dim)
    if options.onnx_int8:
        info["scorer_int8"] = _quantized_scorer(folder, sample, k_eff, onnx_items, onnx_scores, heldout, known)
    return info


def _measure_onnx_memory(folder: Path, candidates: dict[str, Any], chosen: str, dim: int) -> dict[str, Any]:
    """Session RSS delta of the user tower in every possible layout (fresh processes)."""
    feeds = {"user": list(range(min(256, len(candidates["dense"].values))))}
    result: dict[str, Any] = {"method": "psutil RSS of a fresh process before/after InferenceSession(...) "
                                        "(runtime warmed on a trivial graph), then after one run of 256 users"}
    with tempfile.TemporaryDirectory(prefix="onnx-mem-") as scratch:
        for layout, rows in candidates.items():
            if layout == chosen:
                path = folder / USER_TOWER
                model_bytes = path.stat().st_size
                init_bytes = None
            else:
                model, _ = to_onnx.build_user_tower(rows, dim)
                path = Path(scratch) / f"user_tower.{layout}.onnx"
                to_onnx.save_model(model, path)
                model_bytes = path.stat().st_size
                init_bytes = to_onnx.initializer_bytes(model)
            entry = {"file_bytes": model_bytes, **to_onnx.session_rss_delta(path, feeds)}
            if init_bytes is not None:
                entry["initializer_bytes"] = init_bytes
            result[layout] = entry
    if "packed" in result and "dense" in result:
        result["saved_session_bytes"] = result["dense"]["session_rss_delta"] - result["packed"]["session_rss_delta"]
        result["saved_file_bytes"] = result["dense"]["file_bytes"] - result["packed"]["file_bytes"]
    return result


def _quantized_scorer(folder: Path, sample, k, exact_items, exact_scores, heldout=None, known=None) -> dict[str, Any]:
    """Write ``scorer.int8.onnx`` and measure how far its top-k moves from the fp32 scorer."""
    to_onnx.quantize_scorer_int8(folder / SCORER, folder / SCORER_INT8)
    session = to_onnx.session(folder / SCORER_INT8)
    scores, items = to_onnx.run_scorer(session, sample, k)
    result = {
        "file": SCORER_INT8, "method": "onnxruntime.quantization.quantize_dynamic, MatMul weights QInt8",
        f"overlap@{k}_vs_fp32_scorer": overlap_at_k(items, exact_items),
        "max_abs_score_err_vs_fp32_scorer": float(np.abs(scores - exact_scores).max(initial=0.0)),
        "checked_users": len(sample),
        "file_bytes": (folder / SCORER_INT8).stat().st_size,
    }
    if heldout is not None:  # test recall of both scorers: rank deep enough to drop the known items
        known_rows = known[sample]
        n_items = heldout.shape[1]
        depth = int(min(n_items, k + np.diff(known_rows.indptr).max(initial=0)))
        for name, path in (("fp32", folder / SCORER), ("int8", folder / SCORER_INT8)):
            _, deep = to_onnx.run_scorer(to_onnx.session(path), sample, depth)
            ranked = _ranked_without(deep, known_rows, k)
            result[f"test_{name}_scorer"] = recall_ndcg_at_k(ranked, heldout[sample], k)
    return result


def _build_index(folder: Path, item_vectors, user_vectors, item_table, sample, k, options: ExportOptions,
                 arrays: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Build the index ``options.index`` asks for (``auto``: time sparse against flat), save it;
    returns ``(index, manifest entry without the recall figures)``."""
    kind = options.index
    params = dict(options.index_params)
    entry: dict[str, Any] = {}
    n_entries = int(np.prod(np.shape(item_vectors)))
    if kind == "auto" and (item_table is None or item_table.nnz == n_entries):
        kind = "flat"
        entry["choice"] = "auto: flat, the served item vectors are dense (no structural zero)"
    started = time.perf_counter()
    if kind in ("auto", "sparse"):
        sparse_params = {key: params[key] for key in SPARSE_PARAMS if key in params}
        unknown = set(params) - set(SPARSE_PARAMS)
        if unknown:
            raise ExportError(f"--index {kind}: unknown sparse index parameter(s) {sorted(unknown)}; "
                              f"known: {list(SPARSE_PARAMS)}")
        layout = sparse_params.pop("layout", "auto")
        try:
            index = SparseIndex.from_table(item_table if item_table is not None else item_vectors, layout=layout,
                                           **sparse_params)
        except ValueError as exc:
            raise ExportError(f"--index {kind}: {exc}") from exc
        if kind == "auto":
            flat = ItemIndex.build("flat", item_vectors)
            index, kind, entry["auto"] = _time_and_choose(index, flat, user_vectors, sample, k, options)
            entry["choice"] = entry["auto"]["choice"]
    else:
        index = ItemIndex.build(kind, item_vectors, **params)
    build_seconds = time.perf_counter() - started
    entry.update({"kind": kind, "params": index.params, "exact": kind in (*EXACT_KINDS, "sparse"),
                  "metric": "inner product", "build_seconds": round(build_seconds, 4)})
    if kind == "sparse":
        files = {}
        for role, array in index.arrays().items():
            files[role] = sparse_file(role)
            _save_npy(folder, files[role], array, arrays)
        entry.update({"layout": index.layout, "files": files, "nnz": index.nnz, "bytes": index.nbytes,
                      "structure": index.describe()})
    else:
        index.save(folder / INDEX_FILE)
        entry["file"] = INDEX_FILE
    return index, entry


def _time_and_choose(sparse_index, flat_index, user_vectors, sample, k, options: ExportOptions):
    """Time both on the same sampled queries, alternating (the machine is shared); keep the faster at batch 1."""
    queries = np.ascontiguousarray(user_vectors[sample[: options.timing_users]])
    k_eff = min(k, sparse_index.n_items)
    figures: dict[str, list[dict[str, float]]] = {"sparse": [], "flat": []}
    for _ in range(2):
        figures["sparse"].append(time_search(sparse_index, queries, k_eff, repeats=1))
        figures["flat"].append(time_search(flat_index, queries, k_eff, repeats=1))
    timing = {name: {key: float(np.median([run[key] for run in runs])) for key in runs[0]}
              for name, runs in figures.items()}
    chosen = "sparse" if timing["sparse"]["batch_1_ms_per_query"] <= timing["flat"]["batch_1_ms_per_query"] else "flat"
    ratio = timing["sparse"]["batch_1_ms_per_query"] / max(timing["flat"]["batch_1_ms_per_query"], 1e-9)
    flat_bytes = int(flat_index.index.ntotal) * int(flat_index.dim) * 4
    info = {"choice": f"auto: {chosen} (sparse {sparse_index.layout} / flat batch-1 time {ratio:.2f}x)",
            "chosen": chosen, "sparse_layout": sparse_index.layout, "timing_ms_per_query": timing,
            "sparse_over_flat_batch_1": round(ratio, 4), "bytes": {"sparse": sparse_index.nbytes, "flat": flat_bytes},
            "timing_queries": int(len(queries)), "k": k_eff,
            "method": "export.sparse_index.time_search, in-process, warm, two alternated rounds, median"}
    return (sparse_index if chosen == "sparse" else flat_index), chosen, info


def _write_index(folder: Path, item_vectors, user_vectors, item_table, sample, k, options: ExportOptions,
                 arrays: dict[str, Any], heldout=None, known=None) -> dict[str, Any]:
    """Build, save and measure the item index (recall@k against exact search on sampled users)."""
    index, entry = _build_index(folder, item_vectors, user_vectors, item_table, sample, k, options, arrays)
    k_eff = min(k, len(item_vectors))
    queries = np.ascontiguousarray(user_vectors[sample])
    started = time.perf_counter()
    _, got = index.search(queries, k_eff)
    search_seconds = time.perf_counter() - started
    _, exact = topk_by_scores(queries, item_vectors, k_eff)
    items_t = np.ascontiguousarray(np.asarray(item_vectors, dtype=np.float32).T)
    tie_aware, chunk = 0.0, max(1, int(2e7 // max(len(item_vectors), 1)))
    for start in range(0, len(queries), chunk):  # [chunk, n_items] exact scores at a time
        rows = slice(start, start + chunk)
        tie_aware += tie_aware_overlap_at_k(got[rows], queries[rows] @ items_t, k_eff, atol=1e-5) * len(got[rows])
    entry.update({
        f"recall@{k_eff}_vs_flat": overlap_at_k(got, exact),
        f"tie_aware_recall@{k_eff}_vs_flat": tie_aware / max(len(queries), 1),
        "recall_users": len(sample),
        "recall_definition": f"share of the exact top-{k_eff} (brute-force inner product over the zero-filled "
                             f"vectors, no exclusion) that the index returns, over {len(sample)} sampled users; "
                             f"tie-aware: returned items whose exact score reaches the exact k-th best",
        "search_ms_per_query": round(1000 * search_seconds / max(len(sample), 1), 4),
    })
    if heldout is not None:  # rank deep enough to drop the known items, then score the test split
        known_rows = known[sample]
        depth = int(min(len(item_vectors), k_eff + np.diff(known_rows.indptr).max(initial=0)))
        _, deep = index.search(queries, depth)
        ranked = _ranked_without(deep, known_rows, k_eff)
        entry["test_recall"] = {"index_kind": entry["kind"], **recall_ndcg_at_k(ranked, heldout[sample], k_eff)}
    return entry


# ---------------------------------------------------------------------------- from a run folder
def export_run(run_dir: str | Path, out: str | Path, options: ExportOptions = ExportOptions()) -> Path:
    """Export the best model of a finished training run folder (``runs/NAME``)."""
    from train.checkpoint import load_trained

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and not options.overwrite:  # fail before the (slow) loading
        raise ExportError(f"{out}: already exists (pass --overwrite to replace it)")
    model, dataset, config, metrics = load_trained(run_dir)
    seen = dataset.csr("train")
    heldout, known = _split(dataset, "test"), None
    if heldout is not None:
        known = seen
        valid = _split(dataset, "valid")
        if valid is not None:
            known = ((known + valid) > 0).astype(np.float32)
    popularity = dataset.item_popularity()
    training = {"run": str(run_dir), "config": config.to_dict(), "metrics": metrics}
    return export_model(model, out, user_ids=list(dataset.user_ids), item_ids=list(dataset.item_ids),
                        seen=seen, popularity=popularity, heldout=heldout, known_for_heldout=known,
                        training=training, options=options)


def _split(dataset, name: str) -> sp.csr_matrix | None:
    """A split of a ``train.data.Dataset`` as CSR, or ``None`` when it is empty (nothing to score)."""
    matrix = dataset.csr(name)
    return None if matrix.nnz == 0 else sp.csr_matrix(matrix)
