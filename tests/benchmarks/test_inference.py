"""The in-process inference benchmark (benchmarks.inference): the reduced sweep end to end, and
each backend's top-k against brute force. No timing thresholds: only completeness and exactness."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_artifact(tiny_mf_artifact) -> Path:
    """The session's tiny MF artifact (tests/conftest.py): 200 users x 300 items, exact index."""
    return tiny_mf_artifact


def test_reduced_bench_is_complete_and_exact_backends_are_exact(tiny_artifact, tmp_path):
    from benchmarks.inference.backends import EXACT_BACKENDS

    done = run(
        "-m",
        "benchmarks.inference.bench",
        "--reduced",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
        "--artifacts",
        str(tiny_artifact),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "bench-reduced.json").read_text())
    assert (tmp_path / "bench-reduced.md").stat().st_size > 0 and (tmp_path / "bench-reduced.png").stat().st_size > 0
    points = report["points"]
    cases = {(p["table"], p["density"]) for p in points}
    # the dense model, the sparse one and its equal-budget small-dense twin, the trained-like masks
    # (issue 10) and the real artifact
    assert {
        ("dense", 1.0),
        ("sparse", 0.2),
        ("small-dense", 0.2),
        ("prefix", 0.2),
        ("unstructured", 0.2),
        ("artifact", 1.0),
    } <= cases
    assert {p["backend"] for p in points} == {"torch-dense", "faiss-flat", "sparse"}
    # the sparse index runs on sparse tables only; trained-like masks get the sparse index and flat only
    assert {(p["table"], p["backend"]) for p in points if p["table"] in ("prefix", "unstructured")} == {
        (t, b) for t in ("prefix", "unstructured") for b in ("faiss-flat", "sparse")
    }
    assert not any(p["backend"] == "sparse" for p in points if p["table"] in ("dense", "small-dense", "artifact"))
    layouts = {p["table"]: p["backend_params"]["layout"] for p in points if p["backend"] == "sparse"}
    assert layouts == {"sparse": "gaps", "prefix": "prefix", "unstructured": "gaps"}
    targets = {row["table"]: row for row in report["sparse_index_targets"]["ml-100k"]}
    assert set(targets) == {"prefix", "unstructured"} and all(r["checks"]["recall 1.0"] for r in targets.values())
    for p in points:
        assert "error" not in p and "skipped" not in p, p
        for batch in ("1", "32", "256"):
            entry = p["latency"][batch]
            assert entry["calls"] >= 1 and 0 < entry["p50_ms"] <= entry["p99_ms"] and entry["qps"] > 0
        assert p["payload_bytes"] > 0 and p["rss_peak_bytes"] >= 0
        if p["backend"] in EXACT_BACKENDS:
            assert p["recall@20"] == 1.0, p
    small = next(p for p in points if p["table"] == "small-dense")
    assert small["dim"] == round(0.2 * 64)


def test_packed_scan_and_scipy_equal_brute_force(tmp_path):
    """The numpy/scipy exact scans return the brute-force top-k (ties tolerated), fp32 and int8."""
    import numpy as np

    from benchmarks.inference.backends import PackedScan, ScipyCSR
    from benchmarks.inference.recall import kth_best_scores, served_recall
    from export.to_sparse import pack_table

    rng = np.random.default_rng(0)
    items = rng.standard_normal((3000, 16)).astype(np.float32) * (rng.random((3000, 16)) < 0.3)
    items[5] = 0  # an empty row
    users = rng.standard_normal((40, 16)).astype(np.float32)
    for dtype in ("fp32", "int8"):
        for role, array in pack_table(items, items != 0, dtype).arrays().items():
            np.save(tmp_path / f"items.{role}.npy", array)
        served = pack_table(items, items != 0, dtype).to_dense()
        kth = kth_best_scores(users, served, 20)
        for backend in (PackedScan(tmp_path, users, threads=2), ScipyCSR(tmp_path, users, threads=1)):
            for rows in (np.arange(1), np.arange(7), np.arange(40)):
                ids = backend.search(rows, 20)
                assert ids.shape == (len(rows), 20) and len(set(ids[0])) == 20
                assert served_recall(ids, users[rows], served, kth[rows], 20) == 1.0


