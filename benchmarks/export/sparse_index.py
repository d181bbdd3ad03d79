"""Time an artifact's sparse item index against a flat FAISS index, side by side in one process.

    python -m benchmarks.export.sparse_index artifacts/NAME                      # sparse vs flat, k=20
    python -m benchmarks.export.sparse_index artifacts/NAME --round-to 1,2,4,8   # prefix: each rounding

Prints a Markdown table (bytes and ms/query at batch 1 and 32, each as a multiple of flat); one
FAISS thread. The same comparison ``python -m export --index auto`` makes at export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.timing import time_search
from export.artifact import load_artifact
from export.index import ItemIndex
from export.sparse_index import SparseIndex, prefix_structure


def compare(
    artifact_path: str | Path, round_to: tuple[int, ...] = (1,), users: int = 200, k: int = 20, rounds: int = 3
) -> list[dict[str, Any]]:
    """Time the artifact's sparse index (each ``round_to`` for prefix) against a flat faiss index over
    the zero-filled item vectors, on its first ``users`` users, alternating ``rounds`` times."""
    import faiss

    faiss.omp_set_num_threads(1)
    art = load_artifact(artifact_path)
    table = art.served_item_table()
    if table is None:
        raise ValueError(f"{artifact_path}: the served item vectors are dense; nothing sparse to compare")
    candidates: dict[str, Any] = {}
    for m in round_to:
        index = (
            SparseIndex.from_table(table, round_to=m)
            if prefix_structure(table) is not None and bool((np.diff(prefix_structure(table)) >= 0).all())
            else SparseIndex.from_table(table)
        )
        candidates[f"sparse {index.layout}" + (f" round_to={m}" if index.layout == "prefix" else "")] = index
    candidates["flat"] = ItemIndex.build("flat", art.item_vectors())
    queries = np.ascontiguousarray(art.user_vectors()[:users])
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, index in candidates.items():
            runs[name].append(time_search(index, queries, min(k, art.n_items), repeats=1))
    rows = []
    for name, index in candidates.items():
        row = {
            "index": name,
            "bytes": index.nbytes if isinstance(index, SparseIndex) else art.n_items * art.dim * 4,
            "shards": index.describe().get("shards") if isinstance(index, SparseIndex) else None,
        }
        for key in runs[name][0]:
            row[key] = float(np.median([run[key] for run in runs[name]]))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.export.sparse_index",
        description="Time an artifact's sparse index against flat, side by side.",
    )
    parser.add_argument("artifact", help="artifact folder")
    parser.add_argument("--round-to", default="1", help="prefix layout: comma-separated roundings (default 1)")
    parser.add_argument("--users", type=int, default=200, help="queries: the first N users (default 200)")
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        rows = compare(args.artifact, tuple(int(m) for m in args.round_to.split(",")), args.users, args.k)
    except (ValueError, OSError) as exc:
        print(f"benchmarks.export.sparse_index: {exc}", file=sys.stderr)
        return 1
    flat = next(row for row in rows if row["index"] == "flat")
    timings = [key for key in flat if key.endswith("_ms_per_query")]
    names = [key.replace("_ms_per_query", "").replace("_", " ") for key in timings]
    print("| index | shards | bytes | x flat | " + " | ".join(f"{n} ms/query | x flat" for n in names) + " |")
    print("|---|---|---|---|" + "---|---|" * len(timings))
    for row in rows:
        cells = [f"{row[key]:.3f} | {row[key] / flat[key]:.2f}" for key in timings]
        print(
            f"| {row['index']} | {row['shards'] or ''} | {row['bytes']:,} | {row['bytes'] / flat['bytes']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
