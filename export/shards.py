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
with catalogue item ids. The part's ``manifest.json`` (sealed by its own ``manifest.sha256``) has every
file's sha256 (the new index files' own), and ``"shard": {"index", "count", "start", "stop", "parent_manifest_sha256"}``;
`export.artifact.verify_artifact` checks a part like any artifact, its index against
``stop - start`` items.

A router (serving.router) merges the parts' top-k into the unsharded answer: exact for ``flat``
and ``sparse`` indexes; approximate kinds (hnsw, ivf, ...) search each part approximately.
The ONNX graphs are the parent's (they score the whole catalogue) and are not what a part serves.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from common.io import fsync_dir, replace_folder, sha256_file

from .artifact import MANIFEST, ArtifactError, Manifest, load_artifact, write_manifest
from .manifest import shard_bounds  # the parts' item ranges, where the manifest parser checks them

SHARDS_DIR = "shards"


def part_name(index: int, count: int) -> str:
    return f"part-{index}-of-{count}"


def shard_paths(artifact: str | Path, count: int) -> list[Path]:
    """The folders of the ``count`` parts of ``artifact`` (whether written or not)."""
    return [Path(artifact) / SHARDS_DIR / part_name(i, count) for i in range(count)]


def verify_shard_set(artifact: str | Path, count: int) -> list[Manifest]:
    """Check that the ``count`` parts of ``artifact`` belong together; return their manifests.

    Each part's recorded ``shard.index`` and ``shard.count`` must match its folder name, every
    part must name the same parent manifest sha256 (the artifact's own, when its manifest is
    there) and the same catalogue, and the parts' ``[start, stop)`` ranges must tile
    ``[0, n_items)`` exactly once, in order. Raises ArtifactError naming the first part that does
    not fit (the files inside each part are checked by ``verify_artifact``).
    """
    from .artifact import read_manifest

    artifact = Path(artifact)
    parent_manifest = artifact / MANIFEST
    parent_sha = sha256_file(parent_manifest) if parent_manifest.is_file() else None
    manifests: list[Manifest] = []
    for i, part in enumerate(shard_paths(artifact, count)):
        manifest = read_manifest(part)
        shard = manifest.shard
        if shard is None:
            raise ArtifactError(f"{part}: its manifest has no 'shard' entry: not a shard part")
        if (shard.index, shard.count) != (i, count):
            raise ArtifactError(
                f"{part}: its manifest says part {shard.index} of {shard.count}, its folder name "
                f"part {i} of {count} (a part copied over another's name?)"
            )
        sha = shard.parent_manifest_sha256
        if parent_sha is not None and sha != parent_sha:
            raise ArtifactError(
                f"{part}: was split from another export (parent manifest sha256 {sha[:12]}..., "
                f"{parent_manifest} has {parent_sha[:12]}...): re-split with "
                f"`python -m export.shards {artifact} --shards {count}`"
            )
        first = manifests[0] if manifests else None
        if first is not None and sha != first.shard.parent_manifest_sha256:
            raise ArtifactError(
                f"{part}: was split from another export than {shard_paths(artifact, count)[0]} "
                f"(parent manifest sha256 {sha[:12]}... against "
                f"{first.shard.parent_manifest_sha256[:12]}...)"
            )
        if first is not None and manifest.n_items != first.n_items:
            raise ArtifactError(f"{part}: has {manifest.n_items} items, part 0 has {first.n_items}")
        expected_start = manifests[-1].shard.stop if manifests else 0
        if shard.start != expected_start or (i == count - 1 and shard.stop != manifest.n_items):
            raise ArtifactError(
                f"{part}: serves items [{shard.start}, {shard.stop}); the parts must tile "
                f"[0, {manifest.n_items}) in order, and this one should start at {expected_start}"
                + (f" and stop at {manifest.n_items}" if i == count - 1 else "")
            )
        manifests.append(manifest)
    return manifests


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def _sub_index(art: Any, start: int, stop: int, folder: Path) -> tuple[dict[str, Any], dict[str, dict], list[str]]:
    """Write the part's index into ``folder``; return its manifest index entry (JSON), its arrays' entries
    and its file names."""
    parent_index = art.manifest.index
    entry = art.manifest.to_json()["index"]  # the part's entry starts as a copy of the parent's
    for key in [k for k in entry if k.startswith(("recall@", "tie_aware_recall@"))]:
        del entry[key]  # measured on the whole catalogue; a part's recall is not measured
    arrays: dict[str, dict] = {}
    if parent_index.kind == "sparse":
        from .sparse_index import SparseIndex, read_arrays

        parent = read_arrays(art.path, parent_index.files, mmap=True)
        if parent_index.layout == "prefix":
            lengths = np.asarray(parent["lengths"])
            offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
            index = SparseIndex.from_prefix(
                lengths[start:stop],
                np.asarray(parent["values"][offsets[start] : offsets[stop]]),
                art.dim,
                round_to=int(parent_index.params.get("round_to", 1)),
                threaded=bool(parent_index.params.get("threaded", False)),
            )
        else:
            if entry["layout"] == "gaps":
                from .gap_postings import decode

                indptr, indices, values = decode(parent)
            else:
                indptr, indices, values = parent["indptr"], parent["indices"], parent["values"]
            postings = sp.csr_matrix(
                (np.asarray(values), np.asarray(indices), np.asarray(indptr)), shape=(art.dim, art.n_items)
            )
            index = SparseIndex.from_csr(postings[:, start:stop].transpose(), layout=entry["layout"])
        files = index.save(folder)
        names = sorted(files.values())
        entry["files"] = files
        entry["nnz"] = int(index.nnz)
        entry["bytes"] = int(sum((folder / name).stat().st_size for name in files.values()))
        for role, name in files.items():
            array = np.load(folder / name, mmap_mode="r", allow_pickle=False)
            arrays[name] = {"shape": list(array.shape), "dtype": str(array.dtype)}
    else:
        from .index import ItemIndex

        vectors = art.item_vectors()[start:stop]
        index = ItemIndex.build(parent_index.kind, np.ascontiguousarray(vectors), **parent_index.params)
        index.save(folder / parent_index.file)
        names = [parent_index.file]
    return entry, arrays, names


