"""export: the `sparse` index in the artifact (round trip, tamper refusal, auto choice) and LightGCN's
served-vector choices (a) propagated, (b) masked at serving, (c) trained with mask_output."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from export.artifact import ArtifactError, load_artifact, sha256_file, verify_artifact
from export.exporter import ExportError, ExportOptions
from export.sparse_index import SparseIndex
from export_models import N_ITEMS, N_USERS, prefix_model, sparse_model
from export_models import export_tiny as export
from manifest_edits import rewrite_manifest

torch.set_num_threads(1)


def heldout_for(seen: sp.csr_matrix, seed: int = 0) -> sp.csr_matrix:
    """Test positives: a few unseen items per user."""
    rng = np.random.default_rng(seed)
    dense = (rng.random(seen.shape) < 0.05) & (seen.toarray() == 0)
    dense[np.arange(N_USERS), rng.integers(0, N_ITEMS, N_USERS)] |= seen.toarray()[np.arange(N_USERS), 0] == 0
    return sp.csr_matrix(dense.astype(np.float32))


def order_of(artifact) -> np.ndarray:
    return np.array([int(item[1:]) for item in artifact.item_ids])


def brute_force_equal(artifact, k: int = 20) -> None:
    """The artifact's index equals exact search over its zero-filled item vectors."""
    users, items = np.asarray(artifact.user_vectors()), np.asarray(artifact.item_vectors())
    scores, ids = artifact.load_index().search(users, k)
    exact = users @ items.T
    want = -np.sort(-exact, axis=1)[:, :k]
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(exact, ids, axis=1), want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def sparse_artifacts(tmp_path_factory):
    """MF with prefix masks and with random masks, each exported with --index sparse (random masks: the
    default gaps layout, and the older postings layout asked for by name)."""
    root = tmp_path_factory.mktemp("sparse-export")
    prefix, prefix_seen = prefix_model("mf", seed=2)
    random, random_seen = sparse_model("mf", seed=3)
    return {
        "prefix": (prefix, prefix_seen, export(prefix, prefix_seen, root / "prefix", index="sparse")),
        "gaps": (random, random_seen, export(random, random_seen, root / "gaps", index="sparse")),
        "postings": (
            random,
            random_seen,
            export(random, random_seen, root / "postings", index="sparse", index_params={"layout": "postings"}),
        ),
    }


@pytest.mark.parametrize("layout", ["prefix", "gaps", "postings"])
def test_sparse_index_round_trip(sparse_artifacts, layout):
    model, seen, out = sparse_artifacts[layout]
    artifact = load_artifact(out)
    entry = artifact.manifest.index
    assert entry.kind == "sparse" and entry.layout == layout and entry.file is None
    roles = {
        "prefix": {"lengths", "values"},
        "postings": {"indptr", "indices", "values"},
        "gaps": {"indptr", "bitptr", "widths", "words", "values"},
    }[layout]
    assert set(entry.files) == roles and not (out / "items.faiss").exists()
    for name in entry.files.values():  # checksummed and shaped like every other file
        assert name in artifact.manifest.files and name in artifact.manifest.arrays
    assert artifact.manifest.bytes["index"] == sum((out / n).stat().st_size for n in entry.files.values())
    order = order_of(artifact)
    item_mask = model.item_embedding.mask.numpy()[order]
    assert entry.nnz == int(item_mask.sum())
    # about 4 bytes per non-zero (prefix: + the zero stored for each empty row; postings: + int32 index;
    # gaps: + a few bits of id gap, its blocks' widths and two [dim + 1] int64 pointers)
    per_nnz = entry.bytes / entry.nnz
    assert {"prefix": 4.0 <= per_nnz < 4.3, "postings": 8.0 <= per_nnz < 8.3, "gaps": 4.0 < per_nnz < 6.0}[layout]
    if layout == "gaps":  # the payload (index bytes less the .npy headers) is what the index holds
        assert loaded_bytes(artifact) == artifact.load_index().nbytes
    loaded = artifact.load_index()
    assert isinstance(loaded, SparseIndex) and loaded.describe()["nnz"] == entry.nnz
    brute_force_equal(artifact)
    assert entry.extra["tie_aware_recall@20_vs_flat"] == 1.0
    verify_artifact(out, deep=True)
    summary = artifact.summary()["index"]
    assert (summary["kind"], summary["layout"], summary["nnz"]) == ("sparse", layout, entry.nnz)


