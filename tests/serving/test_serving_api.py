"""Filters, similar items and fold-in of `serving.recommender.Recommender`, against brute force.

Artifacts: the tiny dense MF (flat index), a tiny DSL MF at density 0.25 exported with the sparse
index in both layouts (prefix: dsl-mixed; postings: dsl), its shard parts, and a tiny LightGCN.
The oracle scores every item with the served vectors (`Artifact.user_vectors` / `item_vectors`)
and ranks with numpy; ties are tolerated by comparing scores position by position and the id
sets above the k-th score.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from common.propagation import normalized_adjacency, propagate
from conftest import run_cli
from export.artifact import load_artifact
from export.shards import split_artifact
from serving.fold_in import GraphFoldIn, user_row_budget
from serving.recommender import Query, QueryError, Recommender, SimilarQuery

N_USERS, N_ITEMS = 120, 200


@pytest.fixture(scope="module")
def artifacts(tiny_mf_artifact, tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("api-artifacts")
    out = {"flat": tiny_mf_artifact}
    for layout, updater in (("prefix", "dsl-mixed"), ("postings", "dsl")):
        run = root / f"run-{updater}"
        run_cli(
            "-m",
            "train",
            "--data",
            "synthetic",
            "--model",
            "mf",
            "--out",
            str(run),
            "--epochs",
            "2",
            "--seed",
            "1",
            f"--data.n_users={N_USERS}",
            f"--data.n_items={N_ITEMS}",
            "--sparsity.density=0.25",
            f"--sparsity.updater={updater}",
            "--run.threads=1",
            "--quiet",
            cwd=root,
        )
        out[f"sparse-{layout}"] = root / f"art-{updater}"
        run_cli(
            "-m",
            "export",
            str(run),
            "--out",
            str(out[f"sparse-{layout}"]),
            "--index",
            "sparse",
            "--no-memory",
            "--quiet",
            cwd=root,
        )
    run = root / "run-lightgcn"
    run_cli(
        "-m",
        "train",
        "--data",
        "synthetic",
        "--model",
        "lightgcn",
        "--out",
        str(run),
        "--epochs",
        "2",
        "--seed",
        "3",
        f"--data.n_users={N_USERS}",
        f"--data.n_items={N_ITEMS}",
        "--run.threads=1",
        "--quiet",
        cwd=root,
    )
    out["lightgcn"] = root / "art-lightgcn"
    run_cli("-m", "export", str(run), "--out", str(out["lightgcn"]), "--no-memory", "--quiet", cwd=root)
    return out


def _rec(path) -> tuple[object, Recommender]:
    art = load_artifact(path)
    return art, Recommender.from_artifact(art)


def _oracle(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Scores of the k best candidates, highest first."""
    return np.sort(scores[candidates])[::-1][:k]


def _check(found_ids, found_scores, item_index, scores, candidates, k):
    """The answer holds exactly min(k, |candidates|) candidates with the brute-force scores."""
    want = _oracle(scores, candidates, k)
    rows = np.array([item_index[i] for i in found_ids], dtype=np.int64)
    assert len(rows) == len(want), (len(rows), len(want))
    assert len(set(rows.tolist())) == len(rows)
    assert np.isin(rows, candidates).all(), "an item outside the filter was answered"
    np.testing.assert_allclose(found_scores, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores[rows], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "sparse-prefix", "sparse-postings"])
def test_filters_exact_against_brute_force(artifacts, kind):
    art, rec = _rec(artifacts[kind])
    users, items = art.user_vectors(), art.item_vectors()
    seen = art.seen().tocsr()
    item_ids, item_index = art.item_ids, art.item_index()
    rng = np.random.default_rng(0)
    for row in rng.choice(art.n_users, 12, replace=False):
        scores = items @ users[row]
        best = np.argsort(-scores)
        # exclude the user's own top 40 (more than k): the answer must dig below them
        excluded = best[:40]
        for exclude_seen in (True, False):
            removed = np.union1d(excluded, seen[row].indices) if exclude_seen else excluded
            candidates = np.setdiff1d(np.arange(art.n_items), removed)
            q = Query(art.user_ids[row], 10, exclude_seen, exclude_items=tuple(item_ids[i] for i in excluded))
            found = rec.recommend([q])[0]
            _check(found.item_ids, found.scores, item_index, scores, candidates, 10)
        allowed = rng.choice(art.n_items, 15, replace=False)
        q = Query(
            art.user_ids[row],
            10,
            True,
            exclude_items=(item_ids[allowed[0]],),
            allow_items=tuple(item_ids[i] for i in allowed),
        )
        found = rec.recommend([q])[0]
        candidates = np.setdiff1d(allowed, np.union1d(seen[row].indices, [allowed[0]]))
        _check(found.item_ids, found.scores, item_index, scores, candidates, 10)
    # a batch mixing filtered and plain queries answers each as alone
    u = art.user_ids[0]
    batch = rec.recommend([Query(u, 5), Query(u, 5, exclude_items=(item_ids[0],)), Query(u, 5)])
    assert batch[0] == batch[2] == rec.recommend([Query(u, 5)])[0]


