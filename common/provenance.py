"""Where a results file came from: the command, the git commit, the machine and the date.

Every writer of ``results/*`` stores ``provenance()`` in its JSON and ``provenance_line()`` at the
top of its Markdown, so anyone can tell how to rebuild a figure and on what it was measured::

    from common.provenance import provenance, provenance_line
    report = {"provenance": provenance(), ...}

A timing is only a figure on a quiet machine: ``busy_reason()`` says why the machine is too busy
to time on (1-minute load average above half its CPUs), or ``None`` when it is quiet; a timing
command refuses to run on a busy one unless told otherwise, and its report then says so::

    reason = busy_reason()                  # or busy_reason(load=..., cpus=...) with readings in hand
    if reason and not allow_noisy:
        raise SystemExit(f"refusing to time: {reason}")
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

from common.paths import REPO_ROOT


def git_commit(root: Path = REPO_ROOT) -> str:
    """``HEAD``'s hash, with ``+dirty`` when tracked files differ from it; ``unknown`` outside git.

    Changes under ``results/`` do not count: they are what the benchmarks write, so a second target
    run after a first would otherwise always read as dirty.
    """
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
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


def load_average() -> float | None:
    """The 1-minute load average, rounded to 0.01 (``None`` where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# a machine is busy when its 1-minute load average is above this share of its CPUs
BUSY_LOAD_PER_CPU = 0.5


def busy_reason(load: float | None = None, cpus: int | None = None) -> str | None:
    """Why this machine is too busy to take timings on, or ``None`` when it is quiet.

    Busy: the 1-minute load average is above half the CPUs (``BUSY_LOAD_PER_CPU``). ``load`` and
    ``cpus`` default to this machine's readings (:func:`load_average`, :func:`cpu_count`); an
    unknown load counts as quiet (there is nothing to judge by).
    """
    load = load_average() if load is None else load
    cpus = cpu_count() if cpus is None else cpus
    limit = BUSY_LOAD_PER_CPU * cpus
    if load is None or load <= limit:
        return None
    return f"1-minute load average {load:.2f} is above half of the {cpus} CPUs ({limit:g})"


def machine() -> dict[str, Any]:
    """The machine a measurement ran on (CPU model and count, load at the time, OS, Python)."""
    return {
        "cpu": cpu_model(),
        "cpus": cpu_count(),
        "load_avg_1m": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def command(argv: list[str] | None = None) -> str:
    """The command line that is running, as a user would paste it (``make`` targets pass ``MAKE_TARGET``)."""
    parts = list(sys.argv if argv is None else argv)
    if parts and parts[0].endswith(".py") and "/" in parts[0]:
        module = Path(parts[0]).resolve()
        try:
            rel = module.relative_to(REPO_ROOT).with_suffix("")
            parts = ["python", "-m", ".".join(rel.parts[:-1] if rel.name == "__main__" else rel.parts)] + parts[1:]
        except ValueError:
            pass
    text = shlex.join(parts)
    target = os.environ.get("MAKE_TARGET")
    return f"make {target}  ({text})" if target else text


def provenance(argv: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """``{"command", "commit", "date", "machine", ...extra}`` for a results file."""
    return {
        "command": command(argv),
        "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        **extra,
    }


def provenance_line(record: dict[str, Any]) -> str:
    """One Markdown line saying how a results file was made."""
    m = record.get("machine", {})
    return (
        f"Written by `{record.get('command')}` at commit `{record.get('commit')}` on {record.get('date')}; "
        f"machine: {m.get('cpu')}, {m.get('cpus')} CPUs, load {m.get('load_avg_1m')} at start."
    )
