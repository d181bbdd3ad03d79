"""Start, watch and stop a sparserec server subprocess on 127.0.0.1 (for load tests).

    with ServiceProcess(artifact, log_path) as server:   # free port, polls /readyz
        print(server.url, server.rss())                  # resident memory of the server's process tree

The server is `python -m serving` in its own process group (BentoML starts an arbiter and
workers); it is stopped by its PID: SIGTERM to the group, SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from serving.process import stop_process_group

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # load tests never leave this machine


class ServerError(RuntimeError):
    """The server exited or did not become ready; the message holds the tail of its log."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (127.0.0.1 only)
        return json.loads(response.read())


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (0 if it is gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


class ServiceProcess:
    """`python -m serving --artifact ARTIFACT` on 127.0.0.1:`port`, output to `log_path`.

    Args:
        artifact: artifact folder.
        log_path: file receiving the server's stdout and stderr.
        threads, workers: `--threads` / `--workers` of `python -m serving` (None: its defaults).
        ready_timeout: seconds to wait for /readyz.
    """

    def __init__(self, artifact: str | Path, log_path: str | Path, threads: int | None = None,
                 workers: int | None = None, ready_timeout: float = 120.0):
        self.artifact = Path(artifact)
        self.log_path = Path(log_path)
        self.threads, self.workers = threads, workers
        self.ready_timeout = ready_timeout
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.process: subprocess.Popen | None = None
        self._peak_rss = 0
        self._watching = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def command(self) -> list[str]:
        command = [sys.executable, "-m", "serving", "--artifact", str(self.artifact), "--port", str(self.port),
                   "--host", HOST]
        if self.threads is not None:
            command += ["--threads", str(self.threads)]
        if self.workers is not None:
            command += ["--workers", str(self.workers)]
        return command

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> "ServiceProcess":
        env = dict(os.environ, BENTOML_DO_NOT_TRACK="true", PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"server exited with status {self.process.returncode} (log {self.log_path}):\n"
                                  f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"server not ready after {self.ready_timeout:.0f} s (log {self.log_path}):\n{self.log_tail()}")

    def info(self) -> dict:
        """GET /info (the artifact summary and the serving settings)."""
        return get_json(self.url + "/info")

    def rss(self) -> int:
        """Resident bytes of the server and its workers now."""
        return tree_rss(self.process.pid) if self.process else 0

    def watch_memory(self, interval: float = 0.5) -> None:
        """Sample the resident memory in a thread until :meth:`peak_rss` is read."""
        def sample() -> None:
            while not self._watching.wait(interval):
                self._peak_rss = max(self._peak_rss, self.rss())

        self._peak_rss = self.rss()
        self._watching.clear()
        self._watcher = threading.Thread(target=sample, daemon=True)
        self._watcher.start()

    def peak_rss(self) -> int:
        """Stop sampling; the largest resident memory seen since :meth:`watch_memory`."""
        self._watching.set()
        if self._watcher:
            self._watcher.join(5)
        return max(self._peak_rss, self.rss())

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM the server's process group, SIGKILL after `grace` seconds; the exit status."""
        process = self.process
        if process is None:
            return None
        self._watching.set()
        return stop_process_group(process, grace)

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
