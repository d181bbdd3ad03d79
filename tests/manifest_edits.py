"""Hand edits of an artifact's manifest.json for tests, as a forger (or a careless operator) would make them.

    rewrite_manifest(folder, change)              # edit the JSON, then re-seal manifest.sha256 to match
    rewrite_manifest(folder, change, seal=False)  # edit the JSON only: the sidecar no longer matches

Re-sealing lets a test reach the checks behind the manifest's own checksum (types, shapes, ranges).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from common.io import sha256_file
from export.artifact import MANIFEST, MANIFEST_SHA256


def rewrite_manifest(folder: Path, change: Callable[[dict[str, Any]], Any], seal: bool = True) -> None:
    """Load ``folder``'s manifest JSON, let ``change`` edit it in place, write it back (and re-seal)."""
    path = Path(folder) / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    if seal:
        reseal(folder)


def reseal(folder: Path) -> None:
    """Write ``manifest.sha256`` for the manifest as it is now, whatever it holds."""
    (Path(folder) / MANIFEST_SHA256).write_text(sha256_file(Path(folder) / MANIFEST) + "\n")
