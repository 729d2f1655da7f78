"""A mailbox from worker threads to a poller loop: a queue plus a pipe the loop can poll.

ZeroMQ sockets belong to one thread. Watchers and sync workers never touch them: they post
here, and the loop that owns the sockets wakes (the read end of the pipe sits in its
`zmq.Poller` beside the sockets) and takes the items.
"""

from __future__ import annotations

import contextlib
import os
import queue
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Many posting threads, one reading loop. `post` is safe to call from signal handlers."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._closed = False

    def fileno(self) -> int:
        """The descriptor to poll for reading; it is readable while items may be waiting."""
        return self._read_fd

    def post(self, item: T) -> None:
        if self._closed:
            return  # the loop is gone; and its descriptors may already name other files
        # SimpleQueue.put is reentrant, so a signal handler may post while the loop drains.
        self._items.put(item)
        # A full pipe means a wake-up is already pending.
        with contextlib.suppress(BlockingIOError):
            os.write(self._write_fd, b"\0")

    def drain(self) -> list[T]:
        """Every item posted so far. Clear the wake-ups first, so none is lost in between."""
        while True:
            try:
                if not os.read(self._read_fd, 4096):
                    break
            except BlockingIOError:
                break
        items: list[T] = []
        while True:
            try:
                items.append(self._items.get_nowait())
            except queue.Empty:
                return items

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._read_fd)
            os.close(self._write_fd)
