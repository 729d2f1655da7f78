"""Pattern scale: one host against 100,000 patterns, and a plan for 10,000 x 10,000."""

from __future__ import annotations

import functools
import random
import statistics
import time

from bench.results import Results, Target
from bench.timing import Options, timed
from daybook.model.mappings import MappingTable
from daybook.model.patterns import PatternTable, resolve_host
from daybook.model.plan import plan_mappings

SECTION = "patterns"
ONE_HOST = Target(0.050)
TABLE_BUILD = Target(1.0)
PLAN = Target(2.0)

ROLES = ("web", "api", "db", "cache", "queue", "search", "auth", "mail", "cdn", "log", "batch")
REGIONS = ("euw1", "euc1", "use1", "usw2", "aps1", "ape1", "sae1", "afs1")
STAGES = ("prod", "stage", "dev")


def random_host(rng: random.Random) -> str:
    return (
        f"{rng.choice(ROLES)}-{rng.choice(REGIONS)}-{rng.randrange(10_000):04d}"
        f".{rng.choice(STAGES)}.example.com"
    )


def random_pattern(rng: random.Random) -> str:
    """Exact names 40 %, prefix-* 30 %, *-suffix 15 %, several stars 15 %."""
    role, region, stage = rng.choice(ROLES), rng.choice(REGIONS), rng.choice(STAGES)
    number = rng.randrange(10_000)
    draw = rng.random()
    if draw < 0.40:
        return f"{role}-{region}-{number:04d}.{stage}.example.com"
    if draw < 0.70:
        return f"{role}-{region}-{number // 10:03d}*"
    if draw < 0.85:
        return f"*-{region}-{number:04d}.{stage}.example.com"
    if rng.random() < 0.5:
        return f"{role}-*-{number // 10:03d}*.{stage}.example.com"
    return f"*-{region}-*{number % 1000:03d}*.{stage}.*"


def random_table(rng: random.Random, size: int) -> MappingTable:
    table: MappingTable = {}
    while len(table) < size:
        services = tuple(sorted({f"svc{rng.randrange(100)}" for _ in range(rng.randrange(1, 4))}))
        table[random_pattern(rng)] = services
    return table


def proposed_change(rng: random.Random, current: MappingTable) -> MappingTable:
    """About 1 % of patterns get a new service, 0.5 % go away and 0.5 % are added."""
    proposed = dict(current)
    for pattern in rng.sample(sorted(current), len(current) // 100):
        proposed[pattern] = (*current[pattern], "svc_new")
    for pattern in rng.sample(sorted(current), len(current) // 200):
        proposed.pop(pattern, None)
    added = 0
    while added < len(current) // 200:
        pattern = random_pattern(rng)
        if pattern not in proposed:
            proposed[pattern] = ("svc_added",)
            added += 1
    return proposed


def run(results: Results, options: Options) -> None:
    rng = random.Random(11)
    big = random_table(rng, 100_000)
    probes = [random_host(rng) for _ in range(200)]
    runs = options.runs
    table = measure_table_build(results, big, runs)
    measure_one_host(results, table, probes, runs)
    one_pass = [timed(functools.partial(resolve_host, host, big)) for host in probes[:runs]]
    results.add(
        SECTION,
        "one host vs 100,000 patterns, from scratch",
        "s",
        one_pass,
        target=ONE_HOST,
        note="resolve_host: validate + one regex scan, no table",
    )
    measure_plan(results, rng, runs)


def measure_table_build(results: Results, big: MappingTable, runs: int) -> PatternTable:
    """Build the table `runs` times; return the last one built."""
    tables: list[PatternTable] = []
    build = []
    for _ in range(runs):
        start = time.perf_counter()
        tables.append(PatternTable(big))
        build.append(time.perf_counter() - start)
    table = tables[-1]
    del tables[:-1]
    results.add(SECTION, "PatternTable build, 100,000 patterns", "s", build, target=TABLE_BUILD)
    return table


def measure_one_host(results: Results, table: PatternTable, probes: list[str], runs: int) -> None:
    per_host = []
    slowest = 0.0
    for _ in range(runs):
        times = [timed(functools.partial(table.best_match, host)) for host in probes]
        per_host.append(statistics.mean(times))
        slowest = max(slowest, *times)
    candidates = [len(table.resolve(host, explain=True).candidates) for host in probes]
    results.add(
        SECTION,
        "one host vs 100,000 patterns, table built",
        "s",
        per_host,
        target=ONE_HOST,
        note=f"mean of {len(probes)} hosts a run; slowest {slowest * 1e6:.0f} us; "
        f"{statistics.mean(candidates):.1f} matching patterns a host on average",
    )
    explain = [
        statistics.mean(
            timed(functools.partial(table.resolve, host, explain=True)) for host in probes
        )
        for _ in range(runs)
    ]
    results.add(SECTION, "one host --explain, table built", "s", explain)


def measure_plan(results: Results, rng: random.Random, runs: int) -> None:
    current = random_table(rng, 10_000)
    proposed = proposed_change(rng, current)
    # Half the fleet is named as some pattern expects, half at random.
    expected = [pattern.replace("*", str(rng.randrange(10))) for pattern in current]
    hosts = rng.sample(expected, 5_000) + [random_host(rng) for _ in range(5_000)]
    plans = []
    changed = 0
    for _ in range(runs):
        start = time.perf_counter()
        plan = plan_mappings(current, proposed, hosts)
        plans.append(time.perf_counter() - start)
        changed = len(plan.changes)
    results.add(
        SECTION,
        "plan 10,000 hosts x 10,000 patterns",
        "s",
        plans,
        target=PLAN,
        note=f"both tables built; {changed} hosts change",
    )
