"""One training run as a resumable child process: its state on disk (done, running, stopped, pending),
and the child stopped with the driver (SIGTERM / SIGINT).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.quality.grid import made_with
from common.io import atomic_write_json
from train.checkpoint import CHECKPOINT
from train.config import load_config

from .logs import curve_from_log


def run_state(out: Path, overrides: list[str]) -> dict[str, Any]:
    """``{"status": done | running | stopped | pending, ...}`` of a run folder.

    Raises:
        SystemExit: the folder was made with another config (stale: delete it or change --runs).
    """
    config = load_config(overrides=overrides)
    saved = out / "config.json"
    if saved.exists() and not made_with(out, config):
        raise SystemExit(
            f"{out}: made with another config than this benchmark's (older code or other flags); "
            f"delete the folder or pass another --runs"
        )
    if (out / "metrics.json").exists() and saved.exists():
        return {"status": "done", "metrics": json.loads((out / "metrics.json").read_text())}
    lock = out / "running.json"
    if lock.exists():
        owner = json.loads(lock.read_text())
        if pid_alive(owner.get("pid")):
            return {"status": "running", "pid": owner["pid"], "curve": curve_from_log(out)}
    curve = curve_from_log(out)
    if (out / CHECKPOINT).exists():
        return {"status": "stopped", "curve": curve}
    return {"status": "pending", "curve": curve}


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Child:
    """The training subprocess of the moment, stopped with the driver (SIGTERM / SIGINT)."""

    process: subprocess.Popen | None = None

    @classmethod
    def stop(cls, signum, frame) -> None:
        """Signal the child and leave: the ``wait`` in :func:`train_run` is interrupted by the exit, and its
        ``finally`` reaps the child (waiting here would re-enter ``Popen.wait`` and stall on its lock)."""
        if cls.process is not None and cls.process.returncode is None:
            cls.process.terminate()
        raise SystemExit(f"stopped by signal {signum}; run the same command again to resume")


def train_run(out: Path, overrides: list[str]) -> int:
    """Train (or resume) one run in its own process; returns its exit code. Adds the segment's
    wall time to ``out/wall.json`` (a run resumed three times has three segments)."""
    out.mkdir(parents=True, exist_ok=True)
    resume = (out / CHECKPOINT).exists()
    cmd = [sys.executable, "-m", "train", "--log-level=info", "--no-progress", "--resume"] + [
        f"--{o}" for o in overrides
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.time()
    with open(out / "train.log", "a") as handle:
        handle.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'}: {' '.join(cmd)}\n")
        handle.flush()
        Child.process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
        atomic_write_json(out / "running.json", {"pid": Child.process.pid, "driver": os.getpid(), "started": started})
        try:
            code = Child.process.wait()
        finally:
            try:
                Child.process.wait(timeout=60)  # at once when it ended; after a stop signal, its own exit
            except subprocess.TimeoutExpired:
                Child.process.kill()
                Child.process.wait()
            segment = time.time() - started
            wall = json.loads((out / "wall.json").read_text()) if (out / "wall.json").exists() else {"segments": []}
            wall["segments"].append(round(segment, 1))
            atomic_write_json(out / "wall.json", wall)
            (out / "running.json").unlink(missing_ok=True)
            Child.process = None
    return code