def split_artifact(artifact: str | Path, count: int, overwrite: bool = True, progress: bool = True) -> list[Path]:
    """Write the ``count`` shard parts of a verified artifact; return their folders."""
    artifact = Path(artifact)
    art = load_artifact(artifact, verify=True)
    if art.manifest.shard is not None:
        raise ArtifactError(f"{artifact}: is itself a shard part; split the whole artifact")
    parent_files = art.manifest.files
    skip = set(art.manifest.index.file_names())
    parent_sha = sha256_file(artifact / MANIFEST)
    out = []
    (artifact / SHARDS_DIR).mkdir(exist_ok=True)
    for i, (start, stop) in enumerate(shard_bounds(art.n_items, count)):
        target = artifact / SHARDS_DIR / part_name(i, count)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target}: already exists (overwrite=False)")
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            manifest = art.manifest.to_json()  # the part's manifest: the parent's, edited below
            for name in parent_files:
                if name not in skip:
                    (staging / name).parent.mkdir(parents=True, exist_ok=True)
                    _link_or_copy(artifact / name, staging / name)
            for name in skip:
                manifest["files"].pop(name, None)
                manifest["arrays"].pop(name, None)
            entry, arrays, index_names = _sub_index(art, start, stop, staging)
            manifest["index"] = entry
            manifest["arrays"].update(arrays)
            for name in index_names:
                manifest["files"][name] = {
                    "sha256": sha256_file(staging / name),
                    "bytes": (staging / name).stat().st_size,
                }
            manifest["shard"] = {
                "index": i,
                "count": count,
                "start": start,
                "stop": stop,
                "parent_manifest_sha256": parent_sha,
            }
            write_manifest(staging, Manifest.from_json(manifest, source=f"{target / MANIFEST}"))
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
