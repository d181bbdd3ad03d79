"""Writing an artifact's files: ``.npy`` arrays (no pickle, fsynced), JSON, the sha256 list of the manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.io import sha256_file

from ..artifact import MANIFEST


def save_npy(folder: Path, name: str, array: np.ndarray, arrays: dict[str, Any]) -> None:
    """Write one ``.npy`` (no pickle, fsynced) and record its shape and dtype."""
    array = np.ascontiguousarray(array)
    with open(folder / name, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    arrays[name] = {"shape": list(array.shape), "dtype": str(array.dtype)}


def save_json(path: Path, obj: Any) -> None:
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


def sha256_entries(folder: Path) -> dict[str, dict[str, Any]]:

    entries = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            name = path.relative_to(folder).as_posix()
            entries[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return entries

