"""`bentoml build` packages the service from bentofile.yaml (into a throw-away BENTOML_HOME)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_bentoml_build(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml_home"), "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", str(ROOT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Successfully built" in done.stdout + done.stderr
    bentos = list((tmp_path / "bentoml_home" / "bentos" / "sparserec").glob("*/bento.yaml"))
    assert len(bentos) == 1
    bento = bentos[0].parent
    source = bento / "src"
    for needed in (
        "serving/service.py",
        "serving/recommender.py",
        "serving/example_query.json",
        "export/artifact.py",
        "export/index.py",
        "common/io.py",
        "common/propagation.py",
    ):
        assert (source / needed).is_file(), needed
    assert not (source / "tests").exists() and not (source / "train").exists()
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "faiss-cpu" in requirements and "torch" not in requirements


def test_bentoml_build_of_the_shard_router(tmp_path):
    """The router of a sharded deployment builds from its own bentofile (serving/router.py)."""
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml_home"),
        "BENTOML_DO_NOT_TRACK": "true",
        "SPARSEREC_SHARD_URLS": "http://shard0:3000,http://shard1:3000",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", str(ROOT / "bentofile.router.yaml"), str(ROOT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    bentos = list((tmp_path / "bentoml_home" / "bentos" / "sparserec-router").glob("*/bento.yaml"))
    assert len(bentos) == 1
    assert (bentos[0].parent / "src" / "serving" / "router.py").is_file()
    assert "serving.router:ShardRouter" in bentos[0].read_text()
