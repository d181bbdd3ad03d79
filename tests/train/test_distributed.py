"""Data-parallel training: two gloo ranks on the CPU hold identical masks and weights, keep the
budget, follow the one-rank trajectory, resume, and stop on a forced divergence."""

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from train.config import load_config
from train.data import load_dataset
from train.distributed import DistributedError, Replicas, shard_bounds
from train.loop import Trainer, train

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
WORLD = 2
# an odd global batch that does not divide the train set: uneven shares and a short last batch
BASE = [
    "data.name=synthetic",
    "data.n_users=80",
    "data.n_items=120",
    "data.interactions_per_user=12",
    "model.dim=8",
    "optim.batch_size=63",
    "optim.lr=0.02",
    "run.threads=1",
    "run.patience=100",
    "sparsity.density=0.4",
    "sparsity.update_interval=3",
]
SCENARIOS = {
    "mf": ["model.name=mf", "sparsity.updater=dsl", "run.epochs=3"],
    "lightgcn": ["model.name=lightgcn", "model.n_layers=2", "sparsity.updater=set", "run.epochs=2"],
    # the initial mask from an NMF of the train pairs: each rank factorises alone, the start check compares
    "mf-nmf": ["model.name=mf", "sparsity.updater=dsl", "sparsity.mask_init=nmf", "run.epochs=3"],
}


def config_for(out: Path, scenario: str, *extra: str):
    return load_config(overrides=BASE + SCENARIOS[scenario] + [f"run.out={out}"] + list(extra))


def recorded_fit(config) -> tuple[list[dict[str, np.ndarray]], list[int], int]:
    """Train with ``Trainer.fit``; returns the state after every mask update, its nnz, and the budget."""
    trainer = Trainer(config, load_dataset(config.data, progress=False), progress=False)
    snapshots, nnz = [], []
    step = trainer.sparsifier.step

    def step_and_record(global_step):
        stats = step(global_step)
        if stats is not None:
            snapshots.append({k: v.detach().cpu().numpy().copy() for k, v in trainer.model.state_dict().items()})
            nnz.append(int(sum(t.mask.sum() for t in trainer.model.sparse_tables().values())))
        return stats

    trainer.sparsifier.step = step_and_record  # observe each update (the real one runs)
    trainer.fit()
    snapshots.append({k: v.detach().cpu().numpy().copy() for k, v in trainer.model.state_dict().items()})
    return snapshots, nnz, trainer.sparsifier.budget


def save_snapshots(path: Path, snapshots: list[dict[str, np.ndarray]]) -> None:
    np.savez(path, **{f"{i}/{name}": array for i, snap in enumerate(snapshots) for name, array in snap.items()})


