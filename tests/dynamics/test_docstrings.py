"""Docstrings of the engine (issue 13): one style (Google), on every public callable of ``dynamics``,
and every right-hand side and observer with its arguments' shapes and what it returns."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "dynamics"
NUMPY_STYLE = ("Parameters\n----------", "Returns\n-------")


def _public_callables():
    """(file, line, qualified name, docstring or None) of every public class, function and method."""
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))

        def visit(body, prefix):
            for node in body:
                if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                    yield path, node.lineno, prefix + node.name, ast.get_docstring(node)
                if isinstance(node, ast.ClassDef):
                    yield from visit(node.body, prefix + node.name + ".")

        yield from visit(tree.body, "")


CALLABLES = list(_public_callables())


def test_every_public_callable_has_a_docstring():
    assert len(CALLABLES) > 200
    missing = [f"{p.relative_to(ROOT.parent)}:{line} {name}" for p, line, name, doc in CALLABLES if not doc]
    assert not missing, "no docstring:\n" + "\n".join(missing)


def test_one_docstring_style():
    numpy_style = [f"{p.relative_to(ROOT.parent)}:{line} {name}" for p, line, name, doc in CALLABLES
                   if doc and any(h in doc for h in NUMPY_STYLE)]
    assert not numpy_style, "NumPy-style sections (the engine uses Google style):\n" + "\n".join(numpy_style)


def test_every_rhs_and_observe_states_its_arguments_and_result():
    flows = [(p, line, name, doc) for p, line, name, doc in CALLABLES if name.split(".")[-1] in ("rhs", "observe")]
    assert len(flows) >= 9  # MatrixFlow, SymmetrizedFlow, ModeFlow, GSGFlow (rhs and observe) and the numba rhs
    bad = [f"{p.relative_to(ROOT.parent)}:{line} {name}" for p, line, name, doc in flows
           if not doc or "Args:" not in doc or not ("Returns:" in doc or "dy:" in doc) or "(R" not in doc
           and "(n,)" not in doc]
    assert not bad, "rhs/observe without Args, Returns (or the output argument) and shapes:\n" + "\n".join(bad)
