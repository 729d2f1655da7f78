"""Log set-up: the line format, the current stderr, verbosity, quiet libraries."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pytest

from daybook.logs import NOISY_LOGGERS, configure_logging, verbosity_level


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
    for name, noisy_level in noisy.items():
        logging.getLogger(name).setLevel(noisy_level)


def test_one_line_a_record_in_the_daybook_format(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging(logging.INFO)
    logging.getLogger("master.store_watcher").info("listed %d assets", 3)
    logging.getLogger("minion").debug("not shown")
    assert stderr.getvalue() == "daybook: INFO: listed 3 assets\n"


def test_another_program_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging(logging.WARNING, program="swarm")
    logging.getLogger("daybook_testing.swarm").warning("slow")
    assert stderr.getvalue() == "swarm: WARNING: slow\n"


def test_records_go_to_the_stderr_of_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_logging(logging.WARNING)
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logging.getLogger("daybook").warning("one")
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("daybook").warning("two")
    assert first.getvalue() == "daybook: WARNING: one\n"
    assert second.getvalue() == "daybook: WARNING: two\n"


def test_configuring_again_replaces_the_handler() -> None:
    configure_logging(logging.WARNING)
    configure_logging(logging.DEBUG)
    root = logging.getLogger()
    assert len(root.handlers) == 1
    assert root.level == logging.DEBUG


@pytest.mark.parametrize(
    ("verbosity", "level"),
    [(0, logging.WARNING), (1, logging.INFO), (2, logging.DEBUG), (5, logging.DEBUG)],
)
def test_each_v_shows_more(verbosity: int, level: int) -> None:
    assert verbosity_level(verbosity) == level


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.ERROR])
def test_chatty_libraries_show_warnings_at_most(level: int) -> None:
    configure_logging(level)
    for name in NOISY_LOGGERS:
        assert logging.getLogger(name).level == max(level, logging.WARNING)
