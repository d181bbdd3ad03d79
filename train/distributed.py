"""Data-parallel training under ``torchrun``: DistributedDataParallel with identical masks.

    torchrun --standalone --nproc-per-node=2 -m train --data ml-100k --model mf --out runs/mf-ddp \\
        --sparsity.density=0.2 --run.threads=1
    torchrun --standalone --nproc-per-node=2 -m train ... --resume      # same world size only

``optim.batch_size`` stays the *global* batch: every rank draws the same epoch order and the same
negatives (from the seed and the epoch), then trains on its contiguous share of each batch, and
DDP averages the gradients (each rank's loss is weighted by its share, so a batch that does not
divide evenly still gives the global mean). A run therefore follows the same trajectory, to float
rounding, whatever the world size. LightGCN propagates over the whole graph on every rank.

The masks stay identical on every rank by construction: gradients are all-reduced by DDP during
``backward()``, so the growth buffer of :class:`train.sparsity.Sparsifier` (filled after it)
holds the same sums everywhere; selection ties are broken by position; random draws come from
generators seeded alike. And by check: at every mask update and at the end of every epoch, ranks
compare a sha256 of their masks and of their weights and stop with :class:`DistributedError` on
a mismatch. DDP's runtime buffer broadcast is off (``forward_sync_buffers=False``): masks are
buffers, and broadcasting rank 0's at every forward would silently hide a divergence.

Only rank 0 writes checkpoints, logs and ``metrics.json``; evaluation runs once, on rank 0, and
its result is broadcast as JSON (never pickle) so that every rank takes the same early-stopping
decision. ``<out>/distributed.json`` records the world size, which ``--resume`` checks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("sparserec.train")

WORLD_FILE = "distributed.json"


class DistributedError(RuntimeError):
    """Ranks disagree (masks, weights, world size) or the process group is missing."""


class WorldSizeError(DistributedError):
    """``--resume`` under another world size than the checkpoint's (a user can fix it)."""


# --------------------------------------------------------------------------------------------
# process group
# --------------------------------------------------------------------------------------------


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not started by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """``RANK`` as torchrun sets it (0 when not started by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def backend_for(device: str) -> str:
    """NCCL for CUDA devices, gloo for the CPU."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


@contextmanager
def process_group(device: str = "cpu") -> Iterator[None]:
    """Join the default process group when torchrun started this process, leave it after.

    Does nothing for a plain ``python -m train`` (``WORLD_SIZE`` unset or 1) or when a group
    already exists (a caller that made its own). On CUDA each rank takes the GPU ``LOCAL_RANK``,
    so ``run.device=cuda`` means this rank's GPU.
    """
    if env_world_size() <= 1 or dist.is_initialized():
        yield
        return
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def is_main() -> bool:
    """Rank 0, or a process outside any group: the one that writes files and logs."""
    return not dist.is_initialized() or dist.get_rank() == 0


