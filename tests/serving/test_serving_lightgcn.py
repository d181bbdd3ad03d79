"""A sparse LightGCN artifact served over real HTTP answers what the trained model ranks.

The chain under test: DSL training (dsl-mixed at density 0.2, as `make demo` trains it) -> export
(sparse joint table, propagation rebuilt with scipy at load) -> `python -m serving` on a free port ->
/recommend, checked against the torch model's own scores with train items excluded.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from conftest import run_cli
from server_utils import running_server

pytestmark = pytest.mark.slow
N_USERS, N_ITEMS, K = 120, 150, 10


@pytest.fixture(scope="module")
def lightgcn_run_and_artifact(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lightgcn-dsl")
    run_cli(
        "-m",
        "train",
        "--data",
        "synthetic",
        "--model",
        "lightgcn",
        "--out",
        str(root / "run"),
        "--epochs",
        "2",
        "--seed",
        "3",
        f"--data.n_users={N_USERS}",
        f"--data.n_items={N_ITEMS}",
        "--sparsity.density=0.2",
        "--sparsity.updater=dsl-mixed",
        "--run.threads=1",
        "--quiet",
        cwd=root,
    )
    run_cli("-m", "export", str(root / "run"), "--out", str(root / "artifact"), "--no-memory", "--quiet", cwd=root)
    return root / "run", root / "artifact"


def test_sparse_lightgcn_artifact_served_over_http(lightgcn_run_and_artifact):
    from train.checkpoint import load_trained

    run, artifact = lightgcn_run_and_artifact
    model, dataset, _, _ = load_trained(run)
    seen = dataset.csr("train").toarray() > 0
    with torch.no_grad():
        scores = model.full_scores(torch.arange(dataset.n_users)).numpy()
    with running_server(artifact) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        info = client.get("/info").json()
        assert info["model_kind"] == "lightgcn" and info["n_layers"] == model.n_layers
        assert info["table_layouts"] == {"embedding": "prefix"}  # dsl-mixed rows are prefixes: no column indices
        # the default budget rule gives the small-dense rival's count: n_rows x round(density x dim)
        assert info["nnz"] == int(model.embedding.mask.sum()) == (N_USERS + N_ITEMS) * round(0.2 * model.dim)
        for user in range(0, dataset.n_users, 17):
            answer = client.post("/recommend", json={"user_id": dataset.user_ids[user], "k": K, "exclude_seen": True})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["fallback"] is False and len(body["items"]) == K
            expected = np.where(seen[user], -np.inf, scores[user])
            served = [dataset.item_ids.index(entry["item_id"]) for entry in body["items"]]
            assert not seen[user, served].any()  # train items excluded
            # the served scores are the model's, and they are its top K (ties may swap equal items)
            np.testing.assert_allclose(
                [entry["score"] for entry in body["items"]], expected[served], rtol=1e-4, atol=1e-5
            )
            np.testing.assert_allclose(
                np.sort(expected[served])[::-1], np.sort(expected)[::-1][:K], rtol=1e-4, atol=1e-5
            )
