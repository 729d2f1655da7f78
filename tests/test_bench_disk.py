"""The pull bench's wait for a disk still passing over freshly deleted inodes (bench.disk)."""

from __future__ import annotations

from pathlib import Path

from bench.disk import QUIET_US_PER_FILE, creation_cost_us, wait_until_quiet


def test_a_quiet_disk_is_probed_once_and_not_waited_for(tmp_path: Path) -> None:
    probed: list[Path] = []
    slept: list[float] = []

    def probe(directory: Path) -> float:
        probed.append(directory)
        return QUIET_US_PER_FILE / 2

    state = wait_until_quiet(tmp_path, probe=probe, sleep=slept.append, report=lambda _: None)
    assert state.quiet
    assert state.waited_s == 0
    assert probed == [tmp_path / "disk-probe-0"]
    assert slept == []


def test_a_slow_disk_is_waited_for_until_it_settles(tmp_path: Path) -> None:
    costs = iter([200.0, 60.0, 12.0])
    slept: list[float] = []
    reports: list[str] = []

    state = wait_until_quiet(
        tmp_path, probe=lambda _: next(costs), sleep=slept.append, report=reports.append, step_s=30
    )
    assert state.quiet
    assert state.us_per_file == 12.0
    assert state.waited_s == 60
    assert slept == [30, 30]
    # Each wait says why, with the cost it measured.
    assert "200 us" in reports[0]
    assert "60 us" in reports[1]


def test_the_wait_gives_up_after_its_longest(tmp_path: Path) -> None:
    slept: list[float] = []
    state = wait_until_quiet(
        tmp_path,
        probe=lambda _: 500.0,
        sleep=slept.append,
        report=lambda _: None,
        step_s=30,
        max_wait_s=90,
    )
    assert not state.quiet
    assert state.waited_s == 90
    assert slept == [30, 30, 30]


def test_the_probe_creates_its_files_and_keeps_them(tmp_path: Path) -> None:
    """Deleting them would free inodes of its own, which is what the probe looks for."""
    cost = creation_cost_us(tmp_path / "probe", files=50, sync=lambda: None)
    assert cost > 0
    assert len(list((tmp_path / "probe").iterdir())) == 50
