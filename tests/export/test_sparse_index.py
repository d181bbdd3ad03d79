"""export.sparse_index: both layouts equal brute force over the zero-filled vectors, edges included."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import scipy.sparse as sp

from common.timing import time_search
from export.sparse_index import SparseIndex, length_order, prefix_structure

faiss.omp_set_num_threads(1)


def brute_force_check(index, queries, dense_items, k):
    """Exact: scores rank by rank equal brute force, ids hold those scores, no repeats, -1 past n_items."""
    scores, ids = index.search(queries, k)
    n_items = len(dense_items)
    kk = min(k, n_items)
    assert scores.shape == ids.shape == (len(queries), k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    exact = queries.astype(np.float64) @ dense_items.T.astype(np.float64)
    want = -np.sort(-exact, axis=1)[:, :kk]
    np.testing.assert_allclose(scores[:, :kk], want, rtol=1e-5, atol=1e-5)
    assert (ids[:, :kk] >= 0).all() and (ids[:, :kk] < n_items).all()
    # ids may differ from brute force only among tied scores: each id's true score is its rank's score
    np.testing.assert_allclose(np.take_along_axis(exact, ids[:, :kk], axis=1), want, rtol=1e-5, atol=1e-5)
    assert all(len(set(row)) == kk for row in ids[:, :kk].tolist())
    assert (ids[:, kk:] == -1).all() and np.isneginf(scores[:, kk:]).all()
    return scores, ids


def prefix_items(n_items=600, dim=16, seed=0, ties=True):
    """Items with random prefix lengths, sorted by length, including length 0 and full rows."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, dim + 1, n_items)
    lengths[:5], lengths[5:10] = 0, dim
    lengths = np.sort(lengths)
    mask = np.arange(dim)[None, :] < lengths[:, None]
    items = (rng.standard_normal((n_items, dim)) * mask).astype(np.float32)
    if ties:  # exact duplicates of some rows at the same length: tied scores
        for length in np.unique(lengths)[::3]:
            rows = np.flatnonzero(lengths == length)
            if len(rows) > 1:
                items[rows[1]] = items[rows[0]]
    return lengths, items, mask


