"""The package layout the README's Development section shows: each package imports only those below it.

    sparserec > loadtest > serving > export > train > common

So no two stages import each other (no cycle), and common/ imports no stage.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("sparserec", "loadtest", "serving", "export", "train", "common")  # top first


def _imports(package: str) -> dict[str, list[str]]:
    """Project packages imported by each module of ``package`` (any import statement, any depth)."""
    found: dict[str, list[str]] = {}
    for file in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in LAYERS and top != package:
                    found.setdefault(str(file.relative_to(ROOT)), []).append(name)
    return found


def test_every_package_imports_only_packages_below_it():
    upward = []
    for level, package in enumerate(LAYERS):
        above = set(LAYERS[:level])
        for module, names in _imports(package).items():
            upward += [f"{module} imports {name}" for name in names if name.split(".")[0] in above]
    assert upward == [], "imports against the layering sparserec > loadtest > serving > export > train > common"


def test_the_check_sees_real_imports():
    """The scan finds the imports that do exist (so an empty offender list means something)."""
    assert any(name.startswith("serving") for names in _imports("loadtest").values() for name in names)
    assert any(name.startswith("common") for names in _imports("train").values() for name in names)
    assert _imports("common") == {}
