"""``export_model`` and ``export_run``: the steps of an export in order, in a temp folder renamed into place."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from common.io import replace_folder

from ..artifact import FORMAT_VERSION, MANIFEST, Artifact, ArtifactError, Manifest, verify_artifact, write_manifest
from ..layout import (
    INDEX_FILE,
    ITEM_IDS,
    POPULARITY,
    POPULARITY_ORDER,
    SEEN_INDICES,
    SEEN_INDPTR,
    USER_IDS,
    id_array,
    popularity_order,
)
from ..quality import recall_ndcg_at_k, topk_by_scores
from ..to_sparse import pack_csr
from .checks import fidelity, reference_vectors
from .files import plain_json, save_npy, sha256_entries
from .index_build import write_index
from .item_order import prefix_item_order, reorder_items
from .lightgcn_output import choose_lightgcn_output, lightgcn_output_quality
from .memory import bytes_by_component
from .onnx_files import write_onnx
from .options import FULL_RANKING_LIMIT, ExportError, ExportOptions
from .tables import write_tables

log = logging.getLogger("sparserec.export")


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_partials(out: str | Path) -> list[Path]:
    """Remove the temp folders an interrupted export of ``out`` left beside it; return them.

    Only this target's: ``.<out name>.partial-<pid>-<8 hex>`` whose writing process is gone
    (a live one is another export of the same target, still running), and the older
    ``.<out name>.partial-<8 hex>`` of exports that did not record their PID. Another target's
    temp folders, even one whose name starts like this one's, never match.
    """
    out = Path(out)
    if not out.parent.is_dir():
        return []
    name = re.escape(out.name)
    with_pid = re.compile(rf"\.{name}\.partial-(\d+)-[0-9a-f]{{8}}")
    legacy = re.compile(rf"\.{name}\.partial-[0-9a-f]{{8}}")
    removed = []
    for entry in out.parent.iterdir():
        match = with_pid.fullmatch(entry.name)
        stale = (
            match is not None and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1)))
        ) or legacy.fullmatch(entry.name) is not None
        if stale and entry.is_dir() and not entry.is_symlink():
            log.warning("export: removing %s, left by an interrupted export of %s", entry, out)
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


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
    model, output_choice = choose_lightgcn_output(model, options.lightgcn_output)
    seen = sp.csr_matrix(seen)
    heldout = None if heldout is None else sp.csr_matrix(heldout)
    known_for_heldout = None if known_for_heldout is None else sp.csr_matrix(known_for_heldout)
    order = prefix_item_order(model, options)
    if order is not None:  # the prefix layout's item order, kept in the artifact's own id map
        model = reorder_items(model, order)
        item_ids = [item_ids[i] for i in order]
        seen, heldout, known_for_heldout = (
            None if m is None else m[:, order] for m in (seen, heldout, known_for_heldout)
        )
        popularity = None if popularity is None else np.asarray(popularity)[order]
    remove_stale_partials(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write(
            model,
            tmp,
            user_ids=user_ids,
            item_ids=item_ids,
            seen=sp.csr_matrix(seen),
            popularity=popularity,
            heldout=None if heldout is None else sp.csr_matrix(heldout),
            known_for_heldout=None if known_for_heldout is None else sp.csr_matrix(known_for_heldout),
            training=training or {},
            options=options,
            output_choice=output_choice,
            item_order=None if order is None else "items sorted by prefix length (stable)",
        )
        try:
            replace_folder(tmp, out, options.overwrite)
        except FileExistsError as exc:
            raise ExportError(f"{out}: appeared during the export; not replacing it") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("export: wrote %s", out)
    return out


def _write(
    model,
    folder: Path,
    *,
    user_ids,
    item_ids,
    seen: sp.csr_matrix,
    popularity,
    heldout,
    known_for_heldout,
    training: dict[str, Any],
    options: ExportOptions,
    output_choice: dict[str, Any] | None = None,
    item_order: str | None = None,
) -> None:
    kind = model.kind
    n_users, n_items = int(model.n_users), int(model.n_items)
    if seen.shape != (n_users, n_items):
        raise ExportError(f"seen interactions have shape {seen.shape}, the model has {(n_users, n_items)}")
    if len(user_ids) != n_users or len(item_ids) != n_items:
        raise ExportError(
            f"id maps have {len(user_ids)} users / {len(item_ids)} items, the model has {n_users} / {n_items}"
        )
    k = options.k
    rng = np.random.default_rng(options.seed)
    sample = np.sort(rng.choice(n_users, size=min(options.sample_users, n_users), replace=False))
    stages = _Stages(["tables", "vectors", "onnx", "index", "manifest"], options.progress)
    arrays: dict[str, Any] = {}
    try:
        # 1-2. tables, interactions, popularity, ids ------------------------------------------
        stages("tables")
        tables, packed, vectors_spec, dim, n_layers = write_tables(
            model, folder, options.values, options.table_layout, arrays
        )
        seen_indptr, seen_indices = pack_csr(seen)
        seen = sp.csr_matrix(
            (np.ones(len(seen_indices), np.float32), seen_indices.astype(np.int32), seen_indptr.astype(np.int64)),
            shape=(n_users, n_items),
        )
        save_npy(folder, SEEN_INDPTR, seen_indptr, arrays)
        save_npy(folder, SEEN_INDICES, seen_indices, arrays)
        if kind == "pop":  # the popularity model's only parameters are its counts: serve exactly those
            popularity = model.item_counts.detach().cpu().numpy()
        elif popularity is None:
            popularity = np.asarray(seen.sum(axis=0)).ravel()
        popularity = np.asarray(popularity).astype(np.int64)
        save_npy(folder, POPULARITY, popularity, arrays)
        save_npy(folder, POPULARITY_ORDER, popularity_order(popularity), arrays)
        try:  # .npy string arrays, so that servers map them (format 2)
            save_npy(folder, USER_IDS, id_array(user_ids), arrays)
            save_npy(folder, ITEM_IDS, id_array(item_ids), arrays)
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
            "seen": {
                "shape": [n_users, n_items],
                "nnz": int(len(seen_indices)),
                "files": {"indptr": SEEN_INDPTR, "indices": SEEN_INDICES},
            },
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
        # the reader of the finished artifact rebuilds the served vectors; the index is not built yet
        # (its entry is a placeholder, replaced in step 5), so the draft names a flat one
        draft = {**manifest, "index": {"kind": "flat", "file": INDEX_FILE, "params": {}}}
        artifact = Artifact(folder, Manifest.from_json(plain_json(draft), source=f"{folder / MANIFEST} (draft)"))
        user_vectors, item_vectors = artifact.user_vectors(), artifact.item_vectors()
        ref_users, ref_items = reference_vectors(model)
        # every user where brute-force ranking is affordable, else the sample
        ranked_users = np.arange(n_users) if n_users * n_items <= FULL_RANKING_LIMIT else sample
        manifest["fidelity"] = fidelity(
            user_vectors, item_vectors, ref_users, ref_items, seen, ranked_users, k, options.values
        )
        known = None if heldout is None else (known_for_heldout if known_for_heldout is not None else seen)
        if heldout is not None:
            _, served = topk_by_scores(
                user_vectors[ranked_users], item_vectors, min(k, n_items), exclude=known[ranked_users]
            )
            manifest["quality"] = {
                "split": "test",
                "known_excluded": "train" if known_for_heldout is None else "train + valid",
                "exact": recall_ndcg_at_k(served, heldout[ranked_users], min(k, n_items)),
            }
        if output_choice is not None:
            if heldout is not None:
                output_choice = lightgcn_output_quality(model, output_choice, ranked_users, heldout, known, k)
            manifest["lightgcn_output"] = output_choice
            log.info(
                "export: LightGCN serves %s (option %s; %s)",
                output_choice["what"],
                output_choice["option"],
                output_choice["reason"],
            )
        stages.done()

        # 4. ONNX ---------------------------------------------------------------------------------
        stages("onnx")
        manifest["onnx"] = write_onnx(
            folder,
            packed,
            vectors_spec,
            user_vectors,
            item_vectors,
            ref_users,
            ref_items,
            sample,
            k,
            options,
            heldout,
            known,
        )
        stages.done()

        # 5. faiss ---------------------------------------------------------------------------------
        stages("index")
        manifest["index"] = write_index(
            folder, item_vectors, user_vectors, artifact.served_item_table(), sample, k, options, arrays, heldout, known
        )
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
        manifest["files"] = sha256_entries(folder)
        manifest["bytes"] = bytes_by_component(Manifest.from_json(plain_json(manifest)))
        write_manifest(folder, Manifest.from_json(plain_json(manifest)))
        verify_artifact(folder)
        stages.done()
    finally:
        stages.close()


def _versions() -> dict[str, str]:
    import faiss
    import onnx
    import onnxruntime
    import scipy

    return {
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "faiss": faiss.__version__,
    }


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
    return export_model(
        model,
        out,
        user_ids=list(dataset.user_ids),
        item_ids=list(dataset.item_ids),
        seen=seen,
        popularity=popularity,
        heldout=heldout,
        known_for_heldout=known,
        training=training,
        options=options,
    )


def _split(dataset, name: str) -> sp.csr_matrix | None:
    """A split of a ``train.data.Dataset`` as CSR, or ``None`` when it is empty (nothing to score)."""
    matrix = dataset.csr(name)
    return None if matrix.nnz == 0 else sp.csr_matrix(matrix)
