"""Run a sparserec server as a subprocess: start, wait for /readyz, stop (tests, benchmarks, load tests).

    port = free_port()
    server = ServerProcess(serving_command(path, port), serving_env(), port)
    server.wait_ready()
    ...
    server.stop()

The one home of server start/readiness/stop: tests/server_utils.py, serving/bench.py,
serving/demo.py and loadtest/server.py (which adds memory sampling) all use it.

The server runs in its own process group (BentoML starts an arbiter and worker processes), so
stopping it by its PID also stops its children: SIGTERM to the group, SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def serving_command(artifact: str | Path, port: int, host: str | None = None, threads: int | None = None,
                    workers: int | None = None) -> list[str]:
    """``python -m serving --artifact ARTIFACT --port PORT`` with the given options (None: its defaults)."""
    command = [sys.executable, "-m", "serving", "--artifact", str(artifact), "--port", str(port)]
    for flag, value in (("--host", host), ("--threads", threads), ("--workers", workers)):
        if value is not None:
            command += [flag, str(value)]
    return command


def serving_env(**settings: str) -> dict[str, str]:
    """This environment, plus: no BentoML usage tracking, unbuffered output, this checkout first on
    PYTHONPATH (so the server imports the same code as its caller); ``settings`` are added last."""
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    env.update(settings)
    return env


def stop_process_group(process: subprocess.Popen, grace: float = 15.0) -> int | None:
    """Stop a process started with ``start_new_session=True`` and everything in its group.

    SIGTERM to the group, SIGKILL after ``grace`` seconds; if the leader has already exited, its
    group is killed so that no worker outlives it. Returns the leader's exit status.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    else:  # the leader has gone: make sure none of its workers outlives it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode


class ServerFailed(RuntimeError):
    """The server exited or did not become ready; the message holds the end of its log."""


class ServerProcess:
    """A server subprocess answering on http://127.0.0.1:`port`, its output in a log file.

    ``log_path``: the file receiving its stdout and stderr (default: a new temporary file)."""

    def __init__(self, command: Sequence[str], env: dict[str, str], port: int,
                 cwd: str | Path = REPO_ROOT, log_path: str | Path | None = None) -> None:
        self.port = port
        self.url = f"http://{HOST}:{port}"
        if log_path is None:
            self.log_file = tempfile.NamedTemporaryFile(prefix="sparserec-server-", suffix=".log", delete=False)
        else:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            self.log_file = open(log_path, "wb")  # noqa: SIM115 (closed by stop())
        self.log_path = Path(self.log_file.name)
        self.process = subprocess.Popen(
            list(command), env=env, cwd=cwd, stdout=self.log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so the workers stop with it
        )

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Poll /readyz until 200; raise ServerFailed with the log if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(f"server exited with status {self.process.returncode} (log {self.log_path}):\n"
                                   f"{self.log[-6000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise ServerFailed(f"server not ready after {timeout:.0f} s (log {self.log_path}):\n{self.log[-6000:]}")

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; return the exit status."""
        status = stop_process_group(self.process, grace)
        self.log_file.close()
        return status
