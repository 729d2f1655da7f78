"""Runs Python code in a child that file permissions bind, as they bind a minion not run
as root: tests of what such a process can and cannot delete hold when the suite runs as
root too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The capabilities that let root ignore modes: without them, a 0555 directory is as
# read-only to root as to anyone.
_OVERRIDES = "-dac_override,-dac_read_search,-fowner"


def run_unprivileged(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `code` with `args` as a child bound by file permissions; skip where that cannot
    be arranged (root without setpriv, or not allowed to drop capabilities)."""
    command = [sys.executable, "-c", code, *args]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, and setpriv is not there to drop the overrides")
        probe = subprocess.run(_dropping([sys.executable, "-c", ""]), check=False)
        if probe.returncode != 0:
            pytest.skip("running as root, and the overrides cannot be dropped here")
        command = _dropping(command)
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        command,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _dropping(command: list[str]) -> list[str]:
    return ["setpriv", f"--bounding-set={_OVERRIDES}", f"--inh-caps={_OVERRIDES}", "--", *command]
