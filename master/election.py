"""The elector: the thread that owns this master's part in the leader lock.

Standing by, it tries to take the lock, holding the backend's watch while another master
holds it and retrying every `retry_s` while the lock is free but refused (Consul's
lock-delay after an expiry or a depose). Leading, it renews the term every half of its TTL,
as Consul's own client does (`RenewPeriodic`), retrying a failed renew every
`error_pause_s`: a renew that says the term is gone steps down at once; a backend that
cannot answer keeps the term only until `ttl_s` after the last renew that succeeded, for
the session lives at least that long and no longer. The loop learns all of it through its
mailbox (`LeadershipGained`, `LeadershipLost`, `LeaderSeen`), like the watchers' changes.

A prober may hasten a takeover from a leader that died without releasing the lock (a
SIGKILLed Consul leader would otherwise hold it until its TTL runs out, ~20 s): while
standing by, it asks the leader every `probe_interval_s` whether it answers, and after
`silence_s` of silence deposes that term. Terms keep this safe: a leader deposed by mistake
finds its session gone at its next renew and steps down, and minions heed only the newest.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from daybook.errors import RegistryError
from daybook.model.leadership import Term
from daybook.registry.base import Leadership
from master.changes import Change, LeaderSeen, LeadershipGained, LeadershipLost

log = logging.getLogger(__name__)

Post = Callable[[Change], None]
# Whether the master holding `term` answers (its key port, say); must not block for long.
Probe = Callable[[Term], bool]


@dataclass(frozen=True)
class ElectionTuning:
    # A free lock refused (lock-delay) is tried this often.
    retry_s: float = 0.1
    # How long one watch of a held lock may block; also bounds how late a stop is noticed
    # by a standby (the thread is a daemon, joined briefly).
    watch_timeout_s: float = 30.0
    # How often a lease without a TTL (the file lease) is checked while leading.
    lease_check_s: float = 1.0
    # After a backend error, the next try comes this much later (at most).
    error_pause_s: float = 1.0
    probe_interval_s: float = 1.0
    silence_s: float = 3.0


class Elector:
    """Runs `run` on a thread of its own; `stop` ends it, releasing a lock it holds.

    `term` is the one the caller already took (the master's first try, made before the
    loop starts so that a master alone leads from its first event)."""

    def __init__(
        self,
        leadership: Leadership,
        holder: str,
        post: Post,
        *,
        term: Term | None = None,
        tuning: ElectionTuning = ElectionTuning(),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._leadership = leadership
        self._holder = holder
        self._post = post
        self._term = term
        self._tuning = tuning
        self._monotonic = monotonic
        self._stopping = threading.Event()
        # The last term seen held by another master, for the prober (one reference, so
        # reading it from the prober's thread needs no lock).
        self.leader_seen: Term | None = None
        # A term of a former run of this master, deposed already.
        self._former: Term | None = None
        self._unreachable = False

    @property
    def leading(self) -> Term | None:
        return self._term

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                if self._term is None:
                    self._term = self._stand_by()
                else:
                    self._lead(self._term)
        finally:
            self._release()

    # -- leading --------------------------------------------------------------------------------

    def _lead(self, term: Term) -> None:
        """Renew `term` until it is lost (then post that and return) or the elector stops."""
        ttl = self._leadership.ttl_s
        interval = ttl / 2 if math.isfinite(ttl) else self._tuning.lease_check_s
        last_renewed = self._monotonic()
        pause, failing = interval, False
        while not self._stopping.wait(pause):
            try:
                renewed = self._leadership.renew()
            except RegistryError as exc:
                left = last_renewed + ttl - self._monotonic()
                if left <= 0:
                    self._step_down(term, f"the registry did not answer for {ttl:g} s ({exc})")
                    return
                if not failing:  # once per outage, not once per retry
                    log.warning(
                        "cannot renew term %d (%s); leading %.1f s more", term.number, exc, left
                    )
                pause, failing = min(interval, self._tuning.error_pause_s, left), True
                continue
            if not renewed:
                self._step_down(term, "its session ended (expired, or deposed by a standby)")
                return
            if failing:
                log.info("renewed term %d again", term.number)
            last_renewed, pause, failing = self._monotonic(), interval, False

    def _step_down(self, term: Term, why: str) -> None:
        log.warning("lost the leadership (term %d): %s", term.number, why)
        self._term = None
        self._post(LeadershipLost(term, why))
        self._release()

    def _release(self) -> None:
        try:
            self._leadership.release()
        except RegistryError as exc:  # the session ends by its TTL anyway
            log.warning("could not release the leader lock: %s", exc)
        self._term = None

    # -- standing by ----------------------------------------------------------------------------

    def _stand_by(self) -> Term | None:
        """Try for the lock until it is taken (return the term) or the elector stops."""
        while not self._stopping.is_set():
            try:
                term = self._leadership.acquire(self._holder)
                if self._unreachable:
                    log.info("the leader lock answers again")
                    self._unreachable = False
                if term is not None:
                    log.info("took the leadership: term %d", term.number)
                    self.leader_seen = None
                    self._post(LeadershipGained(term))
                    return term
                index, leader = self._leadership.watch(0, 0)  # who holds it, at once
                self._see(leader)
                if self._is_former_self(leader):
                    assert leader is not None
                    self._depose_former_self(leader)
                    continue
                if leader is None:  # free yet refused: lock-delay
                    self._stopping.wait(self._tuning.retry_s)
                    continue
                _, leader = self._leadership.watch(index, self._tuning.watch_timeout_s)
                self._see(leader)
            except RegistryError as exc:
                if not self._unreachable:  # once per outage, not once per retry
                    log.warning("cannot reach the leader lock (retrying): %s", exc)
                self._unreachable = True
                self._stopping.wait(self._tuning.error_pause_s)
        return None

    def _is_former_self(self, leader: Term | None) -> bool:
        """Whether the lock names this master's address under a term not yet deposed."""
        return leader is not None and leader.holder == self._holder and leader != self._former

    def _depose_former_self(self, term: Term) -> None:
        """The lock names this master's own address, yet this process holds no term: it is
        a former run of this master that died holding it (a SIGKILL, a crash), whose Consul
        session would hold the lock until its TTL ran out. Nobody else may use this address,
        so it is ended at once; the lock-delay then runs as after any depose."""
        log.warning(
            "the leader lock names this master (term %d) from a run that ended: deposing it",
            term.number,
        )
        self._former = term  # once: a lease has nothing to depose, and must not spin
        self._leadership.depose(term)
        self._stopping.wait(self._tuning.retry_s)

    def _see(self, leader: Term | None) -> None:
        if leader != self.leader_seen:
            self.leader_seen = leader
            self._post(LeaderSeen(leader))


class Prober:
    """Deposes a leader that stopped answering (see the module docstring); runs `run` on a
    thread of its own while the elector stands by."""

    def __init__(
        self,
        elector: Elector,
        leadership: Leadership,
        probe: Probe,
        *,
        tuning: ElectionTuning = ElectionTuning(),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._elector = elector
        self._leadership = leadership
        self._probe = probe
        self._tuning = tuning
        self._monotonic = monotonic
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        watched: Term | None = None
        heard = self._monotonic()
        while not self._stopping.wait(self._tuning.probe_interval_s):
            leader = self._elector.leader_seen
            if leader is None or self._elector.leading is not None:
                watched = None
                continue
            if leader != watched:
                watched, heard = leader, self._monotonic()
            if self._probe(leader):
                heard = self._monotonic()
            elif self._monotonic() - heard >= self._tuning.silence_s:
                self._depose(leader)
                heard = self._monotonic()

    def _depose(self, term: Term) -> None:
        log.warning(
            "the leader %s (term %d) has not answered for %g s: deposing it",
            term.holder,
            term.number,
            self._tuning.silence_s,
        )
        try:
            self._leadership.depose(term)
        except RegistryError as exc:
            log.warning("could not depose term %d: %s", term.number, exc)
