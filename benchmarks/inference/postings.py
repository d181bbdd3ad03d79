"""Served bytes and latency of the sparse index layouts at 1M items, against small-dense at equal non-zeros.

    python -m benchmarks.inference.postings                       # results/postings.{json,md}; quiet machine only
    python -m benchmarks.inference.postings --allow-noisy --out /tmp/postings --items 200000
    python -m benchmarks.inference.postings --bytes-only --out /tmp/postings   # no timing: any machine

One run, one thread, every layout side by side on the same query pool, at each density (0.05
and 0.1 by default):

- ``small-dense``: dim ``round(density * 64)``, values N(0, 1), a faiss flat index;
- ``prefix``: row lengths from the trained dsl-mixed profile (``benchmarks/inference/trained_masks.json``),
  items sorted by length, the prefix layout (``export.sparse_index``);
- ``postings`` (int32 ids + float32 values) and ``gaps`` (nibble-coded id gaps + float32 values,
  ``export.gap_postings``) over one unstructured mask drawn from the trained dsl profile (per-row
  counts and per-dim shares), values N(0, 1).

Queries are user rows drawn from the same profiles' user groups (the small-dense users dense).
Served bytes are what a serving worker holds to answer: the index's arrays, the user vectors it
holds (``serving.user_rows``: the sparse layouts' users as compressed rows, prefix or CSR as an
artifact maps them; small-dense's as ``float32 [n_users, dim]``) and the two id maps (fixed-width unicode arrays, as the artifact stores them); they do not
depend on load. Recall@20 of every index is checked against brute force over the zero-filled
vectors (tie-aware). Latency: p50 / p99 per call at batch 1, 32 and 256 (``common.timing``).

The results are written only when the 1-minute load average is at most half the CPUs, unless
``--allow-noisy`` (then the files say so); the report prints either way.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from common.paths import REPO_ROOT

DIM, K = 64, 20
BATCHES = (1, 32, 256)
LAYOUTS = ("small-dense", "prefix", "postings", "gaps")


def _tables(n_items: int, n_users: int, density: float, seed: int) -> dict[str, dict[str, Any]]:
    """Item tables and user queries of every layout at one density (see the module docstring)."""
    from benchmarks.inference.trained_masks import DEFAULT_OUT, load_profiles, nearest, sample_mask

    profiles = load_profiles(DEFAULT_OUT)
    rng = np.random.default_rng([seed, int(density * 1000)])
    small_dim = max(1, round(density * DIM))
    out: dict[str, dict[str, Any]] = {
        "small-dense": {
            "items": rng.standard_normal((n_items, small_dim), dtype=np.float32),
            "users": rng.standard_normal((n_users, small_dim), dtype=np.float32),
            "dim": small_dim,
        }
    }
    for layout in ("prefix", "unstructured"):
        profile = nearest(profiles, layout, density)
        item_mask = sample_mask(profile, "items", n_items, density, DIM, rng, layout)
        user_mask = sample_mask(profile, "users", n_users, density, DIM, rng, layout)
        if layout == "prefix":
            item_mask = item_mask[np.argsort(item_mask.sum(axis=1), kind="stable")]
        rows, cols = np.nonzero(item_mask)
        indptr = np.zeros(n_items + 1, dtype=np.int64)
        np.cumsum(item_mask.sum(axis=1), out=indptr[1:])
        del item_mask
        table = sp.csr_matrix(
            (rng.standard_normal(len(rows), dtype=np.float32), cols.astype(np.int32), indptr), shape=(n_items, DIM)
        )
        users = rng.standard_normal((n_users, DIM), dtype=np.float32) * user_mask
        out[layout] = {"table": table, "users": users, "dim": DIM}
    return out


def _build(layout: str, tables: dict[str, dict[str, Any]]):
    from export.index import ItemIndex
    from export.sparse_index import SparseIndex

    if layout == "small-dense":
        return ItemIndex.build("flat", tables["small-dense"]["items"])
    if layout == "prefix":
        return SparseIndex.from_table(tables["prefix"]["table"], layout="prefix")
    return SparseIndex.from_table(tables["unstructured"]["table"], layout=layout)


def _index_bytes(layout: str, index, tables) -> int:
    if layout == "small-dense":
        items = tables["small-dense"]["items"]
        return int(items.shape[0] * items.shape[1] * 4)
    return int(index.nbytes)


def _user_bytes(users: np.ndarray, layout: str) -> int:
    """Bytes a serving worker holds for these user vectors (``serving.user_rows.user_rows_from_artifact``
    with mapped files: the stored layout's user rows where smaller than dense float32)."""
    from export.to_sparse import PackedTable, PrefixTable, index_dtype, indptr_dtype, lengths_dtype
    from serving.user_rows import UserRows

    if layout == "small-dense":
        return int(users.nbytes)
    mask = users != 0
    values = users[mask]
    if layout == "prefix":
        table = PrefixTable(mask.sum(axis=1).astype(lengths_dtype(users.shape[1])), values, users.shape, "fp32")
    else:
        rows, cols = np.nonzero(mask)
        indptr = np.zeros(len(users) + 1, dtype=indptr_dtype(len(values)))
        np.cumsum(mask.sum(axis=1), out=indptr[1:])
        table = PackedTable(indptr, cols.astype(index_dtype(users.shape[1])), values, users.shape, "fp32")
    return min(UserRows.from_table(table).nbytes, int(users.nbytes))


def _recall(index, queries: np.ndarray, table) -> float:
    """Tie-aware recall@K against brute force over the zero-filled vectors (float64)."""
    exact = (table @ queries.T.astype(np.float64)).T if sp.issparse(table) else queries.astype(np.float64) @ table.T
    kth = -np.sort(-exact, axis=1)[:, K - 1 : K]
    _, ids = index.search(queries, K)
    got = np.take_along_axis(exact, ids, axis=1)
    return float(np.mean(got >= kth - 1e-4))


def _latency(index, queries: np.ndarray, batch: int, min_time_s: float) -> dict[str, float]:
    from common.timing import time_calls

    state = {"start": 0}

    def next_rows():
        start = state["start"]
        state["start"] = (start + batch) % max(len(queries) - batch + 1, 1)
        return queries[start : start + batch]

    seconds = time_calls(
        lambda rows: index.search(rows, K), next_rows, warmup=2, min_calls=10, max_calls=400, min_time_s=min_time_s
    )
    ms = 1e3 * np.asarray(seconds)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "calls": len(ms)}


