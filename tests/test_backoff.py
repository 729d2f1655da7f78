"""Backoff: doubling from the start up to the cap, jittered over the upper half."""

from __future__ import annotations

import random

import pytest

from daybook.backoff import backoff_s


class Fixed(random.Random):
    """Draws always at `fraction` of the range: 0 is the lowest pause, 1 the highest."""

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 8.0), (10**6, 8.0)],
)
def test_doubles_from_the_start_up_to_the_cap(attempt: int, ceiling: float) -> None:
    highest = backoff_s(attempt, start_s=0.5, max_s=8.0, rng=Fixed(1.0))
    lowest = backoff_s(attempt, start_s=0.5, max_s=8.0, rng=Fixed(0.0))
    assert highest == ceiling
    assert lowest == ceiling / 2


def test_jitter_spreads_over_the_upper_half() -> None:
    rng = random.Random(7)
    pauses = [backoff_s(3, start_s=0.25, max_s=60.0, rng=rng) for _ in range(1000)]
    assert all(0.5 <= pause <= 1.0 for pause in pauses)
    assert min(pauses) < 0.55
    assert max(pauses) > 0.95


def test_the_same_seed_gives_the_same_pauses() -> None:
    first = [backoff_s(n, start_s=1.0, max_s=30.0, rng=random.Random(3)) for n in range(1, 8)]
    again = [backoff_s(n, start_s=1.0, max_s=30.0, rng=random.Random(3)) for n in range(1, 8)]
    assert first == again


def test_without_an_rng_it_uses_the_shared_one() -> None:
    assert 30.0 <= backoff_s(100, start_s=1.0, max_s=60.0) <= 60.0
