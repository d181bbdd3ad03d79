"""`bentoml serve`, with a Prometheus multiprocess folder of this server's own.

    python -m serving.bentoml_serve serving.service:SparseRecommender --port 3000 --working-dir .

takes exactly the arguments of `bentoml serve` and runs it in this process (the server keeps this
PID). `python -m serving` starts every server this way: the plain server, each shard and the router.

Why: BentoML keeps each worker's metric samples in ``$BENTOML_HOME/prometheus_multiproc_dir`` and
empties that folder whenever a server starts (`bentoml.serving.ensure_prometheus_dir`, called by
`serve_http` with ``clean=True``), so two servers sharing a BENTOML_HOME (the user's, by default)
wipe each other's /metrics counts. Here the folder is ``$TMPDIR/sparserec-metrics-<uid>/<pid>-<start>``
instead (BentoML's own container setting, `BentoMLContainer.prometheus_multiproc_dir`, the one its
pytest plugin sets too); BENTOML_HOME itself stays the user's, so its model store is still found.
The folder is removed when the server exits, and folders of servers no longer running are removed
when the next one starts (a server killed with SIGKILL leaves its own behind until then).

`bentoml serve TAG` (a Bento from the store) and `bentoml serve` run directly keep BentoML's
behaviour: give each such server its own BENTOML_HOME, or start it through this module.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import psutil

__all__ = ["main", "metrics_dir", "metrics_root", "remove_stale"]


def metrics_root() -> Path:
    """The folder holding one metrics folder per running server (one per user)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"sparserec-metrics-{uid}"


def _name(process: psutil.Process) -> str:
    return f"{process.pid}-{int(process.create_time())}"


def metrics_dir(pid: int | None = None) -> Path:
    """The metrics folder of the server with process id ``pid`` (default: this process)."""
    return metrics_root() / _name(psutil.Process(os.getpid() if pid is None else pid))


def remove_stale(root: Path) -> list[Path]:
    """Remove the metrics folders under ``root`` whose server (pid and start time) is gone."""
    removed = []
    for path in root.iterdir() if root.is_dir() else ():
        pid, _, started = path.name.partition("-")
        try:
            alive = pid.isdigit() and _name(psutil.Process(int(pid))) == path.name
        except psutil.Error:
            alive = False
        if not alive and started.isdigit():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml_cli.cli import cli

    root = metrics_root()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    remove_stale(root)
    path = metrics_dir()
    path.mkdir(exist_ok=True)
    atexit.register(shutil.rmtree, path, True)
    # read by serve_http's ensure_prometheus_dir(), which hands it to every worker (PROMETHEUS_MULTIPROC_DIR)
    BentoMLContainer.prometheus_multiproc_dir.set(str(path))
    try:
        cli.main(args=["serve", *argv], prog_name="bentoml", standalone_mode=True)
    except SystemExit as exc:  # click ends with sys.exit; atexit still runs after this return
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