def measure(
    n_items: int,
    densities: tuple[float, ...],
    n_users: int,
    seed: int,
    min_time_s: float,
    progress=print,
    timed: bool = True,
) -> list[dict[str, Any]]:
    """One row per (density, layout): nnz, bytes (index, users, id maps, served), recall, latency."""
    # the artifact's id maps: unicode arrays as wide as the longest id (export writes "<U<width>")
    item_ids = np.arange(n_items).astype(f"<U{len(str(max(n_items - 1, 0)))}")
    user_ids = np.arange(n_users).astype(f"<U{len(str(max(n_users - 1, 0)))}")
    id_bytes = int(item_ids.nbytes + user_ids.nbytes)
    rows = []
    for density in densities:
        tables = _tables(n_items, n_users, density, seed)
        for layout in LAYOUTS:
            progress(f"density {density:g}: {layout}")
            index = _build(layout, tables)
            source = tables[
                "small-dense" if layout == "small-dense" else "prefix" if layout == "prefix" else "unstructured"
            ]
            users = np.ascontiguousarray(source["users"])
            table = source.get("table", source.get("items"))
            nnz = int(table.nnz) if sp.issparse(table) else int(table.size)
            index_bytes = _index_bytes(layout, index, tables)
            user_bytes = _user_bytes(users, layout)
            row = {
                "density": density,
                "layout": layout,
                "dim": source["dim"],
                "nnz": nnz,
                "index_bytes": index_bytes,
                "user_bytes": user_bytes,
                "id_map_bytes": id_bytes,
                "served_bytes": index_bytes + user_bytes + id_bytes,
                "index_bytes_per_nnz": index_bytes / max(nnz, 1),
                # gaps: the float32 [n_items] accumulator each searching thread keeps (not in served bytes)
                "scratch_bytes_per_thread": 4 * n_items if layout == "gaps" else 0,
                "recall@20": _recall(index, users[:64], table),
            }
            for batch in BATCHES if timed else ():
                row[f"batch_{batch}"] = _latency(index, users, batch, min_time_s)
            rows.append(row)
            del index
    for row in rows:  # ratios against small-dense at the same density
        base = next(r for r in rows if r["density"] == row["density"] and r["layout"] == "small-dense")
        row["index_bytes_x_small_dense"] = row["index_bytes"] / base["index_bytes"]
        row["served_bytes_x_small_dense"] = row["served_bytes"] / base["served_bytes"]
        for batch in BATCHES if timed else ():
            row[f"batch_{batch}_p50_x_small_dense"] = row[f"batch_{batch}"]["p50_ms"] / base[f"batch_{batch}"]["p50_ms"]
    return rows


