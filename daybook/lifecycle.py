"""A daemon's lifecycle: the zmq Context its composition root owns, and the one shutdown
sequence every daemon process goes through.

From the first moment, SIGTERM and SIGINT set the stop flag. The loop sees it and drains
on its own; after that a second signal ends the process at once. Then, always in this order:

1. workers stop (newest first), then their threads are joined;
2. sockets close, each with the linger it was made with, and those marked `last` after
   the rest (the master's ZAP socket, which answers their handshakes to the end);
3. the Context terms, which waits for the lingering sockets to hand over what they hold;
4. everything else is released, newest first: files, databases, mailboxes, clients.

A step that fails does not stop the ones after it; the first failure is raised at the end.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from types import TracebackType

import zmq

from daybook.stopping import StopFlag, stop_on_signals

log = logging.getLogger(__name__)

Step = Callable[[], None]


def _nothing() -> None:
    pass


class Lifecycle:
    """Use as a context manager around a daemon's whole life: `with Lifecycle(stop) as life`.

    Whatever needs undoing is registered as it is made, in the phase it belongs to, so the
    composition root says what it builds and never how to take it down.
    """

    def __init__(self, stop: StopFlag | None = None) -> None:
        self.stop = stop or StopFlag()
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._stoppers: list[Step] = []
        self._joiners: list[Step] = []
        self._closers: list[Step] = []
        self._last_closers: list[Step] = []
        self._releases: list[Step] = []
        self._restore_signals: Step = _nothing
        self._ended = False

    def __enter__(self) -> Lifecycle:
        self._restore_signals = stop_on_signals(self.stop)
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.end()

    # -- what to undo, as it is made ------------------------------------------------------------

    def socket(self, kind: int, *, linger_ms: int, last: bool = False) -> zmq.Socket[bytes]:
        """A socket of the Context, closed at the end with `linger_ms` to deliver what it
        still holds; with `last`, after every other socket."""
        socket = self.context.socket(kind)
        socket.setsockopt(zmq.LINGER, linger_ms)
        (self._last_closers if last else self._closers).append(socket.close)
        return socket

    def closes(self, close: Step, *, last: bool = False) -> None:
        """`close` closes sockets made elsewhere on the Context; it runs with the others
        (with `last`, after them)."""
        (self._last_closers if last else self._closers).append(close)

    def worker(self, *, stop: Step, join: Step = _nothing) -> None:
        """Something running beside the loop: told to `stop`, then waited for with `join`."""
        self._stoppers.append(stop)
        self._joiners.append(join)

    def start_thread(
        self,
        target: Step,
        *,
        name: str,
        stop: Step = _nothing,
        join_timeout_s: float | None = None,
    ) -> threading.Thread:
        """Run `target` on a daemon thread, stopped with `stop` and joined at the end (for
        at most `join_timeout_s`: a thread blocked in a long call stays a daemon)."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.worker(stop=stop, join=lambda: thread.join(join_timeout_s))
        return thread

    def release(self, release: Step) -> None:
        """Run `release` once the Context has termed."""
        self._releases.append(release)

    # -- running and ending ---------------------------------------------------------------------

    def run(self, loop: Callable[[StopFlag], None]) -> None:
        """Run the daemon's loop until the stop flag is set (and it has drained what it
        must); from then on a signal no longer waits for the rest of the shutdown."""
        try:
            loop(self.stop)
        finally:
            self.restore_signals()

    def restore_signals(self) -> None:
        self._restore_signals()
        self._restore_signals = _nothing

    def end(self) -> None:
        """The shutdown sequence (see the module's docstring); once, however often called."""
        if self._ended:
            return
        self._ended = True
        self.stop.set()
        self.restore_signals()
        failures = [
            *_run_all(reversed(self._stoppers)),
            *_run_all(reversed(self._joiners)),
            *_run_all([*self._closers, *self._last_closers]),
            *_run_all([self.context.term]),
            *_run_all(reversed(self._releases)),
        ]
        for later in failures[1:]:
            log.warning("another step of the shutdown failed too: %s", later)
        if failures:
            raise failures[0]


def _run_all(steps: Iterable[Step]) -> list[Exception]:
    """Run every step, whatever the ones before did; the failures, in order."""
    failures = []
    for step in steps:
        try:
            step()
        except Exception as exc:  # the rest of the shutdown must still happen
            failures.append(exc)
    return failures
