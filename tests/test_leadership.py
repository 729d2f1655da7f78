"""The leader lock's contract, over both implementations: Consul (the double) and the file
lease. Then what only one of them does."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from daybook import wire
from daybook.errors import ConfigError, RegistryError
from daybook.model.leadership import Term
from daybook.registry.base import Leadership, open_leadership
from daybook.registry.consul import ConsulRegistry
from daybook.registry.consul_leadership import (
    DEFAULT_LOCK_DELAY_S,
    DEFAULT_TTL_S,
    ConsulLeadership,
    leader_key_for,
)
from daybook.registry.lease import FileLeadership
from daybook_testing.consul_server import ConsulServer
from daybook_testing.processes import Proc
from daybook_testing.waiting import wait_for

# A child process that takes the lock and then holds it until it is killed.
HOLDER_SCRIPT = """
import sys, threading
from daybook.registry.base import open_leadership
term = open_leadership(sys.argv[1]).acquire("child:4505")
print("term", term.number if term else 0, flush=True)
threading.Event().wait()
"""


@dataclass
class Backend:
    """One implementation under test, and how to make time pass for it."""

    name: str
    url: str
    # After a holder died or was deposed: what lets a standby in (Consul: the TTL timer,
    # then the lock-delay, on the double's clock; the file lease: nothing).
    after_death: Callable[[], None]
    after_depose: Callable[[], None]
    opened: list[Leadership] = field(default_factory=list)

    def contender(self) -> Leadership:
        leadership = open_leadership(self.url)
        self.opened.append(leadership)
        return leadership


@pytest.fixture(params=["consul", "file"])
def backend(
    request: pytest.FixtureRequest, consul_server: ConsulServer, tmp_path: Path
) -> Iterator[Backend]:
    if request.param == "consul":

        def expire() -> None:
            consul_server.advance(DEFAULT_TTL_S * 2 + DEFAULT_LOCK_DELAY_S + 0.1)

        def delay() -> None:
            consul_server.advance(DEFAULT_LOCK_DELAY_S + 0.1)

        made = Backend("consul", f"consul://{consul_server.address}/daybook/hosts/", expire, delay)
    else:
        made = Backend("file", f"file://{tmp_path / 'mappings.json'}", lambda: None, lambda: None)
    yield made
    for leadership in made.opened:
        leadership.close()


def start_holder(backend: Backend, tmp_path: Path) -> tuple[Proc, int]:
    proc = Proc(
        "holder",
        [sys.executable, "-c", HOLDER_SCRIPT, backend.url],
        {"PATH": "/usr/bin:/bin"},
        tmp_path / "holder.log",
    )
    line = wait_for(
        lambda: next((ln for ln in proc.log().splitlines() if ln.startswith("term ")), None),
        "the child to take the lock",
    )
    return proc, int(line.split()[1])


def test_only_one_contender_holds_the_lock(backend: Backend) -> None:
    first, second = backend.contender(), backend.contender()
    term = first.acquire("m1:4505")
    assert term is not None
    assert term.number >= 1
    assert term.holder == "m1:4505"
    assert second.acquire("m2:4505") is None
    assert first.renew() is True
    for view in (first, second):
        seen = view.leader()
        assert seen is not None
        assert (seen.number, seen.holder) == (term.number, "m1:4505")


def test_acquire_again_by_the_holder_returns_its_term(backend: Backend) -> None:
    holder = backend.contender()
    term = holder.acquire("m1:4505")
    assert holder.acquire("m1:4505") == term


def test_release_lets_another_take_a_higher_term(backend: Backend) -> None:
    first, second = backend.contender(), backend.contender()
    old = first.acquire("m1:4505")
    first.release()
    assert first.renew() is False
    assert first.leader() is None
    new = second.acquire("m2:4505")
    assert old is not None
    assert new is not None
    assert new.number > old.number
    assert second.leader() == new


def test_terms_strictly_increase_across_handovers(backend: Backend) -> None:
    masters = [backend.contender(), backend.contender()]
    numbers = []
    for turn in range(6):
        leading = masters[turn % 2]
        term = leading.acquire(f"m{turn % 2}:4505")
        assert term is not None, f"handover {turn} failed"
        numbers.append(term.number)
        leading.release()
    assert numbers == sorted(set(numbers))


def test_a_killed_holder_frees_the_lock(backend: Backend, tmp_path: Path) -> None:
    proc, child_term = start_holder(backend, tmp_path)
    standby = backend.contender()
    try:
        assert child_term >= 1
        held = standby.leader()
        assert held is not None
        assert held.holder == "child:4505"
        assert standby.acquire("m2:4505") is None
    finally:
        proc.kill()
    backend.after_death()
    term = standby.acquire("m2:4505")
    assert term is not None
    assert term.number > child_term


def test_deposed_or_lost_terms_fail_to_renew(backend: Backend) -> None:
    holder, standby = backend.contender(), backend.contender()
    term = holder.acquire("m1:4505")
    assert term is not None
    standby.depose(term)
    if backend.name == "file":
        # The lease has no handle to end: a living holder keeps it (see FileLeadership).
        assert holder.renew() is True
        return
    assert holder.renew() is False
    assert holder.leader() is None
    assert standby.acquire("m2:4505") is None  # the lock-delay protects the old holder
    backend.after_depose()
    taken = standby.acquire("m2:4505")
    assert taken is not None
    assert taken.number > term.number


def test_depose_of_an_ended_term_is_harmless(backend: Backend) -> None:
    holder = backend.contender()
    term = holder.acquire("m1:4505")
    assert term is not None
    holder.release()
    holder.depose(term)
    holder.depose(term)
    assert holder.acquire("m1:4505") is not None


def test_a_standby_watching_wakes_when_the_lock_frees(backend: Backend) -> None:
    holder, standby = backend.contender(), backend.contender()
    term = holder.acquire("m1:4505")
    index, seen = standby.watch(0, 1.0)
    assert seen is not None
    assert term is not None
    assert seen.number == term.number
    with ThreadPoolExecutor(max_workers=1) as pool:
        woken = pool.submit(standby.watch, index, 30.0)
        holder.release()
        new_index, after = woken.result(timeout=30)
    assert after is None
    assert new_index != index


def test_renew_without_a_term_is_false(backend: Backend) -> None:
    assert backend.contender().renew() is False


# -- Consul only ----------------------------------------------------------------------------


@pytest.fixture
def registry(consul_server: ConsulServer) -> Iterator[ConsulRegistry]:
    made = ConsulRegistry(consul_server.address, "daybook/hosts/")
    yield made
    made.close()


def test_the_lock_key_sits_beside_the_mappings_prefix() -> None:
    assert leader_key_for("daybook/hosts/") == "daybook/leader"
    assert leader_key_for("team/a/hosts/") == "team/a/leader"
    assert leader_key_for("hosts/") == "leader"


def test_consul_key_holds_the_term_and_lock_index_is_the_number(
    registry: ConsulRegistry, consul_server: ConsulServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = ConsulLeadership(registry), ConsulLeadership(registry)
    term = first.acquire("m1:4505")
    assert term is not None
    entry = consul_server.entries()["daybook/leader"]
    assert entry.lock_index == term.number == 1
    assert entry.session == term.session
    assert wire.from_json(Term, entry.value) == term
    first.release()
    # Another master takes and gives back the lock between the read that predicts the
    # number and the acquire: the number written must still be the key's LockIndex.
    racer = ConsulLeadership(registry)
    create_session = second._create_session

    def racing_create(holder: str) -> str:
        racer.acquire("m3:4505")
        racer.release()
        return create_session(holder)

    monkeypatch.setattr(second, "_create_session", racing_create)
    second_term = second.acquire("m2:4505")
    assert second_term is not None
    entry = consul_server.entries()["daybook/leader"]
    assert second_term.number == entry.lock_index == 3
    assert wire.from_json(Term, entry.value).number == 3


def test_consul_session_carries_the_ttl_and_lock_delay(
    registry: ConsulRegistry, consul_server: ConsulServer
) -> None:
    term = ConsulLeadership(registry, ttl_s=15, lock_delay_s=0).acquire("m1:4505")
    assert term is not None
    session = consul_server.sessions()[term.session]
    assert (session.ttl_s, session.lock_delay_s, session.behavior) == (15.0, 0.0, "release")
    assert session.name == "daybook master m1:4505"


def test_a_standby_makes_no_session_while_the_lock_is_held(
    registry: ConsulRegistry, consul_server: ConsulServer
) -> None:
    ConsulLeadership(registry).acquire("m1:4505")
    standby = ConsulLeadership(registry)
    for _ in range(3):
        assert standby.acquire("m2:4505") is None
    assert len(consul_server.sessions()) == 1


def test_a_refused_acquire_leaves_no_session_behind(
    registry: ConsulRegistry, consul_server: ConsulServer
) -> None:
    holder = ConsulLeadership(registry)
    term = holder.acquire("m1:4505")
    assert term is not None
    holder.depose(term)  # lock-delay now refuses every acquire
    assert ConsulLeadership(registry).acquire("m2:4505") is None
    assert consul_server.sessions() == {}


def test_renew_is_false_when_the_key_went_to_another_session(
    registry: ConsulRegistry, consul_server: ConsulServer
) -> None:
    holder = ConsulLeadership(registry)
    assert holder.acquire("m1:4505") is not None
    consul_server.delete("daybook/leader")  # a DELETE takes the lock with the key
    assert ConsulLeadership(registry).acquire("m2:4505") is not None
    assert holder.renew() is False


def test_the_session_expires_if_renews_stop_and_lives_while_they_go_on(
    registry: ConsulRegistry, consul_server: ConsulServer
) -> None:
    holder = ConsulLeadership(registry)
    assert holder.acquire("m1:4505") is not None
    for _ in range(5):
        consul_server.advance(DEFAULT_TTL_S / 3)
        assert holder.renew() is True
    consul_server.advance(DEFAULT_TTL_S * 2 + 0.1)
    assert holder.renew() is False


def test_a_watch_is_capped_by_the_registry_urls_wait(consul_server: ConsulServer) -> None:
    leadership = ConsulLeadership.from_url(
        f"consul://{consul_server.address}/daybook/hosts/?wait=2s"
    )
    try:
        index, _ = leadership.watch(0, 1.0)
        consul_server.clear_request_log()
        leadership.watch(index, 60.0)
        [held] = consul_server.request_log
        assert held.query["wait"] == ["2000ms"]
    finally:
        leadership.close()


def test_renew_says_consul_is_unreachable_instead_of_guessing(
    registry: ConsulRegistry, consul_server: ConsulServer
) -> None:
    holder = ConsulLeadership(registry)
    assert holder.acquire("m1:4505") is not None
    consul_server.inject_fault("no_leader")
    with pytest.raises(RegistryError, match="No cluster leader"):
        holder.renew()
    assert holder.renew() is True


@pytest.mark.parametrize(("ttl_s", "lock_delay_s"), [(5, 1), (100000, 1), (10, 61), (10, -1)])
def test_consul_timings_outside_consuls_bounds_are_refused(
    registry: ConsulRegistry, ttl_s: float, lock_delay_s: float
) -> None:
    with pytest.raises(ConfigError):
        ConsulLeadership(registry, ttl_s=ttl_s, lock_delay_s=lock_delay_s)


def test_an_unreadable_key_value_still_shows_the_holder_session(
    registry: ConsulRegistry, consul_server: ConsulServer, caplog: pytest.LogCaptureFixture
) -> None:
    session = requests.put(f"{consul_server.url}/v1/session/create", timeout=10).json()["ID"]
    requests.put(
        f"{consul_server.url}/v1/kv/daybook/leader",
        params={"acquire": session},
        data="not a term",
        timeout=10,
    )
    with caplog.at_level(logging.WARNING):
        seen = ConsulLeadership(registry).leader()
    assert seen is not None
    assert (seen.number, seen.session, seen.holder) == (1, session, "")
    assert "no readable term" in caplog.text


# -- the file lease only ----------------------------------------------------------------------


def test_the_lease_counter_survives_its_holders(tmp_path: Path) -> None:
    mappings = tmp_path / "mappings.json"
    numbers = []
    for _ in range(3):
        lease = FileLeadership(mappings)
        term = lease.acquire("m1:4505")
        assert term is not None
        numbers.append(term.number)
        lease.close()
    assert numbers == [1, 2, 3]
    assert (tmp_path / "mappings.json.leader").exists()


def test_a_stale_state_file_is_not_a_leader(tmp_path: Path) -> None:
    lease = FileLeadership(tmp_path / "mappings.json")
    assert lease.acquire("m1:4505") is not None
    lease.release()
    assert (tmp_path / "mappings.json.leader.json").exists()
    assert FileLeadership(tmp_path / "mappings.json").leader() is None


def test_a_removed_lock_file_ends_the_term(tmp_path: Path) -> None:
    lease = FileLeadership(tmp_path / "mappings.json")
    assert lease.acquire("m1:4505") is not None
    lease.lock_path.unlink()
    assert lease.renew() is False
    assert FileLeadership(tmp_path / "mappings.json").acquire("m2:4505") is not None


def test_a_corrupt_counter_is_refused_not_restarted(tmp_path: Path) -> None:
    (tmp_path / "mappings.json.leader.json").write_text("{oops")
    with pytest.raises(RegistryError, match="term counter must not restart"):
        FileLeadership(tmp_path / "mappings.json").acquire("m1:4505")


def test_the_lease_is_exclusive_between_threads_too(tmp_path: Path) -> None:
    """flock belongs to the open file, not the process: two instances in one process
    exclude each other, so tests (and a demo) can run two masters side by side."""
    winners: list[Term] = []
    leases = [FileLeadership(tmp_path / "mappings.json") for _ in range(4)]
    barrier = threading.Barrier(len(leases))

    def contend(lease: FileLeadership, name: str) -> None:
        barrier.wait()
        term = lease.acquire(name)
        if term is not None:
            winners.append(term)

    threads = [
        threading.Thread(target=contend, args=(lease, f"m{i}:4505"))
        for i, lease in enumerate(leases)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for lease in leases:
        lease.close()
    assert len(winners) == 1


@pytest.mark.parametrize("url", ["s3://bucket/x", "file://host/path", "file://"])
def test_open_leadership_refuses_urls_it_cannot_lock(url: str) -> None:
    with pytest.raises(ConfigError):
        open_leadership(url)


def test_terms_go_on_growing_past_a_consul_that_lost_its_data(
    registry: ConsulRegistry, consul_server: ConsulServer
) -> None:
    # A restored or rebuilt Consul counts LockIndex from 1 again; minions fence by term, so a
    # new leader must still outrank every term they saw, or they would ignore it.
    holder, standby = ConsulLeadership(registry), ConsulLeadership(registry)
    for _ in range(3):
        term = holder.acquire("m1:4505")
        assert term is not None
        holder.release()
    assert standby.leader() is None
    seen = standby.watch(0, 1.0)  # the standby has read the last term written
    consul_server.restart()  # without its data
    taken = standby.acquire("m2:4505")
    assert taken is not None
    assert taken.number > term.number
    assert standby.leader() == taken
    assert seen is not None
