"""The elector and the prober against a scripted leader lock: taking the lock, standing by,
stepping down when a renew says the term is gone or the backend stays silent past the TTL,
releasing on stop, deposing a leader that stopped answering."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from daybook.errors import RegistryError
from daybook.model.leadership import Term
from daybook.registry.consul_leadership import ConsulLeadership
from daybook_testing.consul_server import ConsulServer, LoggedRequest
from daybook_testing.waiting import wait_for
from master.changes import Change, LeaderSeen, LeadershipGained, LeadershipLost
from master.election import ElectionTuning, Elector, Prober

ME, OTHER = "me:4505", "other:4505"
DEFAULT_WATCH_S = ElectionTuning().watch_timeout_s
FAST = ElectionTuning(
    retry_s=0.01, watch_timeout_s=5.0, lease_check_s=0.02, error_pause_s=0.02,
    probe_interval_s=0.02, silence_s=0.1,
)  # fmt: skip


class ScriptedLeadership:
    """A leader lock held in memory, which the test hands to other masters, frees, makes
    refuse (lock-delay) or fail (the backend unreachable)."""

    def __init__(self, ttl_s: float = math.inf) -> None:
        self._changed = threading.Condition()
        self._ttl_s = ttl_s
        self.holder: Term | None = None
        self.index = 1
        self.number = 0
        self.refusals = 0
        # What renew answers: True, False, or an error raised; empty: True.
        self.renewals: list[bool | Exception] = []
        self.renew_calls = 0
        self.last_renewed: float | None = None
        self.released: list[Term] = []
        self.deposed: list[Term] = []

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def _move(self, holder: Term | None) -> None:
        self.holder = holder
        self.index += 1
        self._changed.notify_all()

    def hand_to(self, holder: str) -> Term:
        with self._changed:
            self.number += 1
            term = Term(self.number, holder, time.time())
            self._move(term)
            return term

    def free(self) -> None:
        with self._changed:
            self._move(None)

    def acquire(self, holder: str) -> Term | None:
        with self._changed:
            if self.holder is not None:
                return self.holder if self.holder.holder == holder else None
            if self.refusals:
                self.refusals -= 1
                return None
        return self.hand_to(holder)

    def renew(self) -> bool:
        with self._changed:
            self.renew_calls += 1
            answer = self.renewals.pop(0) if self.renewals else True
        if isinstance(answer, Exception):
            raise answer
        if answer:
            self.last_renewed = time.monotonic()
        return answer

    def release(self) -> None:
        with self._changed:
            if self.holder is not None and self.holder.holder == ME:
                self.released.append(self.holder)
                self._move(None)

    def leader(self) -> Term | None:
        return self.holder

    def watch(self, index: int, timeout_s: float) -> tuple[int, Term | None]:
        with self._changed:
            if index > 0:
                self._changed.wait_for(lambda: self.index != index, timeout_s)
            return self.index, self.holder

    def depose(self, term: Term) -> None:
        with self._changed:
            self.deposed.append(term)
            if self.holder == term:
                self._move(None)

    def close(self) -> None:
        pass


class Posted:
    """The elector's mailbox: what it posted, in order."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    def __call__(self, change: Change) -> None:
        self.changes.append(change)

    def of(self, kind: type) -> list[Change]:
        return [change for change in self.changes if isinstance(change, kind)]


Starter = Callable[[Callable[[], None], Callable[[], None]], threading.Thread]


