"""`python -m bench [SECTION...] [--quick]`: run the benchmarks, print the table, save JSON."""

from __future__ import annotations

import argparse
import compileall
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import fleet_bench, ingest, pattern_scale, pull, push, startup, swarm_scale
from bench.results import HEADER, Results, machine_info, render_table
from bench.timing import Options

Section = Callable[[Results, Options], None]
# In the order they run: the quick ones first.
SECTIONS: dict[str, tuple[Section, str]] = {
    "patterns": (pattern_scale.run, "one host vs 100,000 patterns; a 10,000 x 10,000 plan"),
    "cli": (startup.run, "start-up of `map resolve` and `sync --help`"),
    "pull": (pull.run, "daybook pull vs curl | tar on a large and a many-files asset"),
    "fleet": (
        fleet_bench.run_processes,
        "100 minion processes: start-up, no-op sync --wait for 10/50/100, no-op requests, "
        "idle CPU and memory, sync event bytes",
    ),
    "swarm": (
        fleet_bench.run_swarm,
        "1,000 minions in one process: no-op sync --wait, master memory and idle CPU",
    ),
    "push": (
        push.run,
        "a push reaching 3 and 20 minions with no operator; each install's CPU, signed URLs "
        "against minions' own credentials",
    ),
    "ingest": (ingest.run, "reports a second the master ingests from a CURVE load generator"),
    "swarm10k": (
        swarm_scale.run,
        "10,000 minions in several swarm processes: master idle CPU and RSS at 1,000 and "
        "10,000, no-op sync --wait, all up and answering after a master SIGKILL",
    ),
}
# Run only when named: 10,000 minions take 15 minutes or more on a small machine.
OPT_IN = frozenset({"swarm10k"})
BENCH_DIR = Path(__file__).resolve().parent


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    chosen = args.sections or [name for name in SECTIONS if name not in OPT_IN]
    daybook = find_daybook(parser)

    byte_compile()
    machine = machine_info()
    print(
        f"# {machine['cpu_model']}, {machine['nproc']} CPUs, {machine['memory_gib']} GiB, "
        f"Python {machine['python']}, load {', '.join(f'{x:.2f}' for x in machine['load_average'])}"
    )
    results = Results()
    with tempfile.TemporaryDirectory(prefix="daybook-bench-") as scratch:
        options = Options(
            runs=args.runs or (2 if args.quick else 5),
            warmup=0 if args.quick else 1,
            quick=args.quick,
            workdir=Path(scratch),
            cache_dir=args.cache_dir,
            daybook=daybook,
            swarm_size=args.swarm_size,
        )
        print(HEADER)
        for name in chosen:
            section, _ = SECTIONS[name]
            section(results, options)
    print()
    print(render_table(results))
    path = results.write_json(args.output_dir)
    print(f"\nwrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run Daybook's benchmarks; print median/min/max per figure and write "
        "bench/results-<timestamp>.json.",
        epilog="sections: " + "; ".join(f"{name}: {text}" for name, (_, text) in SECTIONS.items()),
    )
    parser.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help=f"any of {', '.join(SECTIONS)} (default: all but {', '.join(sorted(OPT_IN))})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer runs, no warm-up, fewer side contenders"
    )
    parser.add_argument("--runs", type=int, help="timed runs per figure (default 5, quick 2)")
    parser.add_argument(
        "--swarm-size",
        type=int,
        default=10_000,
        help="minions in the swarm10k section (default 10,000)",
    )
    parser.add_argument("--output-dir", type=Path, default=BENCH_DIR, help="where the JSON goes")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "daybook-bench-cache",
        help="generated assets are kept here between runs",
    )
    return parser


def find_daybook(parser: argparse.ArgumentParser) -> Path:
    """The daybook command of this environment: beside this Python, else on PATH."""
    daybook = Path(sys.executable).parent / "daybook"
    if daybook.exists():
        return daybook
    found = shutil.which("daybook")
    if found is None:
        parser.error("no daybook command next to this Python or on PATH: run `make bench`")
    return Path(found)


def byte_compile() -> None:
    """Write the bytecode an installed wheel would have, before anything is timed.

    With PYTHONDONTWRITEBYTECODE set (as on some CI machines) an editable install never
    caches it, and every master, minion and CLI process the bench starts would compile the
    sources again: about 70 ms of CPU a process, which no real installation pays.
    """
    root = BENCH_DIR.parent
    for package in ("daybook", "master", "minion", "bench", "testing"):
        compileall.compile_dir(root / package, quiet=1)


if __name__ == "__main__":
    sys.exit(main())