def load_snapshots(path: Path) -> list[dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as archive:
        out: dict[int, dict[str, np.ndarray]] = {}
        for key in archive.files:
            index, name = key.split("/", 1)
            out.setdefault(int(index), {})[name] = archive[key]
    return [out[i] for i in sorted(out)]


def worker(rank: int, world_size: int, root: str) -> None:
    """One rank: every scenario, then a resume after a stop, then a forced divergence."""
    root = Path(root)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{root / 'rendezvous'}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=120),
    )  # a rank left waiting fails the test, not hangs it
    try:
        report = {}
        for scenario in SCENARIOS:
            snapshots, nnz, budget = recorded_fit(config_for(root / scenario, scenario))
            save_snapshots(root / f"{scenario}-rank{rank}.npz", snapshots)
            report[scenario] = {"nnz": nnz, "budget": budget}

        # resume under two ranks: stop after epoch 2 of 3, resume, compare with the straight run
        straight = train(config_for(root / "straight", "mf"), progress=False)
        original = Trainer.run_epoch
        calls = {"n": 0}

        def stop_at_third(self):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt("simulated stop")
            return original(self)

        Trainer.run_epoch = stop_at_third
        try:
            train(config_for(root / "stopped", "mf"), progress=False)
        except KeyboardInterrupt:
            pass
        finally:
            Trainer.run_epoch = original
        resumed = train(config_for(root / "stopped", "mf"), resume=True, progress=False)
        report["resume"] = {
            "straight": straight["test"],
            "resumed": resumed["test"],
            "world_size": resumed["world_size"],
            "per_rank_batch_size": resumed["per_rank_batch_size"],
        }

        # prune-finetune with early stopping: rank 0 evaluates, writes the best checkpoint, every rank prunes from it
        pruned = train(
            config_for(
                root / "prune",
                "mf",
                "sparsity.updater=prune-finetune",
                "run.patience=1",
                "run.epochs=8",
                "sparsity.finetune_epochs=2",
            ),
            progress=False,
        )
        # epochs, nnz and the row histograms are computed by each rank from its own state
        report["prune"] = {
            "epochs": pruned["epochs"],
            "best_epoch": pruned["best_epoch"],
            "nnz": pruned["nnz"],
            "budget": pruned["budget"],
            "rows": pruned["row_nnz_histogram"],
        }

        # forced divergence: rank 1 moves one non-zero (the budget, checked on each rank, still holds)
        for case in ("training", "forward"):
            trainer = Trainer(
                config_for(root / case, "mf"), load_dataset(config_for(root, "mf").data, progress=False), progress=False
            )
            if rank == 1:
                flat = trainer.model.user_embedding.mask.view(-1)
                on, off = int(flat.nonzero()[0]), int((~flat).nonzero()[0])
                flat[on], flat[off] = False, True
            try:
                if case == "training":  # the check at the first mask update stops both ranks
                    trainer.run_epoch()
                else:  # one DDP step, then a check: the masks (buffers) must not have been re-broadcast
                    batch = torch.arange(8)
                    trainer.replicas.loss(trainer.model, batch, batch, batch + 1, 0.0).backward()
                    trainer.replicas.check(trainer.model, "one DDP step")
                report[case] = "not detected"
            except DistributedError as exc:
                report[case] = str(exc)
        (root / f"report-rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(WORLD, str(root)), nprocs=WORLD, join=True)
    reports = [json.loads((root / f"report-rank{r}.json").read_text()) for r in range(WORLD)]
    return root, reports


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_masks_and_weights_identical_across_ranks_after_every_mask_update(two_ranks, scenario):
    root, _ = two_ranks
    ranks = [load_snapshots(root / f"{scenario}-rank{r}.npz") for r in range(WORLD)]
    assert len(ranks[0]) == len(ranks[1]) >= 3  # at least two updates and the final state
    for update, (a, b) in enumerate(zip(*ranks)):
        assert a.keys() == b.keys()
        for name in a:
            assert np.array_equal(a[name], b[name]), f"{scenario}: {name} differs after update {update}"
    masks = [name for name in ranks[0][0] if name.endswith("mask")]
    assert masks and not all(np.array_equal(ranks[0][0][m], ranks[0][-1][m]) for m in masks)  # the masks did move


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_budget_holds_on_every_rank(two_ranks, scenario):
    _, reports = two_ranks
    for rank, report in enumerate(reports):
        record = report[scenario]
        assert record["nnz"] and all(n == record["budget"] for n in record["nnz"]), (rank, record)


@pytest.mark.slow
def test_two_ranks_follow_one_rank_with_the_same_global_batch(two_ranks, tmp_path):
    root, _ = two_ranks
    single, _, _ = recorded_fit(config_for(tmp_path, "mf"))
    pair = load_snapshots(root / "mf-rank0.npz")
    assert len(single) == len(pair)
    for update, (a, b) in enumerate(zip(single, pair)):
        for name in a:
            if a[name].dtype == bool:
                assert np.array_equal(a[name], b[name]), f"{name} differs after update {update}"
            else:
                np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-5, err_msg=f"{name}, update {update}")