def targets(row: dict[str, Any]) -> str:
    """The gaps layout's targets: served bytes and batch-1 p50 <= 1.3x small-dense, recall 1.0."""
    if row["layout"] != "gaps":
        return ""
    checks = [
        ("served bytes <= 1.3x", row["served_bytes_x_small_dense"] <= 1.3),
        ("index bytes <= 1.3x", row["index_bytes_x_small_dense"] <= 1.3),
        ("recall 1.0", row["recall@20"] >= 1.0),
    ]
    if "batch_1_p50_x_small_dense" in row:
        checks.insert(2, ("batch-1 p50 <= 1.3x", row["batch_1_p50_x_small_dense"] <= 1.3))
    return "; ".join(f"{'met' if ok else '**missed**'}: {name}" for name, ok in checks)


def markdown(rows: list[dict[str, Any]], record: dict[str, Any]) -> str:
    from common.provenance import provenance_line

    lines = ["# Sparse index layouts against small-dense at equal non-zeros", "", provenance_line(record), ""]
    if record.get("noisy"):
        lines += [
            (
                f"**Noisy**: load {record['machine']['load_avg_1m']} on {record['machine']['cpus']} CPUs at start "
                f"(limit: half the CPUs), run with --allow-noisy: compare nothing across runs."
            ),
            "",
        ]
    lines += [
        (
            f"{record['n_items']:,} items, {record['n_users']} query users, k = {K}, one thread; ratios are "
            "this / small-dense at the same density. Served bytes = index + user vectors + id maps; "
            "the gaps layout also keeps one float32 [n_items] accumulator per searching thread "
            f"({4 * record['n_items'] / 2**20:.1f} MiB here), not counted."
        ),
        "",
        (
            "| density | layout | dim | nnz | index MiB | B/nnz | served MiB | index x | served x | recall@20 | "
            + " | ".join(f"B={b} p50 / p99 ms | x" for b in BATCHES)
            + " | targets |"
        ),
        ("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|---:|" * len(BATCHES) + "---|"),
    ]
    for r in rows:
        cells = " | ".join(
            f"{r[f'batch_{b}']['p50_ms']:.3g} / {r[f'batch_{b}']['p99_ms']:.3g} | "
            f"{r[f'batch_{b}_p50_x_small_dense']:.2f}"
            if f"batch_{b}" in r
            else "not timed | "
            for b in BATCHES
        )
        lines.append(
            f"| {r['density']:g} | {r['layout']} | {r['dim']} | {r['nnz']:,} | {r['index_bytes'] / 2**20:.1f} | "
            f"{r['index_bytes_per_nnz']:.3f} | {r['served_bytes'] / 2**20:.1f} | "
            f"{r['index_bytes_x_small_dense']:.3f} | {r['served_bytes_x_small_dense']:.3f} | "
            f"{r['recall@20']:.3f} | {cells} | {targets(r)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.inference.postings", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--items", type=int, default=1_000_000, help="catalogue size (default 1,000,000)")
    parser.add_argument("--users", type=int, default=512, help="query pool (default 512)")
    parser.add_argument("--densities", default="0.05,0.1", help="comma-separated (default 0.05,0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per batch size")
    parser.add_argument("--out", default=str(REPO_ROOT / "results"), help="folder of postings.{json,md}")
    parser.add_argument("--allow-noisy", action="store_true", help="write even when the machine is busy")
    parser.add_argument(
        "--bytes-only",
        action="store_true",
        help="bytes and recall only, no timing (they do not depend on load: runs on a busy machine)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import faiss

    from common.io import atomic_write_json, atomic_write_text
    from common.provenance import busy_reason, machine, provenance

    faiss.omp_set_num_threads(1)
    reason = busy_reason()
    busy = reason is not None
    if busy and not (args.allow_noisy or args.bytes_only):
        print(f"postings: {reason}: refusing to time (run on a quiet machine, or pass --allow-noisy)", file=sys.stderr)
        return 2
    densities = tuple(float(d) for d in args.densities.split(","))
    rows = measure(
        args.items,
        densities,
        args.users,
        args.seed,
        args.min_time,
        progress=lambda text: print(text, file=sys.stderr, flush=True),
        timed=not args.bytes_only,
    )
    record = provenance(
        argv,
        n_items=args.items,
        n_users=args.users,
        seed=args.seed,
        k=K,
        noisy=busy and not args.bytes_only,
        timed=not args.bytes_only,
        load_avg_1m_end=machine()["load_avg_1m"],
        rows=rows,
    )
    text = markdown(rows, record)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "postings.json", record)
    atomic_write_text(out / "postings.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
