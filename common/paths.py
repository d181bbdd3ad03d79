"""Where the repository is: ``REPO_ROOT``, the one definition every module takes (results/, runs/, subprocess cwd).

    from common.paths import REPO_ROOT
    results = REPO_ROOT / "results"
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
