"""Artifact swaps under load: a real locust run against a 2-worker server, 3 reloads during it.

Two artifacts of different trainings (seeds 1 and 2) are swapped A -> B -> A -> B while locust
queries /recommend; every request must succeed, and every answer must equal the in-process answer
of the artifact its version names (so no answer mixes or mislabels artifacts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from conftest import ROOT, TINY_ITEMS, TINY_USERS, run_cli
from export.artifact import load_artifact
from server_utils import running_server
from serving.recommender import Query, Recommender
from serving.reload import artifact_version

# the run is 60 s (SPARSEREC_RELOAD_TEST_SECONDS=60); make test runs 20 s to keep the suite short
RUN_SECONDS = int(os.environ.get("SPARSEREC_RELOAD_TEST_SECONDS", "20"))


@pytest.fixture(scope="module")
def other_artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("reload-other")
    run_cli(
        "-m",
        "train",
        "--data",
        "synthetic",
        "--model",
        "mf",
        "--out",
        str(root / "run"),
        "--epochs",
        "2",
        "--seed",
        "2",
        f"--data.n_users={TINY_USERS}",
        f"--data.n_items={TINY_ITEMS}",
        "--run.threads=1",
        "--quiet",
        cwd=root,
    )
    run_cli("-m", "export", str(root / "run"), "--out", str(root / "other"), "--no-memory", "--quiet", cwd=root)
    return root / "other"


@pytest.mark.slow
def test_three_swaps_under_locust_drop_nothing_and_answers_match_their_version(
    tiny_mf_artifact, other_artifact, tmp_path
):
    arts = {artifact_version(p)["sha256"]: p for p in (tiny_mf_artifact, other_artifact)}
    assert len(arts) == 2
    recs = {sha: Recommender.from_artifact(load_artifact(p)) for sha, p in arts.items()}
    users = load_artifact(tiny_mf_artifact).user_ids[:20]
    answers = tmp_path / "answers.jsonl"
    env_settings = {
        "SPARSEREC_WORKERS": "2",
        "SPARSEREC_RELOAD_POLL_MS": "50",
        "BENTOML_HOME": str(tmp_path / "bentoml-home"),
    }
    with running_server(tiny_mf_artifact, via="cli", **env_settings) as server:
        command = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "tests" / "serving" / "locust" / "reload_traffic.py"),
            "--headless",
            "-u",
            "8",
            "-r",
            "8",
            "-t",
            f"{RUN_SECONDS}s",
            "-H",
            server.url,
            "--csv",
            str(tmp_path / "locust"),
            "--only-summary",
            "--exit-code-on-error",
            "1",
        ]
        env = {**server_env_for_locust(), "SPARSEREC_USERS": ",".join(users), "SPARSEREC_ANSWERS_FILE": str(answers)}
        locust = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        swaps = []
        try:
            time.sleep(3)
            for target in (other_artifact, tiny_mf_artifact, other_artifact):  # 3 swaps during the run
                done = httpx.post(server.url + "/admin/reload", json={"artifact": str(target)}, timeout=60)
                assert done.status_code == 200, done.text
                swaps.append(done.json()["artifact"]["sha256"])
                time.sleep(RUN_SECONDS / 4)
            output, _ = locust.communicate(timeout=RUN_SECONDS + 60)
        finally:
            if locust.poll() is None:
                locust.kill()
    assert locust.returncode == 0, output[-3000:]
    stats = next(row for row in _csv_rows(tmp_path / "locust_stats.csv") if row["Name"] == "/recommend")
    assert int(stats["Failure Count"]) == 0 and int(stats["Request Count"]) > 50, stats
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    assert len(lines) >= int(stats["Request Count"])  # requests still in flight at the stop are answered, not counted
    assert {line["sha256"] for line in lines} == set(arts), "both artifacts should have answered"
    expected = {}
    for line in lines:
        key = (line["sha256"], line["user_id"])
        if key not in expected:
            expected[key] = recs[line["sha256"]].recommend([Query(line["user_id"], 10, True)])[0]
        want = expected[key]
        assert line["items"] == want.item_ids, (line, want)
        np.testing.assert_allclose(line["scores"], want.scores, rtol=1e-5, atol=1e-6)
    assert swaps == [
        artifact_version(other_artifact)["sha256"],
        artifact_version(tiny_mf_artifact)["sha256"],
        artifact_version(other_artifact)["sha256"],
    ]


def server_env_for_locust() -> dict[str, str]:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _csv_rows(path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
