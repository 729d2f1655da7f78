"""Functions short enough to read at once: none over 60 lines, anywhere in the tree.

ruff's C901 (in pyproject.toml) keeps their branching in check; this keeps their length.
A function that must be longer says why in LONG_ON_PURPOSE, and the reason is shown here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREES = ("daybook", "master", "minion", "bench", "testing", "tests")
MAX_LINES = 60
# "path:function" -> why it is longer. Empty: the extraction loop fits since its split.
LONG_ON_PURPOSE: dict[str, str] = {}


def long_functions() -> dict[str, int]:
    found = {}
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > MAX_LINES:
                        found[f"{path.relative_to(ROOT)}:{node.name}"] = lines
    return found


def test_no_function_is_longer_than_a_screen() -> None:
    too_long = {name: n for name, n in long_functions().items() if name not in LONG_ON_PURPOSE}
    assert too_long == {}


def test_every_exception_still_needs_its_reason() -> None:
    assert set(LONG_ON_PURPOSE) <= set(long_functions()), "a listed function got shorter"
