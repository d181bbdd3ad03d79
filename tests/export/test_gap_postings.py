"""export.gap_postings and the gaps layout: lossless coding, refusal of malformed arrays, and top-k
exactly equal to brute force over the zero-filled vectors (ties, empty rows and queries, short lists)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from export import gap_postings
from export.quality import top_k_rows
from export.sparse_index import SparseIndex


def postings_of(mask: np.ndarray, values: np.ndarray) -> sp.csr_matrix:
    """The ``[dim, n_items]`` posting lists of an item table's structure (stored zeros kept)."""
    rows, cols = np.nonzero(mask.T)
    indptr = np.concatenate([[0], np.cumsum(mask.T.sum(axis=1))])
    return sp.csr_matrix((values.T[rows, cols], cols.astype(np.int32), indptr), shape=mask.T.shape)


def table(n_items=700, dim=24, density=0.15, seed=0):
    """Unstructured items: empty rows, a full row, duplicated rows (exact ties), a stored zero, an
    empty dimension and a very long gap (the last item alone in dim 1)."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_items, dim)) < density
    mask[:5] = False
    mask[5] = True
    mask[:, 0] = False  # a dimension no item uses
    mask[:, 1] = False
    mask[-1, 1] = True
    items = (rng.standard_normal((n_items, dim)) * mask).astype(np.float32)
    items[10:14] = items[9]
    mask[10:14] = mask[9]
    items[6, np.flatnonzero(mask[6])[0]] = 0.0
    return mask, items


def queries(dim=24, n=50, seed=1):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((n, dim)) * (rng.random((n, dim)) < 0.3)).astype(np.float32)
    q[0] = 0.0  # empty query: every item scores 0
    q[1] = 0.0
    q[1, 0] = 1.0  # only the dimension no item uses: every item scores 0 again
    q[2] = 0.0
    q[2, 1] = -1.0  # one candidate, negative: the other items (score 0) come before it
    q[3] = 0.0
    q[3, 2] = 1.0  # few candidates: k reaches past them
    q[4] = 1.0  # dense
    return q


def check_exact(scores, ids, q, items, k):
    """Same top-k as brute force (float64): scores rank by rank, ids holding them, -1 / -inf past n_items."""
    exact = q.astype(np.float64) @ items.T.astype(np.float64)
    kk = min(k, len(items))
    want = -np.sort(-exact, axis=1)[:, :kk]
    assert scores.shape == ids.shape == (len(q), k) and scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_allclose(scores[:, :kk], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(exact, ids[:, :kk], axis=1), want, rtol=1e-5, atol=1e-5)
    assert all(len(set(row)) == kk for row in ids[:, :kk].tolist())
    assert (ids[:, kk:] == -1).all() and np.isneginf(scores[:, kk:]).all()


def encoded(mask, items):
    post = postings_of(mask, items)
    return gap_postings.encode(post.indptr, post.indices, post.data, len(items)), post


def test_encode_decode_is_lossless_including_wide_gaps():
    mask, items = table()
    arrays, post = encoded(mask, items)
    gap_postings.validate(arrays, mask.shape[1], len(items))
    indptr, indices, values = gap_postings.decode(arrays)
    np.testing.assert_array_equal(indptr, post.indptr)
    np.testing.assert_array_equal(indices, post.indices)
    np.testing.assert_array_equal(values, post.data)
    assert arrays["widths"].max() <= 31 and len(arrays["words"]) == -(-int(arrays["bitptr"][-1]) // 64) + 1
    # ids far apart (a 31-bit gap) and a list of one
    far = np.array([0, 5, 2**31 - 2], dtype=np.int64)
    arrays = gap_postings.encode(np.array([0, 3, 3, 4]), np.concatenate([far, [7]]), np.ones(4, np.float32), 2**31 - 1)
    gap_postings.validate(arrays, 3, 2**31 - 1)
    assert gap_postings.decode(arrays)[1].tolist() == [0, 5, 2**31 - 2, 7]


def test_encode_refuses_unsorted_or_out_of_range_ids():
    with pytest.raises(ValueError, match="strictly increasing"):
        gap_postings.encode(np.array([0, 2]), np.array([3, 3]), np.ones(2, np.float32), 10)
    with pytest.raises(ValueError, match="outside"):
        gap_postings.encode(np.array([0, 1]), np.array([10]), np.ones(1, np.float32), 10)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda a: a.pop("words"), "missing"),
        (lambda a: a.update(words=a["words"][:-1]), "spare word"),
        (lambda a: a.update(widths=np.full_like(a["widths"], 32)), "at most 31"),
        (lambda a: a.update(widths=a["widths"][:-1]), "block widths"),
        (lambda a: a.update(bitptr=a["bitptr"].astype(np.int32)), "int64"),
        (lambda a: a.update(indptr=a["indptr"][::-1].copy()), "pointers"),
        (lambda a: a["words"].__setitem__(slice(0, -1), np.iinfo(np.uint64).max), "does not decode"),
        (lambda a: a["bitptr"].__setitem__(3, a["bitptr"][3] + 1), "does not decode"),
    ],
)
def test_validate_refuses_malformed_arrays(corrupt, message):
    mask, items = table()
    arrays, _ = encoded(mask, items)
    arrays = {role: array.copy() for role, array in arrays.items()}
    corrupt(arrays)
    with pytest.raises(ValueError, match=message):
        gap_postings.validate(arrays, mask.shape[1], len(items))
    with pytest.raises(ValueError, match=message):
        SparseIndex.from_arrays("gaps", arrays, mask.shape[1], {}, n_items=len(items))


@pytest.mark.parametrize("k", [1, 7, 40, 699, 700, 750])
def test_gaps_search_equals_brute_force(k):
    mask, items = table()
    index = SparseIndex.from_table(sp.csr_matrix(postings_of(mask, items).T))
    assert index.layout == "gaps" and index.nnz == int(mask.sum())
    q = queries()
    scores, ids = index.search(q, k)
    check_exact(scores, ids, q, items, k)
    # ties by the lower id, as export.quality.top_k_rows ranks: duplicated rows 9..13, empty queries
    kk = min(k, len(items))
    want = top_k_rows(q.astype(np.float64) @ items.T.astype(np.float64), kk)
    for row in (0, 1):  # every score 0: the first k ids
        assert ids[row, :kk].tolist() == list(range(kk))
    tied = [np.flatnonzero(np.isin(r, np.arange(9, 14))) for r in ids[:, :kk]]
    for row, where in enumerate(tied):
        assert ids[row, where].tolist() == sorted(ids[row, where].tolist())
    assert (ids[2, :kk] == want[2]).all()  # the negative candidate last, the zeros by id before it
    # a batch answers as its rows one by one
    for row in range(0, len(q), 7):
        single = index.search(q[row], k)
        np.testing.assert_array_equal(single[0][0], scores[row])
        np.testing.assert_array_equal(single[1][0], ids[row])


def test_gaps_fill_order_puts_zero_scores_in_that_order():
    mask, items = table()
    index = SparseIndex.from_table(sp.csr_matrix(postings_of(mask, items).T))
    index.fill_order = np.arange(len(items))[::-1].copy()
    q = queries()
    scores, ids = index.search(q[:4], 30)
    check_exact(scores, ids, q[:4], items, 30)
    assert ids[0].tolist() == list(range(len(items) - 1, len(items) - 31, -1))  # all zeros: fill order
    full = q[3].astype(np.float64) @ items.T.astype(np.float64)
    positive = int((full > 0).sum())
    zero_ids = ids[3, positive:]
    assert (full[zero_ids] == 0).all() and zero_ids.tolist() == sorted(zero_ids.tolist(), reverse=True)


def test_an_empty_table_and_a_mapped_load(tmp_path):
    empty = SparseIndex.from_table(sp.csr_matrix((30, 8), dtype=np.float32), layout="gaps")
    scores, ids = empty.search(np.ones((3, 8), np.float32), 35)
    check_exact(scores, ids, np.ones((3, 8), np.float32), np.zeros((30, 8), np.float32), 35)
    mask, items = table()
    index = SparseIndex.from_table(sp.csr_matrix(postings_of(mask, items).T))
    files = index.save(tmp_path)
    mapped = SparseIndex.load(tmp_path, "gaps", files, mask.shape[1], {}, n_items=len(items), mmap=True)
    assert mapped.nbytes == index.nbytes == gap_postings.nbytes(index.arrays())
    q = queries()
    for a, b in zip(index.search(q, 20), mapped.search(q, 20)):
        np.testing.assert_array_equal(a, b)


def test_trained_like_masks_cost_under_five_bytes_per_non_zero():
    """At a trained-like unstructured mask (skewed per-dim shares) the gaps cost about 0.7 byte per
    non-zero beside the 4 of the value; the int32 postings cost 4."""
    rng = np.random.default_rng(0)
    n_items, dim = 200_000, 64
    share = np.linspace(3.0, 0.3, dim) / np.linspace(3.0, 0.3, dim).sum()
    mask = rng.random((n_items, dim)) < 0.1 * dim * share
    post = postings_of(mask, np.ones(mask.shape, np.float32))
    arrays = gap_postings.encode(post.indptr, post.indices, post.data, n_items)
    assert 4.0 < gap_postings.nbytes(arrays) / post.nnz < 4.9