def loaded_bytes(artifact) -> int:
    """Bytes of the index arrays as read (no .npy headers)."""
    return sum(np.load(artifact.path / name).nbytes for name in artifact.manifest.index.files.values())


@pytest.fixture
def copy_of(sparse_artifacts, tmp_path):
    def make(layout: str) -> Path:
        target = tmp_path / layout
        shutil.copytree(sparse_artifacts[layout][2], target)
        return target

    return make


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _resign(folder: Path, name: str, array: np.ndarray) -> None:
    """Replace one array and re-sign it in the manifest, as a careful forger would."""
    target = folder / name
    np.save(target, array, allow_pickle=False)
    rewrite_manifest(
        folder,
        lambda manifest: manifest["files"].update(
            {name: {"sha256": sha256_file(target), "bytes": target.stat().st_size}}
        ),
    )


@pytest.mark.parametrize(
    "layout, role",
    [
        ("prefix", "lengths"),
        ("prefix", "values"),
        ("postings", "indptr"),
        ("postings", "indices"),
        ("postings", "values"),
        ("gaps", "indptr"),
        ("gaps", "bitptr"),
        ("gaps", "widths"),
        ("gaps", "words"),
        ("gaps", "values"),
    ],
)
def test_tampered_sparse_index_files_are_refused(copy_of, layout, role):
    folder = copy_of(layout)
    name = f"items.sparse.{role}.npy"
    _flip_byte(folder / name)
    with pytest.raises(ArtifactError, match="sha256") as error:
        load_artifact(folder)
    assert name in str(error.value)
    (folder / name).unlink()
    with pytest.raises(ArtifactError, match="missing") as error:
        load_artifact(folder)
    assert name in str(error.value)


def test_resigned_but_inconsistent_sparse_arrays_are_refused(copy_of):
    folder = copy_of("prefix")
    lengths = np.load(folder / "items.sparse.lengths.npy")
    shuffled = lengths[::-1].copy()  # same sum, not in the id map's by-length order
    _resign(folder, "items.sparse.lengths.npy", shuffled)
    with pytest.raises(ArtifactError, match="not sorted") as error:
        load_artifact(folder)
    assert "items.sparse.lengths.npy" in str(error.value)
    more = lengths.copy()
    more[-1] = max(0, int(more[-1]) - 1)
    _resign(folder, "items.sparse.lengths.npy", more)
    with pytest.raises(ArtifactError, match="sum to"):
        load_artifact(folder)
    _resign(folder, "items.sparse.lengths.npy", lengths)
    load_artifact(folder)  # restored: accepted again

    folder = copy_of("postings")
    indices = np.load(folder / "items.sparse.indices.npy")
    bad = indices.copy()
    bad[0] = N_ITEMS
    _resign(folder, "items.sparse.indices.npy", bad)
    with pytest.raises(ArtifactError, match="outside"):
        load_artifact(folder)
    _resign(folder, "items.sparse.indices.npy", indices)

    gaps = copy_of("gaps")  # a re-signed stream must still decode: the kernel reads without bounds checks
    words = np.load(gaps / "items.sparse.words.npy")
    bad = words.copy()
    bad[:-1] = np.iinfo(np.uint64).max  # every gap as wide as its block allows: ids run past n_items
    _resign(gaps, "items.sparse.words.npy", bad)
    with pytest.raises(ArtifactError, match="does not decode"):
        load_artifact(gaps)
    _resign(gaps, "items.sparse.words.npy", words[:-1].copy())  # the spare word gone
    with pytest.raises(ArtifactError, match="words"):
        load_artifact(gaps)
    _resign(gaps, "items.sparse.words.npy", words)
    load_artifact(gaps)  # restored: accepted again
    rewrite_manifest(folder, lambda manifest: manifest["index"].update(layout="hash"))
    with pytest.raises(ArtifactError, match="index.layout' is 'hash'"):
        load_artifact(folder)


