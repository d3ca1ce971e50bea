"""The package's layout: no import cycle among the modules' top-level imports, every `from vqgen... import` names
something that exists (a moved function leaves no stale import behind in a function body), `import vqgen` alone
loads no torch, and the lazy public names point at the modules that define them.

The imports are read from the source with `ast`, not observed by importing, so a cycle is found even where the
order the tests happen to import modules in would hide it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import vqgen


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the vqgen module imported (a submodule when `from PACKAGE import SUBMODULE`)
    names: tuple[str, ...]  # the names a `from ... import` takes from `target` (empty: `import vqgen.x`, a module)
    line: int
    top_level: bool  # run when the module is imported (not in a function, nor under `if TYPE_CHECKING:`)


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: name → (source file, is a package)."""
    found = {"vqgen": (Path(vqgen.__file__), True)}
    for info in pkgutil.walk_packages(vqgen.__path__, "vqgen."):
        spec = importlib.util.find_spec(info.name)
        assert spec is not None and spec.origin is not None, info.name
        found[info.name] = (Path(spec.origin), info.ispkg)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name `from .x import y` (or `from vqgen.x import y`) takes its names from."""
    if node.level == 0:
        return node.module or ""
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def _imports(module: str, path: Path, is_package: bool, modules: dict) -> list[Import]:
    found: list[Import] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            top_level = False  # runs when called (a class body, in contrast, runs at import)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)  # for type checkers only
            for child in node.orelse:
                visit(child, top_level)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "vqgen" or alias.name.startswith("vqgen."):
                    found.append(Import(module, alias.name, (), node.lineno, top_level))
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, is_package, node)
            if source == "vqgen" or source.startswith("vqgen."):
                names = tuple(a.name for a in node.names)
                submodules = [n for n in names if f"{source}.{n}" in modules]
                for name in submodules:
                    found.append(Import(module, f"{source}.{name}", (), node.lineno, top_level))
                others = tuple(n for n in names if n not in submodules)
                if others or not submodules:
                    found.append(Import(module, source, others, node.lineno, top_level))
        for child in ast.iter_child_nodes(node):
            visit(child, top_level)

    visit(ast.parse(path.read_text(), filename=str(path)), True)
    return found


def _all_imports() -> tuple[dict[str, tuple[Path, bool]], list[Import]]:
    modules = _modules()
    imports = [i for name, (path, pkg) in modules.items() for i in _imports(name, path, pkg, modules)]
    return modules, imports


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component that has one (Tarjan's algorithm, then a walk)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)

    cycles = []
    for component in components:
        start = min(component)
        path, seen = [start], {start}
        while True:  # follow edges inside the component until one returns to the path
            nxt = min(w for w in graph[path[-1]] if w in component)
            if nxt in seen:
                cycles.append([*path[path.index(nxt) :], nxt])
                break
            path.append(nxt)
            seen.add(nxt)
    return cycles


def test_cycle_finder_names_the_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c", "a"], ["e", "e"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_top_level_imports() -> None:
    modules, imports = _all_imports()
    assert {"vqgen.train", "vqgen.device", "vqgen.resume", "vqgen.priors.training"} <= set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    where: dict[tuple[str, str], int] = {}
    for i in imports:
        if i.top_level and i.target in modules and i.target != i.module:
            graph[i.module].add(i.target)
            where.setdefault((i.module, i.target), i.line)
    problems = [
        " -> ".join(f"{a} (line {where[a, b]})" for a, b in zip(cycle, cycle[1:], strict=False)) + f" -> {cycle[-1]}"
        for cycle in _cycles(graph)
    ]
    assert not problems, "import cycles among top-level imports:\n" + "\n".join(problems)


def test_every_vqgen_import_resolves() -> None:
    """Top-level and function-level alike: a name that moved to another module is imported from where it is now."""
    modules, imports = _all_imports()
    stale = []
    for i in imports:
        if i.target not in modules:
            stale.append(f"{i.module}:{i.line}: no module {i.target}")
            continue
        target = importlib.import_module(i.target)
        stale += [f"{i.module}:{i.line}: {i.target} has no {n}" for n in i.names if n != "*" and not hasattr(target, n)]
    assert not stale, "\n".join(stale)


def test_import_vqgen_loads_no_torch() -> None:
    code = "import sys, vqgen; assert 'torch' not in sys.modules, 'import vqgen loaded torch'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_lazy_names_point_at_their_defining_modules() -> None:
    for name, module in vqgen._LAZY.items():
        value = getattr(importlib.import_module(module), name)
        assert value.__module__ == module, f"vqgen.{name}: {module} imports it from {value.__module__}"
        assert getattr(vqgen, name) is value
    assert set(vqgen._LAZY) <= set(vqgen.__all__)
