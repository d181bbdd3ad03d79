"""What an artifact costs: file bytes by component, and the onnxruntime session memory of each user-tower layout."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .. import to_onnx
from ..artifact import Manifest
from ..layout import USER_TOWER


def measure_onnx_memory(folder: Path, candidates: dict[str, Any], chosen: str, dim: int) -> dict[str, Any]:
    """Session RSS delta of the user tower in every possible layout (fresh processes)."""
    feeds = {"user": list(range(min(256, len(candidates["dense"].values))))}
    result: dict[str, Any] = {
        "method": "psutil RSS of a fresh process before/after InferenceSession(...) "
        "(runtime warmed on a trivial graph), then after one run of 256 users"
    }
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


def bytes_by_component(manifest: Manifest) -> dict[str, int]:
    """File bytes of the artifact by what they hold (tables, index, onnx, interactions, ...)."""
    files = manifest.files
    groups = {
        "tables": {name for table in manifest.tables.values() for name in table.files.values()},
        "index": set(manifest.index.file_names()),
        "onnx": {graph.file for graph in manifest.onnx.values()},
        "seen": set(manifest.seen.files.values()),
        "ids": {manifest.ids.users, manifest.ids.items},
        "popularity": {manifest.popularity.file, manifest.popularity.order} - {None},
    }
    out = {"total": manifest.total_bytes}
    out.update({group: sum(files[name].bytes for name in names if name in files) for group, names in groups.items()})
    return out
