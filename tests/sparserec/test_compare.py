"""sparserec compare on three tiny artifacts of three kinds, built with the project's own CLIs.

Dense MF (flat index), small-dense LightGCN (flat index over propagated vectors) and DSL MF with
the sparse (postings) index. The load reading is injected where a test needs a quiet or a busy
machine: the real one is shared and its load is whatever it is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import sparserec.compare as compare_module
from conftest import ROOT, TINY_ITEMS, TINY_USERS, run_cli
from export.artifact import read_manifest
from sparserec.compare import main, pareto_front

FAST = ["--batch-sizes", "1", "--threads", "1", "--max-calls", "5", "--min-time", "0.01", "--quiet"]
QUIET_LOAD, BUSY_LOAD = 0.0, 99.0


@pytest.fixture(scope="module")
def three_artifacts(tiny_mf_artifact, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("compare")
    kinds = {"lgn-small-dense": ("lightgcn", "small-dense", "flat"), "mf-dsl-sparse": ("mf", "dsl", "sparse")}
    out = [tiny_mf_artifact]
    for name, (model, updater, index) in kinds.items():
        run_cli(
            "-m",
            "train",
            "--data",
            "synthetic",
            "--model",
            model,
            "--out",
            str(root / "runs" / name),
            "--epochs",
            "2",
            "--seed",
            "1",
            f"--data.n_users={TINY_USERS}",
            f"--data.n_items={TINY_ITEMS}",
            "--run.threads=1",
            "--sparsity.density=0.25",
            f"--sparsity.updater={updater}",
            "--quiet",
            cwd=root,
        )
        run_cli(
            "-m",
            "export",
            str(root / "runs" / name),
            "--out",
            str(root / "artifacts" / name),
            "--index",
            index,
            "--no-memory",
            "--quiet",
            cwd=root,
        )
        out.append(root / "artifacts" / name)
    return out


def _load(monkeypatch, value: float) -> None:
    monkeypatch.setattr(compare_module, "load_average", lambda: value)


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _git_status() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True, timeout=30
    ).stdout


def test_pareto_front_on_a_hand_made_set():
    points = [
        (0.30, 100.0),  # best quality, most expensive: on the front
        (0.20, 50.0),  # on the front
        (0.20, 50.0),  # equal to the one above: both on it
        (0.20, 60.0),  # same quality, costs more: beaten
        (0.10, 50.0),  # same cost, worse: beaten
        (0.05, 10.0),  # cheapest: on the front
        (0.25, None),  # cost unknown: not on it, and beats nobody
        (None, 1.0),  # quality unknown: not on it, and beats nobody
        (0.04, 10.0),  # beaten by (0.05, 10)
    ]
    assert pareto_front(points) == [True, True, True, False, False, True, False, False, False]
    assert pareto_front([]) == []
    assert pareto_front([(0.1, 1.0)]) == [True]


def test_compare_three_kinds_writes_only_the_named_folder(three_artifacts, tmp_path, monkeypatch):
    _load(monkeypatch, QUIET_LOAD)
    monkeypatch.chdir(tmp_path)  # a default reports/ folder would land here
    before, git_before = {str(a): _tree(a) for a in three_artifacts}, _git_status()
    out = tmp_path / "named" / "report"
    assert main([*map(str, three_artifacts), "--out", str(out), *FAST]) == 0

    assert sorted(p.name for p in out.iterdir()) == [
        "compare.json",
        "compare.md",
        "front-bytes.png",
        "front-latency.png",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["named"]
    assert {str(a): _tree(a) for a in three_artifacts} == before
    assert _git_status() == git_before

    table = (out / "compare.md").read_text()
    for column in (
        "model",
        "layout",
        "index",
        "values",
        "non-zeros",
        "dim / row lengths",
        "served (mapped + read)",
        "disk",
        "NDCG@20",
        "Recall@20",
        "B=1 1T p50 / p99 ms",
        "front",
    ):
        assert f"| {column} |" in table, column
    report = json.loads((out / "compare.json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == [a.name for a in three_artifacts]
    dense, small, dsl = (rows[a.name] for a in three_artifacts)
    assert (dense["model"], dense["index"]) == ("mf", "flat")
    assert (small["model"], small["index"], small["row_lengths"]["all_full"]) == ("lightgcn", "flat", True)
    assert (dsl["index"], dsl["index_layout"], dsl["row_lengths"]["all_full"]) == ("sparse", "gaps", False)
    for row in rows.values():
        manifest = read_manifest(Path(row["path"]))
        served = row["served_bytes"]["served"]
        assert served["total"] == served["mapped"] + served["read"] > 0
        assert served["total"] == sum(
            sum(row["served_bytes"]["parts"][p].values()) for p in ("index", "user_vectors", "user_ids", "item_ids")
        )
        assert row["disk_bytes"] == sum(f.bytes for f in manifest.files.values()) == manifest.total_bytes
        assert row["quality"]["ndcg@20"] == manifest.quality["exact"]["ndcg@20"]
        assert row["nnz"] == manifest.nnz
        assert [(e["threads"], e["batch_size"]) for e in row["latency"]] == [(1, 1)]
        assert 0 < row["latency"][0]["p50_ms"] <= row["latency"][0]["p99_ms"]
    # mapped by default (SPARSEREC_MMAP=1): the flat index's vectors, the postings arrays
    assert dense["served_bytes"]["parts"]["index"]["mapped"] == TINY_ITEMS * 64 * 4
    assert dsl["served_bytes"]["parts"]["index"]["mapped"] > 0
    assert dsl["served_bytes"]["parts"]["index"]["read"] == 0
    # the small-dense LightGCN's user vectors are propagated at load: read, not mapped
    assert small["served_bytes"]["parts"]["user_vectors"] == {"mapped": 0, "read": TINY_USERS * 16 * 4}
    # the marks are the pure function's answer on the rows' own figures
    ordered = list(rows.values())
    quality = [r["quality"]["ndcg@20"] for r in ordered]
    assert [r["front_bytes"] for r in ordered] == pareto_front(
        list(zip(quality, [r["served_bytes"]["served"]["total"] for r in ordered]))
    )
    assert [r["front_latency"] for r in ordered] == pareto_front(
        list(zip(quality, [r["latency"][0]["p50_ms"] for r in ordered]))
    )
    assert report["timing"]["noisy"] is False and "NOISY" not in table


def test_refuses_to_time_on_a_busy_machine(three_artifacts, tmp_path, monkeypatch, capsys):
    _load(monkeypatch, BUSY_LOAD)
    out = tmp_path / "report"
    assert main([str(three_artifacts[0]), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "refusing to time on a busy machine" in err and "99.00" in err and "--allow-noisy" in err
    assert not out.exists()


def test_allow_noisy_times_and_says_so(three_artifacts, tmp_path, monkeypatch):
    _load(monkeypatch, BUSY_LOAD)
    out = tmp_path / "report"
    assert main([str(three_artifacts[0]), "--out", str(out), "--allow-noisy", *FAST]) == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["timing"]["noisy"] is True and report["timing"]["allow_noisy"] is True
    assert "99.00" in report["timing"]["busy_at_start"]
    assert "**NOISY: timed on a busy machine" in (out / "compare.md").read_text()


def test_no_latency_on_a_busy_machine_and_quality_recomputed_on_data(three_artifacts, tmp_path, monkeypatch):
    """--no-latency times nothing, so a busy machine is no reason to refuse; --data recomputes the
    test figures through the served vectors on the same split, equal to the manifest's."""
    _load(monkeypatch, BUSY_LOAD)
    out = tmp_path / "report"
    assert main([*map(str, three_artifacts), "--out", str(out), "--no-latency", "--data", "synthetic", "--quiet"]) == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["timing"]["noisy"] is False
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "compare.md", "front-bytes.png"]
    for row in report["rows"]:
        assert "latency" not in row and row["front_latency"] is None
        exact = read_manifest(Path(row["path"])).quality["exact"]
        assert row["quality"]["source"].startswith("--data synthetic")
        assert row["quality"]["ndcg@20"] == pytest.approx(exact["ndcg@20"], abs=1e-9)
        assert row["quality"]["recall@20"] == pytest.approx(exact["recall@20"], abs=1e-9)
        assert row["quality"]["users_not_in_artifact"] == 0 and row["quality"]["items_not_in_artifact"] == 0


