"""The `sparse` index end to end: trained DSL runs exported with --index sparse and --index flat,
served in-process and over real HTTP, answer with the same items; the torch path equals the CPU path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from export.artifact import load_artifact
from server_utils import REPO_ROOT, running_server
from serving.backends import TorchSparseSearch
from serving.recommender import Query, Recommender

N_USERS, N_ITEMS = 200, 300


def _run(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Two tiny MF runs (dsl-mixed: prefix masks of varied lengths; dsl: unstructured), each exported sparse
    and flat; the dsl run's sparse export in the default gaps layout and in the postings layout by name."""
    root = tmp_path_factory.mktemp("sparse-serving")
    out: dict[str, dict[str, Path]] = {}
    for layout, updater in (("prefix", "dsl-mixed"), ("gaps", "dsl")):
        run = root / "runs" / updater
        _run(
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
            "--quiet",
        )
        out[layout] = {}
        for index in ("sparse", "flat"):
            folder = root / "artifacts" / f"{updater}-{index}"
            _run("-m", "export", str(run), "--out", str(folder), "--index", index, "--no-memory", "--quiet")
            out[layout][index] = folder
        if updater == "dsl":
            folder = root / "artifacts" / "dsl-postings"
            _run(
                "-m",
                "export",
                str(run),
                "--out",
                str(folder),
                "--index",
                "sparse",
                "--index-param",
                "layout=postings",
                "--no-memory",
                "--quiet",
            )
            out["postings"] = {"sparse": folder, "flat": out[layout]["flat"]}
    return out


def _answers(artifact: Path, queries: list[Query]) -> list:
    return Recommender.from_artifact(load_artifact(artifact)).recommend(queries)


def _same_items(got_ids, got_scores, want_ids, want_scores) -> None:
    """Same scores rank by rank; ids equal except among tied scores (then the same set of scores)."""
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-6)
    for position, (a, b) in enumerate(zip(got_ids, want_ids)):
        if a != b:
            tied = np.isclose(want_scores, want_scores[position], rtol=1e-5, atol=1e-6)
            assert a in set(np.asarray(want_ids)[tied]) or tied.sum() > 1, (position, a, b)


@pytest.mark.parametrize("layout", ["prefix", "gaps", "postings"])
def test_sparse_artifact_answers_like_flat_in_process(runs, layout):
    sparse_art = load_artifact(runs[layout]["sparse"])
    entry = sparse_art.manifest.index
    assert entry.kind == "sparse" and entry.layout == layout and entry.exact
    assert entry.extra["tie_aware_recall@20_vs_flat"] == 1.0
    assert load_artifact(runs[layout]["flat"]).index_kind == "flat"
    users = sparse_art.user_ids
    queries = [Query(u, k, e) for u in users for k, e in ((10, True), (N_ITEMS, False))]
    for got, want in zip(_answers(runs[layout]["sparse"], queries), _answers(runs[layout]["flat"], queries)):
        assert len(got.item_ids) == len(want.item_ids)
        _same_items(got.item_ids, np.array(got.scores), want.item_ids, np.array(want.scores))


def test_prefix_export_orders_items_by_length_and_reports_the_index(runs):
    art = load_artifact(runs["prefix"]["sparse"])
    lengths = np.load(art.path / "items.sparse.lengths.npy").astype(int)
    assert (np.diff(lengths) >= 0).all() and art.manifest.item_order.startswith("items sorted by prefix length")
    flat = load_artifact(runs["prefix"]["flat"])
    assert flat.manifest.item_order == "as trained" and sorted(flat.item_ids) == sorted(art.item_ids)
    rec = Recommender.from_artifact(art)
    info = rec.describe_index()
    assert (info["kind"], info["layout"], info["device"]) == ("sparse", "prefix", "cpu")
    assert info["nnz"] == int(lengths.sum()) and info["bytes"] == 4 * (info["nnz"] + info["padding_values"])


@pytest.mark.parametrize("layout", ["prefix", "gaps", "postings"])
def test_torch_path_equals_the_cpu_path(runs, layout):
    """TorchSparseSearch on the CPU device runs the GPU code path: same top-k as the CPU index."""
    art = load_artifact(runs[layout]["sparse"])
    cpu = art.load_index()
    torch_search = TorchSparseSearch(layout, art.sparse_index_arrays(), art.dim, art.n_items, device="cpu")
    queries = np.array(art.user_vectors())
    queries[0] = 0.0  # an all-zero user: every score 0
    for k in (10, N_ITEMS + 5):
        want_scores, want_ids = cpu.search(queries, k)
        got_scores, got_ids = torch_search.search(queries, k)
        np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-6)
        exact = queries @ art.item_vectors().T
        valid = got_ids >= 0
        assert (valid == (want_ids >= 0)).all()
        np.testing.assert_allclose(
            np.take_along_axis(exact, np.where(valid, got_ids, 0), axis=1)[valid],
            want_scores[valid],
            rtol=1e-5,
            atol=1e-5,
        )


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["prefix", "gaps", "postings"])
def test_cuda_sparse_search_equals_the_cpu_path(runs, layout):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    art = load_artifact(runs[layout]["sparse"])
    queries = np.ascontiguousarray(art.user_vectors())
    want_scores, _ = art.load_index().search(queries, 20)
    got_scores, got_ids = TorchSparseSearch(
        layout, art.sparse_index_arrays(), art.dim, art.n_items, device="cuda"
    ).search(queries, 20)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-4, atol=1e-5)
    exact = queries @ art.item_vectors().T
    np.testing.assert_allclose(np.take_along_axis(exact, got_ids, axis=1), want_scores, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["prefix", "gaps", "postings"])
def test_service_over_http_on_a_sparse_artifact_equals_flat(runs, layout):
    users = load_artifact(runs[layout]["flat"]).user_ids[:60]
    queries = [{"user_id": u, "k": 10, "exclude_seen": e} for u in users for e in (True, False)]
    want = _answers(runs[layout]["flat"], [Query(q["user_id"], q["k"], q["exclude_seen"]) for q in queries])
    with running_server(runs[layout]["sparse"], via="cli") as server:
        info = httpx.get(server.url + "/info", timeout=30).json()
        served = info["index"]["served"]
        assert info["index"]["kind"] == "sparse" and served["layout"] == layout
        assert served["nnz"] > 0 and served["bytes"] > 0 and served["device"] == "cpu"
        batch = httpx.post(server.url + "/recommend_batch", json={"queries": queries}, timeout=60).json()
        single = [httpx.post(server.url + "/recommend", json=q, timeout=30).json() for q in queries[:10]]
        unknown = httpx.post(server.url + "/recommend", json={"user_id": "nobody", "k": 5}, timeout=30).json()
    assert unknown["fallback"] is True and len(unknown["items"]) == 5
    for answer, reference in zip(batch, want):
        assert answer["fallback"] is False
        _same_items(
            [i["item_id"] for i in answer["items"]],
            np.array([i["score"] for i in answer["items"]]),
            reference.item_ids,
            np.array(reference.scores),
        )
    for answer, reference in zip(single, batch[:10]):
        assert answer == reference
