"""Run folders: atomic writes of checkpoints and metrics, and pickle-free loading.

A run folder holds::

    config.json           the resolved TrainConfig
    metrics.json          valid/test metrics and costs (written at the end)
    checkpoint.safetensors  the latest state, for --resume (model, optimizer, sparsifier, counters)
    best.safetensors      the best model by valid NDCG@K, for export
    data/                 the dataset with its split and id maps (train.data.Dataset.save)

The file format is :mod:`common.checkpoint` (safetensors arrays + JSON, readable without torch);
this module converts torch tensors to and from it. Nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.checkpoint import FORMAT_VERSION, SUFFIX, CheckpointError, read_checkpoint, write_checkpoint

CHECKPOINT = "checkpoint" + SUFFIX
BEST = "best" + SUFFIX
__all__ = ["BEST", "CHECKPOINT", "FORMAT_VERSION", "CheckpointError", "load_state", "load_trained", "save_state"]


def _tree_map(node: Any, leaf_type: type, fn) -> Any:
    if isinstance(node, leaf_type):
        return fn(node)
    if isinstance(node, dict):
        return {k: _tree_map(v, leaf_type, fn) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_tree_map(v, leaf_type, fn) for v in node)
    return node


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write a nested state whose tensors may be torch tensors (moved to CPU) atomically."""
    write_checkpoint(path, _tree_map(state, torch.Tensor, lambda t: t.detach().cpu().contiguous().numpy()))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint; its arrays come back as CPU torch tensors (a clear error names the file)."""
    state = read_checkpoint(path)
    return _tree_map(state, np.ndarray, lambda a: torch.from_numpy(np.array(a)))


def load_trained(run_dir: str | Path, device: str = "cpu"):
    """Rebuild the best model of a finished run.

    Returns:
        ``(model, dataset, config, metrics)``: the model in eval mode with its masks applied,
        the dataset with its split and id maps, the ``TrainConfig`` and the metrics dict
        (empty if the run has not finished).
    """
    from .config import TrainConfig
    from .data import Dataset
    from .models import build_model

    run_dir = Path(run_dir)
    best = load_state(run_dir / BEST)
    config = TrainConfig.from_dict(json.loads(best["config"]))
    dataset = Dataset.load(run_dir / "data")
    model = build_model(
        best["model_kind"],
        dataset.n_users,
        dataset.n_items,
        int(best["dim"]),
        int(best["n_layers"]),
        dataset.train[0],
        dataset.train[1],
        config.model.init_std,
        mask_output=config.model.mask_output,
    )
    missing, unexpected = model.load_state_dict(best["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{run_dir / BEST}: state does not fit the model (missing {missing}, unexpected {unexpected})"
        )
    for table in model.sparse_tables().values():
        table.apply_mask_()
    model.to(device).eval()
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return model, dataset, config, metrics
