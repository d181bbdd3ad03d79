"""The Gowalla table written out: Markdown, the validation-curve plot, and results/quality-gowalla.*."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.io import atomic_write_bytes, atomic_write_json
from common.provenance import provenance_line

from .spec import MODEL_SETTINGS, PUBLISHED, SEEDS, TARGETS, TIE
from .verdicts import _f, choice_label, chosen_variant, done_label, finished, verdicts


def markdown(records: list[dict[str, Any]], source: dict[str, Any], lightgcn_variant: str) -> str:
    lines = [
        "# Quality on Gowalla (LightGCN split): sparse against equal-budget small dense",
        "",
        provenance_line(source),
        "",
        "Full ranking over all 40,981 items, train (and, for test, valid) positives masked; test is the "
        "published test split, valid 1/9 of train cut per user (seed 2024). Every masked run holds exactly "
        "its small-dense rival's non-zeros, n_rows x round(density x 64) (`sparsity.budget_rule=small-dense`: "
        "density 0.2 keeps 13 of 64 dims per row on average, 0.1 keeps 6, 0.05 keeps 3). Masks move until "
        "`sparsity.end_fraction` (0.5) of the epoch cap, then settle; model selection and early stopping use "
        "only evaluations after the last mask update. Seconds are wall time of one-thread runs on a "
        "shared 2-core machine (noisy), summed over a run's resumed segments (a segment that ended with "
        "the machine is timed from its `train.log`); peak memory is the run's own process.",
        "",
    ]
    # dense against published
    lines += [
        "## Dense models against the published numbers",
        "",
        "| model | source | Recall@20 | NDCG@20 |",
        "|---|---|---|---|",
    ]
    for model in ("mf", "lightgcn"):
        dense = next((r for r in records if r["model"] == model and r["updater"] == "dense"), None)
        if dense is None:
            continue
        if dense["status"] == "done":
            ours = (
                f"| {model} | **ours** (dim 64, best epoch {dense['best_epoch']} of {dense['epochs']}) | "
                f"**{dense['test_recall@20']:.4f}** | **{dense['test_ndcg@20']:.4f}** |"
            )
        else:
            ours = f"| {model} | ours | {dense['status']} (epoch {dense.get('epoch_reached', 0)}) | |"
        lines.append(ours)
        for pub_model, where, recall, ndcg in PUBLISHED:
            if pub_model == model:
                lines.append(f"| {model} | {where} | {_f(recall)} | {_f(ndcg)} |")
        lines.append(f"| {model} | target of the issue | >= {TARGETS[model]:.3f} | |")
    lines += [
        "",
        "## Every run",
        "",
        "| model | density | method | seed | test NDCG@20 | % dense | vs small-dense | test Recall@20 | "
        "valid NDCG@20 | non-zeros | best / epochs | wall s | s/epoch | peak MB | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in ("mf", "lightgcn"):
        dense = finished(records, model, "dense")
        for density in (1.0, 0.2, 0.1, 0.05):
            rows = [r for r in records if r["model"] == model and r["density"] == density]
            chosen = chosen_variant(records, model, density)
            for r in rows:
                small = next(
                    (
                        s
                        for s in rows
                        if s["updater"] == "small-dense" and s["seed"] == r["seed"] and s["status"] == "done"
                    ),
                    None,
                )
                method = r.get("method", r["updater"]) + (
                    f" ({choice_label(records, model, density)})" if chosen is not None and r is chosen else ""
                )
                if r["status"] != "done":
                    wall = r.get("wall_seconds")
                    lines.append(
                        f"| {model} | {density:g} | {method} | {r['seed']} | | | | | | | "
                        f"epoch {r.get('epoch_reached', 0)} | {_f(wall, 0)} | | | {r['status']} |"
                    )
                    continue
                pct = f"{100 * r['test_ndcg@20'] / dense['test_ndcg@20']:.0f}%" if dense and density < 1 else ""
                versus = ""
                if small is not None and r["updater"] not in ("small-dense", "dense"):
                    diff = r["test_ndcg@20"] - small["test_ndcg@20"]
                    versus = f"{diff:+.4f}" + (" (tie)" if abs(diff) < TIE else "")
                lines.append(
                    f"| {model} | {density:g} | {method} | {r['seed']} | {r['test_ndcg@20']:.4f} | {pct} | {versus} | "
                    f"{r['test_recall@20']:.4f} | {_f(r['valid_ndcg@20'])} | {r['nnz']:,} | "
                    f"{r['best_epoch']} / {r['epochs']} | {_f(r.get('wall_seconds'), 0)} | "
                    f"{r['seconds_per_epoch']:.1f} | {r['peak_rss_mb']:.0f} | {done_label(r)} |"
                )
    lines += [
        "",
        f"`vs small-dense`: test NDCG@20 minus that of the small-dense model of the same seed, which has "
        f"exactly the same number of non-zeros; |diff| < {TIE} is a tie. LightGCN's DSL variant is "
        f"`{lightgcn_variant}` (chosen on ML-100K's valid split, `results/sweeps/quality-nmf.md` beside "
        "`results/quality.md`; too expensive to choose on Gowalla's on CPU). "
        "Runs marked running/stopped/pending continue with the same command (`make bench-quality-gowalla`).",
        "",
    ]
    gpus = sorted({r["device"] for r in records if r["status"] == "done" and r.get("device", "cpu") != "cpu"})
    if gpus:
        lines += [
            f"Runs marked `done, GPU` trained on {', '.join(f'`{g}`' for g in gpus)} (`--set run.device=cuda`); "
            "the others on the CPU. Same config, "
            "same seed; a GPU's float sums differ in order, so its run is not bit-identical to a CPU one. "
            "Their wall seconds are the GPU's and do not compare with the CPU runs'; `peak MB` is host "
            "memory (the GPU's peak is in the JSON, `peak_gpu_mb`).",
            "",
        ]
    lines += verdicts(records)
    return "\n".join(lines) + "\n"


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Valid NDCG@20 against epoch for every run (finished and partial), one panel per model x
    density; the exploring part (before the last mask update) drawn as a wide pale band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (m, d)
        for m in ("mf", "lightgcn")
        for d in (0.2, 0.1, 0.05)
        if any(r["model"] == m and r["density"] == d for r in records)
    ]
    if not panels:
        return
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (model, density) in zip(axes.flat, panels):
        shown = [r for r in records if r["model"] == model and (r["density"] == density or r["updater"] == "dense")]
        for r in shown:
            curve = [p for p in r.get("curve") or [] if p.get("valid_ndcg@20") is not None]
            if not curve:
                continue
            label = (
                f"{r['updater']}"
                + ("" if r["seed"] == SEEDS[0] else f" s{r['seed']}")
                + ("" if r["status"] == "done" else f" ({r['status']})")
            )
            xs = [p["epoch"] for p in curve]
            ys = [p["valid_ndcg@20"] for p in curve]
            # dense on top, in black: prune-finetune's dense phase is the same run (same seed) and
            # would otherwise hide it
            style = {"color": "black", "linewidth": 2, "zorder": 5} if r["updater"] == "dense" else {}
            (line,) = ax.plot(
                xs, ys, marker=".", label=label, linestyle="-" if r["status"] == "done" else "--", **style
            )
            explore = [p for p in curve if p.get("exploring")]
            if explore:
                ax.plot(
                    [p["epoch"] for p in explore],
                    [p["valid_ndcg@20"] for p in explore],
                    "-",
                    color=line.get_color(),
                    linewidth=7,
                    alpha=0.25,
                    solid_capstyle="round",
                )
        ax.set_title(f"Gowalla {model}, density {density:g} (dense for reference)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("valid NDCG@20")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("valid curves (wide pale band: masks still moving, not selectable; dashed: run not finished)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    records: list[dict[str, Any]],
    source: dict[str, Any],
    results: Path,
    stem: str,
    lightgcn_variant: str,
    mf_source: str = "",
) -> None:
    atomic_write_json(
        results / f"{stem}.json",
        {
            "provenance": source,
            "lightgcn_variant": lightgcn_variant,
            "model_settings": MODEL_SETTINGS,
            "mf_settings_from": mf_source,
            "published": PUBLISHED,
            "records": records,
        },
    )
    text = markdown(records, source, lightgcn_variant)
    if mf_source:
        text += f"\nMF's lr, init_std, weight decay and sampler: {mf_source}.\n"
    atomic_write_bytes(results / f"{stem}.md", text.encode())
    plot(records, results / f"{stem}.png")
