"""Split a finished artifact into S item-disjoint shard parts, each its own verified artifact.

    python -m export runs/mf --out artifacts/mf --shards 2        # export, then split
    python -m export.shards artifacts/mf --shards 2               # split an existing artifact

Writes ``<artifact>/shards/part-<i>-of-<S>/`` for i in 0..S-1. Part i serves the contiguous item
rows ``[start_i, stop_i)`` (sizes differ by at most one): its item index holds only those items
(ids ``0..stop_i-start_i``), built from the parent's served item vectors (faiss kinds, same kind
and parameters) or cut from the parent's ``sparse`` index arrays (prefix rows stay length-ordered;
postings keep their columns). Every other file (ids, seen items, popularity, tables, ONNX graphs)
is the parent's, hard-linked where the file system allows, so a part is a complete artifact: a
shard service reads the whole catalogue's ids, seen items and popularity (a user's seen items
are filtered by the shard itself, which over-fetches k + n_seen from its own index) and answers
with catalogue item ids. The part's ``manifest.json`` has every file's sha256 (the new index
files' own), and ``"shard": {"index", "count", "start", "stop", "parent_manifest_sha256"}``;
`export.artifact.verify_artifact` checks a part like any artifact, its index against
``stop - start`` items.

A router (serving.router) merges the parts' top-k into the unsharded answer: exact for ``flat``
and ``sparse`` indexes; approximate kinds (hnsw, ivf, ...) search each part approximately.
The ONNX graphs are the parent's (they score the whole catalogue) and are not what a part serves.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from common.io import atomic_write_json, fsync_dir, replace_folder, sha256_file

from .artifact import MANIFEST, ArtifactError, index_files, load_artifact

SHARDS_DIR = "shards"


def part_name(index: int, count: int) -> str:
    return f"part-{index}-of-{count}"


def shard_paths(artifact: str | Path, count: int) -> list[Path]:
    """The folders of the ``count`` parts of ``artifact`` (whether written or not)."""
    return [Path(artifact) / SHARDS_DIR / part_name(i, count) for i in range(count)]


def shard_bounds(n_items: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous ``[start, stop)`` item ranges covering ``n_items`` (sizes differ by <= 1)."""
    if count < 1 or count > max(n_items, 1):
        raise ValueError(f"--shards must be in [1, {n_items}] for {n_items} items, got {count}")
    edges = np.linspace(0, n_items, count + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def _sub_index(art: Any, start: int, stop: int, folder: Path) -> tuple[dict[str, Any], dict[str, dict]]:
    """Write the part's index into ``folder``; return its manifest index entry and its arrays' entries."""
    entry = copy.deepcopy(art.manifest["index"])
    for key in [k for k in entry if k.startswith(("recall@", "tie_aware_recall@"))]:
        del entry[key]  # measured on the whole catalogue; a part's recall is not measured
    arrays: dict[str, dict] = {}
    if entry["kind"] == "sparse":
        from .sparse_index import SparseIndex, read_arrays

        parent = read_arrays(art.path, entry["files"], mmap=True)
        if entry["layout"] == "prefix":
            lengths = np.asarray(parent["lengths"])
            offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
            index = SparseIndex.from_prefix(lengths[start:stop], np.asarray(parent["values"][offsets[start]: offsets[stop]]),
                                            art.dim, round_to=int(entry["params"].get("round_to", 1)),
                                            threaded=bool(entry["params"].get("threaded", False)))
        else:
            postings = sp.csr_matrix((np.asarray(parent["values"]), np.asarray(parent["indices"]),
                                      np.asarray(parent["indptr"])), shape=(art.dim, art.n_items))
            index = SparseIndex.from_csr(postings[:, start:stop].transpose())
        files = index.save(folder)
        entry["files"] = files
        entry["nnz"] = int(index.nnz)
        entry["bytes"] = int(sum((folder / name).stat().st_size for name in files.values()))
        for role, name in files.items():
            array = np.load(folder / name, mmap_mode="r", allow_pickle=False)
            arrays[name] = {"shape": list(array.shape), "dtype": str(array.dtype)}
    else:
        from .index import ItemIndex

        params = {k: v for k, v in entry["params"].items()}
        vectors = art.item_vectors()[start:stop]
        index = ItemIndex.build(entry["kind"], np.ascontiguousarray(vectors), **params)
        index.save(folder / entry["file"])
    return entry, arrays


def split_artifact(artifact: str | Path, count: int, overwrite: bool = True, progress: bool = True) -> list[Path]:
    """Write the ``count`` shard parts of a verified artifact; return their folders."""
    artifact = Path(artifact)
    art = load_artifact(artifact, verify=True)
    if "shard" in art.manifest:
        raise ArtifactError(f"{artifact}: is itself a shard part; split the whole artifact")
    parent_files = art.manifest["files"]
    skip = set(index_files(art.manifest["index"]))
    parent_sha = sha256_file(artifact / MANIFEST)
    out = []
    (artifact / SHARDS_DIR).mkdir(exist_ok=True)
    for i, (start, stop) in enumerate(shard_bounds(art.n_items, count)):
        target = artifact / SHARDS_DIR / part_name(i, count)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target}: already exists (overwrite=False)")
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            manifest = copy.deepcopy(art.manifest)
            for name in parent_files:
                if name not in skip:
                    (staging / name).parent.mkdir(parents=True, exist_ok=True)
                    _link_or_copy(artifact / name, staging / name)
            for name in skip:
                manifest["files"].pop(name, None)
                manifest["arrays"].pop(name, None)
            entry, arrays = _sub_index(art, start, stop, staging)
            manifest["index"] = entry
            manifest["arrays"].update(arrays)
            for name in index_files(entry):
                manifest["files"][name] = {"sha256": sha256_file(staging / name),
                                           "bytes": (staging / name).stat().st_size}
            manifest["shard"] = {"index": i, "count": count, "start": start, "stop": stop,
                                 "parent_manifest_sha256": parent_sha}
            atomic_write_json(staging / MANIFEST, manifest)
            fsync_dir(staging)
            load_artifact(staging, verify=True)  # a part is refused here, not by its server
            replace_folder(staging, target, overwrite=overwrite)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if progress:
            print(f"shard {i + 1}/{count}: items [{start}, {stop}) -> {target}", file=sys.stderr, flush=True)
        out.append(target)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path, help="artifact folder written by python -m export")
    parser.add_argument("--shards", type=int, required=True, help="number of item-disjoint parts")
    args = parser.parse_args(argv)
    try:
        parts = split_artifact(args.artifact, args.shards)
    except (ArtifactError, ValueError, FileExistsError) as exc:
        print(f"export.shards: FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps([str(p) for p in parts]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
