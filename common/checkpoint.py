"""Checkpoint files: arrays in safetensors, everything else as JSON in its header; nothing pickled.

A checkpoint is one ``.safetensors`` file (written atomically). Its arrays are the leaves of a
nested state (model weights and masks, optimizer moments, generator state); the rest of the state
(config, counters, histories, optimizer hyper-parameters) is JSON stored in the safetensors header
under ``__metadata__["sparserec"]``, with each array replaced by ``{"__array__": name}``. Reading
needs only numpy (``safetensors.numpy``), so any stage may read a checkpoint without torch::

    from common.checkpoint import read_checkpoint, write_checkpoint
    write_checkpoint("runs/x/best.safetensors", {"epoch": 3, "model": {"w": np.zeros((2, 4))}})
    state = read_checkpoint("runs/x/best.safetensors")   # {"epoch": 3, "model": {"w": array}}

Older sparserec checkpoints (``.pt``, torch's pickle-based format) are refused with an error
naming that format: nothing here unpickles, not even with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from common.io import atomic_write_bytes

FORMAT = "sparserec-checkpoint"
FORMAT_VERSION = 2  # 1 was torch.save (.pt, pickle); 2 is safetensors + JSON
SUFFIX = ".safetensors"
_META_KEY = "sparserec"
_ARRAY, _TUPLE, _INT_KEYS = "__array__", "__tuple__", "__int_keys__"


class CheckpointError(ValueError):
    """A run folder or checkpoint is missing, corrupt or of another format."""


def pack(tree: Any) -> tuple[dict[str, np.ndarray], Any]:
    """Split a nested state into ``({name: array}, json_skeleton)``.

    Leaves may be ``np.ndarray`` (stored as arrays, named by their path), ``None``, bool, int,
    float, str; containers dict (str or int keys), list, tuple. Anything else is a ``TypeError``.
    """
    arrays: dict[str, np.ndarray] = {}

    def visit(node: Any, path: str) -> Any:
        if isinstance(node, np.ndarray):
            if path in arrays:
                raise ValueError(f"two arrays would be stored as {path!r}")
            arrays[path] = node if node.flags.c_contiguous else node.copy(order="C")  # keeps 0-d shapes
            return {_ARRAY: path}
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, np.generic):
            return node.item()
        if isinstance(node, tuple):
            return {_TUPLE: [visit(v, f"{path}/{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [visit(v, f"{path}/{i}") for i, v in enumerate(node)]
        if isinstance(node, dict):
            if all(isinstance(k, str) for k in node):
                reserved = {_ARRAY, _TUPLE, _INT_KEYS} & set(node)
                if reserved:
                    raise ValueError(
                        f"{path or 'state'}: key {sorted(reserved)[0]!r} is reserved by the checkpoint format"
                    )
                return {k: visit(v, f"{path}/{k}" if path else k) for k, v in node.items()}
            if all(isinstance(k, int) and not isinstance(k, bool) for k in node):
                return {_INT_KEYS: [[k, visit(v, f"{path}/{k}")] for k, v in node.items()]}
            raise TypeError(
                f"{path or 'state'}: dict keys must be all str or all int, got {sorted(map(repr, node))[:4]}"
            )
        raise TypeError(f"{path or 'state'}: cannot store a {type(node).__name__} in a checkpoint")

    return arrays, visit(tree, "")


def unpack(skeleton: Any, arrays: dict[str, np.ndarray]) -> Any:
    """Inverse of :func:`pack`."""
    if isinstance(skeleton, list):
        return [unpack(v, arrays) for v in skeleton]
    if isinstance(skeleton, dict):
        if _ARRAY in skeleton:
            name = skeleton[_ARRAY]
            if name not in arrays:
                raise CheckpointError(f"the state refers to an array {name!r} the file does not hold")
            return arrays[name]
        if _TUPLE in skeleton:
            return tuple(unpack(v, arrays) for v in skeleton[_TUPLE])
        if _INT_KEYS in skeleton:
            return {int(k): unpack(v, arrays) for k, v in skeleton[_INT_KEYS]}
        return {k: unpack(v, arrays) for k, v in skeleton.items()}
    return skeleton


def write_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a nested state (numpy leaves, see :func:`pack`) to ``path`` atomically."""
    from safetensors.numpy import save

    arrays, skeleton = pack(state)
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), _META_KEY: json.dumps(skeleton)}
    atomic_write_bytes(path, save(arrays, metadata=header))


def sniff_format(path: str | Path) -> str:
    """What a file holds, by its first bytes: ``safetensors``, ``torch zip``, ``pickle`` or ``unknown``."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header (checked first: the
    # length's low byte may be anything, 0x80 included)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "torch zip"  # torch.save's default since 1.6: a zip holding a pickle
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"  # legacy torch.save or plain pickle
    return "unknown"


def _refuse_old(path: Path, kind: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: a {kind} checkpoint (torch.save / pickle, sparserec checkpoint format 1). This version "
        f"reads only format {FORMAT_VERSION} ({SUFFIX}: safetensors arrays + JSON) and never unpickles; "
        f"retrain the run to get {path.with_suffix(SUFFIX).name}"
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`write_checkpoint`; arrays come back as numpy arrays.

    Raises:
        CheckpointError: the file is missing, truncated, of another format (an old ``.pt`` is
            named as such) or of another format version; the message names the file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        old = path.with_suffix(".pt")
        if path.suffix == SUFFIX and old.exists():
            raise _refuse_old(old, sniff_format(old))
        raise CheckpointError(f"{path}: no such checkpoint")
    kind = sniff_format(path)
    if kind in ("torch zip", "pickle"):
        raise _refuse_old(path, kind)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            header = handle.metadata() or {}
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # truncated or not safetensors at all
        raise CheckpointError(
            f"{path}: cannot be read as a sparserec checkpoint ({exc.__class__.__name__}: {exc})"
        ) from exc
    if header.get("format") != FORMAT or header.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: format {header.get('format')!r} version {header.get('format_version')!r}, "
            f"expected {FORMAT!r} version {FORMAT_VERSION}"
        )
    try:
        skeleton = json.loads(header[_META_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: the header's {_META_KEY!r} entry is missing or not JSON ({exc})") from exc
    state = unpack(skeleton, arrays)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the stored state is a {type(state).__name__}, not a dict")
    return state