def test_auto_times_both_and_records_the_choice(tmp_path):
    model, seen = sparse_model("mf", density=0.2, seed=5)
    artifact = load_artifact(export(model, seen, tmp_path / "auto"))  # index auto: the default
    entry = artifact.manifest.index
    assert entry.kind in ("sparse", "flat") and entry.auto["chosen"] == entry.kind
    timing = entry.auto["timing_ms_per_query"]
    assert set(timing) == {"sparse", "flat"}
    assert all(value > 0 for figures in timing.values() for value in figures.values())
    assert entry.auto["bytes"]["sparse"] < entry.auto["bytes"]["flat"]
    assert entry.extra["choice"].startswith(f"auto: {entry.kind}")
    brute_force_equal(artifact)
    # a dense model keeps flat, without timing
    dense, dense_seen = sparse_model("mf", density=1.0, seed=5)
    entry = load_artifact(export(dense, dense_seen, tmp_path / "dense")).manifest.index
    assert entry.kind == "flat" and entry.auto is None and "dense" in entry.extra["choice"]


def test_round_to_and_forced_layouts(tmp_path):
    model, seen = prefix_model("mf", seed=6)
    exact = load_artifact(export(model, seen, tmp_path / "r1", index="sparse"))
    rounded = load_artifact(export(model, seen, tmp_path / "r4", index="sparse", index_params={"round_to": 4}))
    assert rounded.manifest.index.params["round_to"] == 4
    assert rounded.load_index().describe()["shards"] < exact.load_index().describe()["shards"]
    assert rounded.manifest.index.bytes >= exact.manifest.index.bytes
    brute_force_equal(rounded)
    postings = load_artifact(export(model, seen, tmp_path / "p", index="sparse", index_params={"layout": "gaps"}))
    assert postings.manifest.index.layout == "gaps" and postings.manifest.item_order == "as trained"
    brute_force_equal(postings)
    postings = load_artifact(export(model, seen, tmp_path / "q", index="sparse", index_params={"layout": "postings"}))
    assert postings.manifest.index.layout == "postings" and postings.manifest.item_order == "as trained"
    brute_force_equal(postings)
    random, random_seen = sparse_model("mf", seed=6)
    with pytest.raises(ExportError, match="not prefixes"):
        export(random, random_seen, tmp_path / "bad", index="sparse", index_params={"layout": "prefix"})
    with pytest.raises(ExportError, match="unknown sparse index parameter"):
        export(random, random_seen, tmp_path / "bad", index="sparse", index_params={"nprobe": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "q", "r1", "r4"]  # nothing half-written


# ---------------------------------------------------------------------------- LightGCN choices
def lightgcn(mask_output: bool = False, seed: int = 7):
    model, seen = prefix_model("lightgcn", density=0.3, seed=seed)
    model.mask_output = mask_output
    return model, seen


def test_lightgcn_default_serves_propagated_and_measures_masked(tmp_path):
    model, seen = lightgcn()
    artifact = load_artifact(export(model, seen, tmp_path / "a", heldout=heldout_for(seen)))
    choice = artifact.manifest.lightgcn_output
    assert (choice["option"], choice["served"]) == ("a", "propagated") and "0.74x" in choice["reason"]
    assert artifact.manifest.index.kind == "flat"  # dense vectors
    for name in ("test_propagated", "test_masked"):
        assert 0.0 <= choice[name]["ndcg@20"] <= 1.0
    assert 0.0 <= choice["overlap@20_masked_vs_propagated"] <= 1.0
    assert choice["test_propagated"]["ndcg@20"] == pytest.approx(artifact.manifest.quality["exact"]["ndcg@20"])
    want_users, _ = (t.detach().numpy() for t in model.final_embeddings())
    np.testing.assert_allclose(artifact.user_vectors(), want_users, atol=1e-6)


def test_lightgcn_masked_at_serving_is_option_b_and_serves_sparse(tmp_path):
    model, seen = lightgcn()
    artifact = load_artifact(
        export(model, seen, tmp_path / "b", heldout=heldout_for(seen), lightgcn_output="masked", index="sparse")
    )
    assert model.mask_output is False  # the caller's model is not changed
    choice = artifact.manifest.lightgcn_output
    assert (choice["option"], choice["served"]) == ("b", "masked")
    assert choice["served_nnz"] == int(model.embedding.mask.sum())
    assert choice["test_masked"]["ndcg@20"] == pytest.approx(artifact.manifest.quality["exact"]["ndcg@20"])
    assert artifact.manifest.vectors.mask_output is True
    order = order_of(artifact)
    mask = model.embedding.mask.numpy()
    users, items = (t.detach().numpy() for t in model.final_embeddings())
    np.testing.assert_allclose(artifact.user_vectors(), users * mask[:N_USERS], atol=1e-6)
    np.testing.assert_allclose(artifact.item_vectors(), (items * mask[N_USERS:])[order], atol=1e-6)
    entry = artifact.manifest.index
    assert (entry.kind, entry.layout) == ("sparse", "prefix")
    assert entry.nnz == int(mask[N_USERS:].sum())
    brute_force_equal(artifact)


def test_lightgcn_trained_with_mask_output_is_option_c(tmp_path):
    model, seen = lightgcn(mask_output=True)
    artifact = load_artifact(export(model, seen, tmp_path / "c", heldout=heldout_for(seen), index="sparse"))
    choice = artifact.manifest.lightgcn_output
    assert (choice["option"], choice["served"], choice["trained_with_mask_output"]) == ("c", "masked", True)
    assert artifact.manifest.fidelity["overlap@20"] == 1.0
    assert artifact.manifest.index.kind == "sparse"
    brute_force_equal(artifact)
    with pytest.raises(ExportError, match="trained with model.mask_output=true"):
        export(model, seen, tmp_path / "refused", lightgcn_output="propagated")
    with pytest.raises(ValueError, match="lightgcn_output"):
        ExportOptions(lightgcn_output="half")


@pytest.mark.parametrize("layout", ["gaps", "postings"])
def test_item_shards_of_a_posting_list_index_keep_its_layout_and_answers(sparse_artifacts, layout, tmp_path):
    """export.shards splits the item catalogue: each part's index keeps the layout and, over its own
    items, answers as brute force does; the parts' scores merged are the whole's."""
    from export.shards import split_artifact

    source = tmp_path / layout
    shutil.copytree(sparse_artifacts[layout][2], source)
    whole = load_artifact(source)
    users = np.asarray(whole.user_vectors())
    want_scores, _ = whole.load_index().search(users, 15)
    merged = []
    for path in split_artifact(source, 3, progress=False):
        part = load_artifact(path)
        assert part.manifest.index.layout == layout
        start, stop = part.manifest.shard.start, part.manifest.shard.stop
        scores, ids = part.load_index(mmap=True).search(users, 15)
        exact = users @ np.asarray(whole.item_vectors())[start:stop].T
        np.testing.assert_allclose(
            np.take_along_axis(exact, np.where(ids >= 0, ids, 0), axis=1)[ids >= 0],
            scores[ids >= 0],
            rtol=1e-5,
            atol=1e-6,
        )
        merged.append(scores)
    best = -np.sort(-np.concatenate(merged, axis=1), axis=1)[:, :15]
    np.testing.assert_allclose(best, want_scores, rtol=1e-5, atol=1e-6)
