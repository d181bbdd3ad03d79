"""Atomic file writes and sha256: the one home of these helpers for every stage.

A crash never leaves a half-written file: bytes go to a temp file in the same folder, are
flushed to disk, then ``os.replace`` puts them in place in one step::

    from common.io import atomic_write_json, sha256_file
    atomic_write_json("runs/x/metrics.json", {"ndcg@20": 0.1})
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries to disk (after creating or renaming files in it); best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; these are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Pretty, key-sorted JSON with a final newline, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def replace_folder(staging: str | Path, target: str | Path, overwrite: bool = True) -> None:
    """Move a fully written ``staging`` folder to ``target`` in one rename.

    An existing ``target`` is renamed aside first and removed after the move (restored if the
    move fails); with ``overwrite=False`` it is refused with ``FileExistsError`` instead.
    """
    staging, target = Path(staging), Path(target)
    old = None
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target}: already exists; not replacing it")
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
