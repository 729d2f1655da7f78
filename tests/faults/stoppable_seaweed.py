"""SeaweedFS that a test can kill in the middle of downloads and start again on the same
ports: the S3 side of the fault suite on a real S3 server, as stoppable_s3.py is on moto.

Downloads reach weed through a small TCP relay that trickles responses at a set rate, so a
download is still in flight when the test pulls the plug. Stopping kills weed (SIGKILL, as
a crash) and the relay with every connection; starting runs weed again on its ports and
data directory, and the relay on its port, so clients find the same endpoint and data.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from seaweed_server import SeaweedS3

CHUNK_BYTES = 64 * 1024
# A connection counts as a download in flight once this much of one burst went through,
# and until it pauses: other S3 answers are a few KiB.
_TRANSFER_BYTES = 256 * 1024
_PAUSE_S = 0.25


class _Link:
    """One client connection and its upstream connection to weed."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.burst_bytes = 0
        self.last_chunk_at = 0.0
        self.open_pipes = 2

    @property
    def transferring(self) -> bool:
        recent = time.monotonic() - self.last_chunk_at < _PAUSE_S
        return recent and self.burst_bytes >= _TRANSFER_BYTES

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class StoppableSeaweed:
    """SeaweedFS behind a throttling relay on 127.0.0.1; port 0 the first time, the same
    port on every later start (weed keeps its own ports likewise)."""

    def __init__(self, directory: Path, *, rate_bytes_per_s: int) -> None:
        self.weed = SeaweedS3(directory)
        self._rate = rate_bytes_per_s
        self.port = 0
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self.broken_transfers = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def transfers_in_flight(self) -> int:
        with self._lock:
            return sum(link.transferring for link in self._links)

    def start(self) -> None:
        self.weed.start()
        self._stopped.clear()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept_loop, listener)

    def stop(self) -> None:
        """Kill weed and break off every connection, as a dead endpoint does."""
        with self._lock:
            links = list(self._links)
            self.broken_transfers += sum(link.transferring for link in links)
        self._stopped.set()
        self.weed.stop(kill=True)
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for link in links:
            link.close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            try:
                assert self.weed.ports is not None
                upstream = socket.create_connection(("127.0.0.1", self.weed.ports.s3))
            except OSError:
                client.close()  # weed is not there: the client sees a reset and retries
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.add(link)
            self._spawn(self._pipe, link, link.client, link.upstream, False)
            self._spawn(self._pipe, link, link.upstream, link.client, True)

    def _pipe(self, link: _Link, source: socket.socket, sink: socket.socket, slow: bool) -> None:
        try:
            while chunk := source.recv(CHUNK_BYTES):
                if slow:
                    now = time.monotonic()
                    if now - link.last_chunk_at >= _PAUSE_S:
                        link.burst_bytes = 0
                    link.burst_bytes += len(chunk)
                    link.last_chunk_at = now
                sink.sendall(chunk)
                if slow and self._stopped.wait(len(chunk) / self._rate):
                    return
        except OSError:
            pass  # either side went away
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
            with self._lock:
                self._links.discard(link)
                link.open_pipes -= 1
                last = link.open_pipes == 0
            if last:
                link.close()
