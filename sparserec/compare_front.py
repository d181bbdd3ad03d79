"""``sparserec compare``'s Pareto fronts: which rows no other beats on NDCG@20 against served bytes and
against batch-1 latency, and the plot that draws one.

    from sparserec.compare_front import pareto_front
    pareto_front([(0.30, 100.0), (0.20, 50.0), (0.10, 60.0)])   # [True, True, False]
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from .compare_rows import QUALITY_K


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """Which ``(quality, cost)`` points no other point beats: higher quality is better, lower cost is.

    A point is beaten when another has quality >= and cost <=, one of them strictly. Equal points do
    not beat each other, so both stay on the front. A point missing either value is not on it.

    Args:
        points: ``[(quality, cost)]``, ``None`` where unknown.
    Returns:
        ``[bool]``, one per point, in order.
    """
    known = [(q, c) for q, c in points if q is not None and c is not None]
    out = []
    for quality, cost in points:
        if quality is None or cost is None:
            out.append(False)
            continue
        beaten = any(q >= quality and c <= cost and (q > quality or c < cost) for q, c in known)
        out.append(not beaten)
    return out


def batch1_p50(row: dict[str, Any], key: tuple[int, int]) -> float | None:
    """The row's in-process p50 at ``key = (threads, batch size)``, ``None`` where not timed."""
    for entry in row.get("latency", []):
        if (entry["threads"], entry["batch_size"]) == key:
            return entry["p50_ms"]
    return None


def mark_fronts(rows: list[dict[str, Any]], key: tuple[int, int]) -> None:
    """Set ``front_bytes`` and ``front_latency`` on every row (NDCG@20 against served bytes / p50 at ``key``)."""
    quality = [row["quality"]["ndcg@20"] for row in rows]
    on_bytes = pareto_front(list(zip(quality, [row["served_bytes"]["served"]["total"] for row in rows])))
    on_latency = pareto_front(list(zip(quality, [batch1_p50(row, key) for row in rows])))
    for row, by_bytes, by_latency in zip(rows, on_bytes, on_latency):
        row["front_bytes"] = by_bytes
        row["front_latency"] = by_latency if batch1_p50(row, key) is not None else None


def plot_front(
    rows: list[dict[str, Any]], costs: list[float | None], fronts: list[bool | None], xlabel: str, title: str
) -> bytes | None:
    """PNG of NDCG@20 against one cost, the front drawn as a step line; ``None`` with nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        (c, r["quality"]["ndcg@20"], r["name"], bool(f))
        for r, c, f in zip(rows, costs, fronts)
        if c is not None and r["quality"]["ndcg@20"] is not None
    ]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for cost, quality, name, on in points:
        ax.scatter([cost], [quality], color="tab:red" if on else "tab:gray", zorder=3)
        ax.annotate(name, (cost, quality), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = sorted((c, q) for c, q, _, on in points if on)
    if len(front) > 1:
        ax.step([c for c, _ in front], [q for _, q in front], where="post", color="tab:red", alpha=0.6, label="front")
        ax.legend(loc="lower right")
    xs = [c for c, *_ in points]
    if min(xs) > 0 and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test NDCG@{QUALITY_K}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
