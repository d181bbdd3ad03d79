"""Vectorised metrics against a plain-Python reference on random data."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from train.metrics import evaluate_scores, hits_at_k, ndcg_at_k, reference_metrics


def random_case(seed, n_users=37, n_items=50, p_known=0.15, p_heldout=0.08):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_users, n_items)).astype(np.float32)
    known = rng.random((n_users, n_items)) < p_known
    heldout = (rng.random((n_users, n_items)) < p_heldout) & ~known
    return scores, known, heldout


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_matches_reference(seed, k):
    scores, known, heldout = random_case(seed)
    tensor = torch.from_numpy(scores)
    got = evaluate_scores(
        lambda users: tensor[users].clone(),
        np.arange(len(scores)),
        sp.csr_matrix(known),
        sp.csr_matrix(heldout),
        ks=(k,),
        batch_size=7,
    )
    want = reference_metrics(
        scores, [set(np.flatnonzero(r)) for r in known], [set(np.flatnonzero(r)) for r in heldout], k
    )
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["n_users"] == int((heldout.sum(1) > 0).sum())


def test_known_items_never_ranked():
    scores, known, heldout = random_case(3)
    scores[known] = 100.0  # known positives score highest: masking must remove them
    tensor = torch.from_numpy(scores)

    def score_fn(users):
        return tensor[users].clone()

    got = evaluate_scores(score_fn, np.arange(len(scores)), sp.csr_matrix(known), sp.csr_matrix(heldout), ks=(10,))
    want = reference_metrics(
        scores, [set(np.flatnonzero(r)) for r in known], [set(np.flatnonzero(r)) for r in heldout], 10
    )
    assert got["recall@10"] == pytest.approx(want["recall@10"])
    assert got["recall@10"] > 0  # held-out items surface once known ones are masked


def test_perfect_ranking_scores_one():
    heldout = sp.csr_matrix(np.array([[0, 1, 1, 0], [1, 0, 0, 0]], dtype=np.float32))
    topk = np.array([[1, 2, 0], [0, 3, 2]])
    hits = hits_at_k(topk, heldout)
    assert hits.tolist() == [[True, True, False], [True, False, False]]
    assert ndcg_at_k(hits, np.array([2, 1])).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_export_quality_recall_ndcg_matches_the_reference(seed, k):
    """export/quality.py's numpy Recall/NDCG (the artifact's checks) equals training's definition."""
    from export.quality import recall_ndcg_at_k, topk_by_scores

    scores, known, heldout = random_case(seed)
    _, ranked = topk_by_scores(scores, np.eye(scores.shape[1], dtype=np.float32), k, exclude=sp.csr_matrix(known))
    got = recall_ndcg_at_k(ranked, sp.csr_matrix(heldout), k)
    want = reference_metrics(
        scores, [set(np.flatnonzero(r)) for r in known], [set(np.flatnonzero(r)) for r in heldout], k
    )
    assert got[f"recall@{k}"] == pytest.approx(want[f"recall@{k}"], abs=1e-9)
    assert got[f"ndcg@{k}"] == pytest.approx(want[f"ndcg@{k}"], abs=1e-9)
    assert got["n_users"] == int((heldout.sum(1) > 0).sum())


def test_export_quality_ignores_padding_ids():
    """A ``-1`` (no item) never counts as a hit, not even of the previous row's last item."""
    from export.quality import recall_ndcg_at_k

    heldout = sp.csr_matrix(np.array([[0, 0, 1], [1, 0, 0]], dtype=np.float32))
    got = recall_ndcg_at_k(np.array([[1, 0], [-1, -1]]), heldout, 2)
    assert got == {"recall@2": 0.0, "ndcg@2": 0.0, "n_users": 2}
    got = recall_ndcg_at_k(np.array([[2, -1], [0, -1]]), heldout, 2)
    assert got == {"recall@2": 1.0, "ndcg@2": 1.0, "n_users": 2}


