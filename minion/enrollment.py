"""Enrollment: a minion telling the master who it is, and watching its own standing.

On its own thread, the minion says hello over the control port: its key and the host name
it claims, which the master records (pending, unless auto-accept) for an operator to accept.
It keeps asking until its key is accepted, and now and then after, so a deleted key is
pending again soon. It asks over one kept connection, so a fleet's hellos cost the master
messages, not a CURVE handshake each. Its events and reports need no enrollment: they flow
as soon as the key is accepted, because the master holds the connections of a key not
accepted yet.

When the master stops answering, the minion asks the key port which key the master has now.
A key other than the one this minion trusts is logged as an error and never followed: the
minion keeps trying the trusted key, so it talks to no one else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq

from daybook.errors import DaybookError
from daybook.model.keys import Key, fingerprint
from daybook.net.client import MasterUnreachable
from daybook.stopping import StopFlag

log = logging.getLogger(__name__)

PENDING_INTERVAL_S = 2.0
ACCEPTED_INTERVAL_S = 30.0
UNREACHABLE_INTERVAL_S = 5.0

Hello = Callable[[], Key]
FetchKey = Callable[[], str]


class Enrollment:
    def __init__(
        self,
        *,
        host: str,
        own_fingerprint: str,
        trusted_key: str,
        hello: Hello,
        fetch_master_key: FetchKey | None,
        pending_interval_s: float = PENDING_INTERVAL_S,
        # Asked before each wait: it follows the heartbeat pace the master asks for.
        accepted_interval_s: Callable[[], float] = lambda: ACCEPTED_INTERVAL_S,
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self.host = host
        self.own_fingerprint = own_fingerprint
        self.trusted_key = trusted_key
        self._hello = hello
        self._fetch_master_key = fetch_master_key
        self._pending_interval_s = pending_interval_s
        self._accepted_interval_s = accepted_interval_s
        # Closes the hello's connection, on this thread, once `run` ends.
        self._close = close
        # The last answer, and the fingerprint of a different key the master presented.
        self.standing: Key | None = None
        self.mismatch: str | None = None
        self._reported: tuple[str, str | None] | None = None

    def run(self, stop: StopFlag) -> None:
        try:
            while not stop.is_set():
                try:
                    pause_s = self.step()
                except zmq.ZMQError as exc:
                    if stop.is_set() or exc.errno == zmq.ETERM:
                        return  # the process is stopping and closed the context under us
                    log.warning("hello to the master failed: %s", exc)
                    pause_s = UNREACHABLE_INTERVAL_S
                stop.wait(pause_s)
        finally:
            self._close()  # the Context's term waits for this connection to close

    def step(self) -> float:
        """One hello; returns how long to wait before the next."""
        try:
            standing = self._hello()
        except MasterUnreachable:
            self._check_master_key()
            return UNREACHABLE_INTERVAL_S
        except DaybookError as exc:
            log.warning("hello to the master failed: %s", exc)
            return self._pending_interval_s
        self.standing = standing
        self._report(standing)
        if standing.state == "accepted" and standing.host == self.host:
            return self._accepted_interval_s()
        return self._pending_interval_s

    def _report(self, standing: Key) -> None:
        seen = (standing.state, standing.host)
        if seen == self._reported:
            return
        self._reported = seen
        if standing.role != "minion":
            log.error(
                "the master holds this minion's key %s as an %s key; it gets nothing",
                self.own_fingerprint,
                standing.role,
            )
        elif standing.state == "pending":
            log.warning(
                "this minion's key %s is pending on the master (as host %s); it gets nothing "
                "until an operator accepts it on the master: `daybook keys accept %s`, after "
                "comparing the fingerprint with `daybook keys fingerprint` here",
                self.own_fingerprint,
                standing.host or self.host,
                self.own_fingerprint,
            )
        elif standing.state == "rejected":
            log.error(
                "the master rejected this minion's key %s; it gets nothing", self.own_fingerprint
            )
        elif standing.host != self.host:
            log.error(
                "the master has this minion's key %s bound to host %s, not %s: every report "
                "and heartbeat is dropped; on the master, delete the key (`daybook keys delete "
                "%s`) or fix this minion's hostname",
                self.own_fingerprint,
                standing.host,
                self.host,
                self.own_fingerprint,
            )
        else:
            log.info(
                "the master accepted this minion's key %s as %s", self.own_fingerprint, self.host
            )

    def _check_master_key(self) -> None:
        if self._fetch_master_key is None:
            return
        try:
            presented = self._fetch_master_key()
        except DaybookError:
            return  # the master is away altogether
        if presented == self.trusted_key:
            return
        seen = fingerprint(presented)
        if seen != self.mismatch:
            self.mismatch = seen
            log.error(
                "the master now presents the key %s, but this minion trusts %s: refusing to "
                "talk to it (someone may be posing as the master). If the master's key was "
                "replaced on purpose, remove the pinned key in this minion's keys dir (or set "
                "master_key) and restart the minion",
                seen,
                fingerprint(self.trusted_key),
            )
