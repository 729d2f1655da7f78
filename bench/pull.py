"""Pull throughput: `daybook pull` against curl | tar pipelines on the same objects and server."""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import stat
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.assets import AssetSpec, ensure_asset, large_asset, small_files_asset
from bench.disk import QUIET_US_PER_FILE, wait_until_quiet
from bench.results import Results, Target
from bench.s3 import S3Server, create_bucket, moto_server, presigned_url
from bench.timing import Options, rounds, run_checked

SECTION = "pull"
BUCKET = "bench"
# From the speed issues: pull at least 2.5x faster than `curl | tar -xzf -` on the large
# asset and within 1.2x of the inflate floor; at least 1.2x faster on 20,000 small files
# (round two; round one asked for as fast).
LARGE_SPEEDUP = Target(2.5, at_least=True)
LARGE_FLOOR_RATIO = Target(1.2)
SMALL_SPEEDUP = Target(1.2, at_least=True)

_STDLIB_PULL = (
    "import sys, tarfile, urllib.request\n"
    "with urllib.request.urlopen(sys.argv[1]) as response:\n"
    "    with tarfile.open(fileobj=response, mode='r|gz') as archive:\n"
    "        archive.extractall(sys.argv[2], filter='data')\n"
)


def run(results: Results, options: Options) -> None:
    specs = [large_asset(), small_files_asset()]
    archives = {spec.service: ensure_asset(spec, options.cache_dir) for spec in specs}
    settle_disk(results, options)
    with moto_server(options.workdir) as server:
        env = dict(server.env)
        env.update(
            DAYBOOK_STORE=f"s3://{BUCKET}",
            DAYBOOK_REGISTRY=f"file://{options.workdir / 'mappings.json'}",
            DAYBOOK_DATA_DIR=str(options.workdir / "node"),
        )
        create_bucket(server, BUCKET)
        run_checked([str(options.daybook), "push", *map(str, archives.values())], env)
        for spec in specs:
            run_checked([str(options.daybook), "map", "set", host_for(spec), spec.service], env)
        for spec in specs:
            measure_asset(results, options, server, env, spec=spec, archive=archives[spec.service])


def settle_disk(results: Results, options: Options) -> None:
    """Wait for a disk still passing over freshly deleted inodes (bench.disk); say so."""
    state = wait_until_quiet(options.workdir)
    results.add(
        SECTION,
        "disk: creating an empty file, before timing",
        "s",
        [state.us_per_file / 1e6],
        note=f"quiet under {QUIET_US_PER_FILE:.0f} us; waited {state.waited_s:.0f} s",
    )
    if not state.quiet:
        results.notes.append(
            f"{SECTION}: creating a file still took {state.us_per_file:.0f} us after "
            f"{state.waited_s:.0f} s: every contender's writes of the small asset are "
            "slowed, daybook's most (see bench/disk.py)"
        )


def host_for(spec: AssetSpec) -> str:
    return f"pull-{spec.service}"


# Contenders, in the order they run in each round.
DAYBOOK = "daybook pull"
CURL_TAR = "curl | tar -xzf -"
CURL_PIGZ = "curl | pigz -dc | tar -xf -"
STDLIB = "python tarfile r|gz (stdlib)"
# Where daybook's time goes: the command's fixed cost (interpreter, botocore, S3 client,
# registry, listing), its extractor alone on a local file, and inflating alone.
DRY_RUN = "daybook pull --dry-run"
EXTRACTOR = "daybook extractor, local file"
INFLATE = "inflate only, local file"
# The contenders that leave a tree behind, checked byte for byte after every run.
UNPACKS = frozenset({DAYBOOK, CURL_TAR, CURL_PIGZ, STDLIB, EXTRACTOR})

# The extraction as `daybook pull` runs it, its heap tuned as the command's is.
_EXTRACT_FILE = (
    "import os, sys\n"
    "from pathlib import Path\n"
    "from daybook.cmalloc import find_mallopt, keep_freed_blocks\n"
    "from daybook.install.extract import safe_extract\n"
    "keep_freed_blocks(os.environ, find_mallopt())\n"
    "with open(sys.argv[1], 'rb') as archive:\n"
    "    safe_extract(archive, Path(sys.argv[2]))\n"
)
# The floor: inflating alone, its heap tuned as the extractor's is, or glibc's churn of
# fresh blocks would count against the floor and flatter the extractor.
_INFLATE_FILE = (
    "import os, sys\n"
    "from daybook.cmalloc import find_mallopt, keep_freed_blocks\n"
    "keep_freed_blocks(os.environ, find_mallopt())\n"
    "try:\n"
    "    from isal import isal_zlib as inflate_lib\n"
    "except ImportError:\n"
    "    import zlib as inflate_lib\n"
    "inflater = inflate_lib.decompressobj(wbits=31)\n"
    "with open(sys.argv[1], 'rb') as archive:\n"
    "    while chunk := archive.read(1 << 20):\n"
    "        inflater.decompress(chunk)\n"
    "inflater.flush()\n"
)


def measure_asset(
    results: Results,
    options: Options,
    server: S3Server,
    env: dict[str, str],
    *,
    spec: AssetSpec,
    archive: Path,
) -> None:
    url = presigned_url(server, BUCKET, spec.filename)
    label = f"{spec.service} ({len(spec.file_sizes):,} files, {spec.unpacked_bytes / 1e6:.0f} MB)"
    print(f"# pull: {label}, {archive.stat().st_size / 1e6:.1f} MB gzip", flush=True)
    commands = contenders(results, options, spec, url=url, archive=archive)
    timings = time_contenders(options, env, spec, commands)
    add_pull_figures(results, spec, timings)


# A contender's command line, given the fresh directory it unpacks into this run.
Command = Callable[[Path], list[str]]


