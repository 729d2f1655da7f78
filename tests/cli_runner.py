"""Running `daybook` in-process as a test: `main(argv)` with its output captured, in the
environment each test file gives it. One runner for every CLI test file, so what a "run"
is (exit code, stdout, stderr, JSON) is written once."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from daybook.cli.main import main


@dataclass
class Result:
    """One run of the command: its exit code and what it printed."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Run = Callable[..., Result]


def cli_runner(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *,
    unset: Iterable[str] = (),
    env: Mapping[str, str],
) -> Run:
    """A runner of `daybook ARGV...` with `unset` removed from the environment, then `env`
    set (so a name may be in both: it ends up as `env` says)."""
    for name in unset:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def invoke(*argv: str) -> Result:
        capsys.readouterr()  # only this run's output
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke
