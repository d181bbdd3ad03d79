"""Run a sparserec server as a subprocess: start, wait for /readyz, stop (tests and benchmarks).

    server = ServerProcess([sys.executable, "-m", "serving", "--artifact", path, "--port", "3000"],
                           env, port=3000)
    server.wait_ready()
    ...
    server.stop()

The server runs in its own process group (BentoML starts an arbiter and worker processes), so
stopping it by its PID also stops its children: SIGTERM to the group, SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    """A server subprocess answering on http://127.0.0.1:`port`, its output in a log file."""

    def __init__(self, command: Sequence[str], env: dict[str, str], port: int,
                 cwd: str | Path = REPO_ROOT) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_file = tempfile.NamedTemporaryFile(prefix="sparserec-server-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            list(command), env=env, cwd=cwd, stdout=self.log_file, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the workers stop with it
        )

    @property
    def log(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Poll /readyz until 200; raise ServerFailed with the log if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(f"server exited with status {self.process.returncode}:\n{self.log[-6000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise ServerFailed(f"server not ready after {timeout:.0f} s:\n{self.log[-6000:]}")

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; return the exit status."""
        status = stop_process_group(self.process, grace)
        self.log_file.close()
        return status