def contenders(
    results: Results,
    options: Options,
    spec: AssetSpec,
    *,
    url: str,
    archive: Path,
) -> dict[str, Command]:
    """The command of each contender that can run here; a row says which cannot."""
    pull = [str(options.daybook), "pull", "--host", host_for(spec), "--json"]
    python = sys.executable
    commands: dict[str, Command] = {
        DAYBOOK: lambda directory: [*pull, "--install-dir", str(directory)],
    }
    quoted = shlex.quote(url)
    if shutil.which("curl"):
        commands[CURL_TAR] = functools.partial(pipeline, f"curl -sf {quoted} | tar -xzf -")
        if shutil.which("pigz"):
            commands[CURL_PIGZ] = functools.partial(
                pipeline, f"curl -sf {quoted} | pigz -dc | tar -xf -"
            )
        else:
            results.missing(SECTION, f"{spec.service}: {CURL_PIGZ}", "pigz not installed")
    else:
        results.missing(SECTION, f"{spec.service}: curl pipelines", "curl not installed")
    if not options.quick:
        commands[STDLIB] = lambda directory: [python, "-c", _STDLIB_PULL, url, str(directory)]
    commands[DRY_RUN] = lambda directory: [*pull, "--install-dir", str(directory), "--dry-run"]
    extract_file = [python, "-c", _EXTRACT_FILE, str(archive)]
    commands[EXTRACTOR] = lambda directory: [*extract_file, str(directory)]
    commands[INFLATE] = lambda _directory: [python, "-c", _INFLATE_FILE, str(archive)]
    return commands


def time_contenders(
    options: Options, env: dict[str, str], spec: AssetSpec, commands: dict[str, Command]
) -> dict[str, list[float]]:
    """Round by round, each run into a directory of its own; each tree checked to be whole.

    No inode is freed until every run is done: a run's files are emptied once checked, and
    deleted at the end. On ext4 without a journal (this kind of machine's disk) creating a
    file passes over every inode freed in the last minute (`recently_deleted`, one inode
    table lookup each); perf put about half of `tar -xzf`'s time there after the previous run's
    tree was removed, which swamped the contenders' difference. Emptying the files still
    gives their memory back: left whole, six runs' trees (gigabytes of page cache) made the
    200 MB asset's runs take 0.55-1.0 s instead of a steady 0.55-0.6 s on this VM.
    """
    base = Path(tempfile.mkdtemp(prefix="installs-", dir=options.workdir))
    runs: dict[str, int] = dict.fromkeys(commands, 0)

    def directory_for(name: str) -> Path:
        return base / slug(name) / str(runs[name])

    def timed_run(name: str) -> float:
        directory = directory_for(name)
        directory.mkdir(parents=True)
        return run_checked(commands[name](directory), env)

    def verify(name: str) -> None:
        root = directory_for(name)
        if name == DAYBOOK:
            # The installer puts the tree under <service>/<version>/ beside its lock file.
            root = root / spec.service / spec.version
        found = empty_tree(root)
        if name in UNPACKS and found != spec.unpacked_bytes:
            raise RuntimeError(f"{name} unpacked {found} bytes, expected {spec.unpacked_bytes}")
        runs[name] += 1

    try:
        return rounds(
            {name: functools.partial(timed_run, name) for name in commands},
            runs=options.runs,
            warmup=options.warmup,
            # Write back the last run's files so no run pays for another's.
            before=lambda _name: os.sync(),
            after=verify,
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def slug(name: str) -> str:
    return "".join(character if character.isalnum() else "-" for character in name)


def add_pull_figures(results: Results, spec: AssetSpec, timings: dict[str, list[float]]) -> None:
    notes = {
        DRY_RUN: "fixed cost: start-up, S3 client, registry, listing",
        EXTRACTOR: "no network, no botocore",
        INFLATE: f"{inflater()}, nothing written",
    }
    for name, values in timings.items():
        rate = spec.unpacked_bytes / statistics.median(values) / 1e6
        note = notes.get(name, f"{rate:.0f} MB/s")
        results.add(SECTION, f"{spec.service}: {name}", "s", values, note=note)

    def ratios(numerator: str, denominator: str) -> list[float]:
        pairs = zip(timings[numerator], timings[denominator], strict=True)
        return [top / bottom for top, bottom in pairs]

    if CURL_TAR in timings:
        results.add(
            SECTION,
            f"{spec.service}: speed-up of daybook pull over curl | tar",
            "x",
            ratios(CURL_TAR, DAYBOOK),
            target=LARGE_SPEEDUP if spec.service == "large" else SMALL_SPEEDUP,
        )
    if spec.service == "large":
        results.add(
            SECTION,
            f"{spec.service}: daybook pull / inflate only",
            "x",
            ratios(DAYBOOK, INFLATE),
            target=LARGE_FLOOR_RATIO,
        )
        results.add(
            SECTION,
            f"{spec.service}: daybook extractor / inflate only",
            "x",
            ratios(EXTRACTOR, INFLATE),
            target=LARGE_FLOOR_RATIO,
            note="extraction without the command's fixed cost",
        )


def pipeline(command: str, directory: Path) -> list[str]:
    """A shell pipeline that unpacks into `directory`, failing if any stage fails."""
    return ["bash", "-c", f'set -o pipefail; {command} -C "$0"', str(directory)]


def empty_tree(root: Path) -> int:
    """The bytes a tree's regular files held, then give back their data and page cache,
    keeping their inodes (see time_contenders). One walk for both: 20,000 files a run."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            total += info.st_size
            if stat.S_ISREG(info.st_mode):
                os.truncate(path, 0)
    return total


def inflater() -> str:
    try:
        import isal  # noqa: F401
    except ImportError:
        return "zlib (isal not installed)"
    return "isal"