def csr_items(n_items=600, dim=16, density=0.2, seed=0):
    """Items with unstructured masks: empty rows, full rows, a stored exact zero."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_items, dim)) < density
    mask[:4], mask[4:8] = False, True
    items = (rng.standard_normal((n_items, dim)) * mask).astype(np.float32)
    items[9, np.flatnonzero(mask[9])[:1]] = 0.0  # a stored value that is exactly 0: still structure
    items[20] = items[21]
    mask[20] = mask[21]
    rows, cols = np.nonzero(mask)
    table = sp.csr_matrix(
        (items[rows, cols], cols.astype(np.int32), np.concatenate([[0], np.cumsum(mask.sum(1))])), shape=(n_items, dim)
    )
    return table, items


def queries_for(dim=16, n=40, density=1.0, seed=1):
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((n, dim)).astype(np.float32)
    if density < 1.0:
        queries *= rng.random((n, dim)) < density
    queries[0] = 0.0  # a user with an empty row: every score is 0
    queries[1, 1:] = 0.0  # one non-zero dim
    return queries


@pytest.mark.parametrize("round_to", [1, 4, 16])
@pytest.mark.parametrize("k", [1, 20, 599, 650])
def test_prefix_layout_equals_brute_force(round_to, k):
    lengths, items, mask = prefix_items()
    index = SparseIndex.from_prefix(lengths, items[mask], 16, round_to=round_to)
    brute_force_check(index, queries_for(), items, k)
    # prefix queries too (a user row is itself a prefix): zeros past the user's prefix
    q_lengths = np.arange(40) % 17
    queries = queries_for() * (np.arange(16)[None, :] < q_lengths[:, None])
    brute_force_check(index, queries.astype(np.float32), items, k)


def test_prefix_layout_shards_and_bytes():
    lengths, items, mask = prefix_items(ties=False)
    exact = SparseIndex.from_prefix(lengths, items[mask], 16)
    rounded = SparseIndex.from_prefix(lengths, items[mask], 16, round_to=4)
    assert exact.describe()["shards"] == len(np.unique(np.maximum(lengths, 1)))
    assert exact.describe()["padding_values"] == int((lengths == 0).sum())  # one stored zero per empty row
    assert exact.nbytes == 4 * (mask.sum() + (lengths == 0).sum())
    assert rounded.describe()["shards"] == len(np.unique(np.minimum(16, np.maximum(1, -(-lengths // 4) * 4))))
    assert rounded.nbytes >= exact.nbytes
    q = queries_for()
    np.testing.assert_allclose(exact.search(q, 30)[0], rounded.search(q, 30)[0], rtol=1e-5, atol=1e-5)


def test_prefix_layout_refuses_unsorted_lengths_and_bad_values():
    with pytest.raises(ValueError, match="non-decreasing.*length_order"):
        SparseIndex.from_prefix(np.array([2, 1]), np.zeros(3, np.float32), 4)
    with pytest.raises(ValueError, match="sum of lengths"):
        SparseIndex.from_prefix(np.array([1, 2]), np.zeros(4, np.float32), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        SparseIndex.from_prefix(np.array([1, 5]), np.zeros(6, np.float32), 4)
    order = length_order(np.array([3, 1, 2, 1]))
    assert order.tolist() == [1, 3, 2, 0]


@pytest.mark.parametrize("layout", ["gaps", "postings"])
@pytest.mark.parametrize("k", [1, 20, 300, 600, 610])
@pytest.mark.parametrize("query_density", [1.0, 0.2])
def test_postings_layout_equals_brute_force(k, query_density, layout):
    table, items = csr_items()
    assert SparseIndex.from_table(table).layout == "gaps"  # auto, for an unstructured mask
    index = SparseIndex.from_table(table, layout=layout)
    assert index.layout == layout and index.nnz == table.nnz
    brute_force_check(index, queries_for(density=query_density), items, k)


@pytest.mark.parametrize("layout", ["gaps", "postings"])
def test_postings_fill_is_exact_with_negative_scores(layout):
    """Few positive scores: zeros (non-candidates in fill order) come before any negative score."""
    dim, n_items = 8, 50
    rng = np.random.default_rng(3)
    items = np.zeros((n_items, dim), np.float32)
    items[:10, 0] = -rng.random(10) - 0.1  # candidates of dim 0, all negative for a positive query
    items[10:12, 0] = [2.0, 1.0]  # two positive
    items[12:20, 3] = rng.standard_normal(8)  # never candidates of the query below
    table = sp.csr_matrix(items)
    index = SparseIndex.from_table(table, layout=layout)
    query = np.zeros((1, dim), np.float32)
    query[0, 0] = 1.0
    fill_order = np.arange(n_items)[::-1].copy()
    index.fill_order = fill_order
    scores, ids = brute_force_check(index, query, items, 45)
    assert ids[0, :2].tolist() == [10, 11]
    zero_ids = ids[0, 2:40]  # the 38 non-candidates score 0: in fill order, before any negative
    assert zero_ids.tolist() == [i for i in fill_order if i >= 12]
    assert (scores[0, 40:] < 0).all() and set(ids[0, 40:].tolist()) <= set(range(10))
    # k = every item: all the negatives follow, best first
    scores, ids = brute_force_check(index, query, items, 50)
    assert ids[0, 40:].tolist() == np.argsort(items[:10, 0])[::-1].tolist()


def test_layouts_agree_on_the_same_prefix_table():
    lengths, items, mask = prefix_items(seed=5)
    as_csr = sp.csr_matrix(
        (items[mask], np.nonzero(mask)[1].astype(np.int32), np.concatenate([[0], np.cumsum(lengths)])),
        shape=items.shape,
    )
    assert prefix_structure(as_csr).tolist() == lengths.tolist()
    prefix = SparseIndex.from_table(as_csr)
    postings = SparseIndex.from_table(as_csr, layout="postings")
    assert (prefix.layout, postings.layout) == ("prefix", "postings")
    q = queries_for(seed=7)
    np.testing.assert_allclose(prefix.search(q, 25)[0], postings.search(q, 25)[0], rtol=1e-5, atol=1e-5)
    # unsorted prefix rows: auto takes gaps, prefix is refused with the reason
    shuffled = as_csr[np.random.default_rng(0).permutation(len(lengths))]
    assert SparseIndex.from_table(shuffled).layout == "gaps"
    with pytest.raises(ValueError, match="non-decreasing"):
        SparseIndex.from_table(shuffled, layout="prefix")


def test_an_all_empty_table_scores_zero_everywhere():
    items = np.zeros((30, 8), np.float32)
    for index in (
        SparseIndex.from_table(sp.csr_matrix((30, 8), dtype=np.float32)),
        SparseIndex.from_prefix(np.zeros(30, np.int64), np.zeros(0, np.float32), 8),
    ):
        brute_force_check(index, queries_for(dim=8), items, 35)


def test_dense_items_are_a_one_length_prefix_index():
    rng = np.random.default_rng(0)
    items = rng.standard_normal((100, 6)).astype(np.float32)
    index = SparseIndex.from_table(items)
    assert index.layout == "prefix" and index.describe()["shards"] == 1
    brute_force_check(index, queries_for(dim=6), items, 10)


@pytest.mark.parametrize("kind", ["prefix", "postings", "gaps"])
def test_save_load_round_trip(kind, tmp_path):
    if kind == "prefix":
        lengths, items, mask = prefix_items()
        index = SparseIndex.from_prefix(lengths, items[mask], 16, round_to=2)
    else:
        table, items = csr_items()
        index = SparseIndex.from_table(table, layout=kind)
    files = index.save(tmp_path)
    assert all((tmp_path / name).is_file() for name in files.values())
    loaded = SparseIndex.load(tmp_path, index.layout, files, 16, index.params, n_items=len(items))
    assert loaded.describe() == index.describe()
    if kind == "prefix":  # only FAISS's copy of the values stays in memory
        with pytest.raises(ValueError, match="keep_arrays"):
            loaded.arrays()
        kept = SparseIndex.load(tmp_path, index.layout, files, 16, index.params, keep_arrays=True)
        np.testing.assert_array_equal(kept.arrays()["values"], index.arrays()["values"])
    q = queries_for()
    for a, b in zip(index.search(q, 30), loaded.search(q, 30)):
        np.testing.assert_array_equal(a, b)


def test_faiss_and_sparse_dot_topn_in_one_process():
    """Both OpenMP users in turn, several threads: same answers as one thread (KMP_DUPLICATE_LIB_OK aside)."""
    import sparse_dot_topn  # noqa: F401  (sets KMP_DUPLICATE_LIB_OK; both wheels ship the same GNU libgomp)

    table, items = csr_items(2000)
    lengths, p_items, mask = prefix_items(2000)
    postings, prefix = (
        SparseIndex.from_table(table, layout="postings"),
        SparseIndex.from_prefix(lengths, p_items[mask], 16),
    )
    q = queries_for(n=64)
    faiss.omp_set_num_threads(2)
    try:
        for _ in range(2):
            brute_force_check(prefix, q, p_items, 20)
            brute_force_check(postings, q, items, 20)
    finally:
        faiss.omp_set_num_threads(1)


def test_time_search_reports_each_batch_size():
    table, _ = csr_items()
    figures = time_search(SparseIndex.from_table(table), queries_for(), 10, batch_sizes=(1, 8), repeats=1)
    assert set(figures) == {"batch_1_ms_per_query", "batch_8_ms_per_query"}
    assert all(value > 0 for value in figures.values())
