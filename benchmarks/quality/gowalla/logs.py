"""What a run's folder says: the validation curve and the training time segments read from its
``train.log``, and the table record of a run (finished or partial).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .spec import Run


def curve_from_log(out: Path) -> list[dict[str, Any]]:
    """Valid NDCG@20 per evaluation from a run's ``train.log`` (its JSON ``eval`` lines)."""
    path = out / "train.log"
    if not path.exists():
        return []
    points: dict[int, dict[str, Any]] = {}
    for line in path.read_text(errors="replace").splitlines():
        start = line.find('{"event": "eval"')
        if start < 0:
            continue
        try:
            record = json.loads(line[start:])
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        points[record["epoch"]] = {
            "epoch": record["epoch"],
            "valid_ndcg@20": record["valid"].get("ndcg@20"),
            "phase": record.get("phase"),
            "exploring": bool(record.get("exploring")),
        }
    return [points[e] for e in sorted(points)]


def segments_from_log(out: Path) -> list[float]:
    """Wall seconds of each training segment, read from ``train.log``: from a segment's ``# <time>
    start|resume:`` header to the last timestamped line before the next header. Counts the
    segments that ended without their driver (machine restarted), which ``wall.json`` misses."""
    path = out / "train.log"
    if not path.exists():
        return []
    segments: list[list[float]] = []
    for line in path.read_text(errors="replace").splitlines():
        header = line.startswith("# ") and (" start: " in line or " resume: " in line)
        stamp = line[2:21] if header else line[:19]
        try:
            when = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            continue
        if header:
            segments.append([when, when])
        elif segments:
            segments[-1][1] = when
    return [round(end - begin, 1) for begin, end in segments]


def record_of(run: Run, state: dict[str, Any], out: Path) -> dict[str, Any]:
    record: dict[str, Any] = {
        "name": run.name,
        "model": run.model,
        "updater": run.updater,
        "density": run.density,
        "seed": run.seed,
        "status": state["status"],
        "method": run.method,
        "mask_output": run.mask_output,
    }
    wall = out / "wall.json"
    recorded = json.loads(wall.read_text())["segments"] if wall.exists() else []
    logged = segments_from_log(out)
    if len(logged) > len(recorded):  # a segment ended with the machine, its driver gone: time it from the log
        record["wall_seconds"], record["wall_from"] = round(sum(logged), 1), "train.log"
    elif recorded:
        record["wall_seconds"] = round(sum(recorded), 1)
    if state["status"] != "done":
        curve = state.get("curve") or []
        record["curve"] = curve
        record["epoch_reached"] = curve[-1]["epoch"] if curve else 0
        if "pid" in state:
            record["pid"] = state["pid"]
        return record
    metrics = state["metrics"]
    record.update(
        {
            "dim": metrics["dim"],
            "nnz": metrics["nnz"],
            "n_params_dense": metrics["n_params_dense"],
            "test_ndcg@20": metrics["test"]["ndcg@20"],
            "test_recall@20": metrics["test"]["recall@20"],
            "valid_ndcg@20": metrics["valid"].get("ndcg@20"),
            "valid_recall@20": metrics["valid"].get("recall@20"),
            "best_epoch": metrics["best_epoch"],
            "epochs": metrics["epochs"],
            "train_seconds": metrics["train_seconds"],
            "seconds_per_epoch": metrics["seconds_per_epoch"],
            "peak_rss_mb": metrics["peak_rss_mb"],
            "threads": metrics["threads"],
            "device": metrics.get("device", "cpu"),
            "peak_gpu_mb": metrics.get("peak_gpu_mb"),
            "last_mask_update_step": (metrics.get("mask_history") or [{}])[-1].get("step"),
            "curve": [
                {
                    "epoch": h["epoch"],
                    "valid_ndcg@20": h["valid"].get("ndcg@20"),
                    "phase": h.get("phase"),
                    "exploring": bool(h.get("exploring")),
                }
                for h in metrics["history"]
            ],
        }
    )
    return record
