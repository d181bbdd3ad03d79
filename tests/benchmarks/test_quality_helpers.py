"""The quality benchmarks' helpers on tiny data: the Gowalla table's log parser against the trainer's
own history, the RecBole-style popularity counts, and the NMF timing command."""

import json
import logging

import numpy as np

from train.config import load_config
from train.data import load_dataset
from train.loop import train

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


def test_curve_from_log_reads_the_history_the_trainer_wrote(tmp_path, caplog):
    """The Gowalla table draws a run not yet finished from its train.log: the log says what metrics.json says."""
    from benchmarks.quality.gowalla.logs import curve_from_log

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
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "train.log").write_text("\n".join(r.getMessage() for r in caplog.records))
    assert [(p["epoch"], p["exploring"]) for p in curve_from_log(tmp_path / "log")] == [
        (h["epoch"], bool(h.get("exploring"))) for h in metrics["history"]
    ]


def test_recbole_style_counts_are_once_per_batch(tmp_path):
    """make bench-pop's model of RecBole 1.2.1's Pop: an item gains at most 1 per batch of 1024 positives."""
    from benchmarks.quality.popularity import once_per_batch_counts

    dataset = load_dataset(small_config(tmp_path).data, progress=False)
    n_batches = -(-len(dataset.train[0]) // 1024)
    train_counts = np.bincount(dataset.train[1], minlength=dataset.n_items)
    once = once_per_batch_counts(dataset, seed=0, count_negatives=False)
    assert n_batches >= 2 and once.max() == n_batches and train_counts.max() > n_batches  # saturated
    assert np.all(once <= np.minimum(train_counts, n_batches)) and np.array_equal(once > 0, train_counts > 0)
    with_negatives = once_per_batch_counts(dataset, seed=0, count_negatives=True)  # same batches, more items
    assert np.all(with_negatives >= once) and with_negatives.max() == n_batches and with_negatives.sum() > once.sum()


def test_bench_nmf_prints_time_and_error(capsys):
    from benchmarks.quality.nmf import main

    assert main(["--data", "synthetic", "--rank", "8", "--iterations", "3"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["rank"] == 8 and record["iterations"] == 3 and record["seconds"] >= 0
    assert 0 < record["relative_error"] < 1 and record["nnz"] > 0
