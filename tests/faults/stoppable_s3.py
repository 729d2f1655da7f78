"""A moto S3 server that a test can stop in the middle of downloads and start again on the
same port, with object bodies streamed at a set rate so a download is still in flight when
the test pulls the plug.

moto keeps its buckets in process-wide memory, so what was stored before a stop is there
after the start, as with a real S3 endpoint coming back.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

CHUNK_BYTES = 64 * 1024


class StoppableS3:
    """moto on 127.0.0.1: port 0 the first time, the same port on every later start."""

    def __init__(self, *, rate_bytes_per_s: int) -> None:
        self._rate = rate_bytes_per_s
        self.port = 0
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        # Set while stopped: wakes throttled transfers so they break off at once.
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._transfers: set[socket.socket] = set()
        self.requests = 0
        self.broken_transfers = 0

    @property
    def transfers_in_flight(self) -> int:
        with self._lock:
            return len(self._transfers)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._stopped.clear()
        app = DomainDispatcherApplication(create_backend_app)
        server = make_server(
            "127.0.0.1",
            self.port,
            self._throttled(app),
            threaded=True,
            request_handler=MotoRequestHandler,
        )
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="stoppable-s3")
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and break off every transfer in flight, as a dead endpoint does."""
        # Counted before anything wakes: a woken transfer may end and leave the set at once.
        with self._lock:
            transfers = list(self._transfers)
            self.broken_transfers += len(transfers)
        self._stopped.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for connection in transfers:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _throttled(self, app: WsgiApp) -> WsgiApp:
        def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            with self._lock:
                self.requests += 1
            body = app(environ, start_response)
            connection = environ.get("werkzeug.socket")
            if environ["REQUEST_METHOD"] != "GET" or not isinstance(connection, socket.socket):
                return body
            return self._trickle(body, connection)

        return serve

    def _trickle(self, body: Iterable[bytes], connection: socket.socket) -> Iterator[bytes]:
        with self._lock:
            self._transfers.add(connection)
        try:
            for chunk in body:
                for start in range(0, len(chunk), CHUNK_BYTES):
                    if self._stopped.is_set():
                        self._break(connection)
                    piece = chunk[start : start + CHUNK_BYTES]
                    yield piece
                    self._stopped.wait(len(piece) / self._rate)
        finally:
            with self._lock:
                self._transfers.discard(connection)
            close = getattr(body, "close", None)
            if close is not None:
                close()

    def _break(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)
        # werkzeug takes a ConnectionError as the client having gone, and logs nothing.
        raise ConnectionAbortedError("the S3 server stopped")


def quiet_werkzeug() -> Callable[[], None]:
    """werkzeug logs every request at INFO; return a function restoring its level."""
    logger = logging.getLogger("werkzeug")
    saved = logger.level
    logger.setLevel(logging.ERROR)
    return lambda: logger.setLevel(saved)
