"""`--data.holdout_users` and the fold-in benchmark (benchmarks/fold_in.py) on tiny synthetic runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.fold_in import hidden_users, main
from conftest import TINY_ITEMS, TINY_USERS, run_cli
from train.config import DataConfig
from train.data.dataset import Dataset
from train.data.interactions import DataError
from train.data.load import load_dataset


def test_holdout_hides_train_and_valid_of_a_seeded_choice_only():
    config = DataConfig(name="synthetic", n_users=300, n_items=200, seed=5)
    full = load_dataset(config, progress=False)
    held = load_dataset(
        DataConfig(name="synthetic", n_users=300, n_items=200, seed=5, holdout_users=25), progress=False
    )
    again = load_dataset(
        DataConfig(name="synthetic", n_users=300, n_items=200, seed=5, holdout_users=25), progress=False
    )
    users = hidden_users(full, held)
    assert len(users) == 25 and np.array_equal(users, hidden_users(full, again))
    assert np.isin(users, full.test[0]).all()  # every hidden user has test items to be measured on
    for split in ("train", "valid"):
        kept = ~np.isin(getattr(full, split)[0], users)
        assert np.array_equal(getattr(held, split)[0], getattr(full, split)[0][kept])
        assert np.array_equal(getattr(held, split)[1], getattr(full, split)[1][kept])
    assert all(np.array_equal(a, b) for a, b in zip(held.test, full.test))
    with pytest.raises(DataError, match="holdout_users"):
        load_dataset(DataConfig(name="synthetic", n_users=300, n_items=200, holdout_users=10_000), progress=False)


def test_fold_in_bench_end_to_end(tmp_path):
    runs = {}
    for name, extra in (("trained", []), ("holdout", ["--data.holdout_users=20"])):
        run, art = tmp_path / f"run-{name}", tmp_path / f"art-{name}"
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
            "3",
            "--seed",
            "1",
            f"--data.n_users={TINY_USERS}",
            f"--data.n_items={TINY_ITEMS}",
            "--run.threads=1",
            "--quiet",
            *extra,
            cwd=tmp_path,
        )
        run_cli("-m", "export", str(run), "--out", str(art), "--no-memory", "--quiet", cwd=tmp_path)
        runs[name] = (run, art)
    assert len(hidden_users(Dataset.load(runs["trained"][0] / "data"), Dataset.load(runs["holdout"][0] / "data"))) == 20
    out = tmp_path / "fold-in"
    assert (
        main(
            [
                "--pair",
                "tiny MF",
                str(runs["trained"][0]),
                str(runs["trained"][1]),
                str(runs["holdout"][0]),
                str(runs["holdout"][1]),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.with_suffix(".json").read_text())
    pair = report["pairs"][0]
    assert pair["users"] == 20 and pair["fold_in_settings"]["kind"] == "ridge"
    for way in ("fold_in", "trained", "popularity"):
        assert 0.0 <= pair[way]["ndcg@20"] <= 1.0
    assert "| tiny MF | 20 |" in out.with_suffix(".md").read_text() and report["provenance"]["commit"]
    by_lambda = pair["valid_ndcg@20_by_ridge_lambda"]  # the penalty served is the best on valid
    assert by_lambda[f"{pair['fold_in_settings']['ridge_lambda']:g}"] == max(by_lambda.values())
    # --update: a second pair is added beside the first, which keeps its figures and its provenance
    old_provenance = {**pair["provenance"], "command": "an earlier command"}
    report["pairs"][0]["provenance"] = old_provenance
    out.with_suffix(".json").write_text(json.dumps(report))
    paths = [str(runs["trained"][0]), str(runs["trained"][1]), str(runs["holdout"][0]), str(runs["holdout"][1])]
    assert main(["--pair", "tiny MF again", *paths, "--out", str(out), "--update"]) == 0
    updated = json.loads(out.with_suffix(".json").read_text())
    assert [p["name"] for p in updated["pairs"]] == ["tiny MF", "tiny MF again"]
    assert updated["pairs"][0]["provenance"] == old_provenance
    assert updated["pairs"][0]["fold_in"] == pair["fold_in"] == updated["pairs"][1]["fold_in"]
    assert "an earlier command" in out.with_suffix(".md").read_text()
    # measured again under its own name, a pair takes its old place with the new provenance
    assert main(["--pair", "tiny MF", *paths, "--out", str(out), "--update"]) == 0
    again = json.loads(out.with_suffix(".json").read_text())
    assert [p["name"] for p in again["pairs"]] == ["tiny MF", "tiny MF again"]
    assert again["pairs"][0]["provenance"]["command"] != "an earlier command"
