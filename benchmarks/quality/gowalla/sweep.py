"""MF's settings on Gowalla chosen on valid (`--sweep-mf`): the sweep's stages, its table, and the
settings the grid then reads (`mf_settings`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.io import atomic_write_bytes, atomic_write_json
from common.provenance import provenance_line

from .spec import SWEEP_FILE

WD_STEPS = ("1e-4", "1e-3", "1e-2", "3e-2", "1e-1")  # stage 3 tries the first three, then climbs while the top wins
INIT_STEPS = ("0.1", "0.01", "1e-3")  # stage 5 steps the init std down from the chosen one while the smallest wins
SLOW_LR = "1e-3"  # stage 4: the reference implementations' Adam learning rate
WD_EPOCHS = 60  # stage 3 runs as long as the grid's cap: overfitting shows only after epoch 5-10


def is_long(name: str) -> bool:
    """Whether a sweep run is a grid-length one (stages 3 to 5, whose names carry the decay)."""
    return "-wd" in name


def best_valid(records) -> dict[str, Any]:
    """The record with the best valid NDCG@20."""
    return max(records, key=lambda r: r["valid_ndcg@20"])


def sweep_stage(records: list[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """MF's learning rate, initialisation, weight decay and sampler on valid, kept small (the machine
    is shared). Stage 1: the learning rate at init_std 0.1 (short runs); stage 2: init_std 0.01 at
    the best of those; stage 3: the weight decay (LightGCN's L2 on the batch embeddings) at the
    chosen lr / init_std, in runs as long as the grid's, early-stopped on valid; it climbs to the
    next larger decay while the largest tried is best; stage 4: the reference lr 1e-3 at the chosen
    decay, as long (unless stage 1 chose it already); stage 5: from the best of stages 3-4, one change
    each, as long: the sampler of LightGCN's reference code (users drawn uniformly,
    ``optim.sampling=user``), and the next smaller init_std, stepping down while the smallest wins.
    Returns ``(name, lr, init_std, weight_decay, sampling)`` of the runs to have; a stage appears
    once the one before has finished."""
    stage1 = [(f"mf-lr{lr}-std0.1", lr, "0.1", "1e-4", "interaction") for lr in ("2e-3", "5e-3", "1e-2")]
    done = {r["name"]: r for r in records if r["status"] == "done"}
    if not all(name in done for name, *_ in stage1):
        return stage1
    best = best_valid(done[name] for name, *_ in stage1)
    stage2 = [(f"mf-lr{best['lr']}-std0.01", best["lr"], "0.01", "1e-4", "interaction")]
    if stage2[0][0] not in done:
        return stage1 + stage2
    short = best_valid(done[name] for name, *_ in stage1 + stage2)
    lr, std = short["lr"], short["init_std"]
    stage3 = [(f"mf-lr{lr}-std{std}-wd{wd}", lr, std, wd, "interaction") for wd in WD_STEPS[:3]]
    while all(name in done for name, *_ in stage3) and len(stage3) < len(WD_STEPS):
        top = best_valid(done[name] for name, *_ in stage3)
        if top["name"] != stage3[-1][0]:
            break
        wd = WD_STEPS[len(stage3)]
        stage3.append((f"mf-lr{lr}-std{std}-wd{wd}", lr, std, wd, "interaction"))
    if not all(name in done for name, *_ in stage3):
        return stage1 + stage2 + stage3
    # stage 4: the reference learning rate at the chosen decay, in a run as long: the short runs of
    # stage 1 favour fast learners, and on Gowalla every decay of stage 3 peaked by epoch 5
    stage4 = []
    if lr != SLOW_LR:
        wd = best_valid(done[name] for name, *_ in stage3)["weight_decay"]
        stage4 = [(f"mf-lr{SLOW_LR}-std{std}-wd{wd}", SLOW_LR, std, wd, "interaction")]
        if stage4[0][0] not in done:
            return stage1 + stage2 + stage3 + stage4
    # stage 5: from the best long run, one change each: a smaller initialisation (climbing down while
    # the smallest tried wins: on ML-100K, MF at init_std 0.01 beats 0.1 on valid by 0.011) and users
    # drawn uniformly (LightGCN's reference sampler)
    top = best_valid(done[name] for name, *_ in stage3 + stage4)
    lr, wd = top["lr"], top["weight_decay"]
    smaller = [s for s in INIT_STEPS if float(s) < float(top["init_std"])]
    stage5 = [(f"{top['name']}-user", lr, top["init_std"], wd, "user")]
    inits = [(f"mf-lr{lr}-std{s}-wd{wd}", lr, s, wd, "interaction") for s in smaller[:1]]
    while (
        all(name in done for name, *_ in inits)
        and len(inits) < len(smaller)
        and best_valid([top] + [done[name] for name, *_ in inits])["name"] == inits[-1][0]
    ):
        s = smaller[len(inits)]
        inits.append((f"mf-lr{lr}-std{s}-wd{wd}", lr, s, wd, "interaction"))
    return stage1 + stage2 + stage3 + stage4 + stage5 + inits


def sweep_epochs(name: str, short: int) -> int:
    """Stage 1 and 2 runs are short; stage 3 (weight decay) runs as long as the grid's."""
    return WD_EPOCHS if is_long(name) else short


