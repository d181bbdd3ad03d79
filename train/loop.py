"""The training loop: BPR with sampled negatives, Adam, DSL masks, early stopping, resume.

``train(config)`` runs one whole training and returns the metrics it also writes to
``<run.out>/metrics.json``. A checkpoint is written atomically at every evaluation; with
``resume=True`` the run continues from it and ends where an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.io import atomic_write_json

from . import distributed
from .checkpoint import BEST, CHECKPOINT, FORMAT_VERSION, CheckpointError, load_state, save_state
from .checks import validate
from .config import ConfigError, TrainConfig
from .data import Dataset, load_dataset
from .metrics import evaluate_scores
from .models import build_model
from .sampling import NegativeSampler, epoch_order
from .sparsity import Sparsifier

log = logging.getLogger("sparserec.train")


def available_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int) -> int:
    """Set torch's intra-op threads explicitly (oversubscription made LightGCN 25x slower)."""
    n = threads if threads > 0 else available_threads()
    torch.set_num_threads(n)
    return n


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def row_degrees(model, dataset: Dataset) -> dict[str, torch.Tensor]:
    """Train interactions + 1 per row of every sparse table (priors for dsl-mixed lengths)."""
    users, items = dataset.train
    counts = {
        "users": np.bincount(users, minlength=dataset.n_users),
        "items": np.bincount(items, minlength=dataset.n_items),
    }
    degrees = {name: torch.ones(table.n_rows) for name, table in model.sparse_tables().items()}
    for group, (table, rows) in model.row_groups().items():
        degrees[table][rows] += torch.from_numpy(counts[group]).float()
    return degrees


