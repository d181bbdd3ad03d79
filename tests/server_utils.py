"""Start and stop a real sparserec server for tests (no mocks).

    with running_server(artifact) as server:           # python -m serving on a free port
        httpx.post(server.url + "/recommend", json={"user_id": "1"})

The process handling (own process group, /readyz polling, SIGTERM then SIGKILL by PID) lives in
serving/process.py, which the benchmark uses too.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from serving.process import (
    REPO_ROOT,
    ServerFailed,
    ServerProcess,
    free_port,
    serving_command,
    serving_env,
)

__all__ = [
    "REPO_ROOT",
    "SERVICE",
    "ServerFailed",
    "ServerProcess",
    "free_port",
    "running_server",
    "server_env",
    "start_server",
]

SERVICE = "serving.service:SparseRecommender"


def server_env(artifact: str | Path, **settings: str) -> dict[str, str]:
    """Environment of a test server: the artifact, one OpenMP thread, no usage tracking, and its own
    BENTOML_HOME (unless given): BentoML empties $BENTOML_HOME/prometheus_multiproc_dir whenever a
    server starts, which drops the /metrics of a `bentoml serve` server sharing it (`python -m
    serving` has a metrics folder of its own: serving.bentoml_serve), and keeps the user's store clean."""
    home = settings.pop("BENTOML_HOME", None) or tempfile.mkdtemp(prefix="sparserec-bentoml-home-")
    return serving_env(
        **{
            "SPARSEREC_ARTIFACT": str(Path(artifact).resolve()),
            "SPARSEREC_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "BENTOML_HOME": home,
            **settings,
        }
    )


def start_server(artifact: str | Path, *, via: str = "cli", port: int | None = None, **settings: str) -> ServerProcess:
    """Start a server (not waiting for it): `via="cli"` runs `python -m serving`,
    `via="bentoml"` runs `bentoml serve` directly; `settings` are extra environment variables."""
    port = port or free_port()
    if via == "cli":
        command = serving_command(artifact, port)
    elif via == "bentoml":
        command = [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            SERVICE,
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--working-dir",
            str(REPO_ROOT),
        ]
    else:
        raise ValueError(f"via must be 'cli' or 'bentoml', got {via!r}")
    return ServerProcess(command, server_env(artifact, **settings), port)


@contextlib.contextmanager
def running_server(artifact: str | Path, timeout: float = 90.0, **kwargs: str) -> Iterator[ServerProcess]:
    """A ready server for the duration of the block, stopped afterwards (its log in the error)."""
    server = start_server(artifact, **kwargs)
    try:
        server.wait_ready(timeout)
        yield server
    finally:
        server.stop()
