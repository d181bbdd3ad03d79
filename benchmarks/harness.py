"""What every benchmark shares: the grid flags, provenance with the load at start and end, the
quiet-machine check before anything is written into results/, repository-relative paths and the
Markdown table (paths in results go through :func:`common.paths.repo_relative`).

    from benchmarks import harness

    parser = argparse.ArgumentParser(...)
    harness.add_grid_flags(parser, seed=2024)        # --set KEY=VALUE (repeatable), --seed
    harness.add_timing_flags(parser)                 # --allow-noisy
    args = parser.parse_args(argv)
    overrides = harness.overrides(parser, args)      # ["run.threads=1", ...], each checked once
    source = harness.start()                         # provenance, load average at start
    ...                                              # the timed work
    harness.finish(source, [out_json, out_md], allow_noisy=args.allow_noisy)   # load at end; may refuse
    atomic_write_text(out_md, harness.provenance_line(source) + ...)

The check: a timing taken while the 1-minute load average exceeds half the CPU count (at the start
or at the end) is not written under results/: ``finish`` raises :class:`NoisyMachine`, naming the
load and the limit. ``--allow-noisy`` writes it anyway, and the file says that it is noisy.
Files outside results/ (a test's tmp folder, a scratch --out) are never refused; their record still
carries both loads and the verdict.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from common.paths import REPO_ROOT, repo_relative
from common.provenance import BUSY_LOAD_PER_CPU, busy_reason, cpu_count, load_average, machine, provenance
from common.provenance import provenance_line as _provenance_line

RESULTS = REPO_ROOT / "results"


class NoisyMachine(RuntimeError):
    """The machine was busy during a timed benchmark; the message names the load and the limit."""


# ---------------------------------------------------------------------------- flags
def add_grid_flags(
    parser: argparse.ArgumentParser,
    *,
    seed: int | None = 2024,
    set_help: str = "extra config override for every run (repeatable), e.g. run.threads=1",
) -> None:
    """``--set KEY=VALUE`` (repeatable; a training config key) and, unless ``seed`` is None, ``--seed``."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    if seed is not None:
        parser.add_argument("--seed", type=int, default=seed, help=f"seed of every run (default {seed})")


def add_timing_flags(parser: argparse.ArgumentParser) -> None:
    """``--allow-noisy``: write into results/ even when the machine was busy (the file says so)."""
    parser.add_argument(
        "--allow-noisy",
        action="store_true",
        help="write timings into results/ even when the 1-minute load average exceeds half the "
        "CPUs (the results file then says it is noisy)",
    )


