"""Where the repository is: ``REPO_ROOT`` (the one definition: results/, runs/, subprocess cwd) and
paths relative to it (what results files record).

    from common.paths import REPO_ROOT
    results = REPO_ROOT / "results"
    repo_relative(REPO_ROOT / "artifacts" / "demo")   # "artifacts/demo"
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_relative(path: str | Path, root: Path = REPO_ROOT) -> str:
    """``path`` relative to the repository when it lies inside it, else as given: what results files
    record, so that they name ``artifacts/demo`` and not the checkout's absolute /tmp/... folder."""
    resolved, base = Path(path).resolve(), root.resolve()
    return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else str(path)