@pytest.mark.slow
def test_resume_under_two_ranks_ends_like_the_straight_run(two_ranks):
    root, reports = two_ranks
    for report in reports:
        assert report["resume"]["resumed"] == report["resume"]["straight"]
    metrics = json.loads((root / "stopped" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["per_rank_batch_size"] == 32 and metrics["global_batch_size"] == 63


@pytest.mark.slow
def test_resume_with_another_world_size_is_refused(two_ranks):
    root, _ = two_ranks
    with pytest.raises(DistributedError, match=r"2 rank\(s\) and this run has 1.*nproc-per-node=2"):
        train(config_for(root / "stopped", "mf"), resume=True, progress=False)


@pytest.mark.slow
def test_prune_finetune_with_early_stopping_agrees_on_every_rank(two_ranks):
    root, reports = two_ranks
    first, second = (report["prune"] for report in reports)
    assert first == second  # both ranks stopped, pruned and fine-tuned alike
    assert first["nnz"] == first["budget"]
    metrics = json.loads((root / "prune" / "metrics.json").read_text())
    phases = [record["phase"] for record in metrics["history"]]
    dense_stop = max(record["epoch"] for record in metrics["history"] if record["phase"] == "train")
    assert dense_stop < 8  # the dense phase stopped early (patience 1)
    # fine-tuning counts from where the dense phase stopped, not from run.epochs
    assert metrics["epochs"] == first["epochs"] == dense_stop + 2 and "finetune" in phases
    assert metrics["world_size"] == 2


@pytest.mark.slow
def test_forced_divergence_stops_every_rank(two_ranks):
    _, reports = two_ranks
    for report in reports:
        message = report["training"]
        assert "the replicas diverged at the mask update at step 3" in message, message
        assert "differ" in message and "rank 0" in message and "rank 1" in message


@pytest.mark.slow
def test_ddp_does_not_broadcast_the_masks_over_a_divergence(two_ranks):
    _, reports = two_ranks
    for report in reports:
        assert "diverged at one DDP step: masks differ" in report["forward"], report["forward"]


def test_shards_cover_a_batch_once():
    for n in [0, 1, 5, 63, 64]:
        for world in [1, 2, 3]:
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_one_process_is_a_pass_through():
    replicas = Replicas(batch_size=64)
    arrays = (np.arange(5), np.arange(5))
    assert all(a is b for a, b in zip(replicas.shard(*arrays), arrays))
    assert replicas.after_epoch(torch.nn.Linear(1, 1), 0.25, 1) == 0.25
    assert replicas.broadcast_json({"a": 1}) == {"a": 1}
    assert replicas.summary()["world_size"] == 1


@pytest.mark.slow
def test_torchrun_cli_writes_once_with_world_size(tmp_path):
    """``torchrun --nproc-per-node=2 -m train``: one summary, rank 0's files, world size recorded."""
    out = tmp_path / "run"
    args = [f"--{item.split('=')[0]}={item.split('=', 1)[1]}" for item in BASE + SCENARIOS["mf"]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={WORLD}",
            "-m",
            "train",
            "--out",
            str(out),
            "--quiet",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["per_rank_batch_size"], metrics["backend"]) == (2, 32, "gloo")
    assert json.loads((out / "distributed.json").read_text())["world_size"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no stray temp files


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_an_empty_share_gives_a_zero_gradient_for_every_parameter(tmp_path, scenario):
    """A short last batch can leave a rank nothing: it must still take part in DDP's all-reduce."""
    from train.distributed import _LossModule

    config = config_for(tmp_path, scenario)
    trainer = Trainer(config, load_dataset(config.data, progress=False), progress=False)
    empty = torch.zeros(0, dtype=torch.long)
    loss = _LossModule(trainer.model)(empty, empty, empty, 1e-4)
    loss.backward()
    assert float(loss.detach()) == 0.0
    for name, param in trainer.model.named_parameters():
        assert param.grad is not None and not param.grad.any(), name
