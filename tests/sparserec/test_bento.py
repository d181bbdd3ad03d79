"""The Bento round trip: `sparserec bento` stores the artifact as a BentoML model and builds a Bento
of product code in a temporary BENTOML_HOME; `bentoml serve TAG`, run outside the repository with
no SPARSEREC_ARTIFACT, serves it from the model store and answers as `python -m serving --artifact`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from server_utils import running_server
from serving.process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPARSEREC_ARTIFACT", "PYTHONPATH")}
    return {**env, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "OMP_NUM_THREADS": "1", **extra}


def _bentoml(home: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", *args], cwd=home, env=_env(home), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def _sparserec_bento(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sparserec", "bento", *args],
        cwd=ROOT,
        env=_env(home, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _listening_hosts(port: int) -> set[str]:
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
    }


def test_bento_serves_the_artifact_from_the_model_store(tmp_path, tiny_mf_artifact):
    from common.io import sha256_file

    home = tmp_path / "bentoml_home"
    done = _sparserec_bento(home, "--artifact", str(tiny_mf_artifact), "--name", "sparserec-tiny")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    digest = sha256_file(tiny_mf_artifact / "manifest.json")
    model = f"sparserec-tiny:{digest[:32]}"
    bento = done.stdout.split("Bento: ")[1].split()[0]

    # the model: in `bentoml models list`, versioned by the manifest's sha256, stored once
    models = json.loads(_bentoml(home, "models", "list", "-o", "json"))
    assert [m["tag"] for m in models] == [model]
    again = _sparserec_bento(home, "--artifact", str(tiny_mf_artifact), "--name", "sparserec-tiny", "--model-only")
    assert again.returncode == 0 and model in again.stdout
    assert len(json.loads(_bentoml(home, "models", "list", "-o", "json"))) == 1

    # the Bento: product code only, no torch, the model recorded
    folder = home / "bentos" / bento.replace(":", "/")
    source = folder / "src"
    assert (source / "serving" / "service.py").is_file() and (source / "export" / "artifact.py").is_file()
    packed = {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()}
    assert not [
        p
        for p in packed
        if p.startswith(("train/", "tests/", "loadtest/", "benchmarks/", "results/"))
        or Path(p).name.startswith("bench")
    ], packed
    assert "torch" not in (folder / "env" / "python" / "requirements.txt").read_text()
    assert model in (folder / "bento.yaml").read_text()

    # `bentoml serve TAG` from outside the repository, no SPARSEREC_ARTIFACT, as in the container
    port = free_port()
    served = ServerProcess(
        [sys.executable, "-m", "bentoml", "serve", bento, "--port", str(port)],
        _env(home, BENTOML_CONTAINERIZED="true"),
        port,
        cwd=tmp_path,
    )
    try:
        served.wait_ready(180)
        assert _listening_hosts(port) == {"0.0.0.0"}, "in a container the service binds every interface"
        info = httpx.get(served.url + "/info", timeout=10).json()
        assert info["serving"]["artifact_source"] == f"BentoML model {model}"
        assert info["serving"]["artifact"].startswith(str(home / "models"))
        users = info["sample_user_ids"][:3]
        queries = [{"user_id": u, "k": 10} for u in users] + [{"user_id": "nobody", "k": 5}]
        from_bento = [httpx.post(served.url + "/recommend", json=q, timeout=30).json() for q in queries]
    finally:
        served.stop()
    with running_server(tiny_mf_artifact) as server:  # the same artifact, from its folder
        assert _listening_hosts(server.port) == {"127.0.0.1"}
        from_folder = [httpx.post(server.url + "/recommend", json=q, timeout=30).json() for q in queries]
    assert from_bento == from_folder
    assert [a["fallback"] for a in from_bento] == [False, False, False, True]


def test_bento_refuses_a_folder_that_is_not_an_artifact(tmp_path):
    done = _sparserec_bento(tmp_path / "home", "--artifact", str(tmp_path))
    assert done.returncode == 2 and "no manifest.json" in done.stderr
