"""The pure choices behind pins: what `current` is fleet-wide, what a rollback pins, and what
a store prune deletes and keeps."""

from __future__ import annotations

import pytest

from daybook.errors import InputError, PinError
from daybook.model.pins import Pin, fleet_current, repinned, rollback_target
from daybook.model.pruning import (
    KEPT_CURRENT,
    KEPT_NEWEST,
    KEPT_PINNED,
    KEPT_PREVIOUS_PIN,
    KeptVersion,
    plan_prune,
    protected_versions,
)

VERSIONS = ["1.10", "1.9", "1.2", "2.0"]


def test_current_is_the_newest_in_version_order_without_a_pin() -> None:
    assert fleet_current(VERSIONS, None) == "2.0"
    assert fleet_current([], None) is None


def test_current_is_the_pinned_version() -> None:
    assert fleet_current(VERSIONS, Pin("svc", "1.9")) == "1.9"


def test_rollback_from_the_newest_takes_the_next_older() -> None:
    # 1.10 sorts after 1.9: natural order, not text order.
    assert rollback_target("svc", VERSIONS, None) == ("2.0", "1.10")


def test_rollback_from_a_pin_steps_back_again() -> None:
    assert rollback_target("svc", VERSIONS, Pin("svc", "1.10")) == ("1.10", "1.9")
    assert rollback_target("svc", VERSIONS, Pin("svc", "1.9")) == ("1.9", "1.2")


def test_rollback_from_a_pin_the_store_no_longer_holds() -> None:
    assert rollback_target("svc", VERSIONS, Pin("svc", "1.95")) == ("1.95", "1.10")


def test_rollback_with_nothing_older_fails() -> None:
    with pytest.raises(PinError, match=r"no version older than 1\.2"):
        rollback_target("svc", VERSIONS, Pin("svc", "1.2"))
    with pytest.raises(PinError, match="no version older than 3"):
        rollback_target("svc", ["3"], None)
    with pytest.raises(PinError, match="holds no versions"):
        rollback_target("svc", [], None)


def test_repinning_remembers_the_old_pin() -> None:
    assert repinned("svc", "1.2", None) == Pin("svc", "1.2")
    assert repinned("svc", "1.2", Pin("svc", "1.9")) == Pin("svc", "1.2", previous="1.9")
    same = Pin("svc", "1.2", previous="1.0")
    assert repinned("svc", "1.2", same) is same
    # A rollout of 1.2 that had reached one host, pinned everywhere now.
    rolling = Pin("svc", "1.2", previous="1.0", hosts=("web-1",))
    assert repinned("svc", "1.2", rolling) == Pin("svc", "1.2", previous="1.0")
    assert repinned("svc", "1.3", rolling) == Pin("svc", "1.3", previous="1.2")


def test_prune_keeps_the_newest_n_and_deletes_the_oldest() -> None:
    plan = plan_prune("svc", ["1", "2", "3", "10", "4"], 2, {})
    assert plan.removed == ("1", "2", "3")
    assert plan.kept == (KeptVersion("4", KEPT_NEWEST), KeptVersion("10", KEPT_NEWEST))


def test_prune_never_deletes_a_pinned_previous_or_current_version() -> None:
    protected = protected_versions(Pin("svc", "2", previous="1"), ["3", "2"])
    assert protected == {"1": KEPT_PREVIOUS_PIN, "2": KEPT_PINNED, "3": KEPT_CURRENT}
    plan = plan_prune("svc", ["1", "2", "3", "4", "5", "6"], 1, protected)
    assert plan.removed == ("4", "5")
    assert [k.version for k in plan.kept] == ["1", "2", "3", "6"]
    assert plan.kept[0].why == KEPT_PREVIOUS_PIN


def test_prune_with_fewer_versions_than_keep_deletes_nothing() -> None:
    assert plan_prune("svc", ["1"], 5, {}).removed == ()


@pytest.mark.parametrize("keep", [0, -1])
def test_prune_keep_below_one_is_bad_input(keep: int) -> None:
    with pytest.raises(InputError, match="--keep must be at least 1"):
        plan_prune("svc", ["1", "2"], keep, {})
