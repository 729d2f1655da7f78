"""The reporter's link to the master: a reconnect is noticed, and the minion then sends its
latest reports again, since the old connection may have taken some down with it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import zmq
from messages import report

from daybook.mailbox import Mailbox
from daybook.model.results import Report
from daybook.wire import decode_frames
from minion.memory import MinionMemory
from minion.minion import LoopTask, Minion
from minion.reporter import Reporter
from minion.subscriber import EventSubscriber

DEADLINE_S = 10.0


def _pull(context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    socket = context.socket(zmq.PULL)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.bind(endpoint)
    except zmq.ZMQError:
        socket.close()
        raise
    return socket


def _rebind(context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    """Bind `endpoint` again: ZeroMQ releases a closed socket's port in the background."""
    deadline = time.monotonic() + DEADLINE_S
    pause = threading.Event()
    while True:
        try:
            return _pull(context, endpoint)
        except zmq.ZMQError:
            assert time.monotonic() < deadline, f"{endpoint} was never released"
            pause.wait(0.01)


def _until(condition: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    pause = threading.Event()
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pause.wait(0.01)


def test_a_reconnect_is_told_once_and_the_first_connect_never(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    master = _pull(context, "tcp://127.0.0.1:*")
    endpoint = master.getsockopt_string(zmq.LAST_ENDPOINT)
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.RECONNECT_IVL, 20)
    reporter = Reporter(push, push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED))
    push.connect(endpoint)
    try:
        reporter.send(report("web-1", "s1"))
        assert master.poll(int(DEADLINE_S * 1000))
        master.recv_multipart()
        assert not reporter.reconnected(), "the first connection is no reconnect"

        master.close()  # the master goes, and another takes its port once it is free
        master = _rebind(context, endpoint)
        _until(reporter.reconnected, "the reconnect to be noticed")
        assert reporter.reconnects == 1
        assert not reporter.reconnected(), "each reconnect is told once"
    finally:
        reporter.close()
        master.close()


class _FakeSocket:
    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        raise zmq.Again

    def send_multipart(self, frames: list[bytes], flags: int = 0) -> None:
        self.sent.append(list(frames))


class _LinkScript(Reporter):
    """A reporter whose link comes back when the test says so."""

    def __init__(self, socket: _FakeSocket) -> None:
        super().__init__(socket)  # type: ignore[arg-type]
        self.link_back = False

    def reconnected(self) -> bool:
        back, self.link_back = self.link_back, False
        return back


def test_the_latest_reports_go_again_after_a_reconnect(tmp_path: Path) -> None:
    push = _FakeSocket()
    reporter = _LinkScript(push)
    memory = MinionMemory(tmp_path, tmp_path / "install")
    memory.record({}, [report("web-1", "s1", finished_at=5.0)])
    clock = [100.0]
    minion = Minion(
        host="web-1",
        subscriber=EventSubscriber(_FakeSocket()),  # type: ignore[arg-type]
        reporter=reporter,
        syncer=None,  # type: ignore[arg-type]
        memory=memory,
        mailbox=Mailbox[LoopTask](),
        heartbeat_interval_s=1.0,
        boot_id="boot",
        monotonic=lambda: clock[0],
    )

    def reports() -> list[str]:
        sent = [decode_frames(frames) for frames in push.sent]
        return [m.sync_id for m in sent if isinstance(m, Report)]

    minion.tick(clock[0])
    assert reports() == []
    reporter.link_back = True
    clock[0] += 1.0
    minion.tick(clock[0])
    assert reports() == ["s1"], "resent (the master keeps the first copy of a report)"
    clock[0] += 1.0
    minion.tick(clock[0])
    assert reports() == ["s1"]