def test_sparse_backend_equals_brute_force_on_trained_like_masks(tmp_path):
    """The bench's sparse backend (both layouts, rows of length 0 and 64) returns the exact top-k."""
    import numpy as np

    from benchmarks.inference.backends import Sparse
    from benchmarks.inference.recall import kth_best_scores, served_recall
    from export.to_sparse import pack_table

    rng = np.random.default_rng(3)
    lengths = np.sort(np.r_[np.zeros(20, int), rng.integers(1, 12, 2000), np.full(10, 64)])
    prefix = np.arange(64)[None, :] < lengths[:, None]
    unstructured = rng.random((2030, 64)) < 0.08
    unstructured[:15] = False
    for mask, layout in ((prefix, "prefix"), (unstructured, "gaps")):
        items = rng.standard_normal(mask.shape).astype(np.float32) * mask
        users = rng.standard_normal((30, 64)).astype(np.float32) * (rng.random((30, 64)) < 0.2)
        for role, array in pack_table(items, mask).arrays().items():
            np.save(tmp_path / f"items.{role}.npy", array)
        (tmp_path / "case.json").write_text("{}")
        backend = Sparse(tmp_path, users, threads=1)
        assert backend.params["layout"] == layout and backend.payload_bytes > 0
        kth = kth_best_scores(users, items, 20)
        ids = backend.search(np.arange(30), 20)
        assert ids.shape == (30, 20) and (ids >= 0).all()
        assert served_recall(ids, users, items, kth, 20) == 1.0


def test_sparse_index_targets_are_checked_as_the_issue_states():
    from benchmarks.inference.report import sparse_index_targets

    def point(table, density, backend, dim, rss, b1, b256, recall=1.0, layout=None):
        return {
            "table": table,
            "density": density,
            "backend": backend,
            "dim": dim,
            "recall@20": recall,
            "payload_bytes": rss,
            "rss_loaded_bytes": rss,
            "backend_params": {"layout": layout},
            "latency": {"1": {"p50_ms": b1}, "32": {"p50_ms": b1 * 10}, "256": {"p50_ms": b256}},
        }

    points = [
        point("dense", 1.0, "faiss-flat", 64, 256, 10.0, 2000.0),
        point("small-dense", 0.1, "faiss-flat", 6, 24, 3.6, 700.0),
        point("prefix", 0.1, "sparse", 64, 26, 3.8, 900.0, layout="prefix"),  # B=256 1.29x: missed
        point("unstructured", 0.1, "sparse", 64, 50, 4.2, 900.0, layout="postings"),
    ]
    rows = {r["table"]: r for r in sparse_index_targets(points)}
    prefix, unstructured = rows["prefix"]["checks"], rows["unstructured"]["checks"]
    assert prefix["payload <= 1.15x small-dense"] and prefix["RSS <= 1.15x small-dense"]
    assert prefix["B=1 p50 <= 1.2x small-dense"]
    assert not prefix["B=256 p50 <= 1.2x small-dense"]
    assert prefix["dense RSS >= 5x this"] and prefix["dense payload >= 5x this"]  # 256 / 26 = 9.8 >= 1 / (2 x 0.1)
    assert unstructured["RSS <= 2.2x small-dense"] and unstructured["B=1 p50 <= 1.5x small-dense"]
    # a 2.5x payload is missed, and said so
    assert not sparse_index_targets([*points[:3], {**points[3], "payload_bytes": 60}])[1]["checks"][
        "payload <= 2.2x small-dense"
    ]


# ---------------------------------------------------------------------------- saturation and traffic
