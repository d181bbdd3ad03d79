"""benchmarks.serving.latency and benchmarks.serving.demo end to end on the tiny artifact: each starts the real server
(serving/process.py's serving_command and serving_env), queries it over HTTP and stops it."""

from __future__ import annotations

import json
import shutil

from conftest import run_cli


def test_serving_bench_in_process_and_http(tiny_mf_artifact, tmp_path):
    out = tmp_path / "serve"
    run_cli(
        "-m",
        "benchmarks.serving.latency",
        "--artifact",
        str(tiny_mf_artifact),
        "--synthetic-items",
        "0",
        "--calls",
        "6",
        "--budget",
        "0.1",
        "--requests",
        "5",
        "--out",
        str(out),
        cwd=tmp_path,
        timeout=300,
    )
    report = json.loads(out.with_suffix(".json").read_text())
    rows = report["in_process"]
    assert [r["batch_size"] for r in rows] == [1, 32, 256]
    assert rows[0]["n"] == 6 and all(3 <= r["n"] <= max(3, 6 // 4) for r in rows[1:])  # calls as documented
    assert set(report["http"]["endpoints"]) == {"/ping", "/recommend", "/recommend_batch (32)"}
    assert all(e["n"] == 5 for e in report["http"]["endpoints"].values())
    assert report["http"]["server_threads"] == 1


def test_serving_bench_compare_and_demo(tiny_mf_artifact, tmp_path):
    out = tmp_path / "serve-compare"
    twin = tmp_path / "tiny-small-dense"  # named as the comparison's base
    shutil.copytree(tiny_mf_artifact, twin)
    run_cli(
        "-m",
        "benchmarks.serving.latency",
        "--compare",
        f"{tiny_mf_artifact},{twin}",
        "--requests",
        "3",
        "--out",
        str(out),
        cwd=tmp_path,
        timeout=300,
    )
    compare = json.loads(out.with_suffix(".json").read_text())["compare"]
    assert list(compare["rows"]) == [tiny_mf_artifact.name, twin.name]
    assert all(row["n"] == 3 and row["info"]["n_items"] > 0 for row in compare["rows"].values())
    assert compare["rows"][twin.name]["p50_over_small_dense"] == 1.0
    demo = run_cli("-m", "benchmarks.serving.demo", "--artifact", str(tiny_mf_artifact), cwd=tmp_path, timeout=300)
    assert "unknown user -> fallback=True" in demo.stdout and "k=0 -> HTTP 4" in demo.stdout
    assert f"| {tiny_mf_artifact.name} | mf |" in demo.stdout
