"""The ONNX files of an artifact: user tower and scorer written, checked in onnxruntime against torch;
optionally an int8 scorer. Graphs and sessions come from :mod:`export.to_onnx`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import to_onnx
from ..layout import SCORER, SCORER_INT8, USER_TOWER
from ..quality import overlap_at_k, tie_aware_overlap_at_k
from ..to_sparse import PackedTable, PrefixTable
from .checks import heldout_recall
from .memory import measure_onnx_memory
from .options import TOLERANCE_FP32, ExportError, ExportOptions


def write_onnx(
    folder: Path,
    packed: dict[str, PackedTable | PrefixTable],
    vectors_spec,
    user_vectors,
    item_vectors,
    ref_users,
    ref_items,
    sample,
    k,
    options: ExportOptions,
    heldout=None,
    known=None,
) -> dict[str, Any]:
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
    if options.values == "fp32" and (
        score_err > TOLERANCE_FP32 * max(1.0, float(np.abs(want_scores).max(initial=0))) or id_agreement < 1.0
    ):
        raise ExportError(
            f"{SCORER}: top-{k_eff} differs from torch (score err {score_err:.3g}, id agreement {id_agreement:.4f})"
        )
    info: dict[str, Any] = {
        "opset": to_onnx.OPSET,
        "user_tower": {
            "file": USER_TOWER,
            "inputs": {"user": "int64 [B]"},
            "outputs": {"user_vector": f"float32 [B, {dim}]"},
            **tower_info,
            "layout_reason": reason,
            "holds": (
                "propagated LightGCN user vectors"
                + (" times the base mask (mask_output)" if vectors_spec.get("mask_output") else " (dense)")
            )
            if vectors_spec["source"] == "lightgcn"
            else f"the user table's stored {options.values} values"
            + (
                (
                    " as packed CSR arrays"
                    if user_table.layout == "csr"
                    else " as packed prefix arrays (row pointers and values, no column indices)"
                )
                if layout == "packed"
                else ", dense"
            ),
            "initializer_bytes": to_onnx.initializer_bytes(tower),
            "max_abs_err_vs_torch": err_torch,
            "max_abs_err_vs_artifact": err_artifact,
            "checked_users": len(all_users),
        },
        "scorer": {
            "file": SCORER,
            "inputs": {"user": "int64 [B]", "k": "int64 [1]"},
            "outputs": {"scores": "float32 [B, k]", "items": "int64 [B, k]"},
            "layout": layout,
            "items": "dense [d, n_items] initializer; MatMul then TopK; seen items not excluded",
            "initializer_bytes": to_onnx.initializer_bytes(scorer),
            "max_abs_score_err_vs_torch": score_err,
            f"tie_aware_agreement@{k_eff}_vs_torch": id_agreement,
            "checked_users": len(sample),
        },
    }
    if options.measure_memory:
        info["memory"] = measure_onnx_memory(folder, candidates, layout, dim)
    if options.onnx_int8:
        info["scorer_int8"] = _quantized_scorer(folder, sample, k_eff, onnx_items, onnx_scores, heldout, known)
    return info


def _quantized_scorer(folder: Path, sample, k, exact_items, exact_scores, heldout=None, known=None) -> dict[str, Any]:
    """Write ``scorer.int8.onnx`` and measure how far its top-k moves from the fp32 scorer."""
    to_onnx.quantize_scorer_int8(folder / SCORER, folder / SCORER_INT8)
    session = to_onnx.session(folder / SCORER_INT8)
    scores, items = to_onnx.run_scorer(session, sample, k)
    result = {
        "file": SCORER_INT8,
        "method": "onnxruntime.quantization.quantize_dynamic, MatMul weights QInt8",
        f"overlap@{k}_vs_fp32_scorer": overlap_at_k(items, exact_items),
        "max_abs_score_err_vs_fp32_scorer": float(np.abs(scores - exact_scores).max(initial=0.0)),
        "checked_users": len(sample),
        "file_bytes": (folder / SCORER_INT8).stat().st_size,
    }
    if heldout is not None:  # test recall of both scorers: rank deep enough to drop the known items
        for name, path in (("fp32", folder / SCORER), ("int8", folder / SCORER_INT8)):
            scorer = to_onnx.session(path)
            result[f"test_{name}_scorer"] = heldout_recall(
                lambda depth: to_onnx.run_scorer(scorer, sample, depth)[1], sample, heldout, known, k
            )
    return result
