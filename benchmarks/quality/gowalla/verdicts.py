"""The verdicts of the Gowalla table: the chosen DSL variant against small-dense per (model, density),
with the seed spread, and the keep-95%-of-dense line.
"""

from __future__ import annotations

from typing import Any

from .spec import DSL_VARIANTS, KEEP_DENSE, SEEDS, TIE


def done_label(record: dict[str, Any]) -> str:
    """``done``, or ``done, GPU`` for a run trained on a GPU."""
    return "done" if record.get("device", "cpu") == "cpu" else "done, GPU"


def _f(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def variant_runs(records: list[dict[str, Any]], model: str, density: float) -> list[dict[str, Any]]:
    """The DSL variants of the grid at ``(model, density)``, seed 2024, finished or not."""
    return [
        r
        for r in records
        if r["model"] == model
        and r["density"] == density
        and r["seed"] == SEEDS[0]
        and r["updater"] in DSL_VARIANTS
        and not r.get("mask_output")
    ]


def finished(
    records: list[dict[str, Any]], model: str, updater: str, density: float | None = None
) -> dict[str, Any] | None:
    """The finished seed-2024 run of ``updater`` (at ``density``, unless None: dense has one), or None."""
    return next(
        (
            r
            for r in records
            if r["model"] == model
            and r["updater"] == updater
            and r["seed"] == SEEDS[0]
            and r["status"] == "done"
            and (density is None or r["density"] == density)
        ),
        None,
    )


def chosen_variant(records: list[dict[str, Any]], model: str, density: float) -> dict[str, Any] | None:
    """The DSL variant with the best *valid* NDCG@20 (seed 2024) among the finished ones."""
    done = [r for r in variant_runs(records, model, density) if r["status"] == "done"]
    return max(done, key=lambda r: r["valid_ndcg@20"], default=None)


def choice_label(records: list[dict[str, Any]], model: str, density: float) -> str:
    """``chosen on valid``, or ``best on valid so far, k of n variants`` while some still train."""
    runs = variant_runs(records, model, density)
    done = sum(r["status"] == "done" for r in runs)
    return "chosen on valid" if done == len(runs) else f"best on valid so far, {done} of {len(runs)} variants"


def verdicts(records: list[dict[str, Any]]) -> list[str]:
    """The question of the issue, per (model, density): the chosen DSL variant against small-dense,
    with the seed spread where two seeds finished."""
    lines = [
        "## The question: does the DSL variant chosen on valid beat the equal-budget small dense model?",
        "",
        "| model | density | chosen variant | its test NDCG@20 | small-dense | diff | seed spread (variant, small-dense) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in ("mf", "lightgcn"):
        for density in (0.2, 0.1, 0.05):
            chosen = chosen_variant(records, model, density)
            small = finished(records, model, "small-dense", density)
            if chosen is None or small is None:
                if any(r["model"] == model and r["density"] == density for r in records):
                    lines.append(f"| {model} | {density:g} | | | | | | pending |")
                continue
            spreads = []
            for updater in (chosen["updater"], "small-dense"):
                values = [
                    r["test_ndcg@20"]
                    for r in records
                    if r["model"] == model
                    and r["density"] == density
                    and r["updater"] == updater
                    and r["status"] == "done"
                ]
                spreads.append(f"{max(values) - min(values):.4f}" if len(values) > 1 else "-")
            diff = chosen["test_ndcg@20"] - small["test_ndcg@20"]
            # a side with one finished seed has no measured spread: the stand-in counts for it
            spread = max(float(s) if s != "-" else TIE for s in spreads)
            verdict = "DSL wins" if diff > spread else ("small-dense wins" if diff < -spread else "within the spread")
            label = choice_label(records, model, density)
            if label != "chosen on valid":
                verdict += f" (provisional: {label})"
            lines.append(
                f"| {model} | {density:g} | {chosen['updater']} | {chosen['test_ndcg@20']:.4f} | "
                f"{small['test_ndcg@20']:.4f} | {diff:+.4f} | {spreads[0]}, {spreads[1]} | {verdict} |"
            )
    lines += [
        "",
        "Spread: the test NDCG@20 difference between the two seeds (of the chosen variant, of small-dense); "
        f"for a side where one seed finished, the dense seed spread {TIE} stands in; the larger counts.",
        "",
    ]
    lines += keep_dense_line(records)
    return lines


def keep_dense_line(records: list[dict[str, Any]], model: str = "lightgcn", density: float = 0.2) -> list[str]:
    """The issue's other target: at 0.2 the chosen LightGCN variant keeps >= KEEP_DENSE of dense's test NDCG@20."""
    dense = finished(records, model, "dense")
    chosen = chosen_variant(records, model, density)
    small = finished(records, model, "small-dense", density)
    head = f"Target at {density:g}: {model}'s chosen variant keeps >= {KEEP_DENSE:.0%} of dense {model}'s test NDCG@20"
    if dense is None or chosen is None:
        return [f"{head}: pending.", ""]
    share = chosen["test_ndcg@20"] / dense["test_ndcg@20"]
    rival = f"; small-dense keeps {small['test_ndcg@20'] / dense['test_ndcg@20']:.1%}" if small else ""
    label = choice_label(records, model, density)
    return [
        f"{head}: {chosen['updater']} {chosen['test_ndcg@20']:.4f} against dense {dense['test_ndcg@20']:.4f} "
        f"= {share:.1%}, **{'met' if share >= KEEP_DENSE else 'missed'}**"
        f"{'' if label == 'chosen on valid' else f' (provisional: {label})'}{rival}.",
        "",
    ]
