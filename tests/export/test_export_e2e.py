"""End to end: a real (tiny) training run -> python -m export -> verify -> reader equals the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from export.artifact import load_artifact

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


run = run_cli  # python <args> from cwd, this checkout importable; fails the test with its stderr


@pytest.fixture(scope="module")
def trained_run(tiny_mf_run):
    """The session's tiny MF run (tests/conftest.py)."""
    return tiny_mf_run


def test_cli_export_matches_the_trained_model(trained_run, tmp_path):
    from train.checkpoint import load_trained

    out = tmp_path / "artifact"
    report = json.loads(
        run("-m", "export", str(trained_run), "--out", str(out), "--quiet", "--no-memory", cwd=tmp_path).stdout
    )
    assert report["artifact"] == str(out)
    assert run("-m", "export", "verify", str(out), cwd=tmp_path).returncode == 0

    model, dataset, _, metrics = load_trained(trained_run)
    artifact = load_artifact(out)
    user_ref, item_ref = (t.detach().numpy() for t in model.final_embeddings())
    np.testing.assert_array_equal(artifact.user_vectors(), user_ref)
    np.testing.assert_array_equal(artifact.item_vectors(), item_ref)
    assert artifact.user_ids == list(dataset.user_ids) and artifact.item_ids == list(dataset.item_ids)
    assert (artifact.seen() != dataset.csr("train")).nnz == 0
    np.testing.assert_array_equal(artifact.popularity(), dataset.item_popularity())
    manifest = artifact.manifest
    assert manifest.training.metrics["test"] == metrics["test"]
    # the artifact serves what was trained: its exact test recall is the training run's
    assert manifest.quality["exact"]["recall@20"] == pytest.approx(metrics["test"]["recall@20"], abs=1e-6)
    assert manifest.fidelity["overlap@20"] == 1.0


def test_cli_export_quantised_approximate(trained_run, tmp_path):
    out = tmp_path / "artifact"
    run(
        "-m",
        "export",
        str(trained_run),
        "--out",
        str(out),
        "--values",
        "int8",
        "--index",
        "hnsw",
        "--quiet",
        "--no-memory",
        cwd=tmp_path,
    )
    manifest = load_artifact(out).manifest
    assert manifest.value_dtype == "int8" and manifest.index.kind == "hnsw"
    # floors from the implementation with a margin (measured 0.996 and 0.992 on this run, seed 1)
    assert 0.97 <= manifest.index.extra["recall@20_vs_flat"] <= 1.0
    assert 0.97 <= manifest.fidelity["overlap@20"] <= 1.0
    scores, ids = load_artifact(out).load_index().search(load_artifact(out).user_vectors()[:3], 20)
    assert ids.shape == (3, 20) and (ids >= 0).all()


def test_cli_refuses_an_existing_folder_and_a_missing_run(trained_run, tmp_path):
    (tmp_path / "taken").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "export", str(trained_run), "--out", str(tmp_path / "taken"), "--quiet"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "already exists" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "export", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), "--quiet"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "nope" in done.stderr
    assert not (tmp_path / "x").exists()


def _train(tmp_path_factory, name: str, *flags: str) -> Path:
    root = tmp_path_factory.mktemp(name)
    run(
        "-m",
        "train",
        "--data",
        "synthetic",
        "--model",
        "mf",
        "--out",
        str(root / "run"),
        "--epochs",
        "2",
        "--seed",
        "1",
        "--data.n_users=200",
        "--data.n_items=300",
        "--sparsity.density=0.3",
        "--run.threads=1",
        *flags,
        "--quiet",
        cwd=root,
    )
    return root / "run"


@pytest.fixture(scope="module")
def nested_run(tmp_path_factory):
    """dsl-nested: every row's mask is a prefix [0, L_r) of the dimensions."""
    return _train(tmp_path_factory, "nested", "--sparsity.updater=dsl-nested")


@pytest.fixture(scope="module")
def dsl_run(tmp_path_factory):
    """plain dsl: unstructured masks."""
    return _train(tmp_path_factory, "dsl", "--sparsity.updater=dsl")


def test_cli_exports_a_nested_run_as_prefix_tables(nested_run, tmp_path):
    from train.checkpoint import load_trained

    out = tmp_path / "artifact"
    report = json.loads(
        run("-m", "export", str(nested_run), "--out", str(out), "--quiet", "--no-memory", cwd=tmp_path).stdout
    )
    assert report["table_layouts"] == {"user_embedding": "prefix", "item_embedding": "prefix"}
    assert run("-m", "export", "verify", str(out), cwd=tmp_path).returncode == 0

    model, dataset, *_ = load_trained(nested_run)
    artifact = load_artifact(out)
    # items come in prefix-length order (what the sparse index's prefix layout needs), in the id map itself
    position = {item: i for i, item in enumerate(dataset.item_ids)}
    order = np.array([position[item] for item in artifact.item_ids])
    assert (np.diff(np.load(out / "item_embedding.lengths.npy").astype(int)) >= 0).all()
    for name, table in model.sparse_tables().items():
        rows = order if name == "item_embedding" else np.arange(table.n_rows)
        entry = artifact.manifest.tables[name]
        mask = table.mask.numpy().astype(bool)
        assert entry.layout == "prefix" and entry.nnz == mask.sum()
        # one byte per row of lengths instead of one byte per value of column index + 4 per row of pointers
        assert entry.extra["csr_bytes"] - entry.bytes == entry.nnz + 3 * entry.shape[0] + 4
        np.testing.assert_array_equal(
            artifact.tables()[name].toarray(), (table.weight * table.mask).detach().numpy()[rows]
        )
    user_ref, item_ref = (t.detach().numpy() for t in model.final_embeddings())
    np.testing.assert_array_equal(artifact.user_vectors(), user_ref)
    np.testing.assert_array_equal(artifact.item_vectors(), item_ref[order])
    assert (artifact.seen() != dataset.csr("train")[:, order]).nnz == 0
    assert artifact.manifest.fidelity["overlap@20"] == 1.0


def test_cli_refuses_prefix_layout_for_unstructured_masks(dsl_run, tmp_path):
    out = tmp_path / "artifact"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            str(dsl_run),
            "--out",
            str(out),
            "--table-layout",
            "prefix",
            "--quiet",
            "--no-memory",
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "not prefix-shaped" in done.stderr and "user_embedding" in done.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
    report = json.loads(
        run("-m", "export", str(dsl_run), "--out", str(out), "--quiet", "--no-memory", cwd=tmp_path).stdout
    )
    assert report["table_layouts"] == {"user_embedding": "csr", "item_embedding": "csr"}  # auto