@pytest.fixture
def run_thread() -> Iterator[Starter]:
    started: list[tuple[threading.Thread, Callable[[], None]]] = []

    def start(target: Callable[[], None], stop: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        started.append((thread, stop))
        return thread

    yield start
    for thread, stop in started:
        stop()
        thread.join(5)


def test_a_free_lock_is_taken_and_released_on_stop(run_thread: Starter) -> None:
    lock, posted = ScriptedLeadership(), Posted()
    elector = Elector(lock, ME, posted, tuning=FAST)
    thread = run_thread(elector.run, elector.stop)
    wait_for(lambda: posted.of(LeadershipGained), "the leadership gained")
    (gained,) = posted.of(LeadershipGained)
    assert isinstance(gained, LeadershipGained)
    assert gained.term.holder == ME
    wait_for(lambda: lock.renew_calls >= 2, "renewals of the term")
    elector.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert lock.released == [gained.term]
    assert lock.holder is None
    assert not posted.of(LeadershipLost)


def test_a_standby_names_the_leader_and_takes_over_when_it_frees(run_thread: Starter) -> None:
    lock, posted = ScriptedLeadership(), Posted()
    theirs = lock.hand_to(OTHER)
    elector = Elector(lock, ME, posted, tuning=FAST)
    run_thread(elector.run, elector.stop)
    wait_for(lambda: posted.of(LeaderSeen), "the leader seen")
    assert posted.changes == [LeaderSeen(theirs)]
    assert elector.leader_seen == theirs
    lock.free()
    wait_for(lambda: posted.of(LeadershipGained), "the leadership gained")
    gained = posted.of(LeadershipGained)[0]
    assert isinstance(gained, LeadershipGained)
    assert gained.term.number == theirs.number + 1


def test_a_free_lock_refused_is_tried_again_until_lock_delay_passes(run_thread: Starter) -> None:
    lock, posted = ScriptedLeadership(), Posted()
    lock.refusals = 5  # free, yet refused: nothing will wake a watch
    elector = Elector(lock, ME, posted, tuning=FAST)
    run_thread(elector.run, elector.stop)
    wait_for(lambda: posted.of(LeadershipGained), "the leadership gained after the refusals")
    assert lock.refusals == 0


def test_a_renew_that_says_the_term_is_gone_steps_down_at_once(run_thread: Starter) -> None:
    lock, posted = ScriptedLeadership(), Posted()
    term = lock.hand_to(ME)
    lock.renewals = [True, False]
    elector = Elector(lock, ME, posted, term=term, tuning=FAST)
    run_thread(elector.run, elector.stop)
    wait_for(lambda: posted.of(LeadershipLost), "the leadership lost")
    lost = posted.of(LeadershipLost)[0]
    assert isinstance(lost, LeadershipLost)
    assert lost.term == term
    assert "session" in lost.why
    # Standing by again, it takes the lock anew (here at once: the test holds it for nobody).
    wait_for(lambda: posted.of(LeadershipGained), "the leadership taken again")


def test_an_unreachable_backend_keeps_the_term_until_the_ttl(
    run_thread: Starter,
) -> None:
    ttl_s = 0.6
    lock, posted = ScriptedLeadership(ttl_s=ttl_s), Posted()
    term = lock.hand_to(ME)
    lock.renewals = [True, *[RegistryError("consul is down")] * 1000]
    elector = Elector(lock, ME, posted, term=term, tuning=FAST)
    run_thread(elector.run, elector.stop)
    wait_for(lambda: lock.last_renewed is not None, "the one renew that succeeds")
    lost = wait_for(lambda: posted.of(LeadershipLost), "the leadership lost after the TTL")
    stepped_down = time.monotonic()
    assert lock.last_renewed is not None
    assert stepped_down - lock.last_renewed >= ttl_s
    assert lock.renew_calls >= 3  # it kept trying, leading, before the TTL ran out
    assert isinstance(lost[0], LeadershipLost)
    assert "did not answer" in lost[0].why


def test_an_unreachable_backend_that_comes_back_in_time_costs_nothing(run_thread: Starter) -> None:
    lock, posted = ScriptedLeadership(ttl_s=0.9), Posted()
    term = lock.hand_to(ME)
    lock.renewals = [RegistryError("blip"), True, RegistryError("blip"), True]
    elector = Elector(lock, ME, posted, term=term, tuning=FAST)
    run_thread(elector.run, elector.stop)
    wait_for(lambda: lock.renew_calls >= 6, "renewals past the blips")
    assert posted.changes == []


def test_a_silent_leader_is_deposed_and_a_live_one_never(run_thread: Starter) -> None:
    lock, posted = ScriptedLeadership(), Posted()
    theirs = lock.hand_to(OTHER)
    answering, probed = [True], []

    def probe(term: Term) -> bool:
        probed.append(term)
        return answering[0]

    elector = Elector(lock, ME, posted, tuning=FAST)
    prober = Prober(elector, lock, probe, tuning=FAST)
    run_thread(elector.run, elector.stop)
    run_thread(prober.run, prober.stop)
    # Answering for well over the silence allowed: never deposed.
    wait_for(lambda: len(probed) >= 3 * FAST.silence_s / FAST.probe_interval_s, "probes")
    assert set(probed) == {theirs}
    assert lock.deposed == []
    answering[0] = False
    wait_for(lambda: lock.deposed, "the silent leader deposed")
    assert lock.deposed[0] == theirs
    wait_for(lambda: posted.of(LeadershipGained), "the standby taking over")


# -- on Consul (the double) ---------------------------------------------------------------------


def consul_lock(server: ConsulServer) -> ConsulLeadership:
    return ConsulLeadership.from_url(f"consul://{server.address}/daybook/hosts/")


def test_on_consul_a_dead_leader_is_deposed_and_the_standby_leads(
    consul_server: ConsulServer, run_thread: Starter
) -> None:
    """A leader that died without releasing (its session alive until its TTL, ~20 s) is
    replaced within the silence allowed plus the lock-delay: the prober deposes it."""
    dead, mine, deposer = consul_lock(consul_server), consul_lock(consul_server), None
    try:
        theirs = dead.acquire(OTHER)  # and never renewed nor released: SIGKILLed
        assert theirs is not None
        deposer = consul_lock(consul_server)
        posted = Posted()
        elector = Elector(mine, ME, posted, tuning=FAST)
        prober = Prober(elector, deposer, lambda term: False, tuning=FAST)
        started = time.monotonic()
        run_thread(elector.run, elector.stop)
        run_thread(prober.run, prober.stop)
        gained = wait_for(lambda: posted.of(LeadershipGained), "the standby to lead")
        print(f"\nConsul takeover from a dead leader: {time.monotonic() - started:.2f} s")
        assert isinstance(gained[0], LeadershipGained)
        assert gained[0].term.number > theirs.number
        assert posted.changes[0] == LeaderSeen(theirs)
        assert theirs.session not in consul_server.sessions()
    finally:
        for lock in (dead, mine, deposer):
            if lock is not None:
                lock.close()


def test_on_consul_a_former_run_of_this_master_is_deposed_at_once(
    consul_server: ConsulServer, run_thread: Starter
) -> None:
    """Restarted after a SIGKILL, a master finds the lock held under its own address by a
    session that would live until its TTL: it ends that session rather than wait."""
    former, mine = consul_lock(consul_server), consul_lock(consul_server)
    try:
        theirs = former.acquire(ME)  # and then killed
        assert theirs is not None
        posted = Posted()
        elector = Elector(mine, ME, posted, tuning=FAST)  # no prober
        run_thread(elector.run, elector.stop)
        gained = wait_for(lambda: posted.of(LeadershipGained), "the restarted master to lead")
        assert isinstance(gained[0], LeadershipGained)
        assert gained[0].term.number > theirs.number
        # Ended by the elector, not by its TTL running out.
        destroyed = [r.path for r in consul_server.request_log if "/session/destroy/" in r.path]
        assert destroyed[0] == f"/v1/session/destroy/{theirs.session}"
    finally:
        former.close()
        mine.close()


def test_on_consul_a_standby_at_rest_holds_one_blocking_query(
    consul_server: ConsulServer, run_thread: Starter
) -> None:
    holder, mine = consul_lock(consul_server), consul_lock(consul_server)
    try:
        assert holder.acquire(OTHER) is not None
        tuning = ElectionTuning(watch_timeout_s=0.3)
        elector = Elector(mine, ME, Posted(), tuning=tuning)
        consul_server.clear_request_log()
        run_thread(elector.run, elector.stop)

        def blocking() -> list[LoggedRequest]:
            return [r for r in consul_server.request_log if "index" in r.query]

        wait_for(lambda: len(blocking()) >= 5, "five blocking watches")
        log = consul_server.request_log
        watches = len(blocking())
        # Per watch: one read to try the lock, one to learn the index, the watch itself;
        # no session is made just to be refused.
        assert len(log) <= 3 * (watches + 1)
        assert not [r for r in log if r.path.startswith("/v1/session/")]
        per_watch = len(log) / watches
        per_minute = per_watch * 60 / DEFAULT_WATCH_S
        print(
            f"\nConsul requests of a standby at rest: {per_watch:.1f} per watch, "
            f"~{per_minute:.0f}/min"
        )
    finally:
        holder.close()
        mine.close()