class Trainer:
    """Owns the model, optimizer, sparsifier and counters of one run (see ``train``)."""

    def __init__(self, config: TrainConfig, dataset: Dataset, progress: bool = True):
        self.config = config
        self.dataset = dataset
        self.progress = progress
        self.out = Path(config.run.out)
        self.device = torch.device(config.run.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("run.device=cuda but no CUDA device is available")
        self.dim = config.width
        generator = torch.Generator().manual_seed(config.run.seed)
        users, items = dataset.train
        self.model = build_model(
            config.model.name,
            dataset.n_users,
            dataset.n_items,
            self.dim,
            config.model.n_layers,
            users,
            items,
            config.model.init_std,
            generator,
            mask_output=config.model.mask_output,
        )
        self.model.to(self.device)
        self.trainable = config.model.name != "pop"
        self.steps_per_epoch = max(1, -(-len(users) // config.optim.batch_size))
        self.phase = "train"  # prune-finetune: "train" (dense) then "finetune" (fixed mask)
        self.epochs_total = config.run.epochs
        if config.sparsity.prunes:
            self.finetune_epochs = config.sparsity.finetune_epochs or max(1, config.run.epochs // 4)
            self.epochs_total += self.finetune_epochs
        # fused: one multi-threaded kernel per step over the whole table (ran ~3x faster on CPU
        # than the default per-op Adam on LightGCN's 70k x 64 Gowalla table; the same update)
        self.optimizer = (
            torch.optim.Adam(self.model.parameters(), lr=config.optim.lr, fused=True) if self.trainable else None
        )
        self.sparsifier: Sparsifier | None = None
        if self.trainable and config.sparsity.masked:
            total_steps = self.steps_per_epoch * config.run.epochs
            self.sparsifier = Sparsifier(
                self.model,
                self.optimizer,
                config.sparsity,
                total_steps,
                config.run.seed,
                row_priors=row_degrees(self.model, dataset),
                interactions=(users, items),
            )
            # with mask_init=nmf a resumed run factorises again (same seed, same data: same masks),
            # then load_checkpoint restores the saved masks over them
            self.sparsifier.init_masks()
        # The schedule rule: masks explore until the last update (end_fraction of run.epochs, a
        # horizon early stopping cannot cut), then settle; only evaluations after it may be
        # selected, and patience counts from it.
        self.settled_epoch = self.first_epoch_after_updates()
        self.sampler = NegativeSampler(dataset.n_items, users, items)
        self.known_valid = dataset.csr("train")
        self.known_test = (self.known_valid + dataset.csr("valid")).tocsr()
        self.epoch = 0
        self.global_step = 0
        self.best = {"epoch": 0, "ndcg": -1.0, "valid": {}}
        self.bad_evals = 0
        self.history: list[dict[str, Any]] = []
        self.mask_history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.prune_seconds = 0.0
        self.replicas = distributed.Replicas.attach(self)  # data parallel under torchrun (train/distributed.py)

    def first_epoch_after_updates(self) -> int:
        """The first epoch whose end comes after the last mask update (0 without updates)."""
        sparsifier = self.sparsifier
        if sparsifier is None or not sparsifier.updating or self.phase != "train":
            return 0
        return -(-sparsifier.schedule.last_update_step // self.steps_per_epoch)

    # ---------------------------------------------------------------- evaluation
    @distributed.on_rank0_shared
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        self.model.eval()
        heldout = self.dataset.csr(split)
        known = self.known_valid if split == "valid" else self.known_test
        cache = getattr(self.model, "cache_embeddings", None)
        if cache:
            cache(True)
        try:
            result = evaluate_scores(
                self.model.full_scores,
                np.arange(self.dataset.n_users),
                known,
                heldout,
                ks=(self.config.run.topk,),
                batch_size=self.config.run.eval_batch_size,
                device=self.device,
            )
        finally:
            if cache:
                cache(False)
        self.model.train()
        return result

    # ---------------------------------------------------------------- one epoch
    def run_epoch(self) -> float:
        config = self.config
        users, items = self.dataset.train
        rng = np.random.default_rng([config.run.seed, self.epoch])  # per epoch: resume replays it
        order = epoch_order(users, config.optim.sampling, rng)
        size = config.optim.batch_size
        # the epoch's batches, sampled up front in the order the steps use them (the same draws as
        # sampling per step) and moved to the device once: a step then neither copies from host
        # memory nor reads a value back (the loss is summed on the device), so on a GPU the Python
        # of the next step runs while the kernels of this one do
        negatives = np.concatenate(
            [
                self.sampler.sample(users[order[start : start + size]], config.optim.n_negatives, rng)
                for start in range(0, len(order), size)
            ]
        )
        epoch_users, epoch_items, epoch_negatives = (
            torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in (users[order], items[order], negatives)
        )
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        batches = 0
        self.model.train()
        for start in range(0, len(order), size):
            batch = slice(start, start + size)
            u, p, n = self.replicas.shard(
                epoch_users[batch], epoch_items[batch], epoch_negatives[batch]
            )  # this rank's share
            loss = self.replicas.loss(self.model, u, p, n, config.optim.weight_decay)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.sparsifier is not None:
                self.sparsifier.before_step()
            self.optimizer.step()
            self.global_step += 1
            if self.sparsifier is not None:
                self.sparsifier.apply_masks()
                update = self.sparsifier.step(self.global_step)  # the mask update: drop and regrow
                if update is not None:
                    self.replicas.check(self.model, f"the mask update at step {self.global_step}")
                    record = {"event": "mask_update", "epoch": self.epoch, **update}
                    log.info(json.dumps(record))
                    self.mask_history.append({**record, "row_nnz_histogram": self.sparsifier.row_histograms()})
            total += loss.detach()
            batches += 1
        return float(total) / max(batches, 1)

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_json(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "phase": self.phase,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "sparsifier": self.sparsifier.state_dict() if self.sparsifier else {},
            "best": json.dumps(self.best),
            "bad_evals": self.bad_evals,
            "history": json.dumps(self.history),
            "mask_history": json.dumps(self.mask_history),
            "train_seconds": self.train_seconds,
            "prune_seconds": self.prune_seconds,
            "epochs_total": self.epochs_total,
        }

    @distributed.rank0_writes
    def save_checkpoint(self) -> None:
        save_state(self.out / CHECKPOINT, self.state())

    @distributed.rank0_writes
    def save_best(self) -> None:
        save_state(
            self.out / BEST,
            {
                "format_version": FORMAT_VERSION,
                "model_kind": self.config.model.name,
                "n_users": self.dataset.n_users,
                "n_items": self.dataset.n_items,
                "dim": self.dim,
                "n_layers": self.config.model.n_layers,
                "epoch": self.epoch,
                "config": self.config.to_json(),
                "model": self.model.state_dict(),
            },
        )

    def load_checkpoint(self, path: Path) -> None:
        state = load_state(path)
        # through TrainConfig, so a checkpoint from before a new key (its default) still resumes; the same
        # experiment (TrainConfig.experiment): a moved folder, or a run stopped on a GPU, resumes (on a CPU)
        saved = TrainConfig.from_dict(json.loads(state["config"])).experiment()
        if saved != self.config.experiment():
            raise CheckpointError(
                f"{path}: the checkpoint was made with another config; resume with the same flags "
                f"or start a new --out folder"
            )
        self.phase = state["phase"]
        if self.phase == "finetune":
            self._enter_finetune(prune=False)
        self.model.load_state_dict(state["model"])
        if self.optimizer and state["optimizer"]:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.sparsifier is not None and state["sparsifier"]:
            self.sparsifier.load_state_dict(state["sparsifier"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best = json.loads(state["best"])
        self.bad_evals = int(state["bad_evals"])
        self.history = json.loads(state["history"])
        self.mask_history = json.loads(state["mask_history"])
        self.train_seconds = float(state["train_seconds"])
        self.prune_seconds = float(state["prune_seconds"])
        self.epochs_total = int(state.get("epochs_total", self.epochs_total))
        log.info(
            "resumed from %s at epoch %d (best valid ndcg %.4f at epoch %d)",
            path,
            self.epoch,
            self.best["ndcg"],
            self.best["epoch"],
        )

    # ---------------------------------------------------------------- prune-finetune baseline
    def _enter_finetune(self, prune: bool) -> None:
        """Switch to the fine-tuning phase: prune the dense model to the budget, fix the mask."""
        static = dataclasses.replace(self.config.sparsity, updater="static")
        total_steps = self.steps_per_epoch * self.finetune_epochs
        self.sparsifier = Sparsifier(self.model, self.optimizer, static, total_steps, self.config.run.seed)
        self.phase = "finetune"
        self.settled_epoch = 0
        if prune:
            # fine-tuning counts from where the dense phase stopped, early or at run.epochs
            self.epochs_total = self.epoch + self.finetune_epochs
            self.model.load_state_dict(load_state(self.out / BEST)["model"])  # prune the best dense model
            start = time.perf_counter()
            stats = self.sparsifier.prune_to_budget()
            self.prune_seconds += time.perf_counter() - start
            log.info(json.dumps({"event": "prune_to_budget", "epoch": self.epoch, **stats}, default=str))
            # fine-tuning restarts model selection: only pruned models may be exported
            self.best = {"epoch": 0, "ndcg": -1.0, "valid": {}}
            self.bad_evals = 0

    # ---------------------------------------------------------------- main loop
    def fit(self) -> None:
        if not self.trainable:
            return
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            self._fit(tqdm)

    def _fit(self, tqdm) -> None:
        config = self.config
        label = "dense" if config.sparsity.dense else f"{config.sparsity.updater} d={config.sparsity.density:g}"
        bar = tqdm(
            total=self.epochs_total,
            initial=self.epoch,
            desc=f"{config.model.name} {label}",
            unit="epoch",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        prunes = config.sparsity.prunes
        while self.epoch < self.epochs_total:
            if (
                prunes
                and self.phase == "train"
                and (self.epoch >= config.run.epochs or self.bad_evals >= config.run.patience)
            ):
                self._enter_finetune(prune=True)  # the dense phase ended (also when resumed right there)
                bar.total = self.epochs_total
                bar.refresh()
            start = time.perf_counter()
            loss = self.run_epoch()
            loss = self.replicas.after_epoch(self.model, loss, self.epoch + 1)  # ranks agree; mean loss
            self.train_seconds += time.perf_counter() - start
            self.epoch += 1
            bar.update(1)
            if self.epoch % config.run.eval_every == 0 or self.epoch == self.epochs_total:
                if self.evaluate_and_checkpoint(loss, bar):
                    if prunes and self.phase == "train":
                        continue  # dense phase converged: prune its best weights, then fine-tune
                    break
        bar.close()

    def evaluate_and_checkpoint(self, loss: float, bar) -> bool:
        """Evaluate on valid, keep the best, checkpoint; returns True when early stopping fires."""
        config = self.config
        valid = self.evaluate("valid")
        key = f"ndcg@{config.run.topk}"
        record = {
            "event": "eval",
            "epoch": self.epoch,
            "phase": self.phase,
            "loss": round(loss, 6),
            "valid": {k: round(v, 6) for k, v in valid.items() if "@" in k},
            "seconds": round(self.train_seconds, 3),
        }
        if self.sparsifier is not None:
            record["nnz"] = sum(self.sparsifier.nnz_by_table().values())
        exploring = self.epoch < self.settled_epoch
        if exploring:
            record["exploring"] = True  # masks still move: not a candidate, patience not counted
        self.history.append(record)
        log.info(json.dumps(record))
        bar.set_postfix(loss=f"{loss:.4f}", **{key: f"{valid[key]:.4f}"})
        if not exploring:
            if valid[key] > self.best["ndcg"]:
                self.best = {"epoch": self.epoch, "ndcg": valid[key], "valid": valid}
                self.bad_evals = 0
                self.save_best()
            elif self.epoch >= config.run.min_epochs or self.phase == "finetune":
                self.bad_evals += 1
        self.save_checkpoint()
        return self.bad_evals >= config.run.patience


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train one model end to end and write ``metrics.json``; returns the metrics."""
    validate(config)
    threads = set_threads(config.run.threads)
    threads = distributed.threads_per_rank(config.run.threads, threads)
    torch.manual_seed(config.run.seed)
    out = Path(config.run.out)
    out.mkdir(parents=True, exist_ok=True)
    log.info("config:\n%s", config.to_json())
    log.info("torch threads: %d", threads)
    checkpoint = out / CHECKPOINT
    distributed.check_world_size(out, resume and checkpoint.exists(), config.optim.batch_size)
    if resume and (out / "data").exists():
        dataset = Dataset.load(out / "data")
    else:
        dataset = load_dataset(config.data, progress=progress)
        if distributed.is_main():
            dataset.save(out / "data")
    if distributed.is_main():
        atomic_write_json(out / "config.json", config.to_dict())
    log.info("data: %s", json.dumps(dataset.summary()))

    wall_start = time.perf_counter()
    trainer = Trainer(config, dataset, progress=progress)
    if resume:
        if checkpoint.exists() or checkpoint.with_suffix(".pt").exists():  # an old .pt is refused, by name
            trainer.load_checkpoint(checkpoint)
        else:
            log.warning("--resume: no checkpoint in %s, starting from scratch", out)
    if trainer.trainable:
        trainer.fit()
        best = load_state(out / BEST)
        trainer.model.load_state_dict(best["model"])
    else:
        trainer.best = {"epoch": 0, "ndcg": None, "valid": trainer.evaluate("valid")}
        trainer.save_best()
    valid = trainer.best["valid"]
    test = trainer.evaluate("test")
    metrics = build_metrics(trainer, valid, test, time.perf_counter() - wall_start, threads)
    if distributed.is_main():
        atomic_write_json(out / "metrics.json", metrics)
    log.info(json.dumps({"event": "test", **{k: metrics["test"][k] for k in metrics["test"]}}))
    return metrics


def device_metrics(device: torch.device) -> dict[str, Any]:
    """Where the run trained: ``device`` (``cpu`` or the GPU's name) and, on a GPU, the peak memory torch allocated
    there in this process (a resumed run reports its last segment's)."""
    if device.type != "cuda":
        return {"device": "cpu"}
    return {
        "device": f"cuda ({torch.cuda.get_device_name(device)})",
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
    }


def build_metrics(trainer: Trainer, valid: dict, test: dict, seconds: float, threads: int) -> dict[str, Any]:
    config = trainer.config
    tables = trainer.model.sparse_tables()
    n_params_dense = sum(t.n_rows * config.model.dim for t in tables.values())
    nnz_by_table = {
        name: int((t.weight != 0).sum()) if trainer.sparsifier is None else int(t.mask.sum())
        for name, t in tables.items()
    }
    epochs = trainer.epoch
    metrics = {
        "model": config.model.name,
        "updater": config.sparsity.label,
        "density": config.sparsity.density,
        "dim": trainer.dim,
        "valid": {k: v for k, v in valid.items()},
        "test": {k: v for k, v in test.items()},
        "best_epoch": trainer.best["epoch"],
        "epochs": epochs,
        "seconds": round(seconds, 3),
        "train_seconds": round(trainer.train_seconds, 3),
        "seconds_per_epoch": round(trainer.train_seconds / epochs, 4) if epochs else 0.0,
        "prune_seconds": round(trainer.prune_seconds, 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "threads": threads,
        **device_metrics(trainer.device),
        "n_params_dense": n_params_dense,
        "nnz": int(sum(nnz_by_table.values())),
        "nnz_by_table": nnz_by_table,
        "history": trainer.history,
    }
    metrics.update(trainer.replicas.summary())  # world_size, per-rank batch size
    if trainer.sparsifier is not None:
        metrics["budget"] = trainer.sparsifier.budget
        metrics["mask_init"] = trainer.sparsifier.mask_init
        if trainer.sparsifier.init_info:
            metrics["mask_init_info"] = trainer.sparsifier.init_info  # the NMF's seconds and error
        metrics["mask_stats"] = trainer.sparsifier.stats()
        metrics["row_nnz_histogram"] = trainer.sparsifier.row_histograms()
        metrics["mask_history"] = trainer.mask_history
    return metrics
