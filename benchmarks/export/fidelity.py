"""Export fidelity and index recall: three ML-100K runs, each exported five ways, as measured at export.

    make bench-fidelity     # = python -m benchmarks.export.fidelity -> results/fidelity.{json,md}

Trains (or reuses, when finished) three 40-epoch ML-100K runs in ``runs/fidelity-*`` (MF dense,
MF-DSL 0.2, LightGCN-DSL 0.2; seed 2024, one thread), exports each as
``--values fp32 --index flat``, ``fp16/ivf``, ``int8/hnsw``, ``fp32/sq8`` and ``fp32/pq`` into
``artifacts/fidelity/``, and collects what every manifest records: top-20 overlap of the
artifact with the trained model (``fidelity``), the ONNX user tower's error against torch
(``onnx``) and the index's recall@20 against exact search (``index``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from common.io import atomic_write_json, atomic_write_text
from common.provenance import provenance, provenance_line
from export.artifact import read_manifest

RUNS = {  # name: python -m train flags
    "mf-dense": ["--model", "mf"],
    "mf-dsl-0.2": ["--model", "mf", "--sparsity.density=0.2"],
    "lightgcn-dsl-0.2": ["--model", "lightgcn", "--optim.lr=5e-3", "--sparsity.density=0.2"],
}
EXPORTS = [("fp32", "flat"), ("fp16", "ivf"), ("int8", "hnsw"), ("fp32", "sq8"), ("fp32", "pq")]


def _python(*args: str) -> None:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def measure(runs: Path, artifacts: Path, epochs: int, progress: bool) -> list[dict[str, Any]]:
    rows = []
    bar = tqdm(total=len(RUNS) * (1 + len(EXPORTS)), desc="fidelity", disable=not progress)
    for name, flags in RUNS.items():
        run = runs / f"fidelity-{name}"
        if not (run / "metrics.json").exists():
            _python(
                "-m",
                "train",
                "--data",
                "ml-100k",
                "--out",
                str(run),
                "--epochs",
                str(epochs),
                "--seed",
                "2024",
                "--run.threads=1",
                "--quiet",
                *flags,
            )
        bar.update(1)
        for values, index in EXPORTS:
            out = artifacts / f"{name}-{values}-{index}"
            _python(
                "-m",
                "export",
                str(run),
                "--out",
                str(out),
                "--values",
                values,
                "--index",
                index,
                "--overwrite",
                "--no-memory",
                "--quiet",
            )
            manifest = read_manifest(out)
            rows.append(
                {
                    "run": name,
                    "values": values,
                    "index": index,
                    "overlap@20": manifest.fidelity["overlap@20"],
                    "tie_aware_overlap@20": manifest.fidelity["tie_aware_overlap@20"],
                    "onnx_max_abs_err_vs_torch": manifest.onnx["user_tower"].info["max_abs_err_vs_torch"],
                    "index_recall@20_vs_flat": manifest.index.extra["recall@20_vs_flat"],
                    "command": f"python -m export {run} --out {out} --values {values} --index {index} --no-memory",
                }
            )
            bar.update(1)
    bar.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/fidelity"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    rows = measure(args.runs, args.artifacts, args.epochs, progress=sys.stderr.isatty())
    record = {"provenance": provenance(), "epochs": args.epochs, "rows": rows}
    atomic_write_json(args.results / "fidelity.json", record)
    lines = [
        provenance_line(record["provenance"]),
        "",
        "# Export fidelity and index recall (ML-100K)",
        "",
        f"Three {args.epochs}-epoch runs, each exported five ways; every figure is the one the exporter "
        "measured and stored in the artifact's manifest.",
        "",
        "| run | values | index | top-20 overlap with the model | tie-aware | ONNX max abs err | index recall@20 vs flat |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['values']} | {r['index']} | {r['overlap@20']:.4f} | "
            f"{r['tie_aware_overlap@20']:.4f} | {r['onnx_max_abs_err_vs_torch']:.3g} | "
            f"{r['index_recall@20_vs_flat']:.4f} |"
        )
    atomic_write_text(args.results / "fidelity.md", "\n".join(lines) + "\n")
    print("\n".join(lines[2:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
