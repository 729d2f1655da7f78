"""CLI start-up: wall time of quick commands, and which imports cost most when over target."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from collections.abc import Callable

from bench.results import Results, Target
from bench.s3 import client_env
from bench.timing import Options, rounds, run_checked

SECTION = "cli"
STARTUP = Target(0.150)
MAPPINGS = {
    "*": ("base",),
    "web-*": ("base", "nginx"),
    "web-prod-*": ("base", "nginx", "app"),
    "db-*": ("base", "postgres"),
    "web-prod-1": ("base", "nginx", "app", "canary"),
}


def run(results: Results, options: Options) -> None:
    from daybook.registry.file import FileRegistry

    data_dir = options.workdir / "cli"
    registry = FileRegistry(data_dir / "mappings.json")
    for pattern, services in MAPPINGS.items():
        registry.update(pattern, replacing_with(services))
    env = client_env("http://127.0.0.1:9", options.workdir)
    env.update(DAYBOOK_DATA_DIR=str(data_dir), DAYBOOK_HOSTNAME="bench-cli")
    daybook = str(options.daybook)

    help_command = [daybook, "sync", "--help"]
    help_name = "daybook sync --help"
    if subprocess.run(help_command, env=env, capture_output=True, check=False).returncode != 0:
        help_command, help_name = [daybook, "--help"], "daybook --help (no sync command yet)"
    commands = {
        "daybook map resolve HOST": [daybook, "map", "resolve", "web-prod-7"],
        help_name: help_command,
        "python -c pass (interpreter floor)": [sys.executable, "-c", "pass"],
    }
    runs = 5 if options.quick else 20
    timings = rounds(
        {name: functools.partial(run_checked, argv, env) for name, argv in commands.items()},
        runs=runs,
        warmup=2,
    )
    for name, values in timings.items():
        target = None if name.startswith("python") else STARTUP
        figure = results.add(SECTION, name, "s", values, target=target)
        if figure.met is False:
            argv = commands[name]
            for line in heaviest_imports(argv[1:], env):
                print(f"#   {line}")


def replacing_with(services: tuple[str, ...]) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    return lambda _current: services


def heaviest_imports(args: list[str], env: dict[str, str], count: int = 8) -> list[str]:
    """The top-level imports with the largest cumulative time, from `python -X importtime`."""
    code = "import sys; from daybook.cli.main import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    rows = []
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if match and len(match[3]) <= 2:
            rows.append((int(match[2]), match[4]))
    rows.sort(reverse=True)
    return [f"{cumulative / 1000:7.1f} ms  {name}" for cumulative, name in rows[:count]]
