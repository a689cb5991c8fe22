"""The layout rules of docs/architecture.md, checked on the source (parsed with ``ast``, nothing imported):

- no import cycle among the modules of ``actfocus_kernels`` or of ``actfocus_trainer``; every import
  counts, module level or inside a function (a function-level import that closes a cycle works only
  by binding late, and breaks as soon as someone hoists it);
- no module of those packages or of ``benchmarks/`` over ``MAX_LINES`` lines;
- ``tests/`` and ``benchmarks/`` share code only through the installed package: no ``sys.path``
  manipulation in either, and no test module importing another test module or a conftest.

The packages are found where Python imports them from (the source tree, or the installed wheel in
CI stage 2); ``tests/`` and ``benchmarks/`` beside this file.
"""
from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest

MAX_LINES = 450
SUITE_ROOT = Path(__file__).resolve().parents[1]  # holds tests/ and benchmarks/
PACKAGES = ("actfocus_kernels", "actfocus_trainer")


@dataclass(frozen=True)
class Edge:
    """``importer`` imports ``imported`` at ``path:line``."""

    importer: str
    imported: str
    path: Path
    line: int


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"package {name} is not importable here"
    return Path(next(iter(spec.submodule_search_locations)))


def package_modules(name: str) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` module of package ``name``."""
    root = package_dir(name)
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = (name, *path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, path: Path) -> list[tuple[str, int]]:
    """Every ``(absolute dotted name, line)`` an import statement anywhere in the module names:
    ``a.b`` for ``import a.b`` and for ``from a import b`` (``b`` a submodule or a name in ``a``).
    Relative imports are resolved against the module's package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            names += [(f"{source}.{alias.name}", node.lineno) for alias in node.names]
    return names


def bound_names(path: Path) -> set[str]:
    """The names a module binds at its top level (assignments, definitions, imports)."""
    names = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, list[Edge]]:
    """Edges between the given modules: a name resolves to the longest module it starts with
    (``from pkg import sub`` is an edge to ``pkg.sub``, ``from pkg.mod import f`` one to ``pkg.mod``).
    The packages above an imported module (whose ``__init__`` Python runs first) are not edges, and
    ``from pkg import name`` where ``pkg/__init__.py`` does not bind ``name`` names a compiled
    extension module (e.g. ``_C``), outside the graph."""
    bound = {module: bound_names(path) for module, path in modules.items() if path.name == "__init__.py"}
    graph: dict[str, list[Edge]] = {module: [] for module in modules}
    for module, path in modules.items():
        for name, line in imported_names(module, path):
            parts = name.split(".")
            n = next((n for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in modules), 0)
            target = ".".join(parts[:n])
            if n == len(parts) - 1 and target in bound and parts[-1] not in bound[target] | {"*"}:
                continue
            if n and target != module and all(e.imported != target for e in graph[module]):
                graph[module].append(Edge(module, target, path, line))
    return graph


def find_cycle(graph: dict[str, list[Edge]]) -> list[Edge] | None:
    """One cycle of the graph as its edges, or None (depth-first search, the path kept on a stack)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    stack: list[Edge] = []

    def visit(module: str) -> list[Edge] | None:
        state[module] = "open"
        for edge in graph[module]:
            if state.get(edge.imported) == "open":
                start = next((i for i, e in enumerate(stack) if e.importer == edge.imported), len(stack))
                return stack[start:] + [edge]
            if edge.imported not in state:
                stack.append(edge)
                cycle = visit(edge.imported)
                if cycle:
                    return cycle
                stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def tangles(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """The groups of two or more modules that each reach every other (strongly connected components)."""
    reach = {}
    for module in graph:
        seen, todo = set(), [module]
        while todo:
            for edge in graph[todo.pop()]:
                if edge.imported not in seen:
                    seen.add(edge.imported)
                    todo.append(edge.imported)
        reach[module] = seen
    groups = {tuple(sorted(m for m in graph if m in reach[module] and module in reach[m])) for module in graph}
    return sorted(list(group) for group in groups if len(group) > 1)


def describe(cycle: list[Edge], graph: dict[str, list[Edge]] | None = None) -> str:
    chain = " -> ".join([cycle[0].importer] + [edge.imported for edge in cycle])
    where = "\n".join(f"  {edge.path.name}:{edge.line} ({edge.importer}) imports {edge.imported}" for edge in cycle)
    groups = "".join(f"\n  {', '.join(group)}" for group in tangles(graph or {}))
    return f"import cycle: {chain}\n{where}" + (f"\nmodules that import each other:{groups}" if groups else "")


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    graph = import_graph(package_modules(package))
    cycle = find_cycle(graph)
    if cycle is not None:
        pytest.fail(describe(cycle, graph), pytrace=False)


@pytest.mark.parametrize("root", [*PACKAGES, "benchmarks"])
def test_no_module_over_the_line_limit(root):
    directory = SUITE_ROOT / root if root == "benchmarks" else package_dir(root)
    sizes = {path: len(path.read_text().splitlines()) for path in python_files(directory)}
    assert sizes, f"no modules found under {directory}"
    over = {str(path.relative_to(directory.parent)): n for path, n in sizes.items() if n > MAX_LINES}
    if over:
        pytest.fail(f"modules over {MAX_LINES} lines: {over}", pytrace=False)


def sys_path_uses(path: Path) -> list[int]:
    """Lines where ``sys.path`` is touched (read or written), or ``site.addsitedir`` called."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
                (node.value.id, node.attr) in (("sys", "path"), ("site", "addsitedir"))):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module in ("sys", "site") and any(
                alias.name in ("path", "addsitedir") for alias in node.names):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("root", ["tests", "benchmarks"])
def test_no_sys_path_manipulation(root):
    found = {str(path.relative_to(SUITE_ROOT)): lines
             for path in python_files(SUITE_ROOT / root) if (lines := sys_path_uses(path))}
    assert not found, f"sys.path used (put shared code in the package, or the path in pytest's config): {found}"


def test_no_test_module_imports_another():
    imports = {}
    for path in python_files(SUITE_ROOT / "tests"):
        names = {name.split(".")[0] for name, _ in imported_names(path.stem, path)}
        bad = sorted(name for name in names if name.startswith("test_") or name == "conftest")
        if bad:
            imports[str(path.relative_to(SUITE_ROOT))] = bad
    assert not imports, f"modules importing test modules or conftest (move the shared code to a helper): {imports}"


# the finders themselves, on small sources


def test_cycle_finder_reports_a_function_level_cycle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def late():\n    from .c import thing\n")
    (package / "c.py").write_text("from .a import x\n")
    (package / "d.py").write_text("import pkg.a\nfrom . import _compiled\n")
    modules = {f"pkg.{p.stem}" if p.stem != "__init__" else "pkg": p for p in package.glob("*.py")}
    graph = import_graph(modules)
    cycle = find_cycle(graph)
    assert cycle is not None
    assert describe(cycle).startswith("import cycle: pkg.a -> pkg.b -> pkg.c -> pkg.a")
    assert tangles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    (package / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(modules)) is None


def test_sys_path_finder(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import sys\nx = 'sys.path'  # sys.path\nsys.path.insert(0, '.')\n")
    assert sys_path_uses(path) == [3]
