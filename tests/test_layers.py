"""The house's walls: imports go down the layers, Hydra stays in the app, no cycles, no imports hidden in functions."""

from __future__ import annotations

import ast
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sdlab"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sdlab_imports(path: Path) -> list[tuple[ast.stmt, str]]:
    """(statement, imported module) for every import of sdlab's own modules in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sdlab":
            names = [f"{node.module}.{a.name}" for a in node.names]
            found += [(node, n if (ROOT / Path(*n.split("."))).with_suffix(".py").exists()
                       or (ROOT / Path(*n.split("."))).is_dir() else node.module) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node, a.name) for a in node.names if a.name.split(".")[0] == "sdlab"]
    return found


def test_import_contracts_hold():
    """pyproject.toml's contracts: the layers, and hydra/omegaconf only in sdlab.app."""
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_no_sdlab_import_inside_a_function():
    inside = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in sorted(PACKAGE.rglob("*.py"))
              for node, _ in sdlab_imports(path) if node.col_offset > 0]
    assert inside == []


def test_no_import_cycles():
    graph = {module_name(p): {m for _, m in sdlab_imports(p)} for p in PACKAGE.rglob("*.py")}
    for deps in graph.values():
        deps &= graph.keys()
    seen, path, cycles = set(), [], []

    def visit(node: str) -> None:
        if node in path:
            cycles.append(" -> ".join([*path[path.index(node):], node]))
            return
        if node in seen:
            return
        seen.add(node)
        path.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        path.pop()

    for node in sorted(graph):
        visit(node)
    assert cycles == []


def test_only_the_adapter_reaches_the_pipeline():
    """Jobs, the bench and the other model modules ask the family adapter, never `model.pipe`."""
    import re

    outside = [f"{path.relative_to(ROOT)}:{i}" for path in sorted(PACKAGE.rglob("*.py"))
               if "families" not in path.parts
               for i, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"\.pipe\b", line)]
    assert outside == []
