"""The Gowalla front's verdicts and results files: the front within each model, met / missed / pending
per target, the Markdown tables and the plot (``benchmarks.pareto_gowalla`` calls them).

    from benchmarks.pareto_report import verdict
    verdict(dsl_run, runs, points, finished_names, "served_bytes")   # {"status": "met" | "missed" | "pending", ...}
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.io import atomic_write_bytes, atomic_write_json, atomic_write_text

from . import harness
from .pareto_tiling import PERTURBATION

TARGET_DENSITIES = (0.05, 0.1)
COST_WORDS = {"served_bytes": "served bytes", "p50_ms": "batch-1 latency"}


def mark_fronts(pts: list[dict[str, Any]]) -> None:
    """``front_bytes`` / ``front_latency`` on every point, the front taken within its model."""
    from sparserec.compare_front import pareto_front

    for model in {p["model"] for p in pts}:
        mine = [p for p in pts if p["model"] == model]
        for cost in ("served_bytes", "p50_ms"):
            flags = pareto_front([(p["ndcg"], p[cost]) for p in mine])
            for p, on in zip(mine, flags):
                p["front_" + ("bytes" if cost == "served_bytes" else "latency")] = on if p[cost] is not None else None


def verdict(target: Any, runs: Sequence[Any], pts: list[dict[str, Any]], done: set[str], cost: str) -> dict[str, Any]:
    """Is ``target`` (a DSL run) on the front of NDCG@20 against ``cost`` among its model's small-dense widths?

    Met: one of its artifacts has no exact small-dense artifact (flat index, any value dtype) of a
    finished width with at least its NDCG@20 and a strictly lower cost, and every width has finished.
    Missed: every one of its artifacts is beaten so by a finished width. Pending otherwise: the DSL
    run or a width still trains, or the cost was not measured. Nothing is interpolated. Quantised
    small-dense artifacts (sq8, pq, their quality ranked through their index) are reported beside it.
    """
    widths = [r for r in runs if r.model == target.model and r.kind == "small-dense"]
    pending = sorted(r.width for r in widths if r.name not in done)
    base = {
        "model": target.model,
        "density": target.density,
        "run": target.name,
        "cost": cost,
        "widths_finished": sorted(r.width for r in widths if r.name in done),
        "widths_pending": pending,
    }
    mine = [p for p in pts if p["run"] == target.name and p["ndcg"] is not None and p[cost] is not None]
    if target.name not in done:
        return {**base, "status": "pending", "why": f"{target.name} is still training"}
    if not mine:
        return {**base, "status": "pending", "why": f"{COST_WORDS[cost]} not measured for {target.name}"}
    sd_names = {r.name for r in widths}
    rivals = [p for p in pts if p["run"] in sd_names and p["ndcg"] is not None]
    if any(p[cost] is None for p in rivals):
        return {**base, "status": "pending", "why": f"{COST_WORDS[cost]} not measured for every small-dense artifact"}

    def beaten_by(point: dict[str, Any], kinds: tuple[str, ...]) -> list[dict[str, Any]]:
        return sorted(
            (p for p in rivals if p["index"] in kinds and p["ndcg"] >= point["ndcg"] and p[cost] < point[cost]),
            key=lambda p: p[cost],
        )

    per_artifact = [
        {
            "artifact": p["artifact"],
            "ndcg": p["ndcg"],
            "cost": p[cost],
            "beaten_by": [(b["artifact"], b["ndcg"], b[cost]) for b in beaten_by(p, ("flat",))],
            "beaten_by_quantised": [(b["artifact"], b["ndcg"], b[cost]) for b in beaten_by(p, ("sq8", "pq"))],
        }
        for p in mine
    ]
    unbeaten = [a for a in per_artifact if not a["beaten_by"]]
    status = "missed" if not unbeaten else "pending" if pending else "met"
    return {
        **base,
        "status": status,
        "artifacts": per_artifact,
        "why": "" if status != "pending" else "The widths still training may yet beat it",
    }


def verdicts(
    runs: Sequence[Any], pts: list[dict[str, Any]], pts_tiled: list[dict[str, Any]], done: set[str]
) -> list[dict[str, Any]]:
    """Each target: each DSL run at each target density, on served bytes (Gowalla) and batch-1 p50 (tiled)."""
    out = []
    for target in (r for r in runs if r.kind == "dsl" and r.density in TARGET_DENSITIES):
        out.append({**verdict(target, runs, pts, done, "served_bytes"), "catalogue": "gowalla"})
        out.append({**verdict(target, runs, pts_tiled, done, "p50_ms"), "catalogue": "tiled"})
    return out


# ---------------------------------------------------------------------------- report
def human_bytes(n: float | None) -> str:
    from sparserec.compare_report import human_bytes as compare_human_bytes

    return "-" if n is None else compare_human_bytes(n)


def _cost_text(cost: str, value: float | None) -> str:
    if value is None:
        return "-"
    return human_bytes(value) if cost == "served_bytes" else f"{value:.3f} ms"


def verdict_line(v: dict[str, Any]) -> str:
    """One Markdown bullet: the target, its status, and the figures it rests on."""
    what = "served bytes" if v["cost"] == "served_bytes" else "batch-1 p50"
    where = "Gowalla's catalogue" if v["catalogue"] == "gowalla" else "the tiled catalogue"
    head = f"- **{v['model']} {v['density']:g}** ({v['run']}), NDCG@20 against {what} at {where}: **{v['status']}**"
    parts = []
    for a in v.get("artifacts", []):
        text = f"{a['artifact']} {a['ndcg']:.4f} at {_cost_text(v['cost'], a['cost'])}"
        if a["beaten_by"]:
            name, ndcg, cost = a["beaten_by"][0]
            text += f" is beaten by {name} ({ndcg:.4f} at {_cost_text(v['cost'], cost)})"
        else:
            text += " is beaten by no small-dense width"
        if a["beaten_by_quantised"]:
            name, ndcg, cost = a["beaten_by_quantised"][0]
            text += f"; among the quantised, {name} beats it ({ndcg:.4f} at {_cost_text(v['cost'], cost)})"
        parts.append(text)
    tail = f" Widths measured: {v['widths_finished'] or 'none'}; pending: {v['widths_pending'] or 'none'}."
    why = v["why"][:1].upper() + v["why"][1:] if v["why"] else ""
    return head + (": " + "; ".join(parts) + "." if parts else ".") + (f" {why}." if why else "") + tail


def _table(pts: list[dict[str, Any]], tiled: bool) -> list[str]:
    header = [
        "artifact",
        "kind",
        "width / density",
        "index",
        "values",
        "non-zeros",
        "served (mapped + read)",
        "NDCG@20" + (" (source, 41k items)" if tiled else ""),
        *([] if tiled else ["Recall@20"]),
        "index recall@20 vs flat",
        "B=1 p50 ms",
        "front",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in sorted(pts, key=lambda p: (p["kind"], p["served_bytes"])):
        index = p["index"] + (f" {p['index_layout']}" if p.get("index_layout") else "")
        marks = [m for m in ("bytes", "latency") if p.get(f"front_{m}")]
        cells = [
            p["artifact"],
            p["kind"],
            f"d{p['width']}" if p["width"] else f"{p['density']:g}",
            index,
            p["values"],
            f"{p['nnz']:,}",
            f"{human_bytes(p['served_bytes'])} ({human_bytes(p['served_mapped'])} + {human_bytes(p['served_read'])})",
            "-" if p["ndcg"] is None else f"{p['ndcg']:.4f}",
        ]
        if not tiled:
            cells.append("-" if p["recall"] is None else f"{p['recall']:.4f}")
        recall = p["index_recall_vs_flat"]
        cells += [
            "-" if recall is None else f"{recall:.4f}",
            "-" if p["p50_ms"] is None else f"{p['p50_ms']:.3f}",
            ", ".join(marks) or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The results file: how it was made, what is pending, the verdicts, one table per model and catalogue."""
    timing, status = result["timing"], result["runs"]
    lines = [
        "# The Gowalla front: NDCG@20 against served bytes and batch-1 latency",
        "",
        harness.provenance_line(result["provenance"]),
        f"Load average (1 min) while measuring: {timing['load_avg_1m_start']} at start, "
        f"{timing['load_avg_1m_end']} at end, {timing['cpus']} CPUs.",
        "",
    ]
    if not result["settings"]["latency"]:
        lines += [
            "**Latency pending**: this pass measured bytes and quality only (`--no-latency`); batch-1 latency "
            "needs a quiet machine.",
            "",
        ]
    elif timing["noisy"]:
        lines += [
            f"**NOISY**: timed on a busy machine ({timing['why_noisy']}), allowed by --allow-noisy; the "
            "latencies below are not figures to quote.",
            "",
        ]
    training = [r["name"] for r in status if not r["finished"]]
    lines += [
        f"Runs finished: {sum(r['finished'] for r in status)} of {len(status)}"
        + (f"; still training or not started: {', '.join(training)}." if training else "."),
        "",
        "## Verdicts",
        "",
        "Target: the chosen DSL variant is on the front of NDCG@20 against served bytes at "
        "0.05 and 0.1 for LightGCN and MF (no small-dense width reaches its NDCG@20 with fewer served bytes), "
        "and the same for batch-1 latency at the tiled catalogue. Rivals: the small-dense widths through an "
        "exact flat index, fp32 or fp16; measured widths only, nothing interpolated.",
        "",
    ]
    lines += [verdict_line(v) for v in result["verdicts"]]
    n_tiled = result["settings"]["tiled_items"]
    for model in ("mf", "lightgcn"):
        mine = [p for p in result["points"] if p["model"] == model]
        if mine:
            lines += ["", f"## {model} at Gowalla's catalogue ({mine[0]['n_items']:,} items)", "", *_table(mine, False)]
        tiled = [p for p in result["points_tiled"] if p["model"] == model]
        if tiled:
            lines += ["", f"## {model} at {n_tiled:,} items (tiled)", "", *_table(tiled, True)]
    lines += [
        "",
        "## How it was made",
        "",
        "Every run trained with `python -m train` (the flags in `benchmarks/pareto_gowalla.py`, `RUNS`) and "
        "exported with `python -m export`. NDCG@20 and Recall@20: test, over every test user, the artifact's "
        "served vectors ranked exactly over all items against its run's own split, train and valid positives "
        "masked (`sparserec.compare_rows.DataQuality`; the export's own figure samples 1,000 users). "
        "DSL runs: the exact sparse index (postings for unstructured masks); small-dense: flat, and sq8 / pq "
        "(approximate: ranked through the index itself for NDCG@20 and Recall@20, deep enough to leave 20 "
        "once known items are dropped; their recall@20 against exact search is the `index recall@20 vs flat` "
        "column, from the export: 1,000 sampled users' unfiltered top 20). Served bytes: "
        "`sparserec compare` (docs/compare.md): item index + user vectors + id maps a worker holds. "
        "Front: within a model, no other artifact has at least its NDCG@20 at no more cost.",
    ]
    if n_tiled is None:
        return (
            "\n".join([*lines, "", "The tiled catalogue was not built (`--no-1m`): its verdicts are pending."]) + "\n"
        )
    lines += [
        "",
        f"Tiled catalogue ({n_tiled:,} items): each Gowalla artifact becomes an MF artifact whose user table is "
        "the source's served user vectors (LightGCN: propagated, masked for mask_output) and whose item j is "
        f"the source's served item j mod {result['settings']['source_items'] or 'n_items'}; copies after the "
        f"first are multiplied entry-wise by (1 + {PERTURBATION:g} z), z ~ N(0, 1) clipped to [-3, 3], seed "
        f"{result['settings']['seed']}, so no two items tie exactly. Zeros stay zeros: every tiled row keeps "
        "its source row's stored length, so the per-row length profile and the values' distribution are the "
        "trained ones. Same value dtype, index kind and sparse layout as the source (FAISS parameters: the "
        "defaults at the tiled size); the train interactions excluded at serving are the source's, on the "
        "first copy. **Quality is not defined at the tiled size** (there is no held-out split for the copies): "
        "its NDCG@20 column is the source artifact's at Gowalla's catalogue, the quality axis of its front.",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any]) -> bytes:
    """PNG: per model (rows), NDCG@20 against served bytes and batch-1 p50, at Gowalla's and the tiled catalogue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("points", "served_bytes", "served bytes, MiB", "Gowalla"),
        ("points", "p50_ms", "B=1 p50 ms", "Gowalla"),
        ("points_tiled", "served_bytes", "served bytes, MiB", "tiled"),
        ("points_tiled", "p50_ms", "B=1 p50 ms", "tiled"),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(20, 9), dpi=100, squeeze=False)
    style = {"dsl": ("tab:red", "o"), "small-dense": ("tab:blue", "s")}
    for row, model in enumerate(("mf", "lightgcn")):
        for col, (key, cost, xlabel, where) in enumerate(panels):
            ax = axes[row][col]
            pts = [p for p in result[key] if p["model"] == model and p["ndcg"] is not None and p[cost] is not None]
            scale = 2**20 if cost == "served_bytes" else 1
            ax.set_title(f"{model}, {where}: NDCG@20 vs {xlabel.split(',')[0]}", fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test NDCG@20" + (" (source, Gowalla)" if key == "points_tiled" else ""))
            if not pts:
                ax.text(
                    0.5, 0.5, "pending", ha="center", va="center", transform=ax.transAxes, fontsize=14, color="gray"
                )
                continue
            for p in pts:
                color, marker = style[p["kind"]]
                hollow = p["index"] in ("sq8", "pq")
                ax.scatter(
                    [p[cost] / scale],
                    [p["ndcg"]],
                    marker="^" if hollow else marker,
                    facecolors="none" if hollow else color,
                    edgecolors=color,
                    zorder=3,
                )
                label = (f"d{p['width']}" if p["width"] else f"dsl {p['density']:g}") + f" {p['index']} {p['values']}"
                ax.annotate(label, (p[cost] / scale, p["ndcg"]), textcoords="offset points", xytext=(3, 3), fontsize=6)
            front_key = "front_bytes" if cost == "served_bytes" else "front_latency"
            front = sorted((p[cost] / scale, p["ndcg"]) for p in pts if p.get(front_key))
            if len(front) > 1:
                ax.step([c for c, _ in front], [q for _, q in front], where="post", color="black", alpha=0.4)
            ax.grid(alpha=0.3)
    fig.suptitle(
        "Gowalla: red = DSL (sparse index), blue = small-dense (squares flat, triangles sq8/pq); "
        "black = the front" + ("" if result["settings"]["latency"] else "; latency pending"),
        fontsize=11,
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write(result: dict[str, Any], results_dir: Path) -> list[Path]:
    """``pareto-gowalla.{json,md,png}`` into ``results_dir`` (each atomically)."""
    paths = [results_dir / f"pareto-gowalla.{ext}" for ext in ("json", "md", "png")]
    atomic_write_json(paths[0], result)
    atomic_write_text(paths[1], markdown(result))
    atomic_write_bytes(paths[2], plot(result))
    return paths
