"""The README's "Test your own loss" snippet runs as written (a user copies it into a test file)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippet() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Test your own loss", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section should hold exactly one python example"
    return blocks[0]


def test_the_readme_example_runs_and_its_properties_pass():
    """Execute the snippet as a module and call each of its hypothesis tests (each runs its examples)."""
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(_snippet(), str(README), "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert len(tests) == 2
    for test in tests:
        test()
