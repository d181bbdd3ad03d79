"""LightGCN's served vectors: which (propagated, or masked) and what each costs in test quality."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..quality import overlap_at_k, recall_ndcg_at_k, topk_by_scores
from .checks import reference_vectors
from .options import ExportError


def choose_lightgcn_output(model, wanted: str) -> tuple[Any, dict[str, Any] | None]:
    """(model to export, description) for LightGCN's served vectors; other models pass through."""
    if model.kind != "lightgcn":
        return model, None
    trained = bool(model.mask_output)
    if wanted == "auto":
        wanted = "masked" if trained else "propagated"
        reason = (
            "auto: the model was trained with model.mask_output=true, so it serves what it was trained on"
            if trained
            else "auto: masking a model trained without mask_output cost 0.74x test NDCG@20 in "
            "the first measurement (issue 10), so propagated (dense) vectors are served"
        )
    else:
        reason = f"forced by --lightgcn-output {wanted}"
    if wanted == "propagated" and trained:
        raise ExportError(
            "--lightgcn-output propagated: this model was trained with model.mask_output=true; its "
            "unmasked propagated vectors are not what it was trained to score (use auto or masked)"
        )
    option = "c" if trained else ("b" if wanted == "masked" else "a")
    if option == "b":  # the masked forward pass on a copy: every check below compares against it
        model = copy.deepcopy(model)
        model.mask_output = True
        model._cache = None
    names = {
        "a": "propagated vectors (dense)",
        "b": "propagated vectors masked by each row's own mask (at serving)",
        "c": "masked propagated vectors, trained so (model.mask_output=true)",
    }
    return model, {
        "served": wanted,
        "option": option,
        "what": names[option],
        "reason": reason,
        "trained_with_mask_output": trained,
    }


def lightgcn_output_quality(
    model, output_choice: dict[str, Any], users: np.ndarray, heldout, known, k: int
) -> dict[str, Any]:
    """Test Recall/NDCG@k of the propagated and the masked vectors of this model, and their top-k overlap."""
    saved = model.mask_output
    vectors = {}
    try:
        for name, flag in (("propagated", False), ("masked", True)):
            model.mask_output, model._cache = flag, None
            vectors[name] = reference_vectors(model)
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
    out["served_nnz"] = (
        int(model.embedding.mask.sum()) if output_choice["served"] == "masked" else int(model.embedding.weight.numel())
    )
    return out
