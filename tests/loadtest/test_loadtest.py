"""The load test end to end: a tiny trained artifact, a real server, locust for a few seconds.

No timing thresholds here (the machine is shared and noisy): only that the report is complete,
nothing failed, a threshold that cannot be met turns into exit status 1, and every process stops.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.run import SUMMARY_KEYS, compare_table, parse_duration

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_artifact(tiny_mf_artifact) -> Path:
    """The session's tiny MF artifact (tests/conftest.py): 200 users x 300 items, exact index."""
    return tiny_mf_artifact


def _still_listening(url: str) -> bool:
    """True if something still accepts connections at the server's address."""
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def test_smoke_run_writes_a_complete_report(tiny_artifact, tmp_path):
    results = tmp_path / "results"
    done = run(
        "-m",
        "loadtest",
        "run",
        "--artifact",
        str(tiny_artifact),
        "--duration",
        "4s",
        "--users",
        "5",
        "--spawn-rate",
        "5",
        "--results",
        str(results),
        "--max-fail-ratio",
        "0",
        "--max-p95-ms",
        "60000",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((results / "loadtest-tiny.json").read_text())
    for key in SUMMARY_KEYS:
        assert key in report, key
    assert report["requests"] > 0
    assert report["failures"] == 0, report["errors"]
    assert report["exit_code"] == 0 and report["thresholds"]["passed"]
    assert "POST /recommend" in report["endpoints"]
    assert sum(e["requests"] for e in report["endpoints"].values()) == report["requests"]
    assert report["p50_ms"] <= report["p95_ms"] <= report["p99_ms"]
    assert report["server"]["rss_idle_bytes"] > 0
    assert (results / "loadtest-tiny.html").stat().st_size > 0
    assert not _still_listening(report["server"]["url"]), "the server outlived the load test"


def test_unmet_threshold_sets_exit_status_1(tiny_artifact, tmp_path):
    results = tmp_path / "results"
    done = run(
        "-m",
        "loadtest",
        "run",
        "--artifact",
        str(tiny_artifact),
        "--duration",
        "2s",
        "--users",
        "2",
        "--spawn-rate",
        "2",
        "--results",
        str(results),
        "--max-p95-ms",
        "0.001",
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((results / "loadtest-tiny.json").read_text())
    assert not report["thresholds"]["passed"] and "p95" in report["thresholds"]["reasons"][0]
    assert not _still_listening(report["server"]["url"])


def test_distributed_mode_master_and_workers(tiny_artifact, tmp_path):
    results = tmp_path / "results"
    done = run(
        "-m",
        "loadtest",
        "run",
        "--artifact",
        str(tiny_artifact),
        "--duration",
        "3s",
        "--users",
        "4",
        "--spawn-rate",
        "4",
        "--locust-workers",
        "2",
        "--results",
        str(results),
        "--name",
        "dist",
        "--max-fail-ratio",
        "0",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((results / "loadtest-dist.json").read_text())
    assert report["load"]["locust_workers"] == 2 and report["requests"] > 0 and report["failures"] == 0
    log = (results / "loadtest-dist.locust.log").read_text()
    assert "2 workers connected" in log
    assert not _still_listening(report["server"]["url"])


def test_refuses_a_folder_that_is_not_an_artifact(tmp_path):
    done = run("-m", "loadtest", "run", "--artifact", str(tmp_path), "--duration", "1s", timeout=30)
    assert done.returncode == 2 and "manifest.json" in done.stderr


@pytest.mark.parametrize(
    "text, seconds", [("60s", 60), ("60", 60), ("2m", 120), ("1m30s", 90), ("1h", 3600), ("0.5s", 0.5)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "0s", "5x", "-3s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_compare_table_has_one_row_per_metric():
    def fake(path: str, p95: float) -> dict:
        return {
            "requests": 100,
            "failures": 0,
            "rps": 50.0,
            "p50_ms": 2.0,
            "p95_ms": p95,
            "p99_ms": 9.0,
            "avg_ms": 3.0,
            "endpoints": {"POST /recommend": {"p95_ms": p95}},
            "server": {"rss_idle_bytes": 2**20, "rss_peak_bytes": 2**21},
            "thresholds": {"passed": True},
            "artifact": {"path": path, "model_kind": "mf", "density": 0.2},
            "load": {"users": 5, "spawn_rate": 5, "duration_s": 4, "wait_ms": [10, 100], "locust_workers": 0},
            "machine": {"host": "h", "cpus": 2},
        }

    table = compare_table(fake("artifacts/a", 4.0), fake("artifacts/b", 8.0))
    assert "| p95 ms | 4.0 | 8.0 | 2.00 |" in table
    assert "/recommend_batch p95 ms | - | - | - |" in table


def test_saturation_run_reports_recommend_beside_ping(tiny_artifact, tmp_path):
    """`python -m loadtest saturation`: both endpoints under the same load, no failure, a report
    with provenance; the ratio itself is measured, not asserted (shared machine)."""
    results = tmp_path / "results"
    done = run(
        "-m",
        "loadtest",
        "saturation",
        "--artifact",
        str(tiny_artifact),
        "--users",
        "3",
        "--duration",
        "4s",
        "--results",
        str(results),
        timeout=240,
    )
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((results / "loadtest-saturation.json").read_text())
    assert report["provenance"]["command"].startswith("python -m loadtest saturation")
    (row,) = report["runs"]
    assert row["users_per_endpoint"] == 3 and row["failures"] == 0, row["errors"]
    assert row["recommend"]["requests"] > 0 and row["ping"]["requests"] > 0
    assert row["recommend_over_ping_rps"] == round(row["recommend"]["rps"] / row["ping"]["rps"], 3)
    assert row["meets_target"] == (row["recommend_over_ping_rps"] >= 0.9)
    assert done.returncode == (0 if row["meets_target"] else 1)
    assert "| 3 | 4 |" in (results / "loadtest-saturation.md").read_text()
    load = json.loads((results / "loadtest-saturation-3.json").read_text())
    assert load["load"]["user_classes"] == ["SingleQueryUser", "PingUser"]
    assert load["traffic"]["user_order"] == "activity"


def _rank(artifact: Path, order: str) -> subprocess.CompletedProcess:
    """The locustfile's user ranking, in a subprocess (importing locust monkey-patches the process)."""
    code = (
        "import sys; from pathlib import Path; from loadtest.locustfile import _ranked_users; "
        "users, n = _ranked_users(Path(sys.argv[1]), sys.argv[2]); print(users[:3], n)"
    )
    return run("-c", code, str(artifact), order, timeout=60)


def test_locust_traffic_ranks_users_or_says_why_not(tiny_artifact, tmp_path):
    ranked = _rank(tiny_artifact, "activity")
    assert ranked.returncode == 0, ranked.stderr[-2000:]
    broken = tmp_path / "no-seen"
    shutil.copytree(tiny_artifact, broken)
    (broken / "seen.indptr.npy").unlink()
    failed = _rank(broken, "activity")
    assert failed.returncode != 0 and "SPARSEREC_USER_ORDER=shuffled" in failed.stderr
    shuffled = _rank(broken, "shuffled")
    assert shuffled.returncode == 0 and ranked.stdout != shuffled.stdout
    assert "must be one of" in _rank(tiny_artifact, "random").stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--artifact", "{tmp}", "--duration", "1s"], "no manifest.json"),
        (["run", "--artifact", "{tmp}", "--duration", "soon"], "--duration"),
        (["saturation", "--artifact", "{tmp}", "--duration", "1s"], "make one with: python -m export"),
        (["saturation", "--artifact", "{tmp}", "--duration", "0s"], "--duration"),
    ],
)
def test_both_commands_refuse_bad_input_alike(tmp_path, capsys, argv, message):
    from loadtest.__main__ import main

    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert message in capsys.readouterr().err