def overrides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The ``--set`` values, each checked for the ``section.key=value`` shape (``parser.error`` otherwise);
    the training config checks the key and the value's type when it loads them."""
    found = []
    for item in args.set:
        key, sep, _ = item.partition("=")
        if not sep or "." not in key or not all(key.split(".")):
            parser.error(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. run.threads=1")
        found.append(item)
    return found


# ---------------------------------------------------------------------------- provenance and the check
def start(argv: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance record of a run that starts now (command, commit, date, machine with the load)."""
    return provenance(argv, **extra)


def quiet_verdict(load_start: float | None, load_end: float | None, cpus: int) -> dict[str, Any]:
    """``{"limit", "quiet", "reason"}``: quiet when neither load is busy by :func:`common.provenance.busy_reason`."""
    over = [
        f"{when} ({reason})"
        for when, load in (("start", load_start), ("end", load_end))
        if load is not None and (reason := busy_reason(load=load, cpus=cpus))
    ]
    return {
        "limit": BUSY_LOAD_PER_CPU * cpus,
        "quiet": not over,
        "reason": "busy at " + " and at ".join(over) if over else "",
    }


def in_results(path: str | Path, results: Path = RESULTS) -> bool:
    """Whether ``path`` lies under the repository's results/ folder."""
    return Path(path).resolve().is_relative_to(results.resolve())


def check_start(
    source: dict[str, Any],
    outputs: Iterable[str | Path],
    *,
    allow_noisy: bool,
    cpus: int | None = None,
    results: Path = RESULTS,
) -> None:
    """Refuse at once (:class:`NoisyMachine`) when the load at start already rules out writing ``outputs``:
    a long benchmark need not run to the end to be refused there."""
    cpus = cpu_count() if cpus is None else cpus
    verdict = quiet_verdict(source.get("machine", {}).get("load_avg_1m"), None, cpus)
    targets = [repo_relative(p) for p in outputs if in_results(p, results)]
    if not verdict["quiet"] and targets and not allow_noisy:
        raise NoisyMachine(
            f"not starting a benchmark that writes {', '.join(targets)}: {verdict['reason']}. "
            f"Wait for a quiet machine, write outside results/, or pass --allow-noisy"
        )


def finish(
    source: dict[str, Any],
    outputs: Iterable[str | Path],
    *,
    allow_noisy: bool,
    load: Callable[[], float | None] = load_average,
    cpus: int | None = None,
    results: Path = RESULTS,
) -> dict[str, Any]:
    """Record the load at the end in ``source`` and decide whether ``outputs`` may be written.

    Args:
        source: the record from :func:`start` (its ``machine.load_avg_1m`` is the load at start);
            updated in place with ``machine.load_avg_1m_end`` and ``quiet`` (the verdict).
        outputs: the files about to be written; a refusal happens only when one is under ``results``.
        allow_noisy: write anyway; the verdict then carries ``noisy_allowed`` and the Markdown line
            says NOISY.
        load, cpus: the load reader and the CPU count (injected by tests).
    Returns:
        ``source``.
    Raises:
        NoisyMachine: the load exceeded the limit, an output is under results/ and not ``allow_noisy``.
    """
    cpus = cpu_count() if cpus is None else cpus
    m = source.setdefault("machine", machine())
    m["load_avg_1m_end"] = load()
    m["cpus"] = cpus
    verdict = quiet_verdict(m.get("load_avg_1m"), m["load_avg_1m_end"], cpus)
    targets = [repo_relative(p) for p in outputs if in_results(p, results)]
    if not verdict["quiet"] and targets:
        if not allow_noisy:
            raise NoisyMachine(
                f"not writing {', '.join(targets)}: {verdict['reason']}. Rerun on a quiet machine "
                f"(no training or other benchmark beside it), write outside results/, or pass "
                f"--allow-noisy to keep a figure marked noisy"
            )
        verdict["noisy_allowed"] = True
    source["quiet"] = verdict
    return source


def may_write(source: dict[str, Any], outputs: Iterable[str | Path], *, allow_noisy: bool, prog: str) -> bool:
    """:func:`finish` for a command line: False (the refusal printed to stderr) where it refuses."""
    try:
        finish(source, outputs, allow_noisy=allow_noisy)
    except NoisyMachine as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return False
    return True


def provenance_line(source: dict[str, Any]) -> str:
    """The Markdown line of :func:`common.provenance.provenance_line`, plus the load at the end and the verdict."""
    line = _provenance_line(source)
    m, verdict = source.get("machine", {}), source.get("quiet")
    if "load_avg_1m_end" in m:
        line += f" Load {m['load_avg_1m_end']} at end."
    if verdict is not None:
        line += (
            " Quiet machine (load <= half the CPUs throughout)."
            if verdict["quiet"]
            else f" **NOISY**: {verdict['reason']}; timings here are not comparable with quiet ones."
        )
    return line


# ---------------------------------------------------------------------------- tables
def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub Markdown table; ``align`` one character per column (``l``/``r``), default left."""
    align = align or "l" * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"align {align!r} has {len(align)} columns, headers {len(headers)}")
    lines = [
        "| " + " | ".join(str(h) for h in headers) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
    ]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {list(row)!r} has {len(row)} cells, the table {len(headers)} columns")
        lines.append("| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |")
    return "\n".join(lines)
