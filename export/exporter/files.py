"""Writing an artifact's files: ``.npy`` arrays (no pickle, fsynced), plain JSON values, the sha256 list of the
manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.io import sha256_file

from ..artifact import MANIFEST, MANIFEST_SHA256


def save_npy(folder: Path, name: str, array: np.ndarray, arrays: dict[str, Any]) -> None:
    """Write one ``.npy`` (no pickle, fsynced) and record its shape and dtype."""
    array = np.ascontiguousarray(array)
    with open(folder / name, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    arrays[name] = {"shape": list(array.shape), "dtype": str(array.dtype)}


def plain_json(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays, and paths, turned into plain JSON values (what
    ``json.load`` of its text would give), for :meth:`export.manifest.Manifest.from_json`."""
    return json.loads(json.dumps(obj, default=_json_default))


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
        if path.is_file() and path.name not in (MANIFEST, MANIFEST_SHA256):
            name = path.relative_to(folder).as_posix()
            entries[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return entries
