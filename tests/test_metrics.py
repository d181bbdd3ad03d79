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
    got = evaluate_scores(lambda users: tensor[users].clone(), np.arange(len(scores)),
                          sp.csr_matrix(known), sp.csr_matrix(heldout), ks=(k,), batch_size=7)
    want = reference_metrics(scores, [set(np.flatnonzero(r)) for r in known],
                             [set(np.flatnonzero(r)) for r in heldout], k)
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
    want = reference_metrics(scores, [set(np.flatnonzero(r)) for r in known],
                             [set(np.flatnonzero(r)) for r in heldout], 10)
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
    want = reference_metrics(scores, [set(np.flatnonzero(r)) for r in known],
                             [set(np.flatnonzero(r)) for r in heldout], k)
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
