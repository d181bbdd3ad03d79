"""How long the synthetic generator takes to make and split a large dataset, and its peak memory.

    make bench-data         # = python -m benchmarks.training.data_scale -> results/data-scale.{json,md}
    python -m benchmarks.training.data_scale --users 100000 --items 100000 --results /tmp/r   # a quicker look

Runs ``train.data.load_dataset`` once for ``--data synthetic`` at the given size (generate,
re-index, per-user random 80/10/10 split) in a fresh process, so the peak resident memory is this
step's alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import provenance_line
from common.io import atomic_write_json, atomic_write_text
from train.config import DataConfig
from train.data import load_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--per-user", type=float, default=20.0, help="mean interactions per user")
    parser.add_argument("--results", default="results", help="folder for data-scale.{json,md}")
    harness.add_timing_flags(parser)
    args = parser.parse_args(argv)
    source = harness.start()  # the load before the work

    config = DataConfig(name="synthetic", n_users=args.users, n_items=args.items, interactions_per_user=args.per_user)
    started = time.perf_counter()
    dataset = load_dataset(config, progress=False)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    summary = dataset.summary()
    record = {
        "provenance": source,
        "config": {"n_users": args.users, "n_items": args.items, "interactions_per_user": args.per_user},
        "n_interactions": summary["n_interactions"],
        "sizes": {"train": summary["n_train"], "valid": summary["n_valid"], "test": summary["n_test"]},
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak_mb, 1),
    }
    results = Path(args.results)
    try:
        harness.finish(source, [results / "data-scale.json", results / "data-scale.md"], allow_noisy=args.allow_noisy)
    except harness.NoisyMachine as exc:
        print(f"benchmarks.training.data_scale: {exc}", file=sys.stderr)
        return 2
    atomic_write_json(results / "data-scale.json", record)
    atomic_write_text(
        results / "data-scale.md",
        "\n".join(
            [
                provenance_line(record["provenance"]),
                "",
                "# Synthetic data at scale",
                "",
                f"{args.users:,} users x {args.items:,} items, {summary['n_interactions']:,} interactions generated, "
                f"re-indexed and split (80/10/10 per user) in **{seconds:.1f} s**; peak resident memory "
                f"**{peak_mb / 1024:.2f} GB** (one process, one `load_dataset` call).",
                "",
            ]
        ),
    )
    print(json.dumps({k: record[k] for k in ("n_interactions", "seconds", "peak_rss_mb")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
