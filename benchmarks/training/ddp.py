"""Data-parallel training throughput: samples per second on 1 and 2 ranks (``make bench-ddp``).

    python -m benchmarks.training.ddp                                   # ML-100K and Gowalla, MF and LightGCN
    python -m benchmarks.training.ddp --datasets ml-100k --models mf --steps 20      # a quick look
    python -m benchmarks.training.ddp --gowalla /path/to/gowalla        # another LightGCN-format folder

Every measurement is its own ``torchrun --standalone --nproc-per-node=N`` launch of this module's
worker, which builds the real :class:`train.loop.Trainer` (DDP over gloo when N > 1), runs two
warm-up steps, then times ``--steps`` optimizer steps of ``Trainer.run_epoch`` between two
barriers (so the slowest rank counts), DSL masks and their updates included (update interval 10;
the per-update replica check too). Only the interactions the timed steps visit are handed to
``run_epoch``; the model (LightGCN's graph too) is built from the whole train split. A sample is
one (user, positive, negative) triple of the global batch. Three layouts per dataset and model:
1 rank x 1 thread, 2 ranks x 1 thread, 1 rank x 2 threads (the same two cores used by torch's
intra-op threads instead of DDP). Writes ``results/ddp.json`` and ``results/ddp.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import harness
from common.paths import REPO_ROOT

log = logging.getLogger("sparserec.bench")

GOWALLA = "gowalla"  # the shipped split (train/datasets/gowalla), or a LightGCN-format folder
LAYOUTS = ((1, 1), (2, 1), (1, 2))  # (ranks, threads per rank)
STEPS = {("ml-100k", "mf"): 40, ("ml-100k", "lightgcn"): 40, ("gowalla", "mf"): 40, ("gowalla", "lightgcn"): 10}
SETTINGS = [
    "sparsity.density=0.2",
    "sparsity.updater=dsl",
    "sparsity.update_interval=10",
    "optim.batch_size=2048",
    "model.dim=64",
    "run.seed=2024",
]
WARMUP_STEPS = 2


def worker(args: argparse.Namespace) -> int:
    """One rank of one measurement (started by torchrun)."""
    import numpy as np
    import torch
    import torch.distributed as dist

    from train.config import load_config
    from train.data import load_dataset
    from train.distributed import process_group
    from train.loop import Trainer, set_threads

    config = load_config(
        overrides=SETTINGS
        + [
            f"data.name={args.data}",
            f"model.name={args.model}",
            f"run.threads={args.threads}",
            f"run.out={args.scratch}",
        ]
    )
    set_threads(args.threads)
    with process_group("cpu"):
        dataset = load_dataset(config.data, progress=False)
        trainer = Trainer(config, dataset, progress=False)
        users, items = dataset.train
        batch = config.optim.batch_size
        rng = np.random.default_rng(config.run.seed)
        timed = rng.permutation(len(users))[: args.steps * batch]
        warm = timed[: WARMUP_STEPS * batch]
        replicas = trainer.replicas

        trainer.dataset = dataclasses.replace(dataset, train=(users[warm], items[warm]))
        trainer.run_epoch()
        trainer.dataset = dataclasses.replace(dataset, train=(users[timed], items[timed]))
        replicas.barrier()
        start = time.perf_counter()
        trainer.run_epoch()
        replicas.barrier()
        seconds = time.perf_counter() - start
        if replicas.is_main:
            record = {
                "dataset": args.name,
                "model": args.model,
                "ranks": replicas.world_size,
                "threads_per_rank": torch.get_num_threads(),
                "backend": dist.get_backend() if dist.is_initialized() else None,
                "global_batch_size": batch,
                "per_rank_batch_size": replicas.per_rank_batch_size,
                "steps": -(-len(timed) // batch),
                "samples": int(len(timed)),
                "seconds": round(seconds, 4),
                "samples_per_s": round(len(timed) / seconds, 1),
                "n_users": dataset.n_users,
                "n_items": dataset.n_items,
                "n_train": int(len(users)),
                "mask_updates": trainer.sparsifier.n_updates if trainer.sparsifier else 0,
            }
            Path(args.result).write_text(json.dumps(record))
    return 0


def measure(name: str, data: str, model: str, ranks: int, threads: int, steps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as scratch:
        result = Path(scratch) / "result.json"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={ranks}",
            "-m",
            "benchmarks.training.ddp",
            "--worker",
            "--name",
            name,
            "--data",
            data,
            "--model",
            model,
            "--threads",
            str(threads),
            "--steps",
            str(steps),
            "--result",
            str(result),
            "--scratch",
            scratch,
        ]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO_ROOT)),
        }
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not result.exists():
            raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        return json.loads(result.read_text())


def markdown(report: dict[str, Any]) -> str:
    from benchmarks.harness import provenance_line

    lines = [
        provenance_line(report["provenance"]),
        "",
        "Data-parallel DSL training throughput (density 0.2, dsl, update interval 10, global batch 2048, "
        "gloo on CPU). Speed-up is against 1 rank x 1 thread of the same dataset and model, measured in "
        "the same run.",
        "",
        "| dataset | model | ranks x threads | per-rank batch | steps | samples/s | speed-up | load before |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["records"]:
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['ranks']} x {r['threads_per_rank']} | "
            f"{r['per_rank_batch_size']} | {r['steps']} | {r['samples_per_s']:,.0f} | {r['speedup']:.2f}x | "
            f"{r.get('load_avg_1m_before')} |"
        )
    lines += [
        "",
        "LightGCN propagates over the whole graph on every rank, so only the batch's share of its step "
        "is divided among ranks; MF's step is all batch. The machine was shared with other work while "
        "this ran (the load column: the 1-minute load average before each launch, on 2 cores): compare rows of one "
        "table, not tables of different days.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training.ddp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="ml-100k,gowalla", help="comma list of ml-100k, gowalla")
    parser.add_argument("--models", default="mf,lightgcn", help="comma list of mf, lightgcn")
    parser.add_argument(
        "--gowalla",
        default=GOWALLA,
        help="Gowalla: the shipped name (default) or a LightGCN-format folder (train.txt, test.txt)",
    )
    parser.add_argument(
        "--steps", type=int, default=0, help="timed steps per measurement (0: the defaults per dataset)"
    )
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "ddp"), help="writes <out>.json and <out>.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--name", "--data", "--model", "--result", "--scratch"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    harness.add_timing_flags(parser)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from tqdm.auto import tqdm

    from common.io import atomic_write_bytes, atomic_write_json
    from common.provenance import provenance

    sources = {"ml-100k": "ml-100k", "gowalla": args.gowalla}
    datasets = [d for d in args.datasets.split(",") if d]
    unknown = sorted(set(datasets) - set(sources))
    if unknown:
        parser.error(f"unknown datasets {unknown}; choose from {sorted(sources)}")
    started = provenance(settings=SETTINGS, layouts=LAYOUTS, gowalla=args.gowalla)  # the load before any run
    plan = [(d, m, ranks, threads) for d in datasets for m in args.models.split(",") if m for ranks, threads in LAYOUTS]
    records = []
    for dataset, model, ranks, threads in tqdm(plan, desc="bench-ddp", unit="run"):
        steps = args.steps or STEPS[(dataset, model)]
        load = round(os.getloadavg()[0], 2)
        record = measure(dataset, sources[dataset], model, ranks, threads, steps)
        record["load_avg_1m_before"] = load
        base = next(
            (
                r
                for r in records
                if (r["dataset"], r["model"], r["ranks"], r["threads_per_rank"]) == (dataset, model, 1, 1)
            ),
            record,
        )
        record["speedup"] = round(record["samples_per_s"] / base["samples_per_s"], 3)
        records.append(record)
        log.info(json.dumps(record))
    report = {"provenance": started, "records": records}
    out = Path(args.out)
    try:
        harness.finish(started, [out.with_suffix(".json"), out.with_suffix(".md")], allow_noisy=args.allow_noisy)
    except harness.NoisyMachine as exc:
        print(f"benchmarks.training.ddp: {exc}", file=sys.stderr)
        return 2
    atomic_write_json(out.with_suffix(".json"), report)
    atomic_write_bytes(out.with_suffix(".md"), markdown(report).encode())
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
