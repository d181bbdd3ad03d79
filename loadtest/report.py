"""The tables and lines that report a load test's result (`loadtest.run`'s JSON result dicts).

    print(endpoint_table(result)); print(summary_line(result))   # one run
    print(compare_table(first, second))                           # two runs side by side, B / A

Pure formatting: no locust, no server, no files.
"""

from __future__ import annotations

from pathlib import Path

ROWS = (  # label, getter, format
    ("requests", lambda r: r["requests"], "{:d}"),
    ("failures", lambda r: r["failures"], "{:d}"),
    ("requests/s", lambda r: r["rps"], "{:.1f}"),
    ("p50 ms", lambda r: r["p50_ms"], "{:.1f}"),
    ("p95 ms", lambda r: r["p95_ms"], "{:.1f}"),
    ("p99 ms", lambda r: r["p99_ms"], "{:.1f}"),
    ("mean ms", lambda r: r["avg_ms"], "{:.2f}"),
    ("/recommend p95 ms", lambda r: r["endpoints"].get("POST /recommend", {}).get("p95_ms"), "{:.1f}"),
    ("/recommend_batch p95 ms", lambda r: r["endpoints"].get("POST /recommend_batch", {}).get("p95_ms"), "{:.1f}"),
    ("server RSS idle MiB", lambda r: r["server"]["rss_idle_bytes"] / 2**20, "{:.0f}"),
    ("server RSS peak MiB", lambda r: r["server"]["rss_peak_bytes"] / 2**20, "{:.0f}"),
    ("thresholds", lambda r: "pass" if r["thresholds"]["passed"] else "FAIL", "{}"),
)


def _cell(fmt: str, value) -> str:
    return "-" if value is None else fmt.format(value)


def summary_line(result: dict) -> str:
    verdict = result["thresholds"]
    return (
        f"{result.get('target') or result['artifact']['path']}: {result['requests']} requests, {result['failures']} failed, "
        f"{result['rps']:.1f} req/s, p50 {result['p50_ms']:.0f} ms, p95 {result['p95_ms']:.0f} ms, "
        f"p99 {result['p99_ms']:.0f} ms; thresholds {'met' if verdict['passed'] else 'NOT met: ' + '; '.join(verdict['reasons'])}"
        f" -> {result['path']}"
    )


def endpoint_table(result: dict) -> str:
    lines = [
        "| endpoint | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in sorted(result["endpoints"].items()):
        lines.append(
            f"| {name} | {e['requests']} | {e['failures']} | {e['rps']:.1f} | {e['p50_ms']:.0f} | "
            f"{e['p95_ms']:.0f} | {e['p99_ms']:.0f} |"
        )
    return "\n".join(lines)


def _describe(result: dict) -> str:
    a = result["artifact"]
    index = (a.get("index") or {}).get("kind")
    return (
        f"{Path(a['path']).name} ({a.get('model_kind')}, density {a.get('density')}, {a.get('value_dtype')}, {index})"
    )


def compare_table(first: dict, second: dict) -> str:
    """Markdown table of two runs side by side, with the ratio second / first."""
    lines = [f"| | A: {_describe(first)} | B: {_describe(second)} | B / A |", "|---|---:|---:|---:|"]
    for label, get, fmt in ROWS:
        try:
            a, b = get(first), get(second)
        except (KeyError, TypeError):
            a = b = None
        ratio = f"{b / a:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else "-"
        lines.append(f"| {label} | {_cell(fmt, a)} | {_cell(fmt, b)} | {ratio} |")
    load = first["load"]
    lines.append("")
    lines.append(
        f"Same load for both, one after the other: {load['users']} users, spawn {load['spawn_rate']:g}/s, "
        f"{load['duration_s']:g} s, think time {load['wait_ms'][0]:g}-{load['wait_ms'][1]:g} ms, "
        f"{'locust master + ' + str(load['locust_workers']) + ' workers' if load['locust_workers'] else 'one locust process'}; "
        f"machine {first['machine']['host']} ({first['machine']['cpus']} CPUs, shared by locust and the server). "
        f"Percentiles are locust's (whole milliseconds below 100 ms)."
    )
    return "\n".join(lines)


__all__ = ["ROWS", "compare_table", "endpoint_table", "summary_line"]
