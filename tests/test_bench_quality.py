"""The reduced quality benchmark: every updater runs, the records are complete, budgets hold."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.bench_quality import UPDATERS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reduced_quality_benchmark(tmp_path):
    # synthetic data, run from tmp_path: the same test whatever the cwd and whatever data/ caches
    cmd = [sys.executable, "-m", "train.bench_quality", "--reduced", "--data", "synthetic", "--results",
           str(tmp_path / "results"), "--runs", str(tmp_path / "runs"), "--set", "run.threads=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((tmp_path / "results" / "quality-reduced.json").read_text())
    assert len(records) == 2 * (1 + len(UPDATERS))
    required = {"model", "updater", "density", "nnz", "test_ndcg@20", "test_recall@20", "seconds"}
    for record in records:
        assert required <= set(record)
        assert 0.0 <= record["test_ndcg@20"] <= 1.0
        if record["density"] < 1.0 and record["updater"] != "small-dense":
            assert record["nnz"] == round(record["density"] * record["n_params_dense"]), record
        if record["updater"] == "small-dense":
            assert record["dim"] == round(0.2 * 64)
    assert (tmp_path / "results" / "quality-reduced.md").read_text().count("| mf |") == 2
    assert (tmp_path / "results" / "quality-reduced.png").stat().st_size > 10_000
