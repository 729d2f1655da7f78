"""Figures (several runs of one measurement), their targets, the table and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

# How a value prints: seconds get ms/us as fits, ratios an "x", sizes KiB/MiB.
Unit = Literal["s", "x", "bytes", "MiB", "MB", "count", "per_s", "percent"]


@dataclass(frozen=True)
class Target:
    """A bound the median must meet: `at_most` or `at_least` a value (in the figure's unit)."""

    value: float
    at_least: bool = False

    def met_by(self, value: float) -> bool:
        return value >= self.value if self.at_least else value <= self.value

    def describe(self, unit: Unit) -> str:
        return f"{'>=' if self.at_least else '<='} {format_value(self.value, unit)}"


@dataclass
class Figure:
    section: str
    name: str
    unit: Unit
    values: list[float]
    target: Target | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def met(self) -> bool | None:
        if self.target is None or not self.values:
            return None
        return self.target.met_by(self.median)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "section": self.section,
            "name": self.name,
            "unit": self.unit,
            "median": self.median if self.values else None,
            "min": min(self.values) if self.values else None,
            "max": max(self.values) if self.values else None,
            "runs": self.values,
        }
        if self.target is not None:
            document["target"] = asdict(self.target)
            document["met"] = self.met
        if self.note:
            document["note"] = self.note
        return document


@dataclass
class Results:
    """Every figure of one bench run, in the order measured."""

    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        section: str,
        name: str,
        unit: Unit,
        values: list[float],
        *,
        target: Target | None = None,
        note: str = "",
    ) -> Figure:
        figure = Figure(section, name, unit, list(values), target, note)
        self.figures.append(figure)
        print(render_row(figure), flush=True)
        return figure

    def missing(self, section: str, name: str, why: str) -> None:
        """A figure that could not be measured on this machine (a tool is not installed)."""
        self.notes.append(f"{section}: {name}: n/a ({why})")
        print(f"{section:<9} {name:<52} n/a ({why})", flush=True)

    def write_json(self, directory: Path) -> Path:
        stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        path = directory / f"results-{stamp}.json"
        document = {
            "started": self.started.isoformat(timespec="seconds"),
            "machine": machine_info(),
            "figures": [figure.to_json() for figure in self.figures],
            "notes": self.notes,
        }
        path.write_text(json.dumps(document, indent=2) + "\n")
        return path


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model or platform.processor(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "load_average": os.getloadavg(),
    }


def format_value(value: float, unit: Unit) -> str:
    if unit == "s":
        if value >= 1:
            return f"{value:.2f} s"
        if value >= 1e-3:
            return f"{value * 1e3:.1f} ms"
        return f"{value * 1e6:.0f} us"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "bytes":
        return f"{value:,.0f} B"
    if unit in ("MiB", "MB"):
        return f"{value:.1f} {unit}"
    if unit == "per_s":
        return f"{value:,.0f}/s"
    if unit == "percent":
        return f"{value:.2f} %"
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


HEADER = (
    f"{'section':<9} {'figure':<52} {'median':>10} {'min':>10} {'max':>10} {'n':>3}  "
    f"{'target':<12} met"
)


def render_row(figure: Figure) -> str:
    if not figure.values:
        return f"{figure.section:<9} {figure.name:<52} no values"
    unit = figure.unit
    target = figure.target.describe(unit) if figure.target else ""
    met = {True: "yes", False: "NO", None: ""}[figure.met]
    low, high = format_value(min(figure.values), unit), format_value(max(figure.values), unit)
    row = (
        f"{figure.section:<9} {figure.name:<52} {format_value(figure.median, unit):>10} "
        f"{low:>10} {high:>10} {len(figure.values):>3}  {target:<12} {met}"
    )
    return f"{row}  ({figure.note})" if figure.note else row


def render_table(results: Results) -> str:
    lines = [HEADER, "-" * len(HEADER)]
    lines.extend(render_row(figure) for figure in results.figures)
    lines.extend(results.notes)
    return "\n".join(lines)
