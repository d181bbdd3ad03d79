"""Run a sparserec server as a subprocess: start, wait for /readyz, stop (tests, benchmarks, load tests).

    port = free_port()
    server = ServerProcess(serving_command(path, port), serving_env(), port)
    server.wait_ready()
    ...
    server.stop()

The one home of server start/readiness/stop: tests/server_utils.py, benchmarks/serving/latency.py,
benchmarks/serving/demo.py and loadtest/server.py (which adds memory sampling) all use it.

The server runs in its own process group. BentoML's arbiter (circus) starts its workers in
process groups of their own, so a stop signals the group and every descendant found by psutil
(recursively, looked up before the first signal): SIGTERM, then SIGKILL after a grace period.
`die_with_parent` (Linux `prctl(PR_SET_PDEATHSIG)`) ties a process to its parent's life: the
`--shards` launcher starts the shard servers and the router with it, and every BentoML worker of
ours sets it for itself (`serving.guard` at import), so a worker whose arbiter is killed goes too.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
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
import psutil

from common.paths import REPO_ROOT

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def serving_command(
    artifact: str | Path, port: int, host: str | None = None, threads: int | None = None, workers: int | None = None
) -> list[str]:
    """``python -m serving --artifact ARTIFACT --port PORT`` with the given options (None: its defaults)."""
    command = [sys.executable, "-m", "serving", "--artifact", str(artifact), "--port", str(port)]
    for flag, value in (("--host", host), ("--threads", threads), ("--workers", workers)):
        if value is not None:
            command += [flag, str(value)]
    return command


def serving_env(base: dict[str, str] | None = None, **settings: str) -> dict[str, str]:
    """``base`` (default this environment), plus: no BentoML usage tracking, unbuffered output,
    this checkout first on PYTHONPATH (so the server imports the same code as its caller);
    ``settings`` are added last."""
    env = dict(os.environ if base is None else base, BENTOML_DO_NOT_TRACK="true", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.update(settings)
    return env


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send ``sig`` to this process when its parent exits (Linux; else a no-op).

    Usable as a ``preexec_fn`` (it survives the exec). If the parent is already gone when this
    runs, the process signals itself at once."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the call: no signal would come
        os.kill(os.getpid(), sig)


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of ``pid`` (recursively; empty if it is gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def alive(process: psutil.Process) -> bool:
    """True if ``process`` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_all(pid: int, tree: list[psutil.Process], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    for child in tree:
        with contextlib.suppress(psutil.Error):
            child.send_signal(sig)  # psutil checks the PID was not reused


def server_env(args: argparse.Namespace, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of ``python -m serving``'s server from its flags (``--artifact`` and every
    setting flag of `serving.flags`): SPARSEREC_* set, thread pools pinned, this checkout first on
    PYTHONPATH; ``base`` (default this environment) underneath."""
    from serving.config import default_threads, thread_env
    from serving.flags import settings_env

    env = serving_env(base, SPARSEREC_ARTIFACT=str(Path(args.artifact).resolve()), **settings_env(args))
    workers = int(env.get("SPARSEREC_WORKERS") or 1)
    threads = int(env.get("SPARSEREC_THREADS") or default_threads(workers))
    env["SPARSEREC_THREADS"] = str(threads)
    env.update(thread_env(threads))  # OpenMP/BLAS read these when they load, before the service module runs
    return env


def stop_process_group(
    process: subprocess.Popen, grace: float = 15.0, known: list[psutil.Process] | None = None
) -> int | None:
    """Stop a process started with ``start_new_session=True``, its group and all its descendants.

    SIGTERM to the group and to every descendant (workers sit in groups of their own), SIGKILL
    to whatever is left after ``grace`` seconds; if the leader has already exited, its group and
    ``known`` (descendants seen earlier, e.g. before the leader died) are killed so that no worker
    outlives it. Returns the leader's exit status.
    """
    tree = {child.pid: child for child in (known or [])}
    tree.update({child.pid: child for child in descendants(process.pid)})
    children = list(tree.values())
    if process.poll() is None:
        _signal_all(process.pid, children, signal.SIGTERM)
        deadline = time.monotonic() + grace
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
        # the arbiter stops its workers before it exits; give any still stopping the time left
        while any(alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
    # the leader gone early, or past the grace period: nothing of it may outlive this call
    left = [c for c in children if alive(c)]
    _signal_all(process.pid, left, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        if process.poll() is None:
            process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)
    deadline = time.monotonic() + 5
    while any(alive(c) for c in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    return process.returncode


def die_with_parent_preexec() -> None:
    """`die_with_parent(SIGTERM)` as a Popen ``preexec_fn``."""
    die_with_parent(signal.SIGTERM)


class ServerFailed(RuntimeError):
    """The server exited or did not become ready; the message holds the end of its log."""


class ServerProcess:
    """A server subprocess answering on http://127.0.0.1:`port`, its output in a log file.

    ``log_path``: the file receiving its stdout and stderr (default: a new temporary file);
    ``die_with_parent``: SIGTERM it when the process that started it exits (`die_with_parent`;
    only from the main thread: the kernel ties it to the starting thread)."""

    def __init__(
        self,
        command: Sequence[str],
        env: dict[str, str],
        port: int,
        cwd: str | Path = REPO_ROOT,
        log_path: str | Path | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.port = port
        self.url = f"http://{HOST}:{port}"
        if log_path is None:
            self.log_file = tempfile.NamedTemporaryFile(prefix="sparserec-server-", suffix=".log", delete=False)
        else:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            self.log_file = open(log_path, "wb")  # noqa: SIM115 (closed by stop())
        self.log_path = Path(self.log_file.name)
        self.process = subprocess.Popen(
            list(command),
            env=env,
            cwd=cwd,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so the workers stop with it
            preexec_fn=die_with_parent_preexec if die_with_parent else None,
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
                raise ServerFailed(
                    f"server exited with status {self.process.returncode} (log {self.log_path}):\n{self.log[-6000:]}"
                )
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise ServerFailed(f"server not ready after {timeout:.0f} s (log {self.log_path}):\n{self.log[-6000:]}")

    def descendants(self) -> list[psutil.Process]:
        """The server's live descendants (arbiter's workers included)."""
        return descendants(self.process.pid)

    def stop(self, grace: float = 15.0, known: list[psutil.Process] | None = None) -> int | None:
        """SIGTERM the server, its group and its descendants (and ``known`` ones seen earlier),
        SIGKILL what is left after `grace` seconds; return the exit status."""
        status = stop_process_group(self.process, grace, known)
        self.log_file.close()
        return status
