"""The package's shape, as docs/architecture.md states it: module-level imports form layers with no cycle,
no module reaches into another's underscore names, functions stay short, and nothing cites a file outside
the repository."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dqnlab"
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def _top_level_imports(tree: ast.Module, names: set[str]) -> set[str]:
    """The dqnlab modules a module imports when it is imported (not the ones its functions import later)."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dqnlab"):
            if node.module == "dqnlab":
                found |= {a.name for a in node.names if a.name in names}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("dqnlab.")}
    return found


def import_levels() -> dict[str, int]:
    """Each module's level: 0 if it imports no other dqnlab module at import time, else one more than the
    highest it imports. Raises on a cycle."""
    trees = _modules()
    deps = {m: _top_level_imports(t, set(trees)) - {m} for m, t in trees.items()}
    levels: dict[str, int] = {}

    def level(m: str, path: tuple[str, ...] = ()) -> int:
        if m in path:
            raise AssertionError(f"import cycle: {' -> '.join((*path, m))}")
        if m not in levels:
            levels[m] = 1 + max((level(d, (*path, m)) for d in deps[m]), default=-1)
        return levels[m]

    for m in trees:
        level(m)
    return levels


def test_module_level_imports_have_no_cycle():
    levels = import_levels()
    assert levels["kinds"] == 0  # the table sits below config, which validates kinds against it
    assert levels["config"] < levels["learner"] < levels["trainer"]
    assert levels["loop"] < levels["trainer"]


def _private_imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dqnlab"):
            private = [a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")]
            out += [f"{path.name}: {node.module}.{name}" for name in private]
    return out


@pytest.mark.parametrize("folder", ["dqnlab", "scripts", "tests"])
def test_no_module_imports_another_modules_underscore_name(folder):
    private = [hit for p in sorted((ROOT / folder).glob("*.py")) for hit in _private_imports(p)]
    allowed = {"dqnlab._tf"}  # the one private module: TensorFlow imported quietly, for the whole package
    assert [hit for hit in private if hit.split(": ")[1].rsplit(".", 1)[0] not in allowed] == []


def test_no_function_in_the_package_is_longer_than_80_lines():
    long = []
    for stem, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{stem}.{node.name}: {length} lines")
    assert long == []


def test_nothing_cites_a_file_outside_the_repository():
    outside = ("DESIGN.md", "BACKGROUND.md", "STYLE.md", "../shared")
    files = [p for pattern in ("dqnlab/*.py", "scripts/*", "tests/*.py", "docs/*.md", "*.md", "agents/*.toml")
             for p in ROOT.glob(pattern) if p.is_file() and p.name != Path(__file__).name]  # fmt: skip
    hits = [f"{p.relative_to(ROOT)}: {name}" for p in files for name in outside if name in p.read_text()]
    assert hits == []


def _defined_names(tree: ast.Module) -> set[str]:
    """The names a module defines or imports at its top level (what `from module import name` can take)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def test_every_dqnlab_import_outside_the_package_resolves():
    """Scripts, examples and tests import only dqnlab modules and names that exist: a benchmark run once a
    month (scripts/bench_user_panel.py imported a module that had moved out of the package) fails here,
    statically, without importing TensorFlow."""
    modules = {p.stem: ast.parse(p.read_text()) for p in PACKAGE.glob("*.py")}
    public = set(ast.literal_eval(next(
        n.value for n in modules["__init__"].body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "_LAZY"
    ))) | {"__version__"}  # fmt: skip
    broken = []
    for path in sorted([*ROOT.glob("scripts/*.py"), *ROOT.glob("examples/*.py"), *ROOT.glob("tests/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "dqnlab":
                broken += [
                    f"{path.name}: dqnlab.{a.name}" for a in node.names if a.name not in public | set(modules)
                ]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dqnlab."):
                stem = node.module.split(".")[1]
                if stem not in modules:
                    broken.append(f"{path.name}: {node.module}")
                    continue
                defined = _defined_names(modules[stem])
                broken += [
                    f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name not in defined
                ]
    assert broken == []
