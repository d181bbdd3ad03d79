"""The trainer: it learns, it resumes to the same result, the CLI runs end to end."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import train_until_stopped
from train.checkpoint import BEST, CHECKPOINT, CheckpointError, load_state, load_trained
from train.config import load_config
from train.data import Dataset, load_dataset
from train.loop import Trainer, train

torch.set_num_threads(1)

SMALL = [
    "data.name=synthetic",
    "data.n_users=150",
    "data.n_items=200",
    "data.interactions_per_user=20",
    "model.dim=16",
    "optim.batch_size=256",
    "optim.lr=0.01",
    "run.threads=1",
    "run.patience=100",
]


def small_config(tmp_path, *extra):
    return load_config(overrides=SMALL + [f"run.out={tmp_path}"] + list(extra))


@pytest.mark.parametrize("model", ["mf", "lightgcn"])
def test_training_improves_valid_ndcg(tmp_path, model):
    config = small_config(tmp_path, f"model.name={model}", "run.epochs=8")
    dataset = load_dataset(config.data, progress=False)
    dataset.save(tmp_path / "data")
    trainer = Trainer(config, dataset, progress=False)
    before = trainer.evaluate("valid")["ndcg@20"]
    trainer.fit()
    assert trainer.best["ndcg"] > before + 0.02, (before, trainer.best)


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["sparsity.density=0.3", "sparsity.update_interval=3"],
        ["sparsity.density=0.25", "sparsity.update_interval=3", "sparsity.mask_init=nmf"],
    ],
    ids=["dense", "dsl", "dsl-nmf"],
)
def test_resume_gives_same_result(tmp_path, extra, monkeypatch):
    args = ["model.name=lightgcn", "run.epochs=6"] + extra
    straight = train(small_config(tmp_path / "a", *args), progress=False)

    train_until_stopped(small_config(tmp_path / "b", *args), 3, monkeypatch)
    assert load_state(tmp_path / "b" / CHECKPOINT)["epoch"] == 3
    resumed = train(small_config(tmp_path / "b", *args), resume=True, progress=False)

    assert resumed["test"] == straight["test"]
    assert resumed["best_epoch"] == straight["best_epoch"]
    a = load_state(tmp_path / "a" / BEST)["model"]
    b = load_state(tmp_path / "b" / BEST)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_seed_same_metrics_and_masks(tmp_path):
    args = ["model.name=mf", "run.epochs=3", "sparsity.density=0.25", "sparsity.update_interval=5"]
    first = train(small_config(tmp_path / "a", *args), progress=False)
    second = train(small_config(tmp_path / "b", *args), progress=False)
    assert first["test"] == second["test"]
    masks_a = load_state(tmp_path / "a" / BEST)["model"]
    masks_b = load_state(tmp_path / "b" / BEST)["model"]
    assert torch.equal(masks_a["user_embedding.mask"], masks_b["user_embedding.mask"])


def test_moved_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    """A stopped run resumes wherever its folder now is: run.out and run.device say where, not what."""
    args = ["model.name=mf", "run.epochs=4", "sparsity.density=0.3", "sparsity.update_interval=3"]
    straight = train(small_config(tmp_path / "a", *args), progress=False)
    train_until_stopped(small_config(tmp_path / "b", *args), 2, monkeypatch)
    (tmp_path / "b").rename(tmp_path / "moved")
    resumed = train(small_config(tmp_path / "moved", *args), resume=True, progress=False)
    assert resumed["test"] == straight["test"] and resumed["best_epoch"] == straight["best_epoch"]


def test_experiment_ignores_where_a_run_is_only():
    base = load_config(overrides=SMALL)
    assert load_config(overrides=SMALL + ["run.out=elsewhere", "run.device=cuda"]).experiment() == base.experiment()
    for other in ["run.threads=2", "run.seed=7", "optim.lr=0.5", "sparsity.density=0.5"]:
        assert load_config(overrides=SMALL + [other]).experiment() != base.experiment(), other


def test_resume_refuses_other_config(tmp_path):
    train(small_config(tmp_path, "model.name=mf", "run.epochs=1"), progress=False)
    with pytest.raises(CheckpointError, match="another config"):
        train(small_config(tmp_path, "model.name=mf", "run.epochs=2", "optim.lr=0.5"), resume=True, progress=False)


def test_corrupt_checkpoint_named(tmp_path):
    train(small_config(tmp_path, "model.name=mf", "run.epochs=1"), progress=False)
    path = tmp_path / BEST
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=BEST):
        load_trained(tmp_path)


def test_popularity_baseline(tmp_path):
    metrics = train(small_config(tmp_path, "model.name=pop"), progress=False)
    # measured 0.199 (a random ranking scores ~0.04 here); a floor with a margin, so a regression fails
    assert metrics["epochs"] == 0 and metrics["test"]["ndcg@20"] >= 0.17


def test_popularity_counts_train_interactions_only(tmp_path):
    config = small_config(tmp_path, "model.name=pop")
    dataset = load_dataset(config.data, progress=False)
    counts = Trainer(config, dataset, progress=False).model.item_counts.numpy()
    train_only = np.bincount(dataset.train[1], minlength=dataset.n_items)
    every_split = train_only + sum(
        np.bincount(items, minlength=dataset.n_items) for _, items in (dataset.valid, dataset.test)
    )
    assert not np.array_equal(train_only, every_split)  # the test can tell the two apart
    np.testing.assert_array_equal(counts, train_only)
    np.testing.assert_array_equal(dataset.item_popularity(), train_only)  # what the artifact's fallback serves


@pytest.mark.parametrize("updater", ["small-dense", "prune-finetune"])
def test_baselines_hit_their_budget(tmp_path, updater):
    metrics = train(
        small_config(
            tmp_path,
            "model.name=mf",
            "run.epochs=2",
            "sparsity.density=0.25",
            f"sparsity.updater={updater}",
            "sparsity.finetune_epochs=1",
        ),
        progress=False,
    )
    budget = (150 + 200) * 4  # n_rows x round(0.25 x 16): the equal budget
    if updater == "small-dense":
        assert metrics["dim"] == 4 and metrics["n_params_dense"] == (150 + 200) * 16
        assert metrics["nnz"] <= budget
    else:
        assert metrics["nnz"] == budget and metrics["epochs"] == 3 and metrics["prune_seconds"] >= 0


@pytest.mark.parametrize("model", ["mf", "lightgcn"])
@pytest.mark.parametrize("density", [0.2, 0.1, 0.05])
def test_every_masked_run_holds_exactly_the_small_dense_count(tmp_path, model, density):
    """Equal budgets: each DSL variant's non-zeros == its small-dense rival's parameter count."""
    config = small_config(
        tmp_path, f"model.name={model}", "model.dim=64", f"sparsity.density={density}", "sparsity.updater=small-dense"
    )
    dataset = load_dataset(config.data, progress=False)
    small = Trainer(config, dataset, progress=False)
    rival = sum(p.numel() for p in small.model.parameters())
    assert rival == (dataset.n_users + dataset.n_items) * round(density * 64)
    for updater in ["dsl", "set", "static", "dsl-nested", "dsl-mixed"]:
        masked = Trainer(
            small_config(
                tmp_path,
                f"model.name={model}",
                "model.dim=64",
                f"sparsity.density={density}",
                f"sparsity.updater={updater}",
            ),
            dataset,
            progress=False,
        )
        nnz = sum(int(t.mask.sum()) for t in masked.model.sparse_tables().values())
        nonzero = sum(int((t.weight != 0).sum()) for t in masked.model.sparse_tables().values())
        assert nnz == nonzero == masked.sparsifier.budget == rival, (updater, nnz, rival)


def test_selected_model_comes_after_the_last_mask_update(tmp_path, caplog):
    """The schedule rule: masks move until end_fraction of run.epochs, early stopping and model
    selection look only at evaluations after the last update, even with patience 1."""
    caplog.set_level(logging.INFO, logger="sparserec.train")
    metrics = train(
        small_config(
            tmp_path,
            "model.name=mf",
            "run.epochs=12",
            "sparsity.density=0.25",
            "sparsity.update_interval=3",
            "sparsity.end_fraction=0.5",
            "run.patience=1",
            "optim.batch_size=512",
        ),
        progress=False,
    )
    per_epoch = -(-len(Dataset.load(tmp_path / "data").train[0]) // 512)
    last_update = metrics["mask_history"][-1]
    history = metrics["history"]
    settled = -(-last_update["step"] // per_epoch)
    assert last_update["epoch"] == settled - 1 and settled <= 6  # updates end within half of run.epochs
    assert metrics["best_epoch"] >= settled and metrics["best_epoch"] * per_epoch > last_update["step"]
    assert all(h.get("exploring") for h in history if h["epoch"] < settled)
    assert not any(h.get("exploring") for h in history if h["epoch"] >= settled)
    # patience counts from the settled model: at least one evaluation after it before a stop
    assert metrics["epochs"] > settled or metrics["epochs"] == 12


def test_prune_finetune_counts_finetune_epochs_from_where_dense_stopped(tmp_path):
    metrics = train(
        small_config(
            tmp_path,
            "model.name=mf",
            "run.epochs=40",
            "run.patience=1",
            "optim.lr=0.05",
            "sparsity.density=0.25",
            "sparsity.updater=prune-finetune",
            "sparsity.finetune_epochs=2",
        ),
        progress=False,
    )
    dense_end = max(h["epoch"] for h in metrics["history"] if h["phase"] == "train")
    assert dense_end < 40  # the dense phase stopped early
    assert [h["epoch"] for h in metrics["history"] if h["phase"] == "finetune"] == [dense_end + 1, dense_end + 2]
    assert metrics["epochs"] == dense_end + 2
    # seconds_per_epoch is rounded to 4 decimals and train_seconds to 3: on a fast machine those roundings
    # are more than 1% (at most 0.00005 + 0.0005 / epochs apart)
    rounding = 0.00005 + 0.0005 / (dense_end + 2)
    assert metrics["seconds_per_epoch"] == pytest.approx(
        metrics["train_seconds"] / (dense_end + 2), rel=1e-2, abs=rounding + 1e-9
    )


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "train",
        "--data",
        "synthetic",
        "--model",
        "mf",
        "--out",
        str(out),
        "--epochs",
        "2",
        "--seed",
        "1",
        "--data.n_users=120",
        "--data.n_items=150",
        "--run.threads=1",
        "--quiet",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("best_epoch", "epochs", "seconds", "n_params_dense", "nnz"):
        assert key in metrics
    assert set(metrics["valid"]) >= {"recall@20", "ndcg@20"}
    assert set(metrics["test"]) >= {"recall@20", "ndcg@20", "precision@20", "hit@20"}
    model, dataset, config, _ = load_trained(out)
    assert config.run.seed == 1 and model.n_users == dataset.n_users


def test_cli_bad_flag_and_bad_data(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n3\n")
    result = subprocess.run(
        [sys.executable, "-m", "train", "--data", str(bad), "--model", "mf", "--out", str(tmp_path / "r"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "bad.csv" in result.stderr
    result = subprocess.run([sys.executable, "-m", "train", "--sparsity.densty=0.2"], capture_output=True, text=True)
    assert result.returncode != 0 and "densty" in result.stderr


def test_cli_keeps_the_traceback_of_an_internal_error(tmp_path, monkeypatch):
    """Only errors a user can fix (data, config, checkpoint) become a one-line exit; a broken invariant raises."""
    from train import cli, sparsity

    def broken_invariant(self):
        raise RuntimeError("budget invariant broken")

    monkeypatch.setattr(sparsity.Sparsifier, "check", broken_invariant)  # fault injection, not a mock
    argv = [
        "--data",
        "synthetic",
        "--model",
        "mf",
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--data.n_users=60",
        "--data.n_items=80",
        "--sparsity.density=0.3",
        "--run.threads=1",
        "--quiet",
    ]
    with pytest.raises(RuntimeError, match="budget invariant broken"):
        cli.train_main(argv)


@pytest.mark.parametrize("model", ["mf", "lightgcn"])
@pytest.mark.parametrize("updater", ["dsl", "set", "static", "dsl-nested", "dsl-mixed"])
def test_budget_holds_after_every_step_of_training(tmp_path, model, updater):
    config = small_config(
        tmp_path,
        f"model.name={model}",
        "run.epochs=2",
        "sparsity.density=0.2",
        f"sparsity.updater={updater}",
        "sparsity.update_interval=2",
    )
    dataset = load_dataset(config.data, progress=False)
    trainer = Trainer(config, dataset, progress=False)
    sparsifier = trainer.sparsifier
    budget = sum(t.n_rows for t in trainer.model.sparse_tables().values()) * round(0.2 * 16)  # small-dense's count
    assert sparsifier.budget == budget
    checked = {"steps": 0}
    original_step = sparsifier.step

    def step_and_check(step):
        stats = original_step(step)
        for table in trainer.model.sparse_tables().values():
            assert torch.all(table.weight[~table.mask] == 0)  # masked entries exactly zero
        assert sum(int(t.mask.sum()) for t in trainer.model.sparse_tables().values()) == budget
        checked["steps"] += 1
        return stats

    sparsifier.step = step_and_check
    for _ in range(config.run.epochs):
        trainer.run_epoch()
        trainer.epoch += 1
    assert checked["steps"] == trainer.global_step > 2
    if updater != "static":
        assert sparsifier.n_updates >= 1


@pytest.mark.parametrize(
    "override, words",
    [
        ("sparsity.updater=dls", "sparsity.updater"),
        ("sparsity.density=0", "sparsity.density"),
        ("sparsity.density=1.5", "sparsity.density"),
        ("sparsity.grow_from=last", "sparsity.grow_from"),
        ("data.split=weekly", "data.split"),
        ("optim.batch_size=0", "optim.batch_size"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.sampling=items", "optim.sampling"),
    ],
)
def test_invalid_settings_fail_before_any_work(tmp_path, override, words):
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        train(small_config(tmp_path / "run", override), progress=False)
    assert not (tmp_path / "run").exists()  # refused before writing anything


def test_user_sampling_draws_users_uniformly_then_one_of_their_pairs():
    from train.loop import epoch_order

    # user 0 has 90 pairs, users 1..9 one each, user 10 none (its id is absent)
    users = np.array([0] * 90 + list(range(1, 10)), dtype=np.int64)
    rng = np.random.default_rng(7)
    order = epoch_order(users, "user", rng)
    assert len(order) == len(users) and order.min() >= 0 and order.max() < len(users)
    draws = np.concatenate([epoch_order(users, "user", np.random.default_rng(s)) for s in range(200)])
    share = np.bincount(users[draws], minlength=10) / len(draws)
    assert np.allclose(share, 0.1, atol=0.01), share  # every user with a pair: a tenth of the draws
    picked = np.bincount(draws[users[draws] == 0], minlength=90)[:90]
    assert (picked > 0).all()  # all of user 0's pairs are reachable, not just its first
    assert np.array_equal(
        epoch_order(users, "user", np.random.default_rng(3)), epoch_order(users, "user", np.random.default_rng(3))
    )
    # interaction: every pair exactly once
    assert sorted(epoch_order(users, "interaction", np.random.default_rng(1))) == list(range(len(users)))
    with pytest.raises(ValueError, match="sampling"):
        epoch_order(users, "item", rng)


def test_user_sampling_trains_and_is_reproducible(tmp_path):
    args = ["model.name=mf", "run.epochs=4", "optim.sampling=user"]
    first = train(small_config(tmp_path / "a", *args), progress=False)
    second = train(small_config(tmp_path / "b", *args), progress=False)
    plain = train(small_config(tmp_path / "c", "model.name=mf", "run.epochs=4"), progress=False)
    assert first["test"] == second["test"] and first["test"] != plain["test"]
    assert first["valid"]["ndcg@20"] > 0.05
