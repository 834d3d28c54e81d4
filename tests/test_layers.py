"""The house's walls: imports go down the layers, Hydra stays in the app, no cycles, no imports hidden in functions."""

from __future__ import annotations

import ast
import logging
from contextlib import contextmanager
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


@contextmanager
def loggers_kept():
    """import-linter sets up its logging with dictConfig, which disables every logger that exists then (sdlab's
    included, for the rest of the test process): give each its state back."""
    loggers = [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    before = {lg: lg.disabled for lg in loggers}
    try:
        yield
    finally:
        for lg, disabled in before.items():
            lg.disabled = disabled


def test_import_contracts_hold():
    """pyproject.toml's contracts: the layers, and hydra/omegaconf only in sdlab.app."""
    grid_log = logging.getLogger("sdlab.bench.grid")
    with loggers_kept():
        assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0
    assert not grid_log.disabled  # later tests still see sdlab's log lines


def test_no_sdlab_import_inside_a_function():
    """Imports are the module's, at its top (a module-level `try:` around them included), never a function's."""
    inside = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
        lines = {node.lineno for function in functions for node in ast.walk(function)
                 if isinstance(node, (ast.Import, ast.ImportFrom))}
        inside += [f"{path.relative_to(ROOT)}:{node.lineno}" for node, _ in sdlab_imports(path) if node.lineno in lines]
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



DOCUMENTED = {"os._exit"}  # underscored by name, public by documentation


def private_uses(path: Path) -> list[str]:
    """`line: name` of every private name a file takes from elsewhere: `_x` imported, a `._x` module, `obj._x` of an
    object other than self or cls, `getattr(obj, "_x")`."""
    def private(name: str) -> bool:
        return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            found += [f"{node.lineno}: {node.module}.{a.name}" for a in node.names
                      if private(node.module or "") or private(a.name)]
        elif isinstance(node, ast.Import):
            found += [f"{node.lineno}: {a.name}" for a in node.names if private(a.name)]
        elif isinstance(node, ast.Attribute) and private(node.attr):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner not in ("self", "cls") and f"{owner}.{node.attr}" not in DOCUMENTED:
                found.append(f"{node.lineno}: .{node.attr}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and private(str(node.args[1].value))):
            found.append(f"{node.lineno}: getattr {node.args[1].value}")
    return found


def test_no_private_api_of_other_libraries():
    """sdlab and its Hydra plugins use public API only: no `hydra._internal`, no private member of another object."""
    code = [path for folder in ("sdlab", "hydra_plugins") for path in sorted((ROOT / folder).rglob("*.py"))]
    assert [f"{path.relative_to(ROOT)}:{use}" for path in code for use in private_uses(path)] == []


def test_the_private_api_check_finds_what_the_plugins_once_used(tmp_path):
    old = tmp_path / "old.py"
    old.write_text("from hydra._internal.core_plugins.basic_launcher import BasicLauncher\n"
                   "from hydra.core.utils import (\n    JobReturn,\n    _flush_loggers,\n)\n"
                   "title = fig._suptitle.get_text()\nkeys = getattr(model, '_keys_to_ignore', None)\n"
                   "self._kept = cls._x = 1\n")
    assert sorted(use.split(":")[0] for use in private_uses(old)) == ["1", "2", "6", "7"]


def test_the_contracts_fail_on_a_job_that_imports_hydra(tmp_path):
    """The Hydra contract is not vacuous: a copy of sdlab whose generate job imports hydra breaks it."""
    import os
    import shutil
    import subprocess
    import sys

    shutil.copytree(PACKAGE, tmp_path / "sdlab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    job = tmp_path / "sdlab" / "jobs" / "generate.py"
    job.write_text(job.read_text().replace("from __future__ import annotations\n",
                                           "from __future__ import annotations\n\nimport hydra  # noqa: F401\n", 1))
    run = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                          "import sdlab; assert sdlab.__file__.startswith(sys.argv[1]), sdlab.__file__; "
                          "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))", str(tmp_path)],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Hydra and OmegaConf only in the app BROKEN" in run.stdout and "sdlab.jobs.generate -> hydra" in run.stdout
