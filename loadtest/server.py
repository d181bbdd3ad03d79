"""A sparserec server subprocess for load tests: start, watch its memory, stop.

    with ServiceProcess(artifact, log_path) as server:   # free port, polls /readyz
        print(server.url, server.rss())                  # resident memory of the server's process tree

Starting, polling /readyz and stopping (SIGTERM to the process group, SIGKILL after a grace
period) are serving/process.py's; this module adds the load test's view: the command's
--threads/--workers, /info, and the resident memory of the server's process tree.
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.request
from pathlib import Path

import psutil

from serving.process import HOST, REPO_ROOT, ServerFailed, ServerProcess, free_port, serving_command, serving_env

__all__ = ["HOST", "REPO_ROOT", "ServerError", "ServiceProcess", "free_port", "get_json", "tree_rss"]

ServerError = ServerFailed  # the server exited or did not become ready; the message holds the tail of its log


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

    def __init__(
        self,
        artifact: str | Path,
        log_path: str | Path,
        threads: int | None = None,
        workers: int | None = None,
        ready_timeout: float = 120.0,
    ):
        self.artifact = Path(artifact)
        self.log_path = Path(log_path)
        self.threads, self.workers = threads, workers
        self.ready_timeout = ready_timeout
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.server: ServerProcess | None = None
        self._peak_rss = 0
        self._watching = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def process(self):
        """The server's `subprocess.Popen` once started, else None."""
        return self.server.process if self.server else None

    @property
    def command(self) -> list[str]:
        return serving_command(self.artifact, self.port, host=HOST, threads=self.threads, workers=self.workers)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> "ServiceProcess":
        self.server = ServerProcess(self.command, serving_env(), self.port, log_path=self.log_path)
        try:
            self.server.wait_ready(self.ready_timeout)
        except ServerFailed:
            self.stop()
            raise
        return self

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
        if self.server is None:
            return None
        self._watching.set()
        return self.server.stop(grace)

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