def threads_per_rank(requested: int, threads: int) -> int:
    """With ``run.threads=0`` (all cores), share the cores among the ranks on this machine.

    Args:
        requested: ``run.threads`` (0: the cores available).
        threads: the threads ``set_threads`` chose for this process.

    Returns:
        The torch intra-op threads now set.
    """
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if requested > 0 or local <= 1 or not dist.is_initialized():
        return threads
    share = max(1, threads // local)
    torch.set_num_threads(share)
    return share


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's contiguous ``[start, stop)`` of ``n`` rows; shares differ by at most one."""
    return rank * n // world_size, (rank + 1) * n // world_size


class _LossModule(nn.Module):
    """Puts ``model.loss`` behind ``forward`` so DDP's reducer sees every step."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, users, pos_items, neg_items, weight_decay):
        if len(users) == 0:  # a share of an uneven last batch can be empty: zero gradient, same collectives
            return sum((p * 0.0).sum() for p in self.model.parameters())
        return self.model.loss(users, pos_items, neg_items, weight_decay)


# --------------------------------------------------------------------------------------------
# what the trainer calls
# --------------------------------------------------------------------------------------------


class Replicas:
    """This process's place among the data-parallel ranks and the collectives the trainer uses.

    With one process (no group) every method is a pass-through, so the trainer calls them
    unconditionally. Build with :meth:`attach`.
    """

    def __init__(self, world_size: int = 1, rank: int = 0, batch_size: int = 0):
        self.world_size = world_size
        self.rank = rank
        self.batch_size = batch_size
        self.ddp: nn.Module | None = None
        self.loss_scale = 1.0
        self.collective_device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def attach(cls, trainer) -> "Replicas":
        """Join ``trainer`` to the process group, if any: check that the ranks start identical,
        then wrap its model's loss in DDP (runtime buffer broadcast off)."""
        if not dist.is_initialized():
            if env_world_size() > 1:
                raise DistributedError(
                    f"started by torchrun (WORLD_SIZE={env_world_size()}) but no process group exists: "
                    f"run training inside train.distributed.process_group(device)"
                )
            return cls(batch_size=trainer.config.optim.batch_size)
        replicas = cls(dist.get_world_size(), dist.get_rank(), trainer.config.optim.batch_size)
        if backend_for(str(trainer.device)) != dist.get_backend():
            raise DistributedError(
                f"run.device={trainer.config.run.device} needs the {backend_for(str(trainer.device))} "
                f"backend, the process group uses {dist.get_backend()}"
            )
        if dist.get_backend() == "nccl":
            replicas.collective_device = torch.device("cuda", torch.cuda.current_device())
        if replicas.world_size > 1 and trainer.trainable:
            replicas.check(trainer.model, "initialisation")
            device_ids = (
                [trainer.device.index or torch.cuda.current_device()] if trainer.device.type == "cuda" else None
            )
            replicas.ddp = nn.parallel.DistributedDataParallel(
                _LossModule(trainer.model), device_ids=device_ids, forward_sync_buffers=False
            )
            log.info(
                "DDP: rank %d of %d, backend %s, global batch %d, per-rank batch %d",
                replicas.rank,
                replicas.world_size,
                dist.get_backend(),
                replicas.batch_size,
                replicas.per_rank_batch_size,
            )
        return replicas

    @property
    def per_rank_batch_size(self) -> int:
        """The largest share of a global batch one rank trains on."""
        return -(-self.batch_size // self.world_size)

    def summary(self) -> dict[str, Any]:
        """For ``metrics.json``: world size, backend, global and per-rank batch size."""
        return {
            "world_size": self.world_size,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "global_batch_size": self.batch_size,
            "per_rank_batch_size": self.per_rank_batch_size,
        }

    # ---- the step ---------------------------------------------------------------------------

    def shard(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """This rank's contiguous share of a global batch (the same rows of every array)."""
        if self.world_size == 1:
            return arrays
        n = len(arrays[0])
        start, stop = shard_bounds(n, self.rank, self.world_size)
        # DDP averages over ranks; weighting by the share makes that the mean over the global batch
        self.loss_scale = (stop - start) * self.world_size / n
        return tuple(a[start:stop] for a in arrays)

    def loss(self, model: nn.Module, users, pos_items, neg_items, weight_decay: float) -> torch.Tensor:
        """``model.loss`` on this rank's share, through DDP when there are several ranks."""
        if self.ddp is None:
            return model.loss(users, pos_items, neg_items, weight_decay)
        return self.ddp(users, pos_items, neg_items, weight_decay) * self.loss_scale

    def after_epoch(self, model: nn.Module, loss: float, epoch: int) -> float:
        """Check that the replicas still agree; return the loss averaged over the ranks."""
        if self.world_size == 1:
            return loss
        self.check(model, f"epoch {epoch}")
        total = torch.tensor([loss], dtype=torch.float64, device=self.collective_device)
        dist.all_reduce(total)
        return float(total) / self.world_size

    # ---- agreement --------------------------------------------------------------------------

    def check(self, model: nn.Module, when: str) -> None:
        """Raise :class:`DistributedError` on every rank unless all ranks hold the same masks and
        weights (sha256 of each, gathered from every rank)."""
        if self.world_size == 1:
            return
        mine = torch.from_numpy(replica_fingerprint(model)).to(self.collective_device)
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine)
        rows = [g.cpu().numpy() for g in gathered]
        problems = []
        for part, columns in (("masks", slice(0, 4)), ("weights", slice(4, 8))):
            digests = [row[columns].tobytes().hex() for row in rows]
            if len(set(digests)) > 1:
                problems.append(
                    f"{part} differ (sha256 "
                    + ", ".join(f"rank {r}: {d[:16]}" for r, d in enumerate(digests))
                    + (
                        "; nnz " + ", ".join(f"rank {r}: {int(row[8])}" for r, row in enumerate(rows))
                        if part == "masks"
                        else ""
                    )
                    + ")"
                )
        if problems:
            raise DistributedError(
                f"the replicas diverged at {when}: "
                + "; ".join(problems)
                + ". Every rank must hold the same masks and weights; a mismatch means a rank "
                "drew or selected differently (unseeded randomness, rank-dependent input)"
            )

    # ---- once, on rank 0 --------------------------------------------------------------------

    def broadcast_json(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank, sent as JSON bytes (no pickle)."""
        if self.world_size == 1:
            return obj
        payload = json.dumps(obj).encode() if self.is_main else b""
        size = torch.tensor([len(payload)], dtype=torch.int64, device=self.collective_device)
        dist.broadcast(size, src=0)
        buffer = (
            torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            if self.is_main
            else torch.empty(int(size), dtype=torch.uint8)
        ).to(self.collective_device)
        dist.broadcast(buffer, src=0)
        return json.loads(buffer.cpu().numpy().tobytes().decode())

    def barrier(self) -> None:
        if self.world_size > 1:
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[self.collective_device.index])
            else:
                dist.barrier()


def replica_fingerprint(model: nn.Module) -> np.ndarray:
    """``int64 [9]``: sha256 of every ``bool`` buffer (the masks), sha256 of every parameter, and
    the number of true mask entries. Equal fingerprints mean bitwise-equal replicas."""
    masks, weights = hashlib.sha256(), hashlib.sha256()
    nnz = 0
    for name, tensor in model.state_dict().items():
        data = tensor.detach().contiguous().cpu()
        target = masks if data.dtype == torch.bool else weights
        target.update(f"{name}:{tuple(data.shape)}:{data.dtype};".encode())
        target.update(data.numpy().tobytes())
        if data.dtype == torch.bool:
            nnz += int(data.sum())
    words = np.frombuffer(masks.digest() + weights.digest(), dtype=np.int64)
    return np.concatenate([words, np.array([nnz], dtype=np.int64)])


# --------------------------------------------------------------------------------------------
# trainer method decorators
# --------------------------------------------------------------------------------------------


def on_rank0_shared(method: Callable) -> Callable:
    """A ``Trainer`` method (evaluation) that runs on rank 0 only; every rank gets its JSON result."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        replicas = getattr(self, "replicas", None)
        if replicas is None or replicas.world_size == 1:
            return method(self, *args, **kwargs)
        return replicas.broadcast_json(method(self, *args, **kwargs) if replicas.is_main else None)

    return wrapper


def rank0_writes(method: Callable) -> Callable:
    """A ``Trainer`` method that writes files: rank 0 runs it, then every rank waits for it."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        replicas = getattr(self, "replicas", None)
        if replicas is None or replicas.world_size == 1:
            return method(self, *args, **kwargs)
        result = method(self, *args, **kwargs) if replicas.is_main else None
        replicas.barrier()  # readers of the file (resume, prune-finetune, the final reload) on any rank
        return result

    return wrapper


# --------------------------------------------------------------------------------------------
# the run folder
# --------------------------------------------------------------------------------------------


def check_world_size(out: Path, resuming: bool, batch_size: int) -> None:
    """On resume, refuse a world size other than the checkpoint's; then (rank 0) record this one.

    Raises:
        WorldSizeError: ``<out>/distributed.json`` names another world size.
    """
    from common.io import atomic_write_json

    world_size = dist.get_world_size() if dist.is_initialized() else 1
    path = Path(out) / WORLD_FILE
    if resuming:
        saved = json.loads(path.read_text())["world_size"] if path.exists() else 1
        if saved != world_size:
            raise WorldSizeError(
                f"{out}: the checkpoint was written by a run on {saved} rank(s) and this run has {world_size}; "
                f"resume with the same world size (torchrun --nproc-per-node={saved} ... --resume, or plain "
                f"python -m train when it is 1), or start a new --out folder"
            )
    if is_main():
        atomic_write_json(
            path,
            {
                "world_size": world_size,
                "backend": dist.get_backend() if dist.is_initialized() else None,
                "global_batch_size": batch_size,
                "per_rank_batch_size": -(-batch_size // world_size),
            },
        )
