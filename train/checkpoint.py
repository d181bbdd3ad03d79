"""Run folders: atomic writes of checkpoints and metrics, and pickle-free loading.

A run folder holds::

    config.json     the resolved TrainConfig
    metrics.json    valid/test metrics and costs (written at the end)
    checkpoint.pt   the latest state, for --resume (model, optimizer, sparsifier, counters)
    best.pt         the best model by valid NDCG@K, for export
    data/           the dataset with its split and id maps (train.data.Dataset.save)

Everything ``.pt`` is loaded with ``torch.load(weights_only=True)``: tensors, numbers, strings.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A run folder or checkpoint is missing, corrupt or of another format."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_pt(path: str | Path) -> dict[str, Any]:
    """Load a ``.pt`` file without pickle; a clear error names the file if it is unreadable."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or holding non-tensor objects
        raise CheckpointError(f"{path}: cannot be read as a sparserec checkpoint ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(obj, dict) or obj.get("format_version") != FORMAT_VERSION:
        version = obj.get("format_version") if isinstance(obj, dict) else None
        raise CheckpointError(f"{path}: unknown checkpoint format version {version!r} (expected {FORMAT_VERSION})")
    return obj


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
    best = load_pt(run_dir / "best.pt")
    config = TrainConfig.from_dict(json.loads(best["config"]))
    dataset = Dataset.load(run_dir / "data")
    model = build_model(
        best["model_kind"], dataset.n_users, dataset.n_items, int(best["dim"]), int(best["n_layers"]),
        dataset.train[0], dataset.train[1], config.model.init_std, mask_output=config.model.mask_output,
    )
    missing, unexpected = model.load_state_dict(best["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{run_dir / 'best.pt'}: state does not fit the model (missing {missing}, unexpected {unexpected})")
    for table in model.sparse_tables().values():
        table.apply_mask_()
    model.to(device).eval()
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return model, dataset, config, metrics
