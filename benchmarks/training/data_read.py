"""How long the delimited reader takes on a large CSV, quote-free (bulk split) and fully quoted (csv module).

    python -m benchmarks.training.data_read                                   # 20M rows -> results/data-read.{json,md}
    python -m benchmarks.training.data_read --rows 200000 --results /tmp/r    # a quicker look

Writes the synthetic generator's interactions (1M users x 1M items at the default size) as one
``userId,movieId,rating,timestamp`` file without quotes and one with every field quoted, then
times ``read_delimited`` on each (best of ``--repeats``, in this one process, the two side by
side so their ratio comes from one run). The files live in a temporary folder and are removed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.harness import provenance_line
from common.io import atomic_write_json, atomic_write_text
from train.data import read_delimited, synthetic_interactions

HEADER = ["userId", "movieId", "rating", "timestamp"]


def write_files(folder: Path, rows: int, seed: int) -> dict[str, Path]:
    """``{"plain": path, "quoted": path}``: about ``rows`` interactions each, the same ones in both."""
    n_users = max(10, rows // 20)
    raw = synthetic_interactions(n_users, n_users, interactions_per_user=rows / n_users, seed=seed, progress=False)
    ratings = np.random.default_rng(seed).integers(1, 6, len(raw))
    columns = [raw.users.tolist(), raw.items.tolist(), ratings.tolist(), raw.timestamps.astype(np.int64).tolist()]
    plain, quoted = folder / "plain.csv", folder / "quoted.csv"
    with open(plain, "w", newline="") as handle:
        handle.write(",".join(HEADER) + "\n")
        handle.writelines(f"{u},{i},{r},{t}\n" for u, i, r, t in zip(*columns))
    with open(quoted, "w", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(zip(*columns))
    return {"plain": plain, "quoted": quoted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000_000, help="interactions per file (about)")
    parser.add_argument("--repeats", type=int, default=3, help="reads per file; the best is kept")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--results", default="results", help="folder for data-read.{json,md}")
    harness.add_timing_flags(parser)
    args = parser.parse_args(argv)
    source = harness.start()  # the load before the work

    record = {"provenance": source, "config": {"rows": args.rows, "repeats": args.repeats, "seed": args.seed}}
    with tempfile.TemporaryDirectory(prefix="bench-read-") as scratch:
        files = write_files(Path(scratch), args.rows, args.seed)
        timings = {}
        for kind, path in files.items():
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                raw = read_delimited(path)
                seconds.append(time.perf_counter() - started)
            timings[kind] = {"rows": len(raw), "bytes": path.stat().st_size, "seconds": round(min(seconds), 3)}
    record["files"] = timings
    record["quoted_over_plain"] = round(timings["quoted"]["seconds"] / timings["plain"]["seconds"], 2)
    results = Path(args.results)
    if not harness.may_write(
        source,
        [results / "data-read.json", results / "data-read.md"],
        allow_noisy=args.allow_noisy,
        prog="benchmarks.training.data_read",
    ):
        return 2
    atomic_write_json(results / "data-read.json", record)
    lines = [
        provenance_line(record["provenance"]),
        "",
        "# Reading a large CSV",
        "",
        f"| file | rows | MB | seconds (best of {args.repeats}) |",
        "|---|---|---|---|",
    ]
    for kind, timing in timings.items():
        lines.append(f"| {kind} | {timing['rows']:,} | {timing['bytes'] / 1e6:.0f} | {timing['seconds']:.2f} |")
    ratio = (
        f"Quoted over plain, same run: **{record['quoted_over_plain']:.2f}x** (quote-free files are split in "
        f"bulk; quoted ones go through csv.reader)."
    )
    lines += ["", ratio, ""]
    atomic_write_text(results / "data-read.md", "\n".join(lines))
    print(json.dumps({kind: timing["seconds"] for kind, timing in timings.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