def test_filters_reject_unknown_ids_and_filter_the_fallback(artifacts):
    art, rec = _rec(artifacts["flat"])
    with pytest.raises(QueryError, match=r"queries\[1\]\.exclude_items: unknown item ids \['nope', 'x'\]"):
        rec.recommend([Query(art.user_ids[0]), Query(art.user_ids[0], exclude_items=("nope", art.item_ids[0], "x"))])
    with pytest.raises(QueryError, match="allow_items"):
        rec.recommend([Query(art.user_ids[0], allow_items=("nope",))])
    popular = rec.recommend([Query("nobody", 5)])[0].item_ids
    filtered = rec.recommend([Query("nobody", 5, exclude_items=(popular[0],))])[0]
    assert filtered.fallback and filtered.item_ids == rec.recommend([Query("nobody", 6)])[0].item_ids[1:]
    # an empty allow list answers nothing (it is a filter, not "no filter")
    assert rec.recommend([Query(art.user_ids[0], allow_items=())])[0].item_ids == []


@pytest.mark.parametrize("kind", ["flat", "sparse-prefix", "sparse-postings", "lightgcn"])
@pytest.mark.parametrize("metric", ["inner_product", "cosine"])
def test_similar_items_exact_against_brute_force(artifacts, kind, metric):
    art, rec = _rec(artifacts[kind])
    items = art.item_vectors().astype(np.float64)
    norms = np.linalg.norm(items, axis=1)
    item_ids, item_index = art.item_ids, art.item_index()
    for row in np.random.default_rng(1).choice(art.n_items, 10, replace=False):
        scores = items @ items[row]
        if metric == "cosine":
            with np.errstate(divide="ignore", invalid="ignore"):
                scores = np.where(norms > 0, scores / (norms * norms[row]), 0.0) if norms[row] > 0 else 0 * scores
        candidates = np.setdiff1d(np.arange(art.n_items), [row])
        found = rec.similar_items([SimilarQuery(item_ids[row], 10, metric)])[0]
        assert item_ids[row] not in found.item_ids
        _check(found.item_ids, found.scores, item_index, scores, candidates, 10)
    with pytest.raises(QueryError, match="unknown item ids"):
        rec.similar_items([SimilarQuery("no-such-item")])


def test_filters_and_similar_items_through_shard_parts(artifacts):
    """Each part answers from its own items; merged, the parts give the whole artifact's answer."""
    whole_art, whole = _rec(artifacts["sparse-postings"])
    parts = [
        Recommender.from_artifact(load_artifact(p))
        for p in split_artifact(artifacts["sparse-postings"], 2, progress=False)
    ]
    ids = whole_art.item_ids
    for user in whole_art.user_ids[:8]:
        q = Query(user, 10, True, exclude_items=tuple(ids[:30]), allow_items=None)
        want = whole.recommend([q])[0]
        answers = [p.recommend([q])[0] for p in parts]
        got = sorted((s for answer in answers for s in answer.scores), reverse=True)[:10]
        np.testing.assert_allclose(got, want.scores, rtol=1e-5, atol=1e-6)
    sq = SimilarQuery(ids[5], 10)
    want = whole.similar_items([sq])[0]
    got = sorted((s for p in parts for s in p.similar_items([sq])[0].scores), reverse=True)[:10]
    np.testing.assert_allclose(got, want.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["sparse-prefix", "sparse-postings", "flat"])
def test_fold_in_mf_keeps_the_user_row_budget(artifacts, kind):
    art, rec = _rec(artifacts[kind])
    budget = user_row_budget(art)
    users = art.user_vectors()
    trained_nnz = (users != 0).sum(axis=1)
    assert abs(budget - trained_nnz.mean()) <= 1
    fold = rec._fold_in()
    seen = art.seen().tocsr()
    items = art.item_vectors()
    for row in range(10):
        history = seen[row].indices
        if (np.abs(items[history]).sum(axis=0) > 0).sum() < budget:
            continue
        vector = fold.vector(history)
        assert int((vector != 0).sum()) == budget
    # served: the history's items are excluded, the answer ranks by the folded-in vector
    history = tuple(art.item_ids[i] for i in seen[0].indices)
    found = rec.recommend([Query("new-user", 10, True, history=history)])[0]
    assert found.folded_in and not found.fallback and not set(found.item_ids) & set(history)
    scores = items @ fold.vector(seen[0].indices)
    _check(
        found.item_ids,
        found.scores,
        art.item_index(),
        scores,
        np.setdiff1d(np.arange(art.n_items), seen[0].indices),
        10,
    )
    with pytest.raises(QueryError, match="history: empty"):
        rec.recommend([Query("new-user", history=())])
    with pytest.raises(QueryError, match=r"history: unknown item ids \['zzz'\]"):
        rec.recommend([Query("new-user", history=("zzz", art.item_ids[0]))])


def test_fold_in_lightgcn_equals_the_propagation_with_a_new_row(artifacts):
    """With 2 layers the fold-in is the propagation over the graph with the new user added (its base
    row zero); checked on the artifact's own base table and interactions."""
    art = load_artifact(artifacts["lightgcn"])
    base = art.stored_table(art.manifest.vectors.table).to_dense()
    seen = art.seen().tocsr()
    history = np.array([1, 4, 9, 30], dtype=np.int64)
    n_users = seen.shape[0]
    grown = sp.vstack(
        [seen, sp.csr_matrix((np.ones(len(history), np.float32), history, [0, len(history)]), shape=(1, seen.shape[1]))]
    ).tocsr()
    grown_base = np.vstack([base[:n_users], np.zeros((1, base.shape[1]), np.float32), base[n_users:]])
    for n_layers in (1, 2):
        want = propagate(grown_base, normalized_adjacency(grown), n_layers)[n_users]
        got = GraphFoldIn(base, seen, n_layers).vector(history)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    rec = Recommender.from_artifact(art)
    found = rec.recommend([Query("new", 5, True, history=tuple(art.item_ids[i] for i in history))])[0]
    assert found.folded_in and len(found.item_ids) == 5
