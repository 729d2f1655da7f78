"""How far apart catch-ups go: a copy of the state for every subscriber each."""

from __future__ import annotations

import dataclasses

import pytest

from master.desired_state import catch_up_gap_s
from master.tuning import MasterTuning

TUNING = MasterTuning()
STATE_BYTES = 9586  # the bench's state of 1,000 patterns and 100 services


@pytest.mark.parametrize("subscribers", [0, 1, 100, 1000])
def test_a_small_fleet_is_caught_up_as_often_as_ever(subscribers: int) -> None:
    assert catch_up_gap_s(subscribers, STATE_BYTES, TUNING) == TUNING.min_republish_gap_s


def test_a_large_fleet_shares_catch_ups_by_what_they_cost() -> None:
    # 8,900 copies of 9.5 KB at 25 MB a second.
    assert catch_up_gap_s(8900, STATE_BYTES, TUNING) == pytest.approx(3.41, abs=0.01)
    # Twice the state, twice the gap.
    assert catch_up_gap_s(8900, 2 * STATE_BYTES, TUNING) == pytest.approx(6.82, abs=0.01)


def test_a_larger_budget_brings_them_closer() -> None:
    generous = dataclasses.replace(TUNING, catch_up_bytes_per_s=250_000_000)
    assert catch_up_gap_s(8900, STATE_BYTES, generous) == TUNING.min_republish_gap_s
