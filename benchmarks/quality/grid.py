"""Quality benchmark: every updater at every density, side by side, same seed and split.

    python -m benchmarks.quality.grid                                   # the full grid (hours on 2 cores)
    python -m benchmarks.quality.grid --reduced                         # two densities, few epochs (CI)
    python -m benchmarks.quality.grid --models lightgcn --densities 0.2 --updaters dsl,small-dense
    python -m benchmarks.quality.grid --data synthetic-longtail --tag longtail

Each run lives in ``runs/bench-<tag>/<model>-<updater>-<density>/``; a finished run (its
``metrics.json`` exists, made with the same config) is not trained again and a stopped one resumes
from its checkpoint, so an interrupted benchmark continues where it stopped (a run folder made
with another config is refused by name). Writes ``results/quality[-<tag>].json`` (one record per run), ``.md`` (a table with every
sparse result beside the equal-budget small-dense model) and ``.png`` plots.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from benchmarks import harness
from common.io import atomic_write_bytes, atomic_write_json
from common.provenance import provenance, provenance_line
from train.checkpoint import CHECKPOINT
from train.config import SparsityConfig, TrainConfig, load_config

log = logging.getLogger("sparserec.bench")

DENSITIES = (1.0, 0.5, 0.2, 0.1, 0.05)
UPDATERS = ("dsl", "set", "static", "prune-finetune", "small-dense", "dsl-nested", "dsl-mixed")
# Per-model settings shared by every updater (chosen on the valid split, never on test).
MODEL_SETTINGS = {
    "lightgcn": ["optim.lr=5e-3", "run.min_epochs=50", "run.patience=10"],
    "mf": ["optim.lr=1e-3", "run.min_epochs=50", "run.patience=10"],
}


def run_name(model: str, updater: str, density: float) -> str:
    return f"{model}-{SparsityConfig(density=density, updater=updater).label}-{density:g}"


def plan(models: list[str], updaters: list[str], densities: list[float]) -> list[tuple[str, str, float]]:
    """The grid, with one dense run per model (density 1.0 is the same model for every updater)."""
    runs = []
    for model in models:
        for density in densities:
            if density >= 1.0:
                runs.append((model, "dense", 1.0))
                continue
            for updater in updaters:
                runs.append((model, updater, density))
    return runs


def made_with(out: Path, config: TrainConfig) -> bool:
    """Whether the run folder ``out`` (which has a ``config.json``) was made with ``config``.

    Compared through ``TrainConfig``, so a run from before a new key (which takes its default) still counts,
    and without ``run.out`` and ``run.device``: where the folder is (a relative or an absolute path to it, a
    moved folder) and where it trained (CPU or GPU; the metrics record the device) are not part of the
    experiment.
    """
    return TrainConfig.from_dict(json.loads((out / "config.json").read_text())).experiment() == config.experiment()


def finished_metrics(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The run's metrics if it finished with ``config``; ``None`` if it must (still) train.

    Raises:
        SystemExit: the folder holds a run made with another config (stale: delete it or use --tag).
    """
    saved_config = out / "config.json"
    if not saved_config.exists():
        return None
    if not made_with(out, config):
        raise SystemExit(
            f"{out}: made with another config than this benchmark's (older code or other "
            f"flags); delete the folder or pass another --tag"
        )
    metrics = out / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.exists() else None


def budget_note(records: list[dict[str, Any]]) -> str:
    """Says how the sparse runs' budgets relate to their small-dense rivals (from the records)."""
    pairs = [
        (r, s)
        for r in records
        for s in records
        if r["updater"] not in ("dense", "small-dense")
        and s["updater"] == "small-dense"
        and (s["model"], s["density"]) == (r["model"], r["density"])
    ]
    sparse = [r for r in records if r["updater"] not in ("dense", "small-dense")]
    if not sparse:
        return "No masked runs here: small-dense has dim round(density x 64) in every row."
    if (
        not pairs
        and sparse
        and all(  # no rival in this table: the small-dense count, n_rows x round(density x dim)
            r["nnz"] == r["n_params_dense"] // r["dim"] * round(r["density"] * r["dim"]) for r in sparse
        )
    ):
        pairs = [(r, r) for r in sparse]
    if pairs and all(r["nnz"] == s["nnz"] for r, s in pairs):
        return (
            "Budgets are equal: every sparse run holds exactly its small-dense rival's non-zeros, "
            "n_rows x round(density x 64) (`sparsity.budget_rule=small-dense`; density 0.2 keeps 13 of 64 "
            "per row on average, 0.1 keeps 6, 0.05 keeps 3)."
        )
    return "Budgets: round(density x all entries) (`sparsity.budget_rule=density`); small-dense has dim round(density x 64)."


