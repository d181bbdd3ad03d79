"""Where a results file came from: the command, the git commit, the machine and the date.

Every writer of ``results/*`` stores ``provenance()`` in its JSON and ``provenance_line()`` at the
top of its Markdown, so anyone can tell how to rebuild a figure and on what it was measured::

    from common.provenance import provenance, provenance_line
    report = {"provenance": provenance(), ...}
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def git_commit(root: Path = ROOT) -> str:
    """``HEAD``'s hash, with ``+dirty`` when tracked files differ from it; ``unknown`` outside git.

    Changes under ``results/`` do not count: they are what the benchmarks write, so a second target
    run after a first would otherwise always read as dirty.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The machine a measurement ran on (CPU model and count, load at the time, OS, Python)."""
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    return {"cpu": cpu_model(), "cpus": cpus, "load_avg_1m": load, "platform": platform.platform(),
            "python": platform.python_version()}


def command(argv: list[str] | None = None) -> str:
    """The command line that is running, as a user would paste it (``make`` targets pass ``MAKE_TARGET``)."""
    parts = list(sys.argv if argv is None else argv)
    if parts and parts[0].endswith(".py") and "/" in parts[0]:
        module = Path(parts[0]).resolve()
        try:
            rel = module.relative_to(ROOT).with_suffix("")
            parts = ["python", "-m", ".".join(rel.parts[:-1] if rel.name == "__main__" else rel.parts)] + parts[1:]
        except ValueError:
            pass
    text = shlex.join(parts)
    target = os.environ.get("MAKE_TARGET")
    return f"make {target}  ({text})" if target else text


def provenance(argv: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """``{"command", "commit", "date", "machine", ...extra}`` for a results file."""
    return {"command": command(argv), "commit": git_commit(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(), **extra}


def provenance_line(record: dict[str, Any]) -> str:
    """One Markdown line saying how a results file was made."""
    m = record.get("machine", {})
    return (f"Written by `{record.get('command')}` at commit `{record.get('commit')}` on {record.get('date')}; "
            f"machine: {m.get('cpu')}, {m.get('cpus')} CPUs, load {m.get('load_avg_1m')} at start.")
