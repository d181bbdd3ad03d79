"""Compressed user rows (`serving.user_rows`): a masked model's user vectors are held in the stored
layout and densified per request, bit for bit the dense rows; the Recommender answers exactly as it
did with the dense table, in-process and over real HTTP; the footprint counts the compressed bytes."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from export.artifact import load_artifact
from export.exporter import ExportOptions, export_model
from export.to_sparse import PackedTable, PrefixTable, quantize_values
from export_models import N_ITEMS, N_USERS, prefix_model, sparse_model
from server_utils import running_server
from serving.footprint import is_mapped, served_bytes
from serving.recommender import Query, Recommender
from serving.user_rows import PREFIX_BLOCK, UserRows, narrowed, user_rows_from_artifact

torch.set_num_threads(1)


# ---------------------------------------------------------------------------- the store itself
def _random_mask(rng, n_rows: int, dim: int, density: float) -> np.ndarray:
    mask = rng.random((n_rows, dim)) < density
    mask[[0, 7, n_rows - 1]] = False  # empty rows, the last one included
    mask[3] = True  # a full row
    return mask


def _packed(mask: np.ndarray, rng, value_dtype: str) -> PackedTable:
    rows, columns = np.nonzero(mask)
    values = rng.normal(size=len(rows)).astype(np.float32)
    values[::11] = 0.0  # a stored weight that is exactly zero
    stored, scale = quantize_values(values, rows, mask.shape[0], value_dtype)
    indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.uint32)
    return PackedTable(indptr, columns.astype(np.uint8), stored, mask.shape, value_dtype, scale)


def _prefix(lengths: np.ndarray, dim: int, rng, value_dtype: str) -> PrefixTable:
    mask = np.arange(dim)[None, :] < lengths[:, None]
    rows = np.nonzero(mask)[0]
    stored, scale = quantize_values(rng.normal(size=len(rows)).astype(np.float32), rows, len(lengths), value_dtype)
    return PrefixTable(lengths.astype(np.uint8), stored, (len(lengths), dim), value_dtype, scale)


def _bitwise_equal(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("value_dtype", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("layout", ["csr", "prefix"])
def test_rows_equal_the_dense_table_bit_for_bit(layout, value_dtype):
    rng = np.random.default_rng(3)
    n_rows, dim = 3 * PREFIX_BLOCK + 5, 24  # several prefix blocks and a partial last one
    if layout == "csr":
        table = _packed(_random_mask(rng, n_rows, dim, 0.15), rng, value_dtype)
    else:
        lengths = rng.integers(0, dim + 1, n_rows)
        lengths[[0, PREFIX_BLOCK, n_rows - 1]] = 0
        lengths[[1, PREFIX_BLOCK - 1]] = dim
        table = _prefix(lengths, dim, rng, value_dtype)
    dense = table.to_dense()
    for start, stop in ((0, n_rows), (PREFIX_BLOCK - 3, n_rows - 2), (5, 5)):  # a table's user rows
        store = UserRows.from_table(table, start, stop)
        assert store.kind == layout and store.shape == (stop - start, dim)
        for candidate in (store, narrowed(store)):
            _bitwise_equal(candidate.rows(np.arange(stop - start)), dense[start:stop])
            picked = rng.integers(0, max(stop - start, 1), 40) if stop > start else np.zeros(0, np.int64)
            _bitwise_equal(candidate.rows(picked), dense[start:stop][picked])
            _bitwise_equal(candidate.rows([]), np.zeros((0, dim), np.float32))
        assert store.nbytes == sum(a.nbytes for a in store.arrays().values())
    store = UserRows.from_table(table)
    assert store.arrays()["values"].dtype == table.values.dtype  # held as stored, dequantised per request
    assert store.nbytes < n_rows * dim * 4
    with pytest.raises(IndexError, match="user rows"):
        store.rows([n_rows])


def test_dense_rows_are_kept_as_given():
    vectors = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    store = UserRows.dense(vectors)
    assert store.kind == "dense" and store.arrays()["vectors"] is vectors
    _bitwise_equal(store.rows([9, 0, 9]), vectors[[9, 0, 9]])
    with pytest.raises(ValueError, match="2-d"):
        UserRows.dense(vectors[0])
    with pytest.raises(ValueError, match="unknown user-row kind"):
        UserRows("coo", (1, 1), {})


# ---------------------------------------------------------------------------- through the Recommender
def _export(model, seen, out: Path, **options) -> Path:
    options.setdefault("measure_memory", False)
    options.setdefault("progress", False)
    return export_model(
        model,
        out,
        user_ids=[f"u{u}" for u in range(N_USERS)],
        item_ids=[f"i{i}" for i in range(N_ITEMS)],
        seen=seen,
        heldout=None,
        training={"config": {"note": "unit test"}, "metrics": {}},
        options=ExportOptions(**options),
    )


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("user-rows")
    out = {}
    model, seen = sparse_model("mf", density=0.1, seed=2)
    out["mf-csr"] = _export(model, seen, root / "mf-csr", index="sparse")
    out["mf-csr-fp16"] = _export(model, seen, root / "mf-csr-fp16", values="fp16", index="flat")
    out["mf-csr-int8"] = _export(model, seen, root / "mf-csr-int8", values="int8", index="flat")
    model, seen = prefix_model("mf", density=0.2, seed=3)
    out["mf-prefix"] = _export(model, seen, root / "mf-prefix", index="sparse")
    for name, build in (("lightgcn-csr", sparse_model), ("lightgcn-prefix", prefix_model)):
        model, seen = build("lightgcn", density=0.2, seed=4)
        model.mask_output, model._cache = True, None
        out[name] = _export(model, seen, root / name)
    model, seen = sparse_model("lightgcn", density=0.2, seed=5)  # propagated: dense vectors
    out["lightgcn-propagated"] = _export(model, seen, root / "lightgcn-propagated")
    model, seen = sparse_model("mf", density=1.0, seed=6)  # a dense model
    out["mf-dense"] = _export(model, seen, root / "mf-dense")
    return out


def _queries(art) -> list[Query]:
    users = art.user_ids
    items = art.item_ids
    out = [Query(u, 10, exclude) for u in users for exclude in (True, False)]
    out += [
        Query(users[1], 7, True, exclude_items=tuple(items[:5])),  # the one-by-one path
        Query(users[2], 5, False, allow_items=tuple(items[10:40])),
        Query(users[-1], 3, True, history=tuple(items[:3])),
        Query("nobody", 4),
    ]
    return out


def _answers(rec: Recommender, queries: list[Query]) -> list[tuple]:
    return [(r.user_id, r.item_ids, r.scores, r.fallback, r.folded_in) for r in rec.recommend(queries)]


COMPRESSED = {
    "mf-csr": "csr",
    "mf-csr-fp16": "csr",
    "mf-csr-int8": "csr",
    "mf-prefix": "prefix",
    "lightgcn-csr": "csr",
    "lightgcn-prefix": "prefix",
    "lightgcn-propagated": "dense",
    "mf-dense": "dense",
}


@pytest.mark.parametrize("name", sorted(COMPRESSED))
@pytest.mark.parametrize("mmap", [False, True])
def test_recommender_answers_as_with_the_dense_user_table(artifacts, name, mmap):
    art = load_artifact(artifacts[name])
    dense = art.user_vectors()
    after = Recommender.from_artifact(art, mmap=mmap)
    store = after.user_rows
    assert store.kind == COMPRESSED[name]
    np.testing.assert_array_equal(store.to_dense(), dense)  # == (a masked-out LightGCN entry may be -0.0 there)
    if art.manifest.vectors.source == "tables":
        _bitwise_equal(store.to_dense(), dense)
    before = Recommender.from_artifact(art, mmap=mmap)
    before.user_rows = UserRows.dense(dense)  # what a worker held until now
    queries = _queries(art)
    assert _answers(after, queries) == _answers(before, queries)
    # the footprint counts the store's arrays, far below the dense table for a masked model
    footprint = served_bytes(
        after, None if art.index_kind == "sparse" else art.file(art.manifest.index.file).stat().st_size
    )
    part = footprint["parts"]["user_vectors"]
    assert part["mapped"] + part["read"] == store.nbytes
    if store.kind != "dense":
        assert store.nbytes < dense.nbytes
        assert store.arrays()["values"].shape[0] < dense.size
        # MF's stored arrays are served from the artifact's files when mapped; LightGCN's are computed
        mapped_values = is_mapped(store.arrays()["values"])
        assert mapped_values == (mmap and name.startswith("mf"))
        if not mapped_values:  # a read store owns its arrays (no view keeping a whole table alive)
            assert all(array.base is None for array in store.arrays().values())
    if name in ("mf-csr-fp16", "mf-csr-int8"):  # held as stored, dequantised per request
        assert store.arrays()["values"].dtype == (np.float16 if name.endswith("fp16") else np.int8)


def test_footprint_user_vectors_fall_to_the_compressed_size(artifacts):
    art = load_artifact(artifacts["mf-csr"])
    after = served_bytes(Recommender.from_artifact(art, mmap=True))
    before_model = Recommender.from_artifact(art, mmap=True)
    before_model.user_rows = UserRows.dense(art.user_vectors())
    before = served_bytes(before_model)
    assert before["parts"]["user_vectors"] == {"mapped": 0, "read": N_USERS * art.dim * 4}
    store = user_rows_from_artifact(art, mmap=True)
    assert store.kind == "csr" and after["parts"]["user_vectors"]["read"] == 0  # all of it the artifact's files
    assert sum(after["parts"]["user_vectors"].values()) == store.nbytes
    assert before["served"]["total"] - after["served"]["total"] == N_USERS * art.dim * 4 - store.nbytes


def test_a_real_server_answers_from_the_compressed_rows(artifacts):
    art = load_artifact(artifacts["mf-csr"])
    before = Recommender.from_artifact(art)
    before.user_rows = UserRows.dense(art.user_vectors())
    users = art.user_ids[:20]
    queries = [{"user_id": u, "k": 10, "exclude_seen": e} for u in users for e in (True, False)]
    want = before.recommend([Query(q["user_id"], q["k"], q["exclude_seen"]) for q in queries])
    with running_server(artifacts["mf-csr"], via="cli") as server:
        batch = httpx.post(server.url + "/recommend_batch", json={"queries": queries}, timeout=60).json()
        single = httpx.post(server.url + "/recommend", json=queries[0], timeout=30).json()
    assert single == batch[0]
    for answer, reference in zip(batch, want):
        assert answer["fallback"] is False
        assert [i["item_id"] for i in answer["items"]] == reference.item_ids
        assert [i["score"] for i in answer["items"]] == reference.scores
