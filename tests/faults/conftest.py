"""Fixtures of the fault suite: fleets that always stop, their logs on failure, and the
figures (recovery times, counts) each test records and the run prints at its end."""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_fleet import Figures, FleetFactory
from process_fleet import ProcessFleet

from daybook.registry.base import Registry
from daybook.registry.file import FileRegistry
from daybook.store.base import Store
from daybook.store.local import LocalStore

FIGURES_FILE = "fault-figures.json"
_FIGURES = pytest.StashKey[dict[str, dict[str, Any]]]()
_FIGURES_PATH = pytest.StashKey[Path]()
_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture
def figures(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Figures:
    store = request.config.stash.setdefault(_FIGURES, {})
    request.config.stash[_FIGURES_PATH] = tmp_path_factory.getbasetemp() / FIGURES_FILE
    return Figures(store, request.node.name)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    found = config.stash.get(_FIGURES, {})
    if not found:
        return
    terminalreporter.section("fault suite figures")
    for test, values in found.items():
        shown = ", ".join(f"{name}={value}" for name, value in values.items())
        terminalreporter.write_line(f"{test}: {shown}")
    path = config.stash[_FIGURES_PATH]
    path.write_text(json.dumps(found, indent=2) + "\n")
    terminalreporter.write_line(f"figures written to {path}")


@pytest.fixture
def make_fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FleetFactory]:
    """Builds fleets on the given store and registry; stops every process at teardown and
    shows the tail of each log when the test failed."""
    fleets: list[ProcessFleet] = []

    def make(
        store: Store | None = None, registry: Registry | None = None, **options: Any
    ) -> ProcessFleet:
        root = tmp_path / f"fleet{len(fleets)}" if fleets else tmp_path
        root.mkdir(exist_ok=True)
        fleet = ProcessFleet(
            root,
            store=store or LocalStore(root / "store"),
            registry=registry or FileRegistry(root / "mappings.json"),
            **options,
        )
        fleets.append(fleet)
        return fleet

    yield make
    failures = [problem for fleet in fleets for problem in fleet.close()]
    if request.node.stash.get(_FAILED, False):
        for fleet in fleets:
            for process in fleet.processes:
                print(f"----- {process.name} (pid {process.pid}) {process.log_path} -----")
                print(process.tail())
    assert not failures, "\n".join(failures)
