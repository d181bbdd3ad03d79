"""The replica memory benchmark and the router's isolated overhead (issue 12), on the tiny artifact.

- `benchmarks.serving.replicas.measure_series` starts real servers with 1 and 2 workers and sums the memory
  of their process trees (arbiter + workers); `summarise` splits the added PSS into the baseline
  and the catalogue-dependent part and checks each against the target;
- `benchmarks.serving.shards.router_overhead` puts a router over one running server and compares paired
  calls (it raises if the router's answer differs from the server's); the router sends a single
  query to its shards' /recommend.
"""

from __future__ import annotations

import httpx
import pytest

from benchmarks.serving.replicas import TARGET, measure_series, render, summarise
from benchmarks.serving.shards import router_overhead
from server_utils import running_server, server_env

MIB = 2**20


def _row(role: str, mmap: bool, workers: int, pss: float, rss: float) -> dict:
    return {
        "artifact": f"artifacts/{role}",
        "role": role,
        "mmap": mmap,
        "workers": workers,
        "processes": workers + 1,
        "pss": pss,
        "uss": pss,
        "rss": rss,
        "per_process": [],
    }


def _with_added(rows: list[dict]) -> list[dict]:
    first = rows[0]
    for row in rows[1:]:
        row["added"] = {k: (row[k] - first[k]) / (row["workers"] - first["workers"]) for k in ("pss", "uss", "rss")}
    return rows


def test_summary_splits_added_pss_into_baseline_and_the_rest():
    index = 100 * MIB
    rows = (
        _with_added(
            [_row("catalogue", True, 1, 300 * MIB, 350 * MIB), _row("catalogue", True, 4, 600 * MIB, 1550 * MIB)]
        )
        + _with_added(
            [_row("catalogue", False, 1, 300 * MIB, 350 * MIB), _row("catalogue", False, 4, 1200 * MIB, 1400 * MIB)]
        )
        + _with_added(
            [_row("baseline", True, 1, 150 * MIB, 200 * MIB), _row("baseline", True, 4, 420 * MIB, 500 * MIB)]
        )
    )
    summary = summarise(rows, index)
    assert summary["added_pss"] == 100 * MIB and not summary["met"]  # (600 - 300) / 3
    assert summary["read_added_pss"] == 300 * MIB
    assert summary["baseline_added_pss"] == 90 * MIB
    assert summary["index_dependent_pss"] == 10 * MIB and summary["index_dependent_met"]  # 10% <= 15%
    assert summary["added_rss"] == 400 * MIB and summary["target_bytes"] == TARGET * index
    report = {
        "provenance": {"command": "c", "commit": "x", "date": "d", "machine": {}},
        "artifact": "a",
        "n_items": 10,
        "index_kind": "flat",
        "index_bytes": index,
        "baseline": "b",
        "baseline_n_items": 1000,
        "rows": rows,
        "summary": summary,
        "note": "n",
    }
    text = render(report)
    assert "target missed" in text and "because of the per-process baseline" in text


def test_replica_memory_of_one_and_two_workers(tiny_mf_artifact):
    rows = measure_series(tiny_mf_artifact, "catalogue", True, [1, 2], queries=20, timeout=180)
    assert [(r["workers"], r["processes"]) for r in rows] == [(1, 2), (2, 3)]
    for row in rows:
        assert 0 < row["uss"] <= row["pss"] <= row["rss"]
        assert len(row["per_process"]) == row["processes"] and row["per_process"][0]["role"] == "root"
    assert "added" not in rows[0]
    # a second worker is a whole process: it adds memory, however shared the arrays are
    assert rows[1]["added"]["pss"] > 0 and rows[1]["added"]["rss"] >= rows[1]["added"]["pss"]


def test_router_over_one_shard_answers_like_it_and_is_timed(tiny_mf_artifact):
    env = server_env(tiny_mf_artifact)
    with running_server(tiny_mf_artifact) as server:
        result = router_overhead(server, tiny_mf_artifact, env, requests=10)
        stats = httpx.get(server.url + "/info").json()["serving"]["stats"]
    # 5 warm-up calls + 10 rounds on each path: only the direct_batch path used /recommend_batch,
    # the router's single queries came to /recommend like the direct ones
    assert stats["batched_queries"] == 15 and stats["direct_queries"] == 30
    assert result["requests"] == 10
    for key in ("direct_p50_ms", "direct_batch_p50_ms", "routed_p50_ms", "direct_p95_ms", "routed_p95_ms"):
        assert result[key] > 0, key
    assert result["added_p50_ms"] == pytest.approx(result["routed_p50_ms"] - result["direct_p50_ms"])
