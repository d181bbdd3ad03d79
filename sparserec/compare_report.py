"""``sparserec compare``'s report: the Markdown table, and ``compare.json``, ``compare.md`` and the front
plots written (atomically) into the report folder.

    from sparserec.compare_report import write_report
    write_report(compare(options), options.out)   # [compare.json, compare.md, front-bytes.png, ...]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from common.provenance import provenance_line

from .compare_front import batch1_p50, plot_front
from .compare_rows import QUALITY_K, lengths_text


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown(report: dict[str, Any]) -> str:
    """The one table, with how it was made and what the marks mean."""
    settings, timing, rows = report["settings"], report["timing"], report["rows"]
    key = (settings["threads"][0], min(settings["batch_sizes"]))
    latency_cols = [(t, b) for t in settings["threads"] for b in settings["batch_sizes"]] if settings["latency"] else []
    header = [
        "artifact",
        "model",
        "layout",
        "index",
        "values",
        "non-zeros",
        "dim / row lengths",
        "served (mapped + read)",
        "disk",
        f"NDCG@{QUALITY_K}",
        f"Recall@{QUALITY_K}",
    ]
    header += [f"B={b} {t}T p50 / p99 ms" for t, b in latency_cols]
    if settings["http"]:
        header.append("HTTP p50 / p99 ms")
    if settings["locust_users"]:
        header.append(f"locust {settings['locust_users']} users: req/s (failures)")
    header.append("front")
    lines = [f"# sparserec compare: {len(rows)} artifact(s)", "", provenance_line(report["provenance"]), ""]
    if timing["timed"]:
        lines.append(
            f"Load average (1 min): {timing['load_avg_1m_start']} at start, {timing['load_avg_1m_end']} at "
            f"end, {timing['cpus']} CPUs."
        )
        if timing["noisy"]:
            why = "; ".join(
                f"{when}: {r}"
                for when, r in (("at start", timing["busy_at_start"]), ("at end", timing["busy_at_end"]))
                if r
            )
            lines += [
                "",
                f"**NOISY: timed on a busy machine ({why}), allowed by --allow-noisy. The timings below "
                "are not figures to quote.**",
            ]
        lines.append("")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        served = row["served_bytes"]["served"]
        index = row["index"] + (f" {row['index_layout']}" if row.get("index_layout") else "")
        cells = [
            row["name"],
            row["model"],
            row["layout"],
            index,
            row["value_dtype"],
            f"{row['nnz']:,}",
            lengths_text(row),
            f"{human_bytes(served['total'])} ({human_bytes(served['mapped'])} + {human_bytes(served['read'])})",
            human_bytes(row["disk_bytes"]),
            _metric(row["quality"]["ndcg@20"]),
            _metric(row["quality"]["recall@20"]),
        ]
        by_key = {(e["threads"], e["batch_size"]): e for e in row.get("latency", [])}
        cells += [
            f"{by_key[c]['p50_ms']:.3f} / {by_key[c]['p99_ms']:.3f}" if c in by_key else "-" for c in latency_cols
        ]
        if settings["http"]:
            http = row.get("http") or {}
            cells.append(
                f"{http['p50_ms']:.2f} / {http['p99_ms']:.2f}"
                if "p50_ms" in http
                else "failed"
                if "error" in http
                else "-"
            )
        if settings["locust_users"]:
            load = row.get("locust") or {}
            cells.append(
                f"{load['rps']:.1f} ({load['failures']})" if "rps" in load else "failed" if "error" in load else "-"
            )
        marks = [m for m, on in (("bytes", row["front_bytes"]), ("latency", row.get("front_latency"))) if on]
        cells.append(", ".join(marks) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    sources = sorted({row["quality"]["source"] for row in rows})
    lines += [
        "",
        f"Quality: {'; '.join(sources)}. Served: the item index, the user vectors and the id maps a "
        f"server worker holds (SPARSEREC_MMAP={int(settings['mmap'])}); mapped parts are shared by every "
        "worker on the machine, read parts are each worker's own (docs/compare.md).",
    ]
    if latency_cols:
        lines.append(
            f"Latency: `Recommender.recommend` in-process, k = {settings['k']}, seen items excluded, "
            f"random known users (seed {settings['seed']}); B = queries per call, T = FAISS threads."
        )
    if settings["http"]:
        lines.append(
            f"HTTP: `python -m serving`, one worker, {settings['threads'][0]} thread(s), "
            f"{settings['requests']} sequential POST /recommend after 20 warm-up ones, client on the "
            "same machine."
        )
    if settings["locust_users"]:
        lines.append(
            f"Locust: {settings['locust_users']} users for {settings['locust_duration_s']:g} s through "
            "`python -m loadtest run` (its own reports under locust/)."
        )
    lines.append(
        f"Front: no other row has at least its NDCG@{QUALITY_K} with at most its served bytes (`bytes`)"
        + (f" or its B={key[1]} {key[0]}T p50 (`latency`)" if latency_cols else "")
        + "; equal rows share it."
    )
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """``compare.json``, ``compare.md`` and the front plots into ``out`` (each written atomically)."""
    rows, settings = report["rows"], report["settings"]
    written = [out / "compare.json", out / "compare.md"]
    atomic_write_json(written[0], report)
    atomic_write_text(written[1], markdown(report))
    key = (settings["threads"][0], min(settings["batch_sizes"]))
    plots = {
        "front-bytes.png": (
            [r["served_bytes"]["served"]["total"] for r in rows],
            [r["front_bytes"] for r in rows],
            "served bytes (index + user vectors + id maps)",
            "NDCG against served bytes",
        )
    }
    if settings["latency"]:
        noisy = " (NOISY)" if report["timing"]["noisy"] else ""
        plots["front-latency.png"] = (
            [batch1_p50(r, key) for r in rows],
            [r["front_latency"] for r in rows],
            f"in-process p50 ms, B={key[1]}, {key[0]} thread(s)",
            f"NDCG against batch-{key[1]} latency{noisy}",
        )
    for name, (costs, fronts, xlabel, title) in plots.items():
        png = plot_front(rows, costs, fronts, xlabel, title)
        if png is not None:
            atomic_write_bytes(out / name, png)
            written.append(out / name)
    return written