def test_bad_input_is_a_clear_error(three_artifacts, tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"), "--no-latency"]) == 2
    assert "not an artifact folder" in capsys.readouterr().err
    assert (
        main(
            [
                str(three_artifacts[0]),
                "--out",
                str(tmp_path / "r"),
                "--no-latency",
                "--quiet",
                "--data",
                str(tmp_path / "no-such.csv"),
            ]
        )
        == 2
    )
    assert "--data" in (err := capsys.readouterr().err) and "no-such.csv" in err
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--threads", "0"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "r").exists()


def test_python_dash_m_sparserec_compare(three_artifacts, tmp_path):
    """The umbrella command runs it (bytes and quality only: no load check in a subprocess)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sparserec",
            "compare",
            *map(str, three_artifacts[:2]),
            "--no-latency",
            "--name",
            "pair",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "reports" / "pair" / "compare.md").is_file()
    assert "| front |" in done.stdout


@pytest.mark.slow
def test_http_and_locust_through_real_servers(three_artifacts, tmp_path, monkeypatch):
    _load(monkeypatch, QUIET_LOAD)
    out = tmp_path / "report"
    assert (
        main(
            [
                str(three_artifacts[2]),
                "--out",
                str(out),
                "--http",
                "--requests",
                "5",
                "--locust",
                "2",
                "--locust-duration",
                "3",
                *FAST,
            ]
        )
        == 0
    )
    row = json.loads((out / "compare.json").read_text())["rows"][0]
    assert row["http"]["n"] == 5 and 0 < row["http"]["p50_ms"] <= row["http"]["p99_ms"]
    assert row["locust"]["requests"] > 0 and row["locust"]["failures"] == 0 and row["locust"]["rps"] > 0
    assert (out / "http" / f"{three_artifacts[2].name}.server.log").is_file()
