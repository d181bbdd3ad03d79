"""Bytes of the embedding tables per storage format and density, and what quantisation costs.

    python -m benchmarks.export.size                        # ml-100k + 1M-item shapes, ONNX memory -> results/size.{json,md}
    python -m benchmarks.export.size --skip-onnx --skip-large
    python -m benchmarks.export.size --run runs/mf-dsl      # add the fidelity of a trained run's tables
    python -m benchmarks.export.size --out-dir results --onnx-rows 200000

Formats (tables of ``n_rows x dim`` at ``density``, random masks; bytes of the stored arrays):

- dense fp32 / fp16 / int8 (int8 with a float32 scale per row);
- scipy CSR: int32 row pointers and column indices, float32 values;
- packed CSR (export.to_sparse): uint32 row pointers, uint8 columns (dim <= 256), fp32 / fp16 /
  int8 values (+ per-row scale for int8);
- prefix (export.to_sparse, masks whose rows are prefixes [0, L_r), as dsl-nested / dsl-mixed
  train them): uint8 row lengths (dim <= 255), no column indices, fp32 / fp16 / int8 values
  (+ per-row scale for int8). Measured on a prefix mask with the same nnz per table as the
  random mask: uniform lengths ``nnz // rows``, the remainder one each to the first rows. Its
  bytes depend only on nnz and the row count (any lengths <= dim, e.g. the degree-prior
  allocation of dsl-mixed, cost the same);
- the equal-budget small dense model: ``dim' = round(density x dim)``, dense fp32 / fp16 / int8.

The ml-100k shape (943 users + 1682 items, dim 64) packs real random masks; the 1M-item shape
(100k users + 1M items) draws the random masks' non-zero counts chunk by chunk and applies the
same byte arithmetic, which the ml-100k part checks against real packing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from benchmarks import harness
from benchmarks.harness import provenance_line
from common.io import atomic_write_text
from export.quality import overlap_at_k, topk_by_scores
from export.to_sparse import dense_bytes, pack_prefix_table, pack_table, packed_bytes, prefix_bytes

DENSITIES = (1.0, 0.5, 0.2, 0.1, 0.05)
VALUE_DTYPES = ("fp32", "fp16", "int8")
ML100K = {"name": "ml-100k", "tables": {"users": 943, "items": 1682}, "dim": 64}
LARGE = {"name": "synthetic-1M", "tables": {"users": 100_000, "items": 1_000_000}, "dim": 64}
PREFIX_LENGTHS = (
    "uniform lengths nnz // rows per table, the remainder one each to the first rows (same nnz as "
    "the random mask; prefix bytes depend only on nnz and rows, so e.g. dsl-mixed's degree-prior "
    "lengths cost the same)"
)
log = logging.getLogger("sparserec.benchmarks.export.size")


def scipy_csr_bytes(n_rows: int, nnz: int) -> int:
    """scipy CSR with int32 row pointers and indices, float32 values."""
    return (n_rows + 1) * 4 + nnz * 4 + nnz * 4


def small_dense_dim(density: float, dim: int) -> int:
    return max(1, round(density * dim))


def format_bytes(n_rows: int, dim: int, nnz: int, density: float) -> dict[str, int]:
    """Bytes of one table in every format (see the module docstring)."""
    small = small_dense_dim(density, dim)
    row = {f"dense_{v}": dense_bytes(n_rows, dim, v) for v in VALUE_DTYPES}
    row["scipy_csr_fp32"] = scipy_csr_bytes(n_rows, nnz)
    row.update({f"packed_{v}": packed_bytes(n_rows, dim, nnz, v) for v in VALUE_DTYPES})
    row.update({f"prefix_{v}": prefix_bytes(n_rows, dim, nnz, v) for v in VALUE_DTYPES})
    row.update({f"small_dense_{v}": dense_bytes(n_rows, small, v) for v in VALUE_DTYPES})
    return row


def uniform_prefix_mask(n_rows: int, dim: int, nnz: int) -> np.ndarray:
    """A prefix mask with ``nnz`` positions: every row ``nnz // n_rows`` long, the remainder +1 on the first rows."""
    lengths = np.full(n_rows, nnz // n_rows, dtype=np.int64)
    lengths[: nnz % n_rows] += 1
    return np.arange(dim)[None, :] < lengths[:, None]


def _sum_rows(rows: list[dict[str, int]]) -> dict[str, int]:
    return {key: int(sum(r[key] for r in rows)) for key in rows[0]}


def measure_shape(shape: dict[str, Any], densities, rng: np.random.Generator, pack: bool, progress: bool) -> list[dict]:
    """Bytes per format for each density; ``pack`` packs real masks, else counts nnz chunk by chunk."""
    dim = shape["dim"]
    results = []
    for density in tqdm(densities, desc=f"sizes {shape['name']}", disable=not progress, leave=False):
        per_table, nnz_total, entries = [], 0, 0
        for table, n_rows in shape["tables"].items():
            if pack:
                mask = rng.random((n_rows, dim)) < density
                weight = rng.normal(0.0, 0.1, (n_rows, dim)).astype(np.float32) * mask
                nnz = int(mask.sum())
                row = format_bytes(n_rows, dim, nnz, density)
                prefix_mask = uniform_prefix_mask(n_rows, dim, nnz)
                prefix_weight = prefix_mask.astype(np.float32)  # bytes only; leaves the seeded draws as they were
                for value_dtype in VALUE_DTYPES:  # the arithmetic is the real thing
                    real = pack_table(weight, mask, value_dtype).nbytes
                    assert real == row[f"packed_{value_dtype}"], (table, value_dtype, real, row)
                    real = pack_prefix_table(prefix_weight, prefix_mask, value_dtype)
                    assert real.nnz == nnz and real.nbytes == row[f"prefix_{value_dtype}"], (table, value_dtype, row)
            else:
                nnz = 0
                for start in range(0, n_rows, 50_000):
                    nnz += int((rng.random((min(50_000, n_rows - start), dim)) < density).sum())
                row = format_bytes(n_rows, dim, nnz, density)
            per_table.append(row)
            nnz_total += nnz
            entries += n_rows * dim
        total = _sum_rows(per_table)
        results.append(
            {
                "density": density,
                "nnz": nnz_total,
                "measured_density": nnz_total / entries,
                "small_dense_dim": small_dense_dim(density, dim),
                "bytes": total,
                "verdict": verdict(total),
            }
        )
    return results


def verdict(total: dict[str, int]) -> dict[str, Any]:
    """Which sparse format beats which dense one (smaller bytes) at this density."""
    best_sparse = min(("packed_fp32", "packed_fp16", "packed_int8"), key=lambda k: total[k])
    best_prefix = min(("prefix_fp32", "prefix_fp16", "prefix_int8"), key=lambda k: total[k])
    return {
        "best_sparse": best_sparse,
        "packed_fp32_vs_dense_fp32": total["packed_fp32"] / total["dense_fp32"],
        "packed_int8_vs_dense_int8": total["packed_int8"] / total["dense_int8"],
        "packed_fp16_vs_dense_int8": total["packed_fp16"] / total["dense_int8"],
        "packed_int8_vs_small_dense_int8": total["packed_int8"] / total["small_dense_int8"],
        "packed_fp32_vs_scipy_csr": total["packed_fp32"] / total["scipy_csr_fp32"],
        "sparse_beats_dense_int8": total[best_sparse] < total["dense_int8"],
        "sparse_beats_small_dense_int8": total[best_sparse] < total["small_dense_int8"],
        # prefix-shaped masks (dsl-nested / dsl-mixed)
        "best_prefix": best_prefix,
        "prefix_fp32_vs_packed_fp32": total["prefix_fp32"] / total["packed_fp32"],
        "prefix_int8_vs_packed_int8": total["prefix_int8"] / total["packed_int8"],
        "prefix_int8_vs_dense_int8": total["prefix_int8"] / total["dense_int8"],
        "prefix_fp32_vs_small_dense_fp32": total["prefix_fp32"] / total["small_dense_fp32"],
        "prefix_int8_vs_small_dense_int8": total["prefix_int8"] / total["small_dense_int8"],
        "prefix_beats_dense_int8": total[best_prefix] < total["dense_int8"],
        "prefix_beats_small_dense_int8": total[best_prefix] < total["small_dense_int8"],
    }


# ---------------------------------------------------------------------------- fidelity
def fidelity(
    densities,
    rng: np.random.Generator,
    k: int = 20,
    progress: bool = True,
    tables: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> list[dict]:
    """Top-k overlap of fp16 / int8 tables with fp32, all users, no exclusion.

    Random N(0, 0.1) MF tables at the ml-100k shape for each density, or a trained run's
    ``(user_weight, user_mask, item_weight, item_mask)`` as one extra row.
    """
    rows = []
    cases = [(d, None) for d in densities] if tables is None else [("trained", tables)]
    for density, given in tqdm(cases, desc="fidelity", disable=not progress, leave=False):
        if given is None:
            masks = [rng.random((n, ML100K["dim"])) < density for n in ML100K["tables"].values()]
            weights = [rng.normal(0, 0.1, m.shape).astype(np.float32) * m for m in masks]
        else:
            weights, masks = [given[0], given[2]], [given[1], given[3]]
        _, want = topk_by_scores(weights[0], weights[1], k)
        row: dict[str, Any] = {
            "density": density if given is None else float(np.mean(np.concatenate([m.ravel() for m in masks])))
        }
        if given is not None:
            row["source"] = "trained run"
        for value_dtype in ("fp16", "int8"):
            users = pack_table(weights[0], masks[0], value_dtype).to_dense()
            items = pack_table(weights[1], masks[1], value_dtype).to_dense()
            _, got = topk_by_scores(users, items, k)
            row[f"overlap@{k}_{value_dtype}"] = overlap_at_k(got, want)
        rows.append(row)
    return rows


def trained_tables(run_dir: str | Path):
    """``(user_weight, user_mask, item_weight, item_mask)`` of a trained MF run (needs torch)."""
    from train.checkpoint import load_trained

    model, *_ = load_trained(run_dir)
    if model.kind != "mf":
        raise SystemExit(f"--run: fidelity uses MF tables; {run_dir} holds a {model.kind} model")
    out = []
    for table in (model.user_embedding, model.item_embedding):
        out += [(table.weight * table.mask).detach().numpy(), table.mask.numpy().astype(bool)]
    return tuple(out)


# ---------------------------------------------------------------------------- ONNX memory
def onnx_memory(n_rows: int, dim: int, densities, rng: np.random.Generator, progress: bool) -> list[dict]:
    """Session RSS delta and lookup latency of a user tower, dense vs packed, per density."""
    from export import to_onnx

    users = np.arange(min(256, n_rows), dtype=np.int64) * max(1, n_rows // 256)
    feeds = {"user": users.tolist()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as scratch:
        for density in tqdm(densities, desc="onnx memory", disable=not progress, leave=False):
            mask = rng.random((n_rows, dim)) < density
            weight = rng.normal(0, 0.1, (n_rows, dim)).astype(np.float32) * mask
            row: dict[str, Any] = {"density": density, "n_rows": n_rows, "dim": dim}
            packed_int8 = pack_table(weight, mask, "int8")
            layouts = {
                "dense_fp32": weight,
                "dense_int8": to_onnx.DenseRows(*packed_int8.to_dense_stored()),
                "packed_fp32": pack_table(weight, mask, "fp32"),
                "packed_int8": packed_int8,
            }
            del mask
            for name, rows_or_table in layouts.items():
                model, _ = to_onnx.build_user_tower(rows_or_table, dim)
                path = Path(scratch) / f"{name}.onnx"
                to_onnx.save_model(model, path)
                del model
                entry = {"file_bytes": path.stat().st_size, **to_onnx.session_rss_delta(path, feeds)}
                session = to_onnx.session(path)
                session.run(None, {"user": users})
                started = time.perf_counter()
                for _ in range(20):
                    session.run(None, {"user": users})
                entry["ms_per_batch_256"] = round(1000 * (time.perf_counter() - started) / 20, 4)
                del session
                row[name] = entry
                path.unlink()
            for value_dtype in ("fp32", "int8"):  # packed against dense of the same value dtype
                row[f"saved_session_bytes_packed_{value_dtype}"] = (
                    row[f"dense_{value_dtype}"]["session_rss_delta"] - row[f"packed_{value_dtype}"]["session_rss_delta"]
                )
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------- report
ONNX_LAYOUTS = ("dense_fp32", "dense_int8", "packed_fp32", "packed_int8")
COLUMNS = [
    "dense_fp32",
    "dense_fp16",
    "dense_int8",
    "scipy_csr_fp32",
    "packed_fp32",
    "packed_fp16",
    "packed_int8",
    "prefix_fp32",
    "prefix_fp16",
    "prefix_int8",
    "small_dense_fp32",
    "small_dense_fp16",
    "small_dense_int8",
]


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        provenance_line(report["provenance"]),
        "",
        "# Embedding table size by format and density",
        "",
        f"numpy {report['numpy']}.",
        "",
        "Bytes of the stored arrays (payload; each `.npy` file adds a 128-byte header). Random masks at each "
        "density; `small dense` is the equal-budget model with `dim' = round(density x dim)`. "
        "int8 formats include a float32 scale per row. `packed` is the CSR layout (any mask); `prefix` is the "
        "layout for masks whose rows are prefixes [0, L_r) (dsl-nested / dsl-mixed): uint8 row lengths, no "
        f"column indices, measured on a prefix mask of the same nnz: {report.get('prefix_lengths', PREFIX_LENGTHS)}.",
        "",
    ]
    for shape in report["shapes"]:
        lines += [
            f"## {shape['name']}: {', '.join(f'{n} {t}' for t, n in shape['tables'].items())}, dim {shape['dim']}",
            "",
            "| density | nnz | dim' | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |",
            "|" + "---|" * (len(COLUMNS) + 3),
        ]
        for row in shape["results"]:
            cells = [f"{row['density']:g}", str(row["nnz"]), str(row["small_dense_dim"])]
            cells += [_human(row["bytes"][c]) for c in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            "| density | packed fp32 / dense fp32 | packed int8 / dense int8 | packed fp16 / dense int8 | "
            "packed int8 / small dense int8 | best sparse beats dense int8? | beats small dense int8? |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in shape["results"]:
            v = row["verdict"]
            lines.append(
                f"| {row['density']:g} | {v['packed_fp32_vs_dense_fp32']:.2f} | {v['packed_int8_vs_dense_int8']:.2f}"
                f" | {v['packed_fp16_vs_dense_int8']:.2f} | {v['packed_int8_vs_small_dense_int8']:.2f} | "
                f"{'yes' if v['sparse_beats_dense_int8'] else 'no'} ({v['best_sparse'].replace('_', ' ')}) | "
                f"{'yes' if v['sparse_beats_small_dense_int8'] else 'no'} |"
            )
        lines += [
            "",
            "Prefix-shaped masks (dsl-nested / dsl-mixed):",
            "",
            "| density | prefix fp32 / packed fp32 | prefix int8 / packed int8 | prefix int8 / dense int8 | "
            "prefix fp32 / small dense fp32 | prefix int8 / small dense int8 | best prefix beats dense int8? | "
            "beats small dense int8? |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in shape["results"]:
            v = row["verdict"]
            if "best_prefix" not in v:
                continue
            lines.append(
                f"| {row['density']:g} | {v['prefix_fp32_vs_packed_fp32']:.2f} | "
                f"{v['prefix_int8_vs_packed_int8']:.2f} | {v['prefix_int8_vs_dense_int8']:.2f} | "
                f"{v['prefix_fp32_vs_small_dense_fp32']:.3f} | {v['prefix_int8_vs_small_dense_int8']:.3f} | "
                f"{'yes' if v['prefix_beats_dense_int8'] else 'no'} ({v['best_prefix'].replace('_', ' ')}) | "
                f"{'yes' if v['prefix_beats_small_dense_int8'] else 'no'} |"
            )
        lines.append("")
    lines += ["## Reading it", "", *[f"- {text}" for text in report["findings"]], ""]
    if report.get("fidelity"):
        lines += [
            "## Fidelity of quantised values (top-20 overlap with fp32, all users, no exclusion)",
            "",
            "| tables | density | fp16 | int8 |",
            "|---|---|---|---|",
        ]
        for row in report["fidelity"]:
            lines.append(
                f"| {row.get('source', 'random N(0, 0.1), ml-100k shape')} | {row['density']:.3g} | "
                f"{row['overlap@20_fp16']:.4f} | {row['overlap@20_int8']:.4f} |"
            )
        lines.append("")
    if report.get("onnx"):
        first = report["onnx"][0]
        lines += [
            f"## ONNX user tower: onnxruntime session memory ({first['n_rows']} users x dim {first['dim']})",
            "",
            "RSS of a fresh process after `InferenceSession` minus before (runtime warmed on a trivial graph); "
            "latency of one 256-user lookup, 1 thread, mean of 20. `saved` is against the dense tower of the "
            "same value dtype.",
            "",
            "| density | layout | file | session RSS delta | after one run | ms / 256 users | saved vs dense |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in report["onnx"]:
            for layout in ONNX_LAYOUTS:
                entry = row[layout]
                saved = row.get(f"saved_session_bytes_{layout}")
                lines.append(
                    f"| {row['density']:g} | {layout.replace('_', ' ')} | {_human(entry['file_bytes'])} | "
                    f"{_human(entry['session_rss_delta'])} | {_human(entry['after_run_rss_delta'])} | "
                    f"{entry['ms_per_batch_256']} | {'' if saved is None else _human(saved)} |"
                )
        lines.append("")
    return "\n".join(lines)


def findings(shapes: list[dict[str, Any]]) -> list[str]:
    """Plain statements drawn from the numbers (where sparse wins, where it does not)."""
    out = []
    for shape in shapes:
        rows = shape["results"]
        beat_fp32 = [r["density"] for r in rows if r["verdict"]["packed_fp32_vs_dense_fp32"] < 1]
        beat_int8 = [r["density"] for r in rows if r["verdict"]["sparse_beats_dense_int8"]]
        beat_small = [r["density"] for r in rows if r["verdict"]["sparse_beats_small_dense_int8"]]
        out.append(
            f"{shape['name']}: packed fp32 is smaller than dense fp32 at densities "
            f"{beat_fp32 or 'none'}; the best packed format is smaller than dense int8 at "
            f"{beat_int8 or 'none'}; it is smaller than the equal-budget small dense int8 model at "
            f"{beat_small or 'no density'}."
        )
        sparse = [r for r in rows if r["density"] < 1]
        if sparse:
            vs_small = [r["verdict"]["prefix_int8_vs_small_dense_int8"] for r in sparse]
            vs_small32 = [r["verdict"]["prefix_fp32_vs_small_dense_fp32"] for r in sparse]
            vs_csr = [r["verdict"]["prefix_int8_vs_packed_int8"] for r in sparse]
            prefix_int8 = [r["density"] for r in rows if r["verdict"]["prefix_beats_dense_int8"]]
            prefix_small = [r["density"] for r in rows if r["verdict"]["prefix_beats_small_dense_int8"]]
            n_rows = sum(shape["tables"].values())
            held = ", ".join(f"{r['nnz'] / (n_rows * r['small_dense_dim']):.3f} at {r['density']:g}" for r in sparse)
            out.append(
                f"{shape['name']}, prefix-shaped masks: prefix int8 is {min(vs_csr):.2f}-{max(vs_csr):.2f}x "
                f"packed CSR int8 and {min(vs_small):.2f}-{max(vs_small):.2f}x the equal-budget small dense "
                f"int8 model (fp32: {min(vs_small32):.3f}-{max(vs_small32):.3f}x) at densities below 1; the "
                f"best prefix format is smaller than dense int8 at {prefix_int8 or 'none'} and than small "
                f"dense int8 at {prefix_small or 'no density'}. Part of the gap to small dense is rounding, "
                f"not format: the prefix tables hold nnz / (rows x dim') = {held} times the small dense "
                f"model's values (dim' = round(density x dim)); the rest is the 1-byte length per row."
            )
    out += [
        "Per stored non-zero, packed CSR costs 1 byte of column index plus the value (4 / 2 / 1 bytes), plus "
        "4 bytes of row pointer per row (and a 4-byte scale per row for int8); dense costs 4 / 2 / 1 bytes per "
        "entry, stored or not. So packed fp32 beats dense fp32 below density ~0.8, packed int8 beats dense int8 "
        "below ~0.5 and packed fp16 beats dense int8 below ~1/3, minus the row-pointer overhead.",
        "The equal-budget small dense model stores the same number of values with no index at all, so it is "
        "always smaller than the packed CSR table of the same budget (by the 1-byte index per non-zero and the row "
        "pointers). Sparsity pays in bytes against dense tables of the full width, not against a narrower dense "
        "model; whether it pays in quality is the DSL quality benchmark's question.",
        "scipy's own CSR (int32 indices) is as large as dense fp32 at density 0.5 and larger above; the narrow uint8 column "
        "indices are what make the packed format competitive.",
        "A prefix table (rows are prefixes [0, L_r), as dsl-nested / dsl-mixed train them) stores no column index, "
        "only one uint8 length per row: for the same number of values it costs the small dense model's bytes plus "
        "1 byte per row (dim <= 255), against CSR's extra 1 byte per value and 4 per row. At the same number of "
        "values it never beats the small dense model in bytes, it only stops costing ~2x: what the variable row "
        "lengths buy (or not) is a quality question for the DSL quality benchmark.",
    ]
    return out


def onnx_findings(rows: list[dict[str, Any]]) -> list[str]:
    """Where the packed ONNX user tower holds less memory than the dense one, and what it costs."""

    def densities(layout: str, against: str) -> list[float]:
        return [r["density"] for r in rows if r[layout]["session_rss_delta"] < r[against]["session_rss_delta"]]

    slow = [r["packed_fp32"]["ms_per_batch_256"] / max(r["dense_fp32"]["ms_per_batch_256"], 1e-9) for r in rows]
    return [
        f"ONNX user tower ({rows[0]['n_rows']} rows): onnxruntime keeps the initializers as they are, so session "
        f"memory follows the arrays' bytes. Packed fp32 holds less than dense fp32 at densities "
        f"{densities('packed_fp32', 'dense_fp32') or 'none'}; packed int8 less than dense int8 at "
        f"{densities('packed_int8', 'dense_int8') or 'none'}; packed fp32 less than dense int8 at "
        f"{densities('packed_fp32', 'dense_int8') or 'none'}.",
        f"The price is the row expansion: a 256-user lookup takes {min(slow):.0f}-{max(slow):.0f}x the dense "
        f"Gather's time (still well under a millisecond here).",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export.size", description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("results"), help="where size.json and size.md go")
    parser.add_argument("--densities", type=float, nargs="+", default=list(DENSITIES))
    parser.add_argument("--skip-large", action="store_true", help="only the ml-100k shape")
    parser.add_argument("--skip-onnx", action="store_true", help="no onnxruntime session memory measurement")
    parser.add_argument("--onnx-rows", type=int, default=200_000, help="user rows of the ONNX memory tower")
    parser.add_argument("--run", type=Path, help="also measure fidelity on a trained MF run's tables")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    harness.add_timing_flags(parser)
    args = parser.parse_args(argv)
    source = harness.start(None if argv is None else ["python", "-m", "benchmarks.export.size", *argv])
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from export.to_onnx import drop_preprocess_advice

    logging.getLogger().addFilter(drop_preprocess_advice)  # onnxruntime's advice at every int8 quantisation
    progress = not args.quiet
    rng = np.random.default_rng(args.seed)

    shapes = [{**ML100K, "results": measure_shape(ML100K, args.densities, rng, pack=True, progress=progress)}]
    if not args.skip_large:
        shapes.append({**LARGE, "results": measure_shape(LARGE, args.densities, rng, pack=False, progress=progress)})
    report: dict[str, Any] = {
        "provenance": source,
        "numpy": np.__version__,
        "prefix_lengths": PREFIX_LENGTHS,
        "shapes": shapes,
        "findings": findings(shapes),
        "fidelity": fidelity(args.densities, rng, progress=progress),
    }
    if args.run is not None:
        report["fidelity"] += fidelity(args.densities, rng, progress=progress, tables=trained_tables(args.run))
    if not args.skip_onnx:
        report["onnx"] = onnx_memory(args.onnx_rows, ML100K["dim"], args.densities, rng, progress)
        report["findings"] += onnx_findings(report["onnx"])
    if not harness.may_write(
        source,
        [args.out_dir / "size.json", args.out_dir / "size.md"],
        allow_noisy=args.allow_noisy,
        prog="benchmarks.export.size",
    ):
        return 2
    atomic_write_text(args.out_dir / "size.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(args.out_dir / "size.md", markdown(report))
    print(markdown(report))
    print(f"wrote {args.out_dir / 'size.json'} and {args.out_dir / 'size.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
