"""The architecture's import rules (design.md), read from the source with ``ast``.

* Layering: ``analysis`` and ``figures`` import none of ours, ``dynamics`` only ``analysis``,
  ``ssl_models`` only ``dynamics`` and ``analysis``; the app (``stopgrad``) may import all of them, and
  ``stopgrad/__init__.py`` imports nothing of ours (Python runs it before every package).
* No cycles: the graph of our modules' imports has no cycle, neither at module level nor with the
  imports inside functions added (a function-level import that closes a cycle is the lazy-import trick
  the design rules out). Importing a name from an ancestor package (``from stopgrad.dynamics import
  Solver`` inside ``dynamics``) is an edge to that package's ``__init__``, which imports the module
  back: it counts as a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> installed package name (pyproject's package-dir)
PACKAGES = {"analysis": "stopgrad.analysis", "dynamics": "stopgrad.dynamics", "figures": "stopgrad.figures",
            "ssl_models": "stopgrad.ssl_models", "stopgrad": "stopgrad"}
#: package -> the packages of ours it may import (itself included)
ALLOWED = {
    "stopgrad.analysis": {"stopgrad.analysis"},
    "stopgrad.figures": {"stopgrad.figures"},
    "stopgrad.dynamics": {"stopgrad.dynamics", "stopgrad.analysis"},
    "stopgrad.ssl_models": {"stopgrad.ssl_models", "stopgrad.dynamics", "stopgrad.analysis"},
    "stopgrad": set(PACKAGES.values()),
}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package __init__)."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = (path, path.name == "__init__.py")
    return out


MODULES = _modules()


def _package_of(module: str) -> str:
    """The science package (or the app) a module belongs to."""
    for package in sorted(ALLOWED, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    raise AssertionError(module)


def _edges(module: str) -> list[tuple[str, int, bool]]:
    """(imported module of ours, line, at module level) for each import in ``module``."""
    path, is_package = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module if is_package else module.rpartition(".")[0]  # the package relative imports start from
    ancestors = {module.rsplit(".", k)[0] for k in range(1, module.count(".") + 1)}
    function_level = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                      for n in ast.walk(f) if n is not f}
    out = []

    def add(target: str, line: int, top: bool) -> None:
        if target in MODULES and target != module:
            out.append((target, line, top))

    for node in ast.walk(tree):
        top = id(node) not in function_level
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                for k in range(1, len(parts) + 1):  # import a.b.c runs a, a.b and a.b.c
                    name = ".".join(parts[:k])
                    if name == alias.name or name not in ancestors:
                        add(name, node.lineno, top)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if not source.startswith("stopgrad"):
                continue
            names_are_modules = [f"{source}.{a.name}" in MODULES for a in node.names]
            if not all(names_are_modules) or source not in ancestors:
                add(source, node.lineno, top)  # a name read from the package's __init__
            for alias, is_module in zip(node.names, names_are_modules):
                if is_module:
                    add(f"{source}.{alias.name}", node.lineno, top)
    return out


EDGES = {m: _edges(m) for m in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first == last), or None."""
    colour, stack = dict.fromkeys(graph, 0), []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return stack[stack.index(nxt):] + [nxt]
            if colour[nxt] == 0 and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour[node] == 0 and (found := visit(node)) is not None:
            return found
    return None


def test_the_source_is_found():
    assert len(MODULES) > 60
    assert {"stopgrad.dynamics.simulate", "stopgrad.analysis.comparison", "stopgrad.cli"} <= set(MODULES)


def test_no_import_runs_back_up_the_layering():
    wrong = [f"{MODULES[m][0].relative_to(ROOT)}:{line} imports {t}"
             for m, edges in EDGES.items() for t, line, _ in edges
             if _package_of(t) not in ALLOWED[_package_of(m)]]
    assert not wrong, "\n".join(wrong)


def test_the_app_init_imports_nothing_of_ours():
    assert EDGES["stopgrad"] == []


@pytest.mark.parametrize("with_function_level", [False, True], ids=["module level", "with function-level imports"])
def test_no_import_cycle(with_function_level):
    graph = {m: {t for t, _, top in edges if top or with_function_level} for m, edges in EDGES.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    """The check above can fail: a planted cycle, and a package __init__ read back from a submodule."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    graph = {m: {t for t, _, _ in edges} for m, edges in EDGES.items()}
    graph["stopgrad.dynamics.simulate"] = graph["stopgrad.dynamics.simulate"] | {"stopgrad.dynamics"}
    assert _cycle(graph) is not None
