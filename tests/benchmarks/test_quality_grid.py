"""The reduced quality benchmark: every updater runs, the records are complete, budgets hold."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.quality.grid import UPDATERS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_reduced_quality_benchmark(tmp_path):
    # synthetic data, run from tmp_path: the same test whatever the cwd and whatever data/ caches
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.quality.grid",
        "--reduced",
        "--data",
        "synthetic",
        "--results",
        str(tmp_path / "results"),
        "--runs",
        str(tmp_path / "runs"),
        "--set",
        "run.threads=1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "results" / "quality-reduced.json").read_text())
    assert {"command", "commit", "machine", "date"} <= set(report["provenance"])
    records = report["records"]
    assert len(records) == 2 * (1 + len(UPDATERS))
    required = {"model", "updater", "density", "nnz", "test_ndcg@20", "test_recall@20", "seconds"}
    for record in records:
        assert required <= set(record)
        assert 0.0 <= record["test_ndcg@20"] <= 1.0
        if record["density"] < 1.0 and record["updater"] != "small-dense":
            # equal budgets: n_rows x round(density x 64), the small-dense rival's count
            assert record["nnz"] == record["n_params_dense"] // 64 * round(record["density"] * 64), record
        if record["updater"] == "small-dense":
            assert record["dim"] == round(0.2 * 64)
    assert (tmp_path / "results" / "quality-reduced.md").read_text().count("| mf |") == 2
    assert (tmp_path / "results" / "quality-reduced.png").stat().st_size > 10_000


def test_finished_runs_are_skipped_and_stale_folders_refused(tmp_path):
    from benchmarks.quality.grid import finished_metrics
    from common.io import atomic_write_json
    from train.config import load_config

    config = load_config(overrides=[f"run.out={tmp_path}", "sparsity.density=0.2"])
    assert finished_metrics(tmp_path, config) is None  # nothing yet: train
    atomic_write_json(tmp_path / "config.json", config.to_dict())
    assert finished_metrics(tmp_path, config) is None  # started, not finished: resume
    atomic_write_json(tmp_path / "metrics.json", {"epochs": 3})
    assert finished_metrics(tmp_path, config) == {"epochs": 3}  # finished: not trained again
    other = load_config(overrides=[f"run.out={tmp_path}", "sparsity.density=0.1"])
    with pytest.raises(SystemExit, match=str(tmp_path)):
        finished_metrics(tmp_path, other)


def test_budget_note_without_a_small_dense_rival_in_the_table():
    from benchmarks.quality.grid import budget_note

    def rec(updater, nnz, density=0.1):
        return {
            "model": "mf",
            "updater": updater,
            "density": density,
            "nnz": nnz,
            "dim": 64,
            "n_params_dense": 2625 * 64,
        }

    assert "Budgets are equal" in budget_note([rec("dsl", 2625 * 6)])  # the small-dense count, no rival listed
    assert "Budgets are equal" in budget_note([rec("dsl", 15750), rec("small-dense", 15750)])
    assert "budget_rule=density" in budget_note([rec("dsl", 16800)])  # round(0.1 x 168,000)
    assert "budget_rule=density" in budget_note([rec("dsl", 16800), rec("small-dense", 15750)])
    assert "No masked runs" in budget_note([rec("small-dense", 15750)])