def record_of(metrics: dict[str, Any], dataset: str, model: str, updater: str, density: float) -> dict[str, Any]:
    test, valid = metrics["test"], metrics["valid"]
    record = {
        "dataset": dataset,
        "model": model,
        "updater": updater,
        "density": density,
        "dim": metrics["dim"],
        "nnz": metrics["nnz"],
        "n_params_dense": metrics["n_params_dense"],
        "test_ndcg@20": test["ndcg@20"],
        "test_recall@20": test["recall@20"],
        "valid_ndcg@20": valid.get("ndcg@20"),
        "valid_recall@20": valid.get("recall@20"),
        "best_epoch": metrics["best_epoch"],
        "epochs": metrics["epochs"],
        "seconds": metrics["seconds"],
        "seconds_per_epoch": metrics["seconds_per_epoch"],
        "peak_rss_mb": metrics["peak_rss_mb"],
        "prune_seconds": metrics.get("prune_seconds", 0.0),
        "threads": metrics.get("threads"),
        "history": [
            {
                "epoch": h["epoch"],
                "valid_ndcg@20": h["valid"].get("ndcg@20"),
                "phase": h.get("phase"),
                "exploring": bool(h.get("exploring")),
            }
            for h in metrics.get("history", [])
        ],
    }
    if "mask_stats" in metrics:
        record["mask_stats"] = metrics["mask_stats"]
    if "mask_history" in metrics:
        record["mask_history"] = metrics["mask_history"]
    return record


def markdown_table(records: list[dict[str, Any]]) -> str:
    """Test NDCG@20 per (model, density) with each updater as a column; small-dense beside DSL."""
    models = sorted({r["model"] for r in records})
    updaters = [u for u in ("dense",) + UPDATERS if any(r["updater"] == u for r in records)]
    updaters += sorted({r["updater"] for r in records} - set(updaters))
    lines = [
        "| model | density | " + " | ".join(updaters) + " | best sparse vs small-dense |",
        "|---|---|" + "---|" * len(updaters) + "---|",
    ]
    for model in models:
        dense = next((r for r in records if r["model"] == model and r["updater"] == "dense"), None)
        for density in sorted({r["density"] for r in records if r["model"] == model}, reverse=True):
            cells = []
            by_updater = {r["updater"]: r for r in records if r["model"] == model and r["density"] == density}
            for updater in updaters:
                r = by_updater.get(updater)
                if r is None:
                    cells.append("")
                    continue
                cell = f"{r['test_ndcg@20']:.4f}"
                if dense and density < 1.0:
                    cell += f" ({100 * r['test_ndcg@20'] / dense['test_ndcg@20']:.0f}%)"
                cells.append(cell)
            sparse = [r for u, r in by_updater.items() if u.startswith("dsl")]
            small = by_updater.get("small-dense")
            verdict = ""
            if sparse and small:
                best = max(sparse, key=lambda r: r["valid_ndcg@20"] or 0)  # picked on valid, not test
                diff = best["test_ndcg@20"] - small["test_ndcg@20"]
                verdict = f"{best['updater']} {diff:+.4f}" + (" (tie)" if abs(diff) < 0.0035 else "")
            lines.append(f"| {model} | {density:g} | " + " | ".join(cells) + f" | {verdict} |")
    lines.append("")
    lines.append(
        "Test NDCG@20 (percent of the dense model). The last column takes the DSL variant with the best "
        "*valid* NDCG@20 and gives its test NDCG@20 minus the equal-budget small-dense model's; "
        "|diff| < 0.0035 (the seed-to-seed spread of dense LightGCN reported in the DSL issue) is a tie."
    )
    return "\n".join(lines) + "\n"


