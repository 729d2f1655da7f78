"""The one shutdown sequence of every daemon: its order, its signals, and its failures."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import zmq

from daybook.lifecycle import Lifecycle
from daybook.stopping import StopFlag


def test_the_shutdown_runs_its_phases_in_order() -> None:
    done: list[str] = []
    with Lifecycle() as life:
        life.release(lambda: done.append("release first made"))
        life.worker(stop=lambda: done.append("stop a"), join=lambda: done.append("join a"))
        zap = life.socket(zmq.ROUTER, linger_ms=0, last=True)
        push = life.socket(zmq.PUSH, linger_ms=250)
        life.closes(lambda: done.append(f"close, the PUSH closed: {push.closed}"))
        life.worker(stop=lambda: done.append("stop b"), join=lambda: done.append("join b"))
        life.release(lambda: done.append(f"release last made, ZAP closed: {zap.closed}"))
        assert push.getsockopt(zmq.LINGER) == 250
    assert done == [
        "stop b",
        "stop a",
        "join b",
        "join a",
        "close, the PUSH closed: True",
        "release last made, ZAP closed: True",
        "release first made",
    ]
    assert life.context.closed
    assert life.stop.is_set()


def test_a_thread_is_stopped_and_joined_before_the_context_terms() -> None:
    stopped = threading.Event()
    with Lifecycle() as life:
        thread = life.start_thread(stopped.wait, name="worker", stop=stopped.set)
        assert thread.daemon
    assert not thread.is_alive()


def test_a_failing_step_does_not_stop_the_rest_and_is_raised_at_the_end() -> None:
    done: list[str] = []

    def broken() -> None:
        raise OSError("disk gone")

    life = Lifecycle()
    life.release(lambda: done.append("released"))
    life.release(broken)
    life.worker(stop=broken)
    with pytest.raises(OSError, match="disk gone"):
        life.end()
    assert done == ["released"]
    assert life.context.closed
    life.end()  # once only


def test_signals_set_the_stop_flag_until_the_loop_returns() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stop = StopFlag()
    seen: list[bool] = []

    def loop(flag: StopFlag) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        seen.append(flag.wait(10.0))

    with Lifecycle(stop) as life:
        life.run(loop)
        # Draining now: a second signal would end the process at once.
        assert signal.getsignal(signal.SIGTERM) == before
    assert seen == [True]
