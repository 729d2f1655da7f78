"""Mapping plans: which known hosts gain or lose which services under a proposed table."""

from __future__ import annotations

import pytest

from daybook.errors import InputError
from daybook.model.mappings import MappingTable
from daybook.model.patterns import resolve_host
from daybook.model.plan import HostChange, plan_mappings, with_pattern

CURRENT: MappingTable = {
    "*": ("base",),
    "web-*": ("base", "nginx"),
    "web-prod-*": ("base", "nginx", "app"),
    "db-*": ("base", "postgres"),
}
HOSTS = ["web-1", "web-prod-1", "web-prod-2", "db-1", "mail-1"]


def test_no_change_leaves_every_host_unchanged() -> None:
    plan = plan_mappings(CURRENT, dict(CURRENT), HOSTS)
    assert plan.changes == ()
    assert plan.unchanged == len(HOSTS)
    assert plan.hosts == len(HOSTS)


def test_adding_a_service_to_a_pattern_shows_who_gains_it() -> None:
    proposed = with_pattern(CURRENT, "web-prod-*", ("base", "nginx", "app", "metrics"))
    plan = plan_mappings(CURRENT, proposed, HOSTS)
    assert [c.host for c in plan.changes] == ["web-prod-1", "web-prod-2"]
    change = plan.changes[0]
    assert change.gained == ("metrics",)
    assert change.lost == ()
    assert not change.pattern_changed
    assert plan.gaining("metrics") == ("web-prod-1", "web-prod-2")
    assert plan.losing("metrics") == ()
    assert plan.unchanged == 3


def test_removing_a_pattern_sends_hosts_to_the_next_most_specific() -> None:
    proposed = with_pattern(CURRENT, "web-prod-*", ())
    plan = plan_mappings(CURRENT, proposed, HOSTS)
    assert plan.changes[0] == HostChange(
        host="web-prod-1",
        pattern_before="web-prod-*",
        pattern_after="web-*",
        services_before=("base", "nginx", "app"),
        services_after=("base", "nginx"),
        gained=(),
        lost=("app",),
    )
    assert plan.losing("app") == ("web-prod-1", "web-prod-2")


def test_a_new_pattern_with_the_same_services_is_still_a_change() -> None:
    proposed = with_pattern(CURRENT, "web-1", ("base", "nginx"))
    plan = plan_mappings(CURRENT, proposed, HOSTS)
    (change,) = plan.changes
    assert (change.host, change.pattern_before, change.pattern_after) == ("web-1", "web-*", "web-1")
    assert change.pattern_changed
    assert change.gained == change.lost == ()


def test_hosts_that_stop_matching_lose_everything() -> None:
    current: MappingTable = {"db-*": ("postgres",)}
    plan = plan_mappings(current, {}, ["db-1", "web-1"])
    (change,) = plan.changes
    assert change.pattern_after is None
    assert change.services_after == ()
    assert change.lost == ("postgres",)
    assert plan.unchanged == 1


def test_hosts_are_listed_once_in_name_order() -> None:
    proposed = with_pattern(CURRENT, "*", ("base", "ntp"))
    plan = plan_mappings(CURRENT, proposed, ["mail-2", "mail-1", "mail-2"])
    assert [c.host for c in plan.changes] == ["mail-1", "mail-2"]


def test_plan_agrees_with_resolving_each_host() -> None:
    proposed = with_pattern(with_pattern(CURRENT, "db-*", ()), "*-1", ("one",))
    hosts = [f"{role}-{n}" for role in ("web", "web-prod", "db", "mail") for n in range(4)]
    plan = plan_mappings(CURRENT, proposed, hosts)
    changed = {c.host: c for c in plan.changes}
    for host in hosts:
        before, after = resolve_host(host, CURRENT), resolve_host(host, proposed)
        if (before.pattern, before.services) == (after.pattern, after.services):
            assert host not in changed
        else:
            assert changed[host].services_after == after.services
            assert changed[host].pattern_after == after.pattern
    assert plan.hosts == len(hosts)


def test_with_pattern_normalises_and_replaces_case_variants() -> None:
    table: MappingTable = {"Web-*": ("a",), "db-*": ("b",)}
    assert with_pattern(table, "WEB-*", ("c",)) == {"db-*": ("b",), "web-*": ("c",)}
    assert with_pattern(table, "web-*", ()) == {"db-*": ("b",)}
    assert table == {"Web-*": ("a",), "db-*": ("b",)}  # the input is not modified


def test_with_pattern_refuses_a_bad_pattern() -> None:
    with pytest.raises(InputError, match="invalid host pattern"):
        with_pattern(CURRENT, "web-?", ("a",))
