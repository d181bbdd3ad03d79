"""The package layout docs/development.md shows: each package imports only those below it.

    benchmarks > sparserec > loadtest > serving > export > train > common

So no two stages import each other, common/ imports no stage, nothing in the product imports the
lab (benchmarks/), no module imports itself back through others (no import circle, counting the
imports inside functions too), and the Bentos pack product code only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pathspec
import yaml

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("sparserec", "loadtest", "serving", "export", "train", "common")  # top first
LAB = "benchmarks"  # above every layer; nothing imports it
BENTOFILES = ("bentofile.yaml", "bentofile.router.yaml")


def _module_names(root: Path = ROOT) -> dict[str, Path]:
    """``{"export.artifact": path, "export": path/__init__.py, ...}`` for every package under ``root``."""
    names = {}
    for package in (LAB, *LAYERS):
        for file in sorted((root / package).rglob("*.py")):
            parts = file.relative_to(root).with_suffix("").parts
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return names


def _imported(name: str, file: Path) -> set[str]:
    """Every module name an import statement of ``file`` names (any depth, relative ones resolved)."""
    package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            if not name.startswith(base + "."):  # its own package is initialised first, never a circle
                found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def _imports(package: str) -> dict[str, list[str]]:
    """Project packages imported by each module of ``package`` (absolute imports, any depth)."""
    found: dict[str, list[str]] = {}
    for name, file in _module_names().items():
        if name.split(".")[0] != package:
            continue
        for imported in sorted(_imported(name, file)):
            top = imported.split(".")[0]
            if top in (LAB, *LAYERS) and top != package:
                found.setdefault(str(file.relative_to(ROOT)), []).append(imported)
    return found


def _circles(root: Path = ROOT) -> list[list[str]]:
    """Strongly connected groups of two or more modules in the import graph (Tarjan)."""
    modules = _module_names(root)
    graph = {
        name: sorted(m for m in _imported(name, file) if m in modules and m != name) for name, file in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return sorted(circles)


def test_every_package_imports_only_packages_below_it():
    upward = []
    for level, package in enumerate(LAYERS):
        above = {LAB, *LAYERS[:level]}
        for module, names in _imports(package).items():
            upward += [f"{module} imports {name}" for name in names if name.split(".")[0] in above]
    assert upward == [], (
        "imports against the layering benchmarks > sparserec > loadtest > serving > export > train > common"
    )


def test_the_check_sees_real_imports():
    """The scan finds the imports that do exist (so an empty offender list means something)."""
    assert any(name.startswith("serving") for names in _imports("loadtest").values() for name in names)
    assert any(name.startswith("common") for names in _imports("train").values() for name in names)
    assert any(name.startswith("export") for names in _imports(LAB).values() for name in names)
    assert _imports("common") == {}


def test_no_product_module_imports_the_benchmarks():
    offenders = [
        f"{module} imports {name}"
        for package in LAYERS
        for module, names in _imports(package).items()
        for name in names
        if name.split(".")[0] == LAB
    ]
    assert offenders == []


def test_no_benchmark_module_in_the_product_packages():
    named = [
        str(f.relative_to(ROOT))
        for package in LAYERS
        for f in (ROOT / package).rglob("*.py")
        if f.stem.startswith("bench") or f.stem in ("demo", "replicas", "recbole_pop")
    ]
    assert named == []


def test_no_import_circle():
    """Module-level and function-level imports alike: a lazy import inside a function still closes a circle."""
    assert _circles() == []


def test_the_circle_check_finds_a_circle(tmp_path):
    """Two modules importing each other, one of them inside a function, are reported."""
    for package in (LAB, *LAYERS):
        (tmp_path / package).mkdir()
    (tmp_path / "export" / "a.py").write_text("from export.b import f\n")
    (tmp_path / "export" / "b.py").write_text("def f():\n    from . import a\n")
    (tmp_path / "export" / "c.py").write_text("import export.a\n")
    (tmp_path / "train" / "__init__.py").write_text("from .d import f\n")  # a package and its own module
    (tmp_path / "train" / "d.py").write_text("from . import e\n\n\ndef f():\n    pass\n")
    (tmp_path / "train" / "e.py").write_text("")
    assert _circles(tmp_path) == [["export.a", "export.b"]]


def _bento_files(bentofile: str) -> list[str]:
    """The files ``bentoml build -f bentofile`` packs: its include minus exclude patterns, matched as
    bentoml matches them (pathspec, gitwildmatch; bentoml/_internal/bento/build_config.py
    BentoPathSpec), against every file of the checkout outside .git and virtual environments."""
    config = yaml.safe_load((ROOT / bentofile).read_text())
    include = pathspec.PathSpec.from_lines("gitwildmatch", config["include"])
    exclude = pathspec.PathSpec.from_lines(
        "gitwildmatch", config.get("exclude", []) + [".git/", ".venv/", "venv/", "__pycache__/"]
    )
    files = []
    for file in ROOT.rglob("*"):
        rel = file.relative_to(ROOT).as_posix()
        if (
            file.is_file()
            and not rel.startswith((".git/", ".venv/"))
            and include.match_file(rel)
            and not exclude.match_file(rel)
        ):
            files.append(rel)
    return sorted(files)


def test_the_bentos_pack_product_code_only():
    for bentofile in BENTOFILES:
        packed = _bento_files(bentofile)
        service_module = yaml.safe_load((ROOT / bentofile).read_text())["service"].split(":")[0]
        assert service_module.replace(".", "/") + ".py" in packed, (bentofile, packed)
        assert "export/artifact.py" in packed and "common/io.py" in packed
        lab = [f for f in packed if f.split("/")[0] in (LAB, "tests", "results") or Path(f).stem.startswith("bench")]
        assert lab == [], f"{bentofile} packs benchmark or test files: {lab}"
