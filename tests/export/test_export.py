"""export/: packed tables (csr and prefix layouts), artifact round trip, ONNX against torch (verification
and atomic writes: test_export_verify.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from common.propagation import lightgcn_vectors, normalized_adjacency
from export import to_onnx
from export.artifact import FORMAT_VERSION, load_artifact, verify_artifact
from export.exporter import ExportError, ExportOptions
from export.to_sparse import PrefixTable, pack, pack_csr, pack_prefix_table, pack_table, packed_bytes, prefix_bytes
from export_models import DIM, N_ITEMS, N_USERS, interactions, prefix_model, sparse_model
from export_models import export_flat as export
from train.models import normalized_adjacency as torch_side_adjacency

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mf_artifact(tmp_path_factory):
    model, seen = sparse_model("mf")
    out = export(model, seen, tmp_path_factory.mktemp("mf") / "art", onnx_int8=True)
    return model, seen, out


# ---------------------------------------------------------------------------- packing
@pytest.mark.parametrize("value_dtype", ["fp32", "fp16", "int8"])
def test_pack_table_keeps_the_mask_structure(value_dtype):
    rng = np.random.default_rng(1)
    weight = rng.normal(0, 0.1, (30, 16)).astype(np.float32)
    mask = rng.random((30, 16)) < 0.25
    mask[4] = False  # an empty row
    weight[~mask] = 0.0
    weight[mask & (rng.random((30, 16)) < 0.1)] = 0.0  # kept positions that hold zero
    packed = pack_table(weight, mask, value_dtype)
    assert packed.nnz == mask.sum()
    assert packed.indices.dtype == np.uint8 and packed.indptr.dtype == np.uint32
    csr = packed.to_csr()
    assert isinstance(csr, sp.csr_matrix)
    assert not csr.toarray()[~mask].any()  # nothing outside the mask
    structure = sp.csr_matrix((np.ones(packed.nnz), packed.indices, packed.indptr.astype(np.int64)), shape=(30, 16))
    np.testing.assert_array_equal(structure.toarray().astype(bool), mask)
    if value_dtype == "fp32":
        np.testing.assert_array_equal(packed.to_dense(), weight)
    elif value_dtype == "fp16":
        np.testing.assert_allclose(packed.to_dense(), weight, atol=1e-3, rtol=1e-3)
    else:  # symmetric per-row int8: error at most half a step of the row's scale
        step = np.abs(weight).max(axis=1, keepdims=True) / 127
        assert (np.abs(packed.to_dense() - weight) <= step / 2 + 1e-7).all()


def test_narrowest_dtypes():
    wide = pack_table(np.ones((3, 300), np.float32))
    assert wide.indices.dtype == np.uint16 and wide.indptr.dtype == np.uint32
    seen_indptr, seen_indices = pack_csr(sp.random(50, 70_000, density=1e-3, format="csr", random_state=0))
    assert seen_indices.dtype == np.uint32 and seen_indptr.dtype == np.uint32


def _prefix_mask(n_rows: int, dim: int, seed: int = 0) -> np.ndarray:
    lengths = np.random.default_rng(seed).integers(0, dim + 1, n_rows)
    lengths[0], lengths[1] = 0, dim
    return np.arange(dim)[None, :] < lengths[:, None]


@pytest.mark.parametrize("value_dtype", ["fp32", "fp16", "int8"])
def test_prefix_table_equals_csr_of_the_same_mask(value_dtype):
    rng = np.random.default_rng(2)
    mask = _prefix_mask(30, 16)
    weight = rng.normal(0, 0.1, (30, 16)).astype(np.float32) * mask
    weight[5, 0] = 0.0  # a kept zero
    prefix, csr = pack_prefix_table(weight, mask, value_dtype), pack_table(weight, mask, value_dtype)
    assert isinstance(prefix, PrefixTable) and pack(weight, mask, value_dtype).layout == "prefix"
    assert set(prefix.arrays()) == {"lengths", "values"} | ({"scale"} if value_dtype == "int8" else set())
    assert prefix.lengths.dtype == np.uint8 and prefix.nnz == csr.nnz == mask.sum()
    np.testing.assert_array_equal(prefix.values, csr.values)  # same values, same order, same int8 scale
    if value_dtype == "int8":
        np.testing.assert_array_equal(prefix.scale, csr.scale)
    again = prefix.to_packed()
    for role in ("indptr", "indices", "values"):
        np.testing.assert_array_equal(getattr(again, role), getattr(csr, role))
        assert getattr(again, role).dtype == getattr(csr, role).dtype
    np.testing.assert_array_equal(prefix.to_dense(), csr.to_dense())
    np.testing.assert_array_equal(prefix.to_dense_stored()[0], csr.to_dense_stored()[0])
    assert (prefix.to_csr() != csr.to_csr()).nnz == 0 and prefix.to_csr().nnz == csr.nnz
    assert prefix.nbytes == prefix_bytes(30, 16, prefix.nnz, value_dtype)
    assert prefix.nbytes == csr.nbytes - prefix.nnz - 31 * 4 + 30  # no column index, lengths instead of pointers
    assert csr.nbytes == packed_bytes(30, 16, csr.nnz, value_dtype)


def test_prefix_layout_choice_and_refusal():
    rng = np.random.default_rng(3)
    mask = _prefix_mask(20, 300)
    weight = rng.normal(size=(20, 300)).astype(np.float32) * mask
    assert pack_prefix_table(weight, mask).lengths.dtype == np.uint16  # dim > 255
    assert pack(weight, mask, layout="csr").layout == "csr"
    holes = mask.copy()
    holes[7, 0] = False  # row 7 now starts at column 1
    holes[7, 5] = True
    assert pack(weight * holes, holes).layout == "csr"
    with pytest.raises(ValueError, match="row 7"):
        pack(weight * holes, holes, layout="prefix")
    with pytest.raises(ValueError, match="not prefix-shaped"):
        pack_prefix_table(weight * holes, holes)
    assert pack(np.ones((4, 8), np.float32)).layout == "prefix"  # a full mask is a prefix


# ---------------------------------------------------------------------------- round trip
def test_mf_round_trip_equals_masked_weights(mf_artifact):
    model, seen, out = mf_artifact
    artifact = load_artifact(out)
    tables = artifact.tables()
    assert set(tables) == {"user_embedding", "item_embedding"}
    for name, table in model.sparse_tables().items():
        weight = (table.weight * table.mask).detach().numpy()
        np.testing.assert_array_equal(tables[name].toarray(), weight)
        assert artifact.manifest.tables[name].nnz == int(table.mask.sum()) == tables[name].nnz
    np.testing.assert_array_equal(artifact.user_vectors(), model.user_embedding.weight.detach().numpy())
    np.testing.assert_array_equal(artifact.item_vectors(), model.item_embedding.weight.detach().numpy())
    assert artifact.user_vectors().dtype == np.float32 and artifact.user_vectors() is artifact.user_vectors()
    assert (artifact.seen() != seen).nnz == 0
    np.testing.assert_array_equal(artifact.popularity(), np.asarray(seen.sum(axis=0)).ravel().astype(np.int64))
    assert artifact.user_index()["u7"] == 7 and artifact.item_ids[3] == "i3"
    assert (artifact.model_kind, artifact.dim, artifact.n_users, artifact.n_items) == ("mf", DIM, N_USERS, N_ITEMS)
    for npy in out.glob("*.npy"):
        np.load(npy, allow_pickle=False)  # nothing pickled
    manifest = artifact.manifest
    assert manifest.format_version == FORMAT_VERSION and manifest.training.config == {"note": "unit test"}
    assert set(manifest.files) == {p.name for p in out.iterdir()} - {"manifest.json", "manifest.sha256"}


@pytest.mark.parametrize("value_dtype", ["fp32", "fp16", "int8"])
def test_fidelity_of_top20_lists(tmp_path, value_dtype):
    model, seen = sparse_model("mf", density=0.5, seed=3)
    manifest = load_artifact(export(model, seen, tmp_path / "art", values=value_dtype)).manifest
    fidelity = manifest.fidelity
    assert fidelity["users"] == N_USERS
    if value_dtype == "int8":
        assert fidelity["overlap@20"] >= 0.97  # measured 0.996 (seed 3); a broken int8 scale falls far below
    else:
        assert fidelity["overlap@20"] >= 0.99
    assert manifest.tables["user_embedding"].value_dtype == value_dtype


def test_lightgcn_reader_equals_torch(tmp_path):
    model, seen = sparse_model("lightgcn", density=0.2)
    users, items = interactions(0)
    ours = normalized_adjacency(seen)
    theirs = torch_side_adjacency(N_USERS, N_ITEMS, users, items)
    assert abs(ours - theirs).max() < 1e-7
    artifact = load_artifact(export(model, seen, tmp_path / "art"))
    want_users, want_items = (t.detach().numpy() for t in model.final_embeddings())
    np.testing.assert_allclose(artifact.user_vectors(), want_users, atol=1e-6)
    np.testing.assert_allclose(artifact.item_vectors(), want_items, atol=1e-6)
    base = artifact.tables()["embedding"]
    np.testing.assert_array_equal(base.toarray(), (model.embedding.weight * model.embedding.mask).detach().numpy())
    manifest = artifact.manifest
    assert manifest.n_layers == 2 and manifest.vectors.source == "lightgcn" and manifest.vectors.n_layers == 2
    assert manifest.onnx["user_tower"].info["layout"] == "dense"  # propagated vectors are dense
    groups = manifest.tables["embedding"].extra["row_groups"]
    assert groups["users"]["nnz"] + groups["items"]["nnz"] == manifest.nnz
    again = lightgcn_vectors(base.toarray(), artifact.seen(), 2)
    np.testing.assert_array_equal(again[0], artifact.user_vectors())


def test_popularity_model_exports(tmp_path):
    model, seen = sparse_model("pop")
    artifact = load_artifact(export(model, seen, tmp_path / "art"))
    assert artifact.dim == 1 and artifact.tables() == {}
    np.testing.assert_array_equal(artifact.item_vectors()[:, 0], model.item_counts.numpy())
    scores, ids = artifact.load_index().search(artifact.user_vectors()[:1], 5)
    assert (np.diff(scores[0]) <= 0).all() and scores[0, 0] == model.item_counts.max()


def test_random_masks_are_stored_as_csr(mf_artifact):
    artifact = load_artifact(mf_artifact[2])
    for name, entry in artifact.manifest.tables.items():
        assert (entry.layout, artifact.table_layout(name)) == ("csr", "csr")
        assert entry.extra["layout_reason"].startswith("auto:") and set(entry.files) == {"indptr", "indices", "values"}
    assert artifact.summary()["table_layouts"] == {"user_embedding": "csr", "item_embedding": "csr"}


@pytest.fixture(scope="module")
def prefix_artifact(tmp_path_factory):
    model, seen = prefix_model("mf")
    return (
        model,
        seen,
        export(model, seen, tmp_path_factory.mktemp("prefix") / "art", onnx_layout="packed", index="sparse"),
    )


def item_order(artifact) -> np.ndarray:
    """Model item of each artifact item (the export may reorder items by prefix length; ids are "i<n>")."""
    return np.array([int(item[1:]) for item in artifact.item_ids])


def test_prefix_mf_round_trip_equals_masked_weights(prefix_artifact):
    model, seen, out = prefix_artifact
    artifact = load_artifact(out)
    manifest = artifact.manifest
    assert manifest.format_version == FORMAT_VERSION
    tables = artifact.tables()
    order = item_order(artifact)
    # the sparse index's prefix layout needs items by length: the id map itself is in that order
    assert manifest.index.kind == "sparse" and manifest.item_order.startswith("items sorted")
    assert (np.diff(np.load(out / "item_embedding.lengths.npy").astype(int)) >= 0).all()
    assert sorted(order.tolist()) == list(range(N_ITEMS)) and order.tolist() != list(range(N_ITEMS))
    assert (artifact.seen() != seen[:, order]).nnz == 0
    for name, table in model.sparse_tables().items():
        rows = order if name == "item_embedding" else np.arange(table.n_rows)
        entry = manifest.tables[name]
        assert entry.layout == "prefix" and entry.extra["layout_reason"].startswith("auto:")
        assert set(entry.files) == {"lengths", "values"} and entry.extra["lengths_dtype"] == "uint8"
        assert not (out / f"{name}.indices.npy").exists() and not (out / f"{name}.indptr.npy").exists()
        assert entry.bytes < entry.extra["csr_bytes"]
        mask = table.mask.numpy().astype(bool)[rows]
        weight = (table.weight * table.mask).detach().numpy()[rows]
        np.testing.assert_array_equal(np.load(out / f"{name}.lengths.npy"), mask.sum(axis=1))
        np.testing.assert_array_equal(tables[name].toarray(), weight)
        assert isinstance(tables[name], sp.csr_matrix) and tables[name].nnz == entry.nnz == mask.sum()
        structure = tables[name].copy()
        structure.data[:] = 1
        np.testing.assert_array_equal(structure.toarray().astype(bool), mask)  # the kept zero is stored
        csr = artifact.packed_table(name)  # the CSR form, as pack_table would have written it
        want = pack_table(weight, mask)
        for role in ("indptr", "indices", "values"):
            np.testing.assert_array_equal(getattr(csr, role), getattr(want, role))
        assert isinstance(artifact.stored_table(name), PrefixTable)
    np.testing.assert_array_equal(artifact.user_vectors(), model.user_embedding.weight.detach().numpy())
    np.testing.assert_array_equal(artifact.item_vectors(), model.item_embedding.weight.detach().numpy()[order])
    assert manifest.fidelity["overlap@20"] == 1.0
    assert artifact.summary()["table_layouts"] == {"user_embedding": "prefix", "item_embedding": "prefix"}
    assert verify_artifact(out, deep=True).model_kind == "mf"


def test_prefix_onnx_equals_torch(prefix_artifact):
    model, _, out = prefix_artifact
    tower = load_artifact(out).manifest.onnx["user_tower"].info
    assert (tower["layout"], tower["table_layout"]) == ("packed", "prefix")
    assert "no column indices" in tower["holds"]
    _check_onnx_against_torch(out, model)


@pytest.mark.parametrize("value_dtype", ["fp16", "int8"])
def test_prefix_quantised_values_equal_csr(tmp_path, value_dtype):
    model, seen = prefix_model("mf", seed=4)
    prefix = load_artifact(export(model, seen, tmp_path / "prefix", values=value_dtype, onnx_layout="packed"))
    csr = load_artifact(export(model, seen, tmp_path / "csr", values=value_dtype, table_layout="csr"))
    assert csr.table_layout("user_embedding") == "csr" and prefix.table_layout("user_embedding") == "prefix"
    assert csr.manifest.tables["user_embedding"].extra["layout_reason"] == "forced by --table-layout csr"
    for name in ("user_embedding", "item_embedding"):
        assert (prefix.tables()[name] != csr.tables()[name]).nnz == 0
    np.testing.assert_array_equal(prefix.user_vectors(), csr.user_vectors())
    tower = to_onnx.session(prefix.path / "user_tower.onnx")
    np.testing.assert_allclose(to_onnx.run_tower(tower, np.arange(N_USERS)), prefix.user_vectors(), atol=1e-6)


def test_prefix_lightgcn_reader_equals_torch(tmp_path):
    model, seen = prefix_model("lightgcn", density=0.2)
    artifact = load_artifact(export(model, seen, tmp_path / "art", table_layout="prefix"))
    entry = artifact.manifest.tables["embedding"]
    assert entry.layout == "prefix" and entry.extra["layout_reason"] == "forced by --table-layout prefix"
    assert entry.extra["row_groups"]["users"]["nnz"] + entry.extra["row_groups"]["items"]["nnz"] == entry.nnz
    want_users, want_items = (t.detach().numpy() for t in model.final_embeddings())
    np.testing.assert_allclose(artifact.user_vectors(), want_users, atol=1e-6)
    np.testing.assert_allclose(artifact.item_vectors(), want_items, atol=1e-6)
    np.testing.assert_array_equal(
        artifact.tables()["embedding"].toarray(), (model.embedding.weight * model.embedding.mask).detach().numpy()
    )


def test_prefix_layout_is_refused_for_other_masks(tmp_path):
    model, seen = sparse_model("mf")
    with pytest.raises(ExportError, match="--table-layout prefix: table user_embedding is not prefix-shaped"):
        export(model, seen, tmp_path / "art", table_layout="prefix")
    assert list(tmp_path.iterdir()) == []  # nothing left behind
    with pytest.raises(ValueError, match="table_layout"):
        ExportOptions(table_layout="coo")


# ---------------------------------------------------------------------------- ONNX
def _check_onnx_against_torch(out: Path, model) -> None:
    user_ref, item_ref = (t.detach().numpy() for t in model.final_embeddings())
    tower = to_onnx.session(out / "user_tower.onnx")
    users = np.arange(N_USERS)
    np.testing.assert_allclose(to_onnx.run_tower(tower, users), user_ref, atol=1e-5, rtol=0)
    scorer = to_onnx.session(out / "scorer.onnx")
    scores, items = to_onnx.run_scorer(scorer, users, 10)
    reference = model.full_scores(torch.from_numpy(users)).numpy()[:, item_order(load_artifact(out))]
    want = -np.sort(-reference, axis=1)[:, :10]
    np.testing.assert_allclose(scores, want, atol=1e-5, rtol=0)
    # ids may differ only among ties: each id's torch score equals the torch score at that rank
    np.testing.assert_allclose(np.take_along_axis(reference, items, axis=1), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["packed", "dense"])
def test_onnx_mf_equals_torch(tmp_path, layout):
    model, seen = sparse_model("mf", density=0.2)
    out = export(model, seen, tmp_path / "art", onnx_layout=layout)
    tower = load_artifact(out).manifest.onnx["user_tower"].info
    assert tower["layout"] == layout
    assert tower["max_abs_err_vs_torch"] <= 1e-5
    _check_onnx_against_torch(out, model)


def test_onnx_lightgcn_equals_torch(tmp_path):
    model, seen = sparse_model("lightgcn", density=0.5)
    _check_onnx_against_torch(export(model, seen, tmp_path / "art"), model)


@pytest.mark.parametrize("layout", ["packed", "dense"])
@pytest.mark.parametrize("value_dtype", ["fp16", "int8"])
def test_onnx_serves_the_stored_quantised_values(tmp_path, layout, value_dtype):
    model, seen = sparse_model("mf", density=0.2)
    artifact = load_artifact(export(model, seen, tmp_path / "art", values=value_dtype, onnx_layout=layout))
    tower_info = artifact.manifest.onnx["user_tower"].info
    assert (tower_info["layout"], tower_info["values"]) == (layout, value_dtype)
    tower = to_onnx.session(artifact.path / "user_tower.onnx")
    np.testing.assert_allclose(to_onnx.run_tower(tower, np.arange(N_USERS)), artifact.user_vectors(), atol=1e-6)


def test_auto_layout_packs_sparse_users_and_int8_scorer_is_measured(mf_artifact):
    _, _, out = mf_artifact
    onnx = load_artifact(out).manifest.onnx
    assert onnx["user_tower"].info["layout"] == "packed"  # 0.3 density: 5 B/nnz < 4 B/entry dense
    assert onnx["scorer_int8"].info["overlap@20_vs_fp32_scorer"] >= 0.97  # measured 1.0 on this fixture
    assert (out / "scorer.int8.onnx").is_file()


def test_session_memory_is_measured(tmp_path):
    model, seen = sparse_model("mf", density=0.1)
    manifest = load_artifact(export(model, seen, tmp_path / "art", measure_memory=True)).manifest
    memory = manifest.to_json()["onnx"]["memory"]  # figures for people, not read by the reader
    for layout in ("dense", "packed"):
        assert isinstance(memory[layout]["session_rss_delta"], int)
    assert memory["saved_file_bytes"] > 0  # the packed graph is smaller on disk
