"""The artifact verifier's file checks: checksums and sizes, array dtypes and shapes, the shapes the
layout implies, the popularity order, the sparse index's structure and the ONNX graphs' inputs.

:func:`export.artifact.verify_artifact` runs them (and opens the item index); call that, not these::

    from export.artifact import verify_artifact
    manifest = verify_artifact("artifacts/mf", deep=True)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.io import sha256_file

from .manifest import MANIFEST, ArtifactError, Manifest


def check_files(folder: Path, manifest: Manifest) -> None:
    """Every listed file exists with the recorded size and sha256."""
    if not manifest.files:
        raise ArtifactError(f"{folder / MANIFEST}: field 'files' lists no files")
    for name, entry in sorted(manifest.files.items()):
        target = folder / name
        if not target.is_file():
            raise ArtifactError(f"{target}: missing (listed in {MANIFEST})")
        size = target.stat().st_size
        if size != entry.bytes:
            what = "truncated" if size < entry.bytes else "wrong size"
            raise ArtifactError(f"{target}: {what}: {size} bytes, manifest says {entry.bytes}")
        if sha256_file(target) != entry.sha256:
            raise ArtifactError(f"{target}: sha256 mismatch (the file was altered after export)")
    referenced = set(manifest.arrays) | manifest.referenced_files()
    unlisted = sorted(name for name in referenced if name not in manifest.files)
    if unlisted:
        raise ArtifactError(f"{folder / MANIFEST}: file(s) {', '.join(unlisted)} used but not checksummed in 'files'")


def check_arrays(folder: Path, manifest: Manifest) -> None:
    """Recorded dtype and shape of every ``.npy``, and the shapes the layout implies."""
    arrays = manifest.arrays
    for name, entry in sorted(arrays.items()):
        target = folder / name
        try:
            array = np.load(target, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # bad header, truncated data
            raise ArtifactError(f"{target}: cannot be read as .npy ({exc})") from exc
        if tuple(array.shape) != entry.shape or str(array.dtype) != entry.dtype:
            raise ArtifactError(
                f"{target}: shape {list(array.shape)} dtype {array.dtype}, "
                f"manifest says {list(entry.shape)} {entry.dtype}"
            )

    def shape(name: str) -> list[int]:
        if name not in arrays:
            raise ArtifactError(f"{folder / MANIFEST}: array {name} is not listed in 'arrays'")
        return list(arrays[name].shape)

    def expect(name: str, wanted: list[int]) -> None:
        if shape(name) != wanted:
            raise ArtifactError(f"{folder / name}: shape {shape(name)}, expected {wanted}")

    n_users, n_items = manifest.n_users, manifest.n_items
    for table, entry in manifest.tables.items():
        n_rows, n_cols = entry.shape
        files = entry.files
        expect(files["values"], [entry.nnz])
        if entry.has_scale:
            expect(files["scale"], [n_rows])
        if entry.layout == "csr":
            expect(files["indptr"], [n_rows + 1])
            expect(files["indices"], [entry.nnz])
            last = int(np.load(folder / files["indptr"], mmap_mode="r")[-1])
            if last != entry.nnz:
                raise ArtifactError(f"{folder / files['indptr']}: last row pointer {last} != nnz {entry.nnz}")
        else:
            expect(files["lengths"], [n_rows])
            lengths = np.load(folder / files["lengths"], mmap_mode="r")
            if not np.issubdtype(lengths.dtype, np.integer):
                raise ArtifactError(f"{folder / files['lengths']}: dtype {lengths.dtype}, expected an unsigned integer")
            lengths = np.asarray(lengths, dtype=np.int64)
            if n_rows and (lengths.min() < 0 or lengths.max() > n_cols):
                raise ArtifactError(f"{folder / files['lengths']}: row lengths outside [0, {n_cols}]")
            if int(lengths.sum()) != entry.nnz:
                raise ArtifactError(
                    f"{folder / files['lengths']}: row lengths sum to {int(lengths.sum())} != nnz {entry.nnz}"
                )
    seen = manifest.seen
    expect(seen.files["indptr"], [n_users + 1])
    expect(seen.files["indices"], [seen.nnz])
    expect(manifest.popularity.file, [n_items])
    if manifest.popularity.order is not None:
        _check_popularity_order(folder, manifest, expect)
    for side, name, count in (("users", manifest.ids.users, n_users), ("items", manifest.ids.items, n_items)):
        if name.endswith(".npy"):
            expect(name, [count])
            if np.dtype(arrays[name].dtype).kind != "U":
                raise ArtifactError(f"{folder / name}: dtype {arrays[name].dtype}, expected a unicode string array")
            continue
        if manifest.format_version >= 2:
            raise ArtifactError(f"{folder / MANIFEST}: format 2 keeps the {side} ids in a .npy file, not {name}")
        try:
            ids = json.loads((folder / name).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{folder / name}: not valid JSON ({exc})") from exc
        if not isinstance(ids, list) or len(ids) != count:
            raise ArtifactError(f"{folder / name}: expected a list of {count} ids")
    if manifest.index.kind == "sparse":
        _check_sparse_index(folder, manifest, expect)


def _check_popularity_order(folder: Path, manifest: Manifest, expect) -> None:
    """The stored popularity order is a permutation of the items, counts non-increasing along it."""
    name, n_items = manifest.popularity.order, manifest.n_items
    expect(name, [n_items])
    order = np.load(folder / name, mmap_mode="r", allow_pickle=False)
    if not np.issubdtype(order.dtype, np.integer):
        raise ArtifactError(f"{folder / name}: dtype {order.dtype}, expected integers")
    if n_items == 0:
        return
    if int(order.min()) < 0 or int(order.max()) >= n_items:
        raise ArtifactError(f"{folder / name}: item rows outside [0, {n_items})")
    hit = np.zeros(n_items, dtype=bool)
    hit[order] = True
    if not hit.all():
        raise ArtifactError(f"{folder / name}: not a permutation of the {n_items} items")
    counts = np.load(folder / manifest.popularity.file, mmap_mode="r", allow_pickle=False)[order]
    if (np.diff(counts) > 0).any():
        raise ArtifactError(f"{folder / name}: counts along the order are not non-increasing")


def _check_sparse_index(folder: Path, manifest: Manifest, expect) -> None:
    """Shapes and structure of a ``sparse`` index's arrays (their checksums are checked with every file)."""
    entry = manifest.index
    n_items, dim = manifest.index_items, manifest.dim
    files, nnz = entry.files, entry.nnz
    expect(files["values"], [nnz])
    if entry.layout == "prefix":
        expect(files["lengths"], [n_items])
        lengths = np.asarray(np.load(folder / files["lengths"], mmap_mode="r"), dtype=np.int64)
        if n_items and (lengths.min() < 0 or lengths.max() > dim):
            raise ArtifactError(f"{folder / files['lengths']}: prefix lengths outside [0, {dim}]")
        if (np.diff(lengths) < 0).any():
            raise ArtifactError(
                f"{folder / files['lengths']}: prefix lengths are not sorted (the item order of "
                f"the id map must be by length)"
            )
        if int(lengths.sum()) != nnz:
            raise ArtifactError(f"{folder / files['lengths']}: lengths sum to {int(lengths.sum())} != nnz {nnz}")
    elif entry.layout == "gaps":  # every list decoded once: the search kernel reads without bounds checks
        from .gap_postings import validate
        from .sparse_index import read_arrays

        expect(files["indptr"], [dim + 1])
        expect(files["bitptr"], [dim + 1])
        try:
            validate(read_arrays(folder, files, mmap=True), dim, n_items)
        except ValueError as exc:
            raise ArtifactError(f"{folder / files['words']}: {exc}") from exc
    else:
        expect(files["indptr"], [dim + 1])
        expect(files["indices"], [nnz])
        indptr = np.asarray(np.load(folder / files["indptr"], mmap_mode="r"), dtype=np.int64)
        if indptr[0] != 0 or indptr[-1] != nnz or (np.diff(indptr) < 0).any():
            raise ArtifactError(f"{folder / files['indptr']}: not row pointers of {nnz} entries")
        indices = np.load(folder / files["indices"], mmap_mode="r")
        if nnz and (int(indices.min()) < 0 or int(indices.max()) >= n_items):
            raise ArtifactError(f"{folder / files['indices']}: item ids outside [0, {n_items})")


def check_onnx(folder: Path, manifest: Manifest) -> None:
    """Each ONNX graph parses and has the inputs and outputs the manifest promises."""
    import onnx

    for graph_entry in manifest.onnx.values():
        try:
            graph = onnx.load(str(folder / graph_entry.file)).graph
        except Exception as exc:
            raise ArtifactError(f"{folder / graph_entry.file}: cannot be read as ONNX ({exc})") from exc
        wanted_in = set(graph_entry.inputs)
        got_in = {i.name for i in graph.input}
        if not wanted_in <= got_in:
            raise ArtifactError(f"{folder / graph_entry.file}: inputs {sorted(got_in)}, expected {sorted(wanted_in)}")
