"""Pull throughput: `daybook pull` against curl | tar pipelines on the same objects and server."""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import statistics
import sys
from pathlib import Path

from bench.assets import AssetSpec, ensure_asset, large_asset, small_files_asset
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

_EXTRACT_FILE = (
    "import sys\n"
    "from pathlib import Path\n"
    "from daybook.install.extract import safe_extract\n"
    "with open(sys.argv[1], 'rb') as archive:\n"
    "    safe_extract(archive, Path(sys.argv[2]))\n"
)
_INFLATE_FILE = (
    "import sys\n"
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
    installs = options.workdir / "installs"
    # Every contender that unpacks gets its own directory, all on one file system; the
    # daybook installer puts the tree under <service>/<version>/ beside its lock file.
    directories = {
        DAYBOOK: installs / "daybook",
        CURL_TAR: installs / "curl-tar",
        CURL_PIGZ: installs / "curl-pigz",
        STDLIB: installs / "stdlib",
        EXTRACTOR: installs / "extractor",
    }
    commands = contenders(results, options, spec, url=url, archive=archive, directories=directories)
    timings = time_contenders(options, env, spec, commands, directories)
    add_pull_figures(results, spec, timings)


def contenders(
    results: Results,
    options: Options,
    spec: AssetSpec,
    *,
    url: str,
    archive: Path,
    directories: dict[str, Path],
) -> dict[str, list[str]]:
    """The command of each contender that can run here; a row says which cannot."""
    pull = [str(options.daybook), "pull", "--host", host_for(spec), "--json"]
    python = sys.executable
    commands: dict[str, list[str]] = {
        DAYBOOK: [*pull, "--install-dir", str(directories[DAYBOOK])],
    }
    quoted = shlex.quote(url)
    if shutil.which("curl"):
        commands[CURL_TAR] = pipeline(f"curl -sf {quoted} | tar -xzf -", directories[CURL_TAR])
        if shutil.which("pigz"):
            commands[CURL_PIGZ] = pipeline(
                f"curl -sf {quoted} | pigz -dc | tar -xf -", directories[CURL_PIGZ]
            )
        else:
            results.missing(SECTION, f"{spec.service}: {CURL_PIGZ}", "pigz not installed")
    else:
        results.missing(SECTION, f"{spec.service}: curl pipelines", "curl not installed")
    if not options.quick:
        commands[STDLIB] = [python, "-c", _STDLIB_PULL, url, str(directories[STDLIB])]
    commands[DRY_RUN] = [*pull, "--install-dir", str(directories[DAYBOOK]), "--dry-run"]
    commands[EXTRACTOR] = [python, "-c", _EXTRACT_FILE, str(archive), str(directories[EXTRACTOR])]
    commands[INFLATE] = [python, "-c", _INFLATE_FILE, str(archive)]
    return commands


def time_contenders(
    options: Options,
    env: dict[str, str],
    spec: AssetSpec,
    commands: dict[str, list[str]],
    directories: dict[str, Path],
) -> dict[str, list[float]]:
    """Round by round, each into a clean directory; each tree checked once to be whole."""
    trees = dict(directories)
    trees[DAYBOOK] = directories[DAYBOOK] / spec.service / spec.version
    checked: set[str] = set()

    def clean(name: str) -> None:
        directory = directories.get(name)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
        # Let the file system finish with the last run's files before the next is timed.
        os.sync()

    def verify_once(name: str) -> None:
        if name in trees and name not in checked:
            checked.add(name)
            found = tree_bytes(trees[name])
            if found != spec.unpacked_bytes:
                raise RuntimeError(f"{name} unpacked {found} bytes, expected {spec.unpacked_bytes}")

    timings = rounds(
        {name: functools.partial(run_checked, argv, env) for name, argv in commands.items()},
        runs=options.runs,
        warmup=options.warmup,
        before=clean,
        after=verify_once,
    )
    for directory in directories.values():
        shutil.rmtree(directory, ignore_errors=True)
    return timings


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


def tree_bytes(root: Path) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(directory, name)).st_size
    return total


def inflater() -> str:
    try:
        import isal  # noqa: F401
    except ImportError:
        return "zlib (isal not installed)"
    return "isal"