def plot_row_distribution(ax, records: list[dict[str, Any]], model: str, density: float = 0.2) -> None:
    """Rows by number of non-zero dims at the first, middle and last mask update of plain DSL."""
    candidates = [r for r in records if r["model"] == model and r["updater"] == "dsl" and r.get("mask_history")]
    run = min(candidates, key=lambda r: abs(r["density"] - density), default=None)
    if run is None:
        ax.set_visible(False)
        return
    history = [h for h in run["mask_history"] if h.get("row_nnz_histogram")]
    picks = [("first update", history[0]), ("middle", history[len(history) // 2]), ("last update", history[-1])]
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for (label, entry), color in zip(picks, colors):
        for group, style in (("users", "--"), ("items", "-")):
            counts = entry["row_nnz_histogram"].get(group)
            if counts:
                total = max(sum(counts), 1)
                ax.plot(
                    range(len(counts)),
                    [c / total for c in counts],
                    style,
                    color=color,
                    label=f"{group}, {label} (step {entry['step']})",
                )
    ax.set_xlabel("non-zero dims in a row")
    ax.set_ylabel("share of rows")
    ax.set_title(f"{model} dsl d={run['density']:g}: non-zeros per row over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in records})
    fig, axes = plt.subplots(3, len(models), figsize=(6 * len(models), 13), squeeze=False)
    for col, model in enumerate(models):
        ax = axes[0][col]
        dense = [r for r in records if r["model"] == model and r["updater"] == "dense"]
        for updater in sorted({r["updater"] for r in records if r["model"] == model} - {"dense"}):
            points = sorted(
                (r["density"], r["test_ndcg@20"]) for r in records if r["model"] == model and r["updater"] == updater
            )
            if dense:
                points.append((1.0, dense[0]["test_ndcg@20"]))
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", label=updater)
        ax.set_xscale("log")
        ax.set_xlabel("density (fraction of embedding weights kept)")
        ax.set_ylabel("test NDCG@20")
        ax.set_title(f"{model}: quality against density")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[1][col]
        for r in records:
            history = r.get("mask_history") or []
            if r["model"] != model or not r["updater"].startswith("dsl") or not history:
                continue
            steps = [h["step"] for h in history if "share/users" in h]
            shares = [h["share/users"] for h in history if "share/users" in h]
            if steps:
                ax.plot(steps, shares, label=f"{r['updater']} d={r['density']:g}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("users' share of the budget")
        ax.set_title(f"{model}: how DSL splits the budget")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        plot_row_distribution(axes[2][col], records, model)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality.grid", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="ml-100k")
    parser.add_argument("--models", default="mf,lightgcn")
    parser.add_argument("--updaters", default=",".join(UPDATERS))
    parser.add_argument("--densities", default=",".join(f"{d:g}" for d in DENSITIES))
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--reduced", action="store_true", help="two densities, few epochs: a smoke version for CI")
    parser.add_argument("--tag", default="", help="suffix for results/quality-<tag>.* and runs/bench-<tag>/")
    parser.add_argument("--results", default="results")
    parser.add_argument("--runs", default="runs", help="parent folder of the benchmark's run folders")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the table of the finished runs, list the rest as pending",
    )
    harness.add_grid_flags(parser, seed=2024, set_help="extra config override for every run (repeatable)")
    args = parser.parse_args(argv)
    args.set = harness.overrides(parser, args)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    from train.loop import train

    models = args.models.split(",")
    updaters = args.updaters.split(",")
    densities = [float(d) for d in args.densities.split(",")]
    epochs = args.epochs
    extra = list(args.set)
    if args.reduced:
        densities = [1.0, 0.2]
        epochs = min(epochs, 3)
        extra += ["run.min_epochs=0"]
    tag = args.tag or ("reduced" if args.reduced else "")
    suffix = f"-{tag}" if tag else ""
    runs_dir = Path(args.runs) / f"bench{suffix or '-full'}"
    # taken at the start: the commit and machine load the runs were made with
    source = provenance(None if argv is None else ["python", "-m", "benchmarks.quality.grid", *argv])
    records, pending = [], []
    grid = plan(models, updaters, densities)
    for index, (model, updater, density) in enumerate(grid, 1):
        name = run_name(model, updater, density)
        out = runs_dir / name
        overrides = [
            f"data.name={args.data}",
            f"model.name={model}",
            f"run.out={out}",
            f"run.epochs={epochs}",
            f"run.seed={args.seed}",
            f"sparsity.density={density}",
            f"sparsity.updater={'dsl' if updater == 'dense' else updater}",
        ]
        overrides = overrides[:1] + MODEL_SETTINGS.get(model, []) + overrides[1:] + extra
        config = load_config(overrides=overrides)
        metrics = finished_metrics(out, config)
        if metrics is None and args.report_only:
            pending.append(name)
            continue
        if metrics is None:
            log.info("[%d/%d] %s%s", index, len(grid), name, " (resuming)" if (out / CHECKPOINT).exists() else "")
            metrics = train(config, resume=(out / CHECKPOINT).exists(), progress=sys.stderr.isatty())
        else:
            log.info("[%d/%d] %s: finished before, not trained again", index, len(grid), name)
        record = record_of(metrics, args.data, model, updater, density)
        records.append(record)
        log.info(
            "%s: test ndcg@20 %.4f recall@20 %.4f (%s epochs, %.0f s)",
            name,
            record["test_ndcg@20"],
            record["test_recall@20"],
            record["epochs"],
            record["seconds"],
        )
    results = Path(args.results)
    atomic_write_json(results / f"quality{suffix}.json", {"provenance": source, "records": records, "pending": pending})
    table = markdown_table(records)
    if pending:
        table += (
            f"\nNot finished yet ({len(pending)} of {len(grid)} runs; the same command without --report-only "
            f"continues them, a stopped run from its checkpoint): {', '.join(pending)}.\n"
        )
    header = (
        f"# Quality on {args.data} (seed {args.seed}, up to {epochs} epochs)\n\n"
        f"{provenance_line(source)}\n\n{budget_note(records)} Masks move until "
        f"`sparsity.end_fraction` of the epoch cap, then settle; model selection and early stopping "
        f"use only evaluations after the last mask update.\n\n"
    )
    atomic_write_bytes(results / f"quality{suffix}.md", (header + table).encode())
    plot(records, results / f"quality{suffix}.png")
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
