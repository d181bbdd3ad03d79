"""The in-process benchmark's plot: latency against resident memory, the Pareto front marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i])


PARETO_MIN_RECALL = 0.9


def plot(report: dict[str, Any], path: Path, batch: int = 1) -> None:
    """Latency (p50 at ``batch``) against resident memory after load, one panel per dataset.

    The Pareto front is drawn over the points with recall@20 >= ``PARETO_MIN_RECALL`` (a fast,
    small index that returns the wrong items is no trade-off); the others are drawn faded.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [p for p in report["points"] if "latency" in p and "p50_ms" in p["latency"].get(str(batch), {})]
    datasets = list(dict.fromkeys(p["dataset"] if p["table"] != "artifact" else "artifacts" for p in measured))
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(7.5 * max(1, len(datasets)), 7), squeeze=False)
    backends = list(dict.fromkeys(p["backend"] for p in measured))
    colors = {b: plt.cm.tab20(i % 20) for i, b in enumerate(backends)}
    markers = {"dense": "*", "sparse": "o", "small-dense": "s", "prefix": "P", "unstructured": "X", "artifact": "D"}
    for axis, dataset in zip(axes[0], datasets):
        chosen = [
            p
            for p in measured
            if (p["table"] == "artifact") == (dataset == "artifacts")
            and (dataset == "artifacts" or p["dataset"] == dataset)
        ]
        xy = [(max(p["rss_loaded_bytes"], 4096) / 2**20, p["latency"][str(batch)]["p50_ms"]) for p in chosen]
        good = [p["recall@20"] >= PARETO_MIN_RECALL for p in chosen]
        for p, (x, y), ok in zip(chosen, xy, good):
            axis.scatter(
                x,
                y,
                color=colors[p["backend"]],
                marker=markers.get(p["table"], "o"),
                s=55,
                alpha=0.85 if ok else 0.2,
                edgecolors="none",
            )
            label = f"{p['density']:g}" if p["table"] != "artifact" else p["artifact"]["name"]
            axis.annotate(
                label, (x, y), fontsize=6, alpha=0.6 if ok else 0.25, xytext=(3, 2), textcoords="offset points"
            )
        eligible = [i for i, ok in enumerate(good) if ok]
        front = [eligible[i] for i in pareto_front([xy[i] for i in eligible])]
        if front:
            axis.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "k--", lw=1, label="Pareto front")
            axis.scatter(
                [xy[i][0] for i in front], [xy[i][1] for i in front], s=160, facecolors="none", edgecolors="black", lw=1
            )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("resident memory after load (MiB, log; floor 4 KiB)")
        axis.set_ylabel(f"p50 latency at batch {batch} (ms, log)")
        axis.set_title(f"{dataset}: latency vs memory (labels: density)")
        axis.grid(True, which="both", alpha=0.3)
    handles = [plt.Line2D([], [], color=colors[b], marker="o", ls="", label=b) for b in backends]
    handles += [plt.Line2D([], [], color="gray", marker=m, ls="", label=t) for t, m in markers.items()]
    handles.append(
        plt.Line2D(
            [],
            [],
            color="black",
            ls="--",
            label=f"Pareto front (circled) of recall@20 >= {PARETO_MIN_RECALL:g}; faded: below",
        )
    )
    fig.legend(handles=handles, loc="lower center", ncol=min(8, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
