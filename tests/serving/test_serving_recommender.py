"""serving.recommender in-process: seen filtering and top-K against brute force (no server)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from serving.backends import TorchSearch
from serving.recommender import Query, Recommender


class BruteForceIndex:
    """Exact inner-product search with the reader contract's `search`. With `approximate`, it
    mimics an index whose recall grows with k: below k = n_items only the first 40% of the
    answer is found, the rest is -1."""

    def __init__(self, items: np.ndarray, approximate: bool = False) -> None:
        self.items, self.approximate, self.calls = items, approximate, []

    def search(self, queries: np.ndarray, k: int):
        self.calls.append((len(queries), k))
        scores = queries @ self.items.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(scores, order, axis=1).astype(np.float32)
        ids = order.astype(np.int64)
        if k > scores.shape[1]:
            pad = k - scores.shape[1]
            top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        if self.approximate and k < scores.shape[1]:
            ids[:, int(0.4 * k) :] = -1
            top[:, int(0.4 * k) :] = -np.inf
        return top, ids


def make_data(n_users=40, n_items=60, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((n_users, dim)).astype(np.float32)
    items = rng.standard_normal((n_items, dim)).astype(np.float32)
    dense = rng.random((n_users, n_items)) < 0.3
    dense[3] = False  # a user with no history
    dense[5] = True  # a user who has seen every item
    seen = sp.csr_matrix(dense.astype(np.float32))
    popularity = np.asarray(seen.sum(axis=0)).ravel().astype(np.int64)
    return users, items, seen, popularity


def make_recommender(search_factory=BruteForceIndex, **kw):
    users, items, seen, popularity = make_data(**kw)
    index = search_factory(items)
    rec = Recommender(
        user_ids=[f"u{i}" for i in range(len(users))],
        item_ids=[f"i{i}" for i in range(len(items))],
        user_vectors=users,
        seen=seen,
        popularity=popularity,
        search=index,
    )
    return rec, users, items, seen, index


def brute_force(users, items, seen, row, k, exclude_seen):
    scores = (users[row] @ items.T).astype(np.float64)
    if exclude_seen:
        scores[seen[row].indices] = -np.inf
    order = np.argsort(-scores, kind="stable")
    order = order[np.isfinite(scores[order])][:k]
    return order, scores[order]


def assert_same_topk(got_ids, got_scores, want_ids, want_scores):
    """Equal scores position by position; ids may differ only among tied scores."""
    assert len(got_ids) == len(want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
    differ = np.asarray(got_ids) != np.asarray(want_ids)
    if differ.any():
        # every differing position must be a tie with the brute-force score at that rank
        np.testing.assert_allclose(np.asarray(got_scores)[differ], want_scores[differ], atol=1e-5)


@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("k", [1, 5, 60])
def test_matches_brute_force(exclude_seen, k):
    rec, users, items, seen, _ = make_recommender()
    queries = [Query(f"u{r}", k, exclude_seen) for r in range(len(users))]
    for r, res in enumerate(rec.recommend(queries)):
        want_ids, want_scores = brute_force(users, items, seen, r, k, exclude_seen)
        got = [int(i[1:]) for i in res.item_ids]
        assert_same_topk(got, res.scores, want_ids, want_scores)
        assert not res.fallback and res.user_id == f"u{r}"
        if exclude_seen:
            assert not set(got) & set(seen[r].indices.tolist())
        assert res.scores == sorted(res.scores, reverse=True)


def test_exactly_k_when_catalogue_allows():
    rec, users, items, seen, index = make_recommender()
    res = rec.recommend([Query(f"u{r}", 10, True) for r in range(len(users))])
    for r, one in enumerate(res):
        assert len(one.item_ids) == min(10, items.shape[0] - seen[r].nnz)
    assert res[5].item_ids == []  # user 5 has seen every item
    assert len(res[3].item_ids) == 10


def test_searches_grouped_by_need():
    """One search per power-of-two class of k + n_seen, never one per query; an exact index
    never needs a second search."""
    rec, users, items, seen, index = make_recommender()
    rows = [r for r in range(len(users)) if r not in (3, 5)]
    rec.recommend([Query(f"u{r}", 10, True) for r in rows])
    needed = np.minimum(10 + np.diff(seen.indptr)[rows], items.shape[0])
    assert len(index.calls) == len(np.unique(np.ceil(np.log2(needed))))
    assert sum(batch for batch, _ in index.calls) == len(rows)
    index.calls.clear()
    rec.recommend([Query("u7", 10, True)] * 50)
    assert index.calls == [(50, min(10 + seen[7].nnz, items.shape[0]))]


def test_mixed_batch_keeps_order_and_flags():
    rec, users, items, seen, _ = make_recommender()
    queries = [Query("u1", 3, True), Query("nobody", 4, True), Query("u1", 3, False), Query("u2", 1)]
    res = rec.recommend(queries)
    assert [r.user_id for r in res] == ["u1", "nobody", "u1", "u2"]
    assert [r.fallback for r in res] == [False, True, False, False]
    assert [len(r.item_ids) for r in res] == [3, 4, 3, 1]
    assert res[1].item_ids == [f"i{i}" for i in rec.popular_order[:4]]
    assert res[1].scores == sorted(res[1].scores, reverse=True)


def test_research_when_approximate_index_falls_short():
    """An index that finds too few candidates: the recommender asks again with a larger k."""
    rec, users, items, seen, index = make_recommender(lambda it: BruteForceIndex(it, True))
    for row in (3, 7):  # no history; some history
        index.calls.clear()
        res = rec.recommend([Query(f"u{row}", 10, True)])[0]
        assert len(index.calls) >= 2
        want_ids, want_scores = brute_force(users, items, seen, row, 10, True)
        assert_same_topk([int(i[1:]) for i in res.item_ids], res.scores, want_ids, want_scores)


def test_torch_search_equals_faiss_convention():
    """The GPU code path, run on the CPU: same top-K as the brute-force index, -1 padding."""
    pytest.importorskip("torch")
    users, items, _, _ = make_data()
    torch_search = TorchSearch(items, device="cpu")
    want_scores, want_ids = BruteForceIndex(items).search(users, 70)
    scores, ids = torch_search.search(users, 70)
    assert ids.shape == (len(users), 70) and (ids[:, 60:] == -1).all()
    np.testing.assert_allclose(scores[:, :60], want_scores[:, :60], rtol=1e-5, atol=1e-5)


def test_torch_search_refuses_cuda_without_a_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        TorchSearch(np.zeros((3, 2), np.float32), device="cuda")


@pytest.mark.gpu
def test_torch_search_cuda_matches_cpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    users, items, _, _ = make_data(n_items=5000, dim=64)
    cpu_scores, cpu_ids = TorchSearch(items, device="cpu").search(users, 50)
    gpu_scores, gpu_ids = TorchSearch(items, device="cuda").search(users, 50)
    np.testing.assert_allclose(gpu_scores, cpu_scores, rtol=1e-4, atol=1e-4)
    assert (gpu_ids == cpu_ids).mean() > 0.99  # ties may reorder