def mf_settings(path: Path = SWEEP_FILE) -> tuple[list[str], str]:
    """MF's ``optim.lr`` / ``model.init_std`` / ``optim.weight_decay`` overrides and where they come from."""
    if path.exists():
        report = json.loads(path.read_text())
        chosen = next((r for r in report["records"] if r["name"] == report.get("chosen")), None)
        if chosen is not None and report.get("complete") and "weight_decay" in chosen:
            return (
                [
                    f"optim.lr={chosen['lr']}",
                    f"model.init_std={chosen['init_std']}",
                    f"optim.weight_decay={chosen['weight_decay']}",
                    f"optim.sampling={chosen.get('sampling', 'interaction')}",
                ],
                f"chosen on valid in {path} ({chosen['name']})",
            )
    return (
        ["optim.lr=5e-3", "model.init_std=0.1", "optim.weight_decay=1e-4", "optim.sampling=interaction"],
        "the issue's pilot values (no finished sweep yet)",
    )


def write_sweep(records: list[dict[str, Any]], source: dict[str, Any], results: Path, complete: bool) -> None:
    long = [r for r in records if r["status"] == "done" and is_long(r["name"])]
    best = best_valid(long) if long else None
    lines = [
        "# MF on Gowalla: learning rate, initialisation, weight decay and sampler chosen on valid",
        "",
        provenance_line(source),
        "",
        "Dense MF-BPR, dim 64, batch 2048, one thread, chosen by the best valid NDCG@20; test is not looked "
        "at. Stage 1: the learning rate at init_std 0.1 and weight decay 1e-4, in short runs (evaluation every "
        "2 epochs); stage 2: init_std 0.01 at the best learning rate; stage 3: the weight decay (L2 on the "
        "batch embeddings, LightGCN's form) at the chosen lr / init_std, in runs as long as the grid's "
        f"({WD_EPOCHS} epochs, evaluation every 5, early stopping with patience 2 after epoch 10), climbing "
        "to the next larger decay while the largest tried is best; stage 4: the reference lr 1e-3 at the "
        "chosen decay, as long; stage 5: from the best of stages 3-4, one change each, as long: users drawn "
        "uniformly (`optim.sampling=user`, the sampler of LightGCN's reference code) instead of every training "
        "pair once per epoch, and the next smaller init_std, stepping down while the smallest tried wins. "
        "Only stages 3 to 5 choose: short runs favour fast learners that overfit later.",
        "",
        "| run | lr | init_std | weight decay | sampling | best valid NDCG@20 | valid Recall@20 | best / epochs | "
        "valid NDCG@20 by epoch | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        curve = ", ".join(f"{p['epoch']}: {p['valid_ndcg@20']:.4f}" for p in r.get("curve") or [])
        wd, sampling = r.get("weight_decay", "1e-4"), r.get("sampling", "interaction")
        if r["status"] != "done":
            lines.append(
                f"| {r['name']} | {r['lr']} | {r['init_std']} | {wd} | {sampling} | | | | {curve} | {r['status']} |"
            )
            continue
        mark = " **chosen**" if r is best else ""
        lines.append(
            f"| {r['name']}{mark} | {r['lr']} | {r['init_std']} | {wd} | {sampling} | {r['valid_ndcg@20']:.4f} | "
            f"{r['valid_recall@20']:.4f} | {r['best_epoch']} / {r['epochs']} | {curve} | done |"
        )
    if best is not None:
        lines += [
            "",
            f"Chosen: lr {best['lr']}, init_std {best['init_std']}, weight decay {best['weight_decay']}, "
            f"sampling {best.get('sampling', 'interaction')} "
            f"(valid NDCG@20 {best['valid_ndcg@20']:.4f} at epoch {best['best_epoch']}).",
        ]
    if not complete:
        lines += ["", "Incomplete: runs are still to come (`make sweep-mf-gowalla` continues)."]
    atomic_write_json(
        results / "sweeps" / "gowalla-mf-sweep.json",
        {"provenance": source, "records": records, "chosen": best and best["name"], "complete": complete},
    )
    atomic_write_bytes(results / "sweeps" / "gowalla-mf-sweep.md", ("\n".join(lines) + "\n").encode())
