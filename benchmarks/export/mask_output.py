"""LightGCN under a sparse budget, three ways to serve it (issue 10), side by side:

(a) the propagated vectors as trained (dense at serving, whatever the base table's mask);
(b) the same vectors masked at serving by each row's own learned mask (the budget's non-zeros),
    with the top-20 overlap of (b) against (a);
(c) a model trained with ``--model.mask_output=true``: the mask inside the forward pass, so
    training and serving score the same sparse vectors;
beside the equal-budget small-dense model and the dense model, same seed, split and settings.

    python -m benchmarks.export.mask_output                      # ML-100K, dsl-mixed and dsl at 0.2 and 0.05 (~30 min, 1 thread)
    python -m benchmarks.export.mask_output --reduced            # tiny synthetic data, 3 epochs (tests)
    python -m benchmarks.export.mask_output --updaters dsl-mixed --densities 0.2 --epochs 80

Runs live in ``runs/bench-mask-output[-<tag>]/<name>/`` and a finished run is not trained again.
Writes ``results/mask-output[-<tag>].json`` and ``.md`` (with provenance). Top-20 lists here break
score ties by the lower item id (``export.quality.topk_by_scores``), the same for (a), (b) and (c);
the trainer's own figure (``torch.topk``) is kept beside it as ``trainer_test_ndcg@20``: the two
differ only where sparse vectors give many items the same score (often exactly 0).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import harness
from benchmarks.quality.grid import MODEL_SETTINGS
from common.io import atomic_write_bytes, atomic_write_json
from common.provenance import provenance, provenance_line
from train.checkpoint import CHECKPOINT, load_trained
from train.config import SparsityConfig, load_config

log = logging.getLogger("sparserec.bench_mask_output")

K = 20
UPDATERS = ("dsl-mixed", "dsl")
DENSITIES = (0.2, 0.05)


def run_name(updater: str, density: float, mask_output: bool = False) -> str:
    if density >= 1.0:
        return "lightgcn-dense-1"
    return f"lightgcn-{updater}-{density:g}" + ("-mask-output" if mask_output else "")


def plan(updaters: list[str], densities: list[float]) -> list[tuple[str, float, bool]]:
    """(updater, density, mask_output) of every run: dense once, small-dense and each updater twice per density.

    The standard sparse runs come first: `make bench-masks` takes the mask profiles from them."""
    runs = [("dense", 1.0, False)]
    runs += [(updater, density, False) for density in densities for updater in updaters]
    for density in densities:
        runs += [(updater, density, True) for updater in updaters] + [("small-dense", density, False)]
    return runs


def served_vectors(run_dir: Path) -> dict[str, Any]:
    """The best model's served vectors, standard and masked by the base table's mask, plus the data to score them."""
    model, dataset, config, metrics = load_trained(run_dir)
    with torch.no_grad():
        users, items = (t.detach().cpu().numpy() for t in model.final_embeddings())
    mask = model.embedding.mask.cpu().numpy()
    return {
        "users": users,
        "items": items,
        "user_mask": mask[: model.n_users],
        "item_mask": mask[model.n_users :],
        "dataset": dataset,
        "config": config,
        "metrics": metrics,
        "mask_output": bool(model.mask_output),
    }


def test_quality(users: np.ndarray, items: np.ndarray, dataset) -> tuple[dict[str, float], np.ndarray]:
    """Test Recall/NDCG@K (train and valid positives excluded) and the top-K ids, ``[n_users, K]``."""
    from export.quality import recall_ndcg_at_k, topk_by_scores

    known = (dataset.csr("train") + dataset.csr("valid")).tocsr()
    _, ids = topk_by_scores(users, items, K, exclude=known)
    return recall_ndcg_at_k(ids, dataset.csr("test"), K), ids


def measure(run_dir: Path, updater: str, density: float) -> dict[str, Any]:
    """One run's record: its served quality, and for a standard sparse run also the masked-at-serving form."""
    from export.quality import overlap_at_k

    served = served_vectors(run_dir)
    dataset, metrics = served["dataset"], served["metrics"]
    quality, ids = test_quality(served["users"], served["items"], dataset)
    n_rows, width = dataset.n_users + dataset.n_items, served["users"].shape[1]
    table_nnz = int(served["user_mask"].sum() + served["item_mask"].sum())
    standard_served_nnz = int(np.count_nonzero(served["users"]) + np.count_nonzero(served["items"]))
    record: dict[str, Any] = {
        "run": str(run_dir),
        "updater": updater,
        "density": density,
        "mask_output": served["mask_output"],
        "dim": int(width),
        "table_nnz": table_nnz,
        "served_nnz": standard_served_nnz,
        "test_ndcg@20": quality["ndcg@20"],
        "test_recall@20": quality["recall@20"],
        "trainer_test_ndcg@20": metrics["test"]["ndcg@20"],
        "valid_ndcg@20": metrics["valid"].get("ndcg@20"),
        "best_epoch": metrics["best_epoch"],
        "epochs": metrics["epochs"],
        "seconds": metrics["seconds"],
    }
    if SparsityConfig(density=density, updater=updater).has_mask and not served["mask_output"]:
        masked_users, masked_items = served["users"] * served["user_mask"], served["items"] * served["item_mask"]
        masked_quality, masked_ids = test_quality(masked_users, masked_items, dataset)
        record["masked_at_serving"] = {
            "test_ndcg@20": masked_quality["ndcg@20"],
            "test_recall@20": masked_quality["recall@20"],
            "served_nnz": int(np.count_nonzero(masked_users) + np.count_nonzero(masked_items)),
            "top20_overlap_with_standard": overlap_at_k(masked_ids, ids),
        }
    record["dense_served_nnz"] = int(n_rows * width)
    return record


