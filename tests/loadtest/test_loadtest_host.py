"""Load-testing a server started separately, as another process would: `loadtest run --host URL`
and plain `locust -f loadtest/locustfile.py --host URL`.

One server (the session's tiny synthetic MF artifact, not ML-100K) serves every test of the module;
the load tests run for a few seconds each. No timing thresholds (a shared, noisy machine): the
user-id source, 0 failures (so no fallback answer for a known user), the exit codes, the classes run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.server_utils import running_server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    for name in ("SPARSEREC_ARTIFACT", "SPARSEREC_USER_IDS"):  # only what each test gives
        if name not in (env or {}):
            full_env.pop(name, None)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env
    )


@pytest.fixture(scope="module")
def server(tiny_mf_artifact):
    with running_server(tiny_mf_artifact) as process:
        yield process


def _loadtest(server, tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    results = tmp_path / "results"
    done = run(
        "-m",
        "loadtest",
        "run",
        "--host",
        server.url,
        "--duration",
        "4s",
        "--users",
        "4",
        "--spawn-rate",
        "4",
        "--results",
        str(results),
        "--name",
        "remote",
        *extra,
    )
    report = results / "loadtest-remote.json"
    return done, json.loads(report.read_text()) if report.is_file() else None


def test_info_samples_known_users_most_active_first(server, tiny_mf_artifact):
    from export.artifact import load_artifact

    info = httpx.get(server.url + "/info", timeout=10).json()
    sample = info["sample_user_ids"]
    artifact = load_artifact(tiny_mf_artifact)
    index = artifact.user_index()
    assert 0 < len(sample) <= 100 and len(set(sample)) == len(sample)
    assert all(user in index for user in sample)
    indptr, _ = artifact.seen_arrays()
    activity = [int(indptr[index[u] + 1]) - int(indptr[index[u]]) for u in sample]
    assert activity == sorted(activity, reverse=True)
    # the sample's users are answered from the model, not the popularity fallback
    answer = httpx.post(server.url + "/recommend", json={"user_id": sample[0], "k": 5}, timeout=10).json()
    assert answer["fallback"] is False and len(answer["items"]) == 5


def test_host_with_ids_from_the_server(server, tmp_path):
    done, report = _loadtest(server, tmp_path, "--max-fail-ratio", "0")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["traffic"]["user_source"] == "server" and 0 < report["traffic"]["users"] <= 100
    assert report["requests"] > 0 and report["failures"] == 0, report["errors"]
    assert report["server"]["started_by"] == "external" and report["server"]["url"] == server.url
    assert report["target"] == server.url and report["artifact"]["n_items"] == 300
    assert server.process.poll() is None, "the load test stopped a server it did not start"


def test_host_with_ids_from_the_artifact(server, tmp_path, tiny_mf_artifact):
    done, report = _loadtest(server, tmp_path, "--artifact", str(tiny_mf_artifact), "--max-fail-ratio", "0")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["traffic"]["user_source"] == "artifact" and report["traffic"]["users"] == 200
    assert report["failures"] == 0 and report["server"]["started_by"] == "external"


def test_host_with_ids_from_a_file_and_distributed_workers(server, tmp_path, tiny_mf_artifact):
    ids = tmp_path / "users.txt"
    known = np.load(tiny_mf_artifact / "user_ids.npy", allow_pickle=False).tolist()[:7]
    ids.write_text("# most active first\n" + "\n".join(known) + "\n\n")
    done, report = _loadtest(server, tmp_path, "--user-ids", str(ids), "--locust-workers", "2", "--max-fail-ratio", "0")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["load"]["locust_workers"] == 2 and report["load"]["user_ids"] == str(ids)
    assert report["requests"] > 0 and report["failures"] == 0, report["errors"]
    assert "2 workers connected" in Path(report["locust_log"]).read_text()


def test_host_thresholds_and_fallbacks_for_known_users_fail(server, tmp_path):
    """Ids the server does not know come back as fallbacks: failures, so --max-fail-ratio 0 exits 1."""
    ids = tmp_path / "strangers.txt"
    ids.write_text("nobody-1\nnobody-2\n")
    done, report = _loadtest(server, tmp_path, "--user-ids", str(ids), "--max-fail-ratio", "0")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["failures"] > 0 and not report["thresholds"]["passed"]
    assert any("fallback is True for a known user" in e["error"] for e in report["errors"])
    done, report = _loadtest(server, tmp_path, "--max-p95-ms", "0.001")
    assert done.returncode == 1 and "p95" in report["thresholds"]["reasons"][0]


def test_host_that_does_not_answer_is_exit_2(tmp_path):
    from serving.process import free_port

    done = run(
        "-m",
        "loadtest",
        "run",
        "--host",
        f"http://127.0.0.1:{free_port()}",
        "--duration",
        "2s",
        "--results",
        str(tmp_path),
        timeout=60,
    )
    assert done.returncode == 2 and "/readyz" in done.stderr


# ---------------------------------------------------------------------------- plain locust
def _locust(
    server, tmp_path, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, dict]:
    summary = tmp_path / "summary.json"
    done = run(
        "-m",
        "locust",
        "-f",
        str(ROOT / "loadtest" / "locustfile.py"),
        "--host",
        server.url,
        "--headless",
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        "3s",
        "--only-summary",
        "--summary-file",
        str(summary),
        *extra,
        env=env,
    )
    return done, json.loads(summary.read_text()) if summary.is_file() else {}


def test_plain_locust_runs_the_default_user_only(server, tmp_path):
    done, summary = _locust(server, tmp_path, "--max-fail-ratio", "0")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert summary["traffic"]["user_classes"] == ["RecommendUser"]
    assert summary["traffic"]["user_source"] == "server"
    assert "POST /recommend" in summary["endpoints"] and "POST /ping" not in summary["endpoints"]
    assert summary["requests"] > 0 and summary["failures"] == 0, summary["errors"]


def test_plain_locust_other_classes_by_tag_or_name_and_the_k_mix(server, tmp_path):
    done, summary = _locust(server, tmp_path, "--tags", "ping")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert summary["traffic"]["user_classes"] == ["PingUser"] and set(summary["endpoints"]) == {"POST /ping"}
    done, summary = _locust(
        server,
        tmp_path,
        "SingleQueryUser",
        "--max-fail-ratio",
        "0",
        env={"SPARSEREC_K_CHOICES": "3", "SPARSEREC_K_WEIGHTS": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert summary["traffic"]["user_classes"] == ["SingleQueryUser"] and summary["traffic"]["k_choices"] == [3]
    assert set(summary["endpoints"]) <= {"POST /recommend", "POST /recommend [unknown user]"}
    assert summary["endpoints"]["POST /recommend"]["requests"] > 0 and summary["failures"] == 0


def test_plain_locust_without_user_ids_exits_2(tmp_path):
    """A host with no sparserec /info (nothing listens there): exit 2 and a message saying what to give."""
    from serving.process import free_port

    done = run(
        "-m",
        "locust",
        "-f",
        str(ROOT / "loadtest" / "locustfile.py"),
        "--host",
        f"http://127.0.0.1:{free_port()}",
        "--headless",
        "-u",
        "1",
        "-t",
        "2s",
        timeout=60,
    )
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SPARSEREC_USER_IDS" in done.stderr


# ---------------------------------------------------------------------------- command-line errors
@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--host", "http://127.0.0.1:3000", "--workers", "2"], "--locust-workers"),
        (["run", "--host", "127.0.0.1:3000"], "expected http://HOST:PORT"),
        (["run", "--host", "http://127.0.0.1:3000/recommend"], "expected http://HOST:PORT"),
        (["run", "--host", "http://127.0.0.1:3000", "--server-workers", "2"], "starts none"),
        (["run", "--host", "http://127.0.0.1:3000", "--user-ids", "{tmp}/missing.txt"], "--user-ids"),
        (["run", "--host", "http://127.0.0.1:3000", "--user-ids", "{tmp}/empty.txt"], "no user ids"),
        (["run", "--duration", "1s"], "give --host URL"),
    ],
)
def test_run_refuses_bad_flags(tmp_path, capsys, argv, message):
    from loadtest.__main__ import main

    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_host_against_own_server_benchmark_writes_its_report(tiny_mf_artifact, tmp_path):
    """benchmarks/serving/loadtest_host.py: both runs, one after the other, and the ratio (not judged here)."""
    done = run(
        "-m",
        "benchmarks.serving.loadtest_host",
        "--artifact",
        str(tiny_mf_artifact),
        "--users",
        "3",
        "--duration",
        "3s",
        "--results",
        str(tmp_path),
        timeout=300,
    )
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "loadtest-host-vs-own.json").read_text())
    assert report["external"]["failures"] == report["own"]["failures"] == 0
    assert report["external"]["requests"] > 0 and report["own"]["requests"] > 0
    assert report["p50_external_over_own"] == report["external"]["p50_ms"] / report["own"]["p50_ms"]
    assert done.returncode == (0 if report["meets_target"] else 1)
    assert json.loads((tmp_path / "loadtest-host-external.json").read_text())["traffic"]["user_source"] == "file"
    assert not (tmp_path / ".loadtest-host-users.txt").exists()
