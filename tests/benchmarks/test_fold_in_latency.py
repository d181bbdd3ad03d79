"""benchmarks/serving/fold_in_latency.py on a tiny trained pair (synthetic MF), into a temp folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.fold_in import by_user, hidden_users
from benchmarks.serving.fold_in_latency import TARGET_RATIO, histories, main
from conftest import TINY_ITEMS, TINY_USERS, run_cli
from train.data.dataset import Dataset

HIDDEN = 20


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("fold-in-latency")
    runs = {}
    for name, extra in (("trained", []), ("holdout", [f"--data.holdout_users={HIDDEN}"])):
        run = root / f"run-{name}"
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
            f"--data.n_users={TINY_USERS}",
            f"--data.n_items={TINY_ITEMS}",
            "--run.threads=1",
            "--quiet",
            *extra,
            cwd=root,
        )
        runs[name] = run
    art = root / "art-holdout"
    run_cli("-m", "export", str(runs["holdout"]), "--out", str(art), "--no-memory", "--quiet", cwd=root)
    return root, runs["trained"], runs["holdout"], art


def test_histories_are_the_hidden_users_train_items(pair):
    _, trained, holdout, _ = pair
    found, known = histories(trained, holdout)
    full, held = Dataset.load(trained / "data"), Dataset.load(holdout / "data")
    users = hidden_users(full, held)
    assert len(found) == HIDDEN == len(users)
    ids = np.asarray(full.item_ids)
    train = by_user(full.train, full.n_users)
    assert [sorted(h) for h in found] == [sorted(ids[train[u]].tolist()) for u in users]
    hidden_ids = {full.user_ids[u] for u in users}
    assert known and not hidden_ids & set(known)
    with pytest.raises(ValueError, match="hides no user"):
        histories(trained, trained)


def test_latency_report_in_a_temp_folder(pair):
    root, trained, holdout, art = pair
    out = root / "out" / "fold-in-latency"
    assert (
        main(
            [
                "--artifact",
                str(art),
                "--trained-run",
                str(trained),
                "--holdout-run",
                str(holdout),
                "--calls",
                "30",
                "--warmup",
                "3",
                "--allow-noisy",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.with_suffix(".json").read_text())
    result = report["result"]
    assert result["known"]["n"] == result["fold_in"]["n"] == 30
    for kind in ("known", "fold_in"):
        assert 0 < result[kind]["p50_ms"] <= result[kind]["p99_ms"]
    assert result["p50_ratio"] == pytest.approx(result["fold_in"]["p50_ms"] / result["known"]["p50_ms"], abs=1e-3)
    assert result["target_met"] == (result["p50_ratio"] <= TARGET_RATIO)
    assert report["hidden_users"] == HIDDEN and report["fold_in_settings"]["kind"] == "ridge"
    assert 1 <= result["history_length"]["p50"] <= result["history_length"]["max"]
    assert "load_avg_1m_end" in report["provenance"]["machine"] and "quiet" in report["provenance"]
    text = out.with_suffix(".md").read_text()
    assert "| fold-in |" in text and "| known user |" in text and "Fold-in / known" in text


def test_no_hidden_user_is_a_clear_refusal(pair, capsys):
    root, trained, _, art = pair
    out = root / "refused" / "fold-in-latency"
    assert (
        main(
            [
                "--artifact",
                str(art),
                "--trained-run",
                str(trained),
                "--holdout-run",
                str(trained),
                "--calls",
                "2",
                "--warmup",
                "1",
                "--allow-noisy",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "hides no user" in capsys.readouterr().err and not out.with_suffix(".json").exists()