# ---------------------------------------------------------------------------- the one top-k rule
def _reference_top_k(scores: np.ndarray, k: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Sort every whole row by (score descending, id ascending): the rule, by its definition."""
    ids = np.broadcast_to(np.arange(scores.shape[1]), scores.shape) if ids is None else ids
    return np.stack([np.lexsort((key, -row))[:k] for row, key in zip(scores, ids)])


@pytest.mark.parametrize("k", [1, 3, 7, 12])
def test_top_k_rows_breaks_ties_by_the_lower_id_at_the_cut_off_too(k):
    """Many ties (scores from 4 values): the kept set and its order are the full sort's, also where
    the tie straddles the k-th place; the unordered form keeps the same set; ``ids`` re-keys ties."""
    from export.quality import top_k_rows

    rng = np.random.default_rng(k)
    scores = rng.integers(0, 4, size=(50, 12)).astype(np.float32)
    got = top_k_rows(scores, k)
    np.testing.assert_array_equal(got, _reference_top_k(scores, k))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(np.sort(top_k_rows(scores, k, ordered=False), axis=1), np.sort(got, axis=1))
    ids = rng.permuted(np.tile(np.arange(100, 112), (50, 1)), axis=1)
    np.testing.assert_array_equal(top_k_rows(scores, k, ids=ids), _reference_top_k(scores, k, ids))


def test_top_k_rows_edges():
    from export.quality import top_k_rows

    np.testing.assert_array_equal(top_k_rows(np.array([[1.0, 3.0, 2.0]]), 2), [[1, 2]])
    np.testing.assert_array_equal(top_k_rows(np.array([[1.0, 3.0, 2.0]]), 10), [[1, 2, 0]])  # k > n
    np.testing.assert_array_equal(top_k_rows(np.array([[0.0, -np.inf, 0.0, 5.0]]), 3), [[3, 0, 2]])
    assert top_k_rows(np.zeros((2, 3)), 0).shape == (2, 0)


def test_topk_by_scores_follows_the_rule_and_pads_excluded():
    """The exporter's exact ranking is top_k_rows over the scores, excluded items last and -1."""
    from export.quality import topk_by_scores

    users = np.array([[1.0], [1.0]], dtype=np.float32)
    items = np.array([[2.0], [1.0], [2.0], [1.0]], dtype=np.float32)
    scores, ids = topk_by_scores(users, items, 3, exclude=sp.csr_matrix(np.array([[0, 0, 0, 0], [1, 1, 1, 0]])))
    assert ids.tolist() == [[0, 2, 1], [3, -1, -1]]
    assert scores[0].tolist() == [2.0, 2.0, 1.0] and scores[1, 0] == 1.0 and np.isneginf(scores[1, 1:]).all()


def test_tie_aware_recall_counts_ties_and_ignores_padding():
    from export.quality import tie_aware_overlap_at_k, tie_aware_recall

    reference = np.array([[3.0, 2.0, 2.0, 1.0], [1.0, -np.inf, -np.inf, -np.inf]])
    # row 0: the 2nd best is 2.0, so item 2 (tied with item 1) is a hit and item 3 is not
    assert tie_aware_overlap_at_k(np.array([[0, 2], [0, -1]]), reference, 2) == 1.0
    assert tie_aware_overlap_at_k(np.array([[0, 3], [0, -1]]), reference, 2) == pytest.approx(2 / 3)
    # the tolerance: absolute plus relative to |kth|
    got_scores, kth = np.array([[0.99]]), np.array([1.0])
    assert tie_aware_recall(np.array([[5]]), got_scores, kth, [1]) == 0.0
    assert tie_aware_recall(np.array([[5]]), got_scores, kth, [1], atol=0.0, rtol=0.02) == 1.0
    assert tie_aware_recall(np.array([[-1]]), np.array([[9.0]]), kth, [1]) == 0.0
