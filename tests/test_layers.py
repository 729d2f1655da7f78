"""The layers, kept: every import of every module points down the stack, never up or around.

    model  <-  wire, views, small helpers  <-  stores, registries, install, net, config
           <-  master, minion  <-  cli

Imports inside functions count as much as those at the top: a lazy import is still a
dependency. Read from the source with `ast`, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("daybook", "master", "minion")

# What each part of the tree is, lowest first. A module belongs to the longest prefix here.
RANKS = {
    "daybook": 0,  # daybook/__init__.py: the version, nothing else
    "daybook.errors": 0,
    "daybook.model": 0,
    "daybook.wire": 1,
    "daybook.views": 1,
    "daybook.mailbox": 1,
    "daybook.stopping": 1,
    "daybook.files": 1,
    "daybook.backoff": 1,
    "daybook.logs": 1,
    "daybook.lifecycle": 1,
    "daybook.cmalloc": 1,
    "daybook.urls": 1,
    "daybook.config": 2,
    "daybook.store": 2,
    "daybook.registry": 2,
    "daybook.install": 2,
    "daybook.net": 2,
    "master": 3,
    "minion": 3,
    "daybook.cli": 4,
    "daybook.__main__": 4,
}
# The one CLI module that starts the daemons, and so may reach up into them.
DAEMON_STARTER = "daybook.cli.daemons"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str | None:
    """The entry of RANKS a module of ours belongs to; None for anything not ours."""
    if module.split(".", maxsplit=1)[0] not in PACKAGES:
        return None
    candidates = [p for p in RANKS if module == p or module.startswith(p + ".")]
    return max(candidates, key=len)


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from daybook import wire` imports daybook.wire
                submodule = f"{node.module}.{alias.name}"
                yield node.lineno, submodule if is_ours(submodule) else node.module


def our_modules() -> list[tuple[str, Path]]:
    return sorted(
        (module_name(path), path) for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    )


def is_ours(module: str) -> bool:
    """A module (or a name in one) of our packages, as opposed to an attribute import."""
    head = module.split(".", maxsplit=1)[0]
    if head not in PACKAGES:
        return False
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def points_down(module: str, target: str) -> bool:
    """Whether `module` may import `target`: from a lower layer, never between master and
    minion, and into master or minion only from the CLI module that starts them."""
    mine, theirs = RANKS[part_of(module) or ""], RANKS[part_of(target) or ""]
    if part_of(target) in ("master", "minion") and mine >= 3:
        return module == DAEMON_STARTER
    return theirs <= mine


def dependencies() -> list[tuple[str, int, str]]:
    found = []
    for module, path in our_modules():
        for line, target in imports_of(path):
            if is_ours(target) and part_of(target) != part_of(module):
                found.append((module, line, target))
    return found


def test_every_module_of_ours_has_a_place_in_the_layers() -> None:
    assert all(part_of(module) is not None for module, _path in our_modules())


def test_imports_point_down_the_layers() -> None:
    wrong = [
        f"{module}:{line} imports {target}"
        for module, line, target in dependencies()
        if not points_down(module, target)
    ]
    assert wrong == []


def test_the_model_imports_nothing_but_itself_errors_and_the_standard_library() -> None:
    wrong = []
    for module, path in our_modules():
        if part_of(module) != "daybook.model":
            continue
        for line, target in imports_of(path):
            top = target.split(".")[0]
            allowed = (
                top in sys.stdlib_module_names
                or top == "__future__"
                or target.startswith(("daybook.model", "daybook.errors"))
            )
            if not allowed:
                wrong.append(f"{module}:{line} imports {target}")
    assert wrong == []


def test_the_parts_of_one_layer_do_not_import_each_other_in_circles() -> None:
    graph: defaultdict[str, set[str]] = defaultdict(set)
    for module, _line, target in dependencies():
        graph[part_of(module) or ""].add(part_of(target) or "")

    def cycle_from(start: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in sorted(graph[path[-1]]):
            if nxt == start:
                return (*path, nxt)
            if nxt not in path and (found := cycle_from(start, (*path, nxt))):
                return found
        return None

    cycles = {" -> ".join(c) for start in list(graph) if (c := cycle_from(start, (start,)))}
    assert cycles == set()


@pytest.mark.parametrize(
    ("module", "target", "allowed"),
    [
        ("daybook.model.sync", "daybook.wire", False),
        ("daybook.wire", "daybook.model.sync", True),
        ("master.master", "minion.sync", False),
        ("daybook.net.client", "master.master", False),
        ("daybook.cli.fleet", "master.process", False),
        ("daybook.cli.daemons", "master.process", True),
    ],
)
def test_the_rule_itself_tells_up_from_down(module: str, target: str, allowed: bool) -> None:
    assert points_down(module, target) is allowed
