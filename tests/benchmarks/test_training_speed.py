"""The training-speed benchmark on a small synthetic graph: both modes timed, alternating, with
provenance; CUDA measured or skipped with a reason; an unresolvable dataset named clearly."""

import json

import pytest
import torch

from benchmarks.training.speed import main


def test_bench_train_times_dense_and_dsl_side_by_side(tmp_path):
    results = tmp_path / "results"
    code = main(
        [
            "--data",
            "synthetic",
            "--epochs",
            "2",
            "--threads",
            "1",
            "--results",
            str(results),
            "--set",
            "data.n_users=150",
            "--set",
            "data.n_items=200",
            "--set",
            "optim.batch_size=512",
        ]
    )
    assert code == 0
    report = json.loads((results / "train-speed.json").read_text())
    assert {"command", "commit", "date", "machine"} <= set(report["provenance"])
    assert report["protocol"]["threads"] == 1 and report["protocol"]["batch_size"] == 512
    cpu = report["devices"]["cpu"]
    assert [(r["mode"], r["epoch"]) for r in cpu["epochs"]] == [("dense", 1), ("dsl", 1), ("dense", 2), ("dsl", 2)]
    assert all(r["seconds"] > 0 and r["loss"] > 0 for r in cpu["epochs"])
    assert len(cpu["summary"]["dsl_over_dense_pairs"]) == 2
    if torch.cuda.is_available():
        assert "summary" in report["devices"]["cuda"]
    else:
        assert "no CUDA device" in report["devices"]["cuda"]["skipped"]
    text = (results / "train-speed.md").read_text()
    assert "dsl over dense" in text and "Written by" in text


def test_bench_train_names_a_missing_dataset(tmp_path):
    with pytest.raises(SystemExit, match="cannot load data 'no-such-data'"):
        main(["--data", "no-such-data", "--results", str(tmp_path)])