def markdown(records: list[dict[str, Any]], dataset: str, epochs: int, prov: dict[str, Any]) -> str:
    by = {(r["updater"], r["density"], r["mask_output"]): r for r in records}
    dense = by.get(("dense", 1.0, False))
    lines = [
        f"# LightGCN served sparse: (a) standard, (b) masked at serving, (c) mask_output ({dataset})",
        "",
        provenance_line(prov),
        "",
        f"Seed {records[0].get('seed', '')}, up to {epochs} epochs, best epoch on valid NDCG@20, one thread. "
        "Test NDCG@20 over all items, train and valid positives excluded. Served nnz: non-zeros of the vectors "
        "the index holds (users + items).",
        "",
    ]
    if dense:
        lines += [
            f"Dense dim {dense['dim']}: test NDCG@20 {dense['test_ndcg@20']:.4f}, served nnz {dense['served_nnz']:,}.",
            "",
        ]
    lines += [
        "| updater | density | (a) standard NDCG@20 | served nnz (a) | (b) masked at serving NDCG@20 | "
        "(b)/(a) | top-20 overlap (b) vs (a) | (c) mask_output NDCG@20 | (c)/(a) | served nnz (b), (c) | "
        "small-dense NDCG@20 (dim) | served nnz small-dense | (c) - small-dense |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for density in sorted({r["density"] for r in records if r["density"] < 1.0}, reverse=True):
        small = by.get(("small-dense", density, False))
        for updater in sorted({r["updater"] for r in records if r["density"] == density} - {"small-dense"}):
            a, c = by.get((updater, density, False)), by.get((updater, density, True))
            if a is None:
                continue
            b = a.get("masked_at_serving", {})
            cells = [
                updater,
                f"{density:g}",
                f"{a['test_ndcg@20']:.4f}",
                f"{a['served_nnz']:,}",
                f"{b['test_ndcg@20']:.4f}" if b else "-",
                f"{b['test_ndcg@20'] / a['test_ndcg@20']:.2f}" if b else "-",
                f"{b['top20_overlap_with_standard']:.2f}" if b else "-",
                f"{c['test_ndcg@20']:.4f}" if c else "-",
                f"{c['test_ndcg@20'] / a['test_ndcg@20']:.2f}" if c else "-",
                f"{b.get('served_nnz', 0):,}, {c['served_nnz']:,}" if c else "-",
                f"{small['test_ndcg@20']:.4f} ({small['dim']})" if small else "-",
                f"{small['served_nnz']:,}" if small else "-",
                f"{c['test_ndcg@20'] - small['test_ndcg@20']:+.4f}" if c and small else "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Epochs (best / run): "
        + ", ".join(
            f"{r['updater']} {r['density']:g}{' mask_output' if r['mask_output'] else ''} {r['best_epoch']}/{r['epochs']}"
            for r in records
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.export.mask_output", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", default="ml-100k")
    parser.add_argument("--updaters", default=",".join(UPDATERS))
    parser.add_argument("--densities", default=",".join(f"{d:g}" for d in DENSITIES))
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--reduced", action="store_true", help="tiny synthetic data, one density, 3 epochs (tests)")
    parser.add_argument("--tag", default="", help="suffix for results/mask-output-<tag>.* and the runs folder")
    parser.add_argument("--results", default="results")
    parser.add_argument("--runs", default="runs")
    harness.add_grid_flags(parser, seed=2024, set_help="extra config override for every run (repeatable)")
    args = parser.parse_args(argv)
    args.set = harness.overrides(parser, args)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    from train.loop import train

    updaters, densities = args.updaters.split(","), [float(d) for d in args.densities.split(",")]
    epochs, extra, data = args.epochs, ["run.threads=1"] + list(args.set), args.data
    if args.reduced:
        data, densities, epochs = "synthetic", [0.2], min(epochs, 3)
        extra += ["run.min_epochs=0", "data.n_users=150", "data.n_items=200", "model.dim=16"]
    tag = args.tag or ("reduced" if args.reduced else "")
    suffix = f"-{tag}" if tag else ""
    runs_dir = Path(args.runs) / f"bench-mask-output{suffix}"
    prov = provenance(argv=None if argv is None else ["python", "-m", "benchmarks.export.mask_output", *argv])
    records = []
    grid = plan(updaters, densities)
    for index, (updater, density, mask_output) in enumerate(grid, 1):
        name = run_name(updater, density, mask_output)
        out = runs_dir / name
        if not (out / "metrics.json").exists():
            overrides = [
                f"data.name={data}",
                "model.name=lightgcn",
                *MODEL_SETTINGS["lightgcn"],
                f"run.out={out}",
                f"run.epochs={epochs}",
                f"run.seed={args.seed}",
                f"sparsity.density={density}",
                f"sparsity.updater={'dsl' if updater == 'dense' else updater}",
                f"model.mask_output={str(mask_output).lower()}",
                *extra,
            ]
            log.info("[%d/%d] %s", index, len(grid), name)
            train(load_config(overrides=overrides), resume=(out / CHECKPOINT).exists(), progress=sys.stderr.isatty())
        record = measure(out, updater, density)
        record["seed"] = args.seed
        records.append(record)
        log.info(
            "%s: test ndcg@20 %.4f%s",
            name,
            record["test_ndcg@20"],
            f", masked at serving {record['masked_at_serving']['test_ndcg@20']:.4f}"
            if "masked_at_serving" in record
            else "",
        )
    results = Path(args.results)
    report = {"provenance": prov, "dataset": data, "epochs": epochs, "seed": args.seed, "k": K, "records": records}
    atomic_write_json(results / f"mask-output{suffix}.json", report)
    text = markdown(records, data, epochs, prov)
    atomic_write_bytes(results / f"mask-output{suffix}.md", text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
