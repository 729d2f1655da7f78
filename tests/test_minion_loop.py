"""The minion loop's ticks: only the minions due are ticked, whenever their due time moves."""

from __future__ import annotations

import math
from typing import cast

from daybook.mailbox import Mailbox
from minion.loop import MinionLoop
from minion.minion import LoopTask, Minion


class DueMinion:
    """Due every `interval_s` from `first`; records the ticks that reach it."""

    def __init__(self, first: float, interval_s: float) -> None:
        self.next_due = first
        self.interval_s = interval_s
        self.ticks: list[float] = []

    def tick(self, now: float) -> None:
        self.ticks.append(now)
        if now >= self.next_due:
            self.next_due = now + self.interval_s


def loop_of(minions: list[DueMinion]) -> MinionLoop:
    return MinionLoop(cast(list[Minion], minions), Mailbox[LoopTask]())


def test_only_the_minions_due_are_ticked() -> None:
    minions = [DueMinion(first=float(index), interval_s=5.0) for index in range(1000)]
    loop = loop_of(minions)
    assert loop.tick(-1.0) == 0.0
    assert loop.tick(2.5) == 3.0
    assert [m.ticks for m in minions[:4]] == [[2.5], [2.5], [2.5], []]
    assert sum(len(m.ticks) for m in minions) == 3
    # Due by 7.0: minions 3 to 7; the first three are next due at 7.5.
    assert loop.tick(7.0) == 7.5
    assert [m.ticks for m in minions[3:9]] == [[7.0]] * 5 + [[]]
    assert sum(len(m.ticks) for m in minions) == 8


def test_a_minion_due_sooner_than_before_is_ticked_on_time() -> None:
    early, late = DueMinion(first=10.0, interval_s=5.0), DueMinion(first=20.0, interval_s=5.0)
    loop = loop_of([early, late])
    assert loop.tick(0.0) == 10.0
    late.next_due = 4.0  # an event moved it: the loop is told as it handles the event
    loop.reschedule(1)
    assert loop.tick(4.0) == 9.0
    assert late.ticks == [4.0]
    # Its former entry (20.0) is skipped when it comes up: one tick each.
    assert loop.tick(20.0) == 25.0
    assert late.ticks == [4.0, 20.0]
    assert early.ticks == [20.0]


def test_a_loop_without_minions_is_never_due() -> None:
    assert math.isinf(loop_of([]).tick(0.0))
