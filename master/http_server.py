"""The master's HTTP server: the read-only JSON API, Prometheus metrics and the dashboard.

The standard library's ThreadingHTTPServer is enough for a handful of GET routes on
loopback, and adds no dependency. Its threads never touch the master loop: they read the
snapshots the loop publishes, the results database through read-only connections, and the
metrics registry, which locks its own values.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from daybook.errors import FleetError
from daybook.model.ids import is_valid_id
from daybook.model.patterns import is_valid_host
from master import api
from master.database import ResultsReader
from master.metrics import MasterMetrics
from master.snapshot import FleetSnapshot, SnapshotBox

log = logging.getLogger(__name__)

# The dashboard's files, shipped as package data; nothing else on disk is reachable.
DASHBOARD_DIR = Path(__file__).with_name("dashboard")
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
# The page loads only its own script and style, and talks only to this server.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
ALLOWED_METHODS = "GET, HEAD"
# A client that sends nothing for this long is dropped, so idle connections free threads.
CLIENT_TIMEOUT_S = 30.0

_HOST_ROUTE = re.compile(rf"{re.escape(api.API_PREFIX)}/hosts/([^/]+)")
_SYNC_ROUTE = re.compile(rf"{re.escape(api.API_PREFIX)}/syncs/([^/]+)")


class HttpError(Exception):
    """An answer other than 200, with a message for the JSON body."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Response:
    status: HTTPStatus
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


def json_response(document: object, status: HTTPStatus = HTTPStatus.OK) -> Response:
    body = json.dumps(document, separators=(",", ":")).encode() + b"\n"
    return Response(status, body, "application/json")


def error_response(status: HTTPStatus, message: str) -> Response:
    return json_response({"error": message, "status": int(status)}, status)


def is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_header_name(value: str) -> str:
    """The name in a Host header, without its port: `[::1]:80` -> `::1`, `a:80` -> `a`."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HttpApp:
    """What the routes read from, and the routes themselves. Independent of any socket."""

    def __init__(
        self,
        *,
        snapshots: SnapshotBox,
        history: ResultsReader,
        metrics: MasterMetrics,
        clock: Callable[[], float] = time.time,
        loopback_only: bool = True,
    ) -> None:
        self.snapshots = snapshots
        self.history = history
        self.metrics = metrics
        self.clock = clock
        # Bound to loopback, the server answers only requests addressed to a loopback
        # name: a web page elsewhere cannot read the fleet through DNS rebinding.
        self.loopback_only = loopback_only
        self._static = {
            path: Response(
                HTTPStatus.OK,
                (DASHBOARD_DIR / name).read_bytes(),
                content_type,
                (("Content-Security-Policy", PAGE_POLICY), ("X-Frame-Options", "DENY")),
            )
            for path, (name, content_type) in STATIC_FILES.items()
        }

    def handle(self, target: str, headers: dict[str, str]) -> Response:
        """Answer one GET request for `target` (the path and query)."""
        try:
            return self._route(target, headers)
        except HttpError as exc:
            return error_response(exc.status, str(exc))
        except FleetError as exc:  # the results database is unreadable
            log.warning("HTTP %s: %s", target[:200], exc)
            return error_response(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
        except Exception as exc:  # one bad request must not take the server down
            log.exception("HTTP %s failed", target[:200])
            return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {exc}")

    def _route(self, target: str, headers: dict[str, str]) -> Response:
        self._check_host_header(headers)
        parts = urlsplit(target)
        path = parts.path
        if len(path) > 1:
            path = path.rstrip("/")
        if path in self._static:
            return self._static[path]
        if path == "/index.html":
            return self._static["/"]
        if path == "/metrics":
            body, content_type = self.metrics.render(headers.get("accept"))
            return Response(HTTPStatus.OK, body, content_type)
        if path == api.API_PREFIX:
            return json_response(api.index_document())
        snapshot = self.snapshots.current
        if path == f"{api.API_PREFIX}/fleet":
            return json_response(api.fleet_document(snapshot, self.clock()))
        if path == f"{api.API_PREFIX}/services":
            return json_response(api.services_document(snapshot))
        if path == f"{api.API_PREFIX}/mappings":
            return json_response(api.mappings_document(snapshot))
        if path == f"{api.API_PREFIX}/syncs":
            limit = _limit(parse_qs(parts.query).get("limit"))
            return json_response(api.syncs_document(self.history, limit))
        if match := _HOST_ROUTE.fullmatch(path):
            return self._host(snapshot, unquote(match.group(1)))
        if match := _SYNC_ROUTE.fullmatch(path):
            return self._sync(snapshot, unquote(match.group(1)))
        raise HttpError(HTTPStatus.NOT_FOUND, f"no such resource {path[:200]!r}")

    def _check_host_header(self, headers: dict[str, str]) -> None:
        if self.loopback_only and "host" in headers:
            name = _host_header_name(headers["host"])
            if not is_loopback_name(name):
                raise HttpError(
                    HTTPStatus.FORBIDDEN,
                    f"this server answers requests for loopback names only, not {name[:100]!r}",
                )

    def _host(self, snapshot: FleetSnapshot, host: str) -> Response:
        if not is_valid_host(host):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"invalid host name {host[:100]!r}")
        host_document = api.host_document(snapshot, host, self.clock())
        if host_document is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"unknown host {host!r}")
        return json_response(host_document)

    def _sync(self, snapshot: FleetSnapshot, sync_id: str) -> Response:
        if not is_valid_id(sync_id):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"invalid sync id {sync_id[:100]!r}")
        sync_document = api.sync_document(self.history, sync_id, snapshot.rollouts)
        if sync_document is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"unknown sync id {sync_id!r}")
        return json_response(sync_document)


def _limit(values: list[str] | None) -> int:
    if not values:
        return api.DEFAULT_SYNC_LIMIT
    text = values[-1]
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= api.MAX_SYNC_LIMIT):
        raise HttpError(
            HTTPStatus.BAD_REQUEST,
            f"limit must be a whole number from 1 to {api.MAX_SYNC_LIMIT}, not {text[:20]!r}",
        )
    return int(text)


class _Handler(BaseHTTPRequestHandler):
    """Turns HTTP requests into `HttpApp.handle` calls; refuses every method but GET/HEAD."""

    server_version = "daybook"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT_S

    @property
    def app(self) -> HttpApp:
        return cast(_Server, self.server).app

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _refuse(self) -> None:
        # The body, if any, is not read: close the connection rather than parse it as the
        # next request.
        self.close_connection = True
        response = error_response(
            HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not allowed: this API is read-only"
        )
        self._send(response, head=False, extra=(("Allow", ALLOWED_METHODS),))

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

    def _answer(self, *, head: bool) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        self._send(self.app.handle(self.path, headers), head=head)

    def _send(
        self, response: Response, *, head: bool, extra: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (*response.headers, *extra):
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The standard library's errors (a malformed request line, an unknown method) in
        # the same JSON shape as the API's own.
        self.close_connection = True
        status = HTTPStatus(code)
        self._send(error_response(status, message or status.phrase), head=False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("HTTP %s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # `handle_request` is only called once the socket is readable; should the connection
    # be gone by then, it returns at once rather than block `close()`.
    timeout = 0.0
    app: HttpApp

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone mid-request (a reset, a broken pipe) is routine for a dashboard's
        browser or a scraper timing out: one debug line, not socketserver's traceback on
        stderr. Anything else is a bug of ours, logged with its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.debug("HTTP client %s went away: %s", client_address[0], error)
            return
        log.exception("HTTP request from %s failed", client_address[0])


class HttpServer:
    """The listening server on its own thread. `close()` stops it and frees the port."""

    def __init__(self, app: HttpApp, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._server = _make_server(host, port, family)
        except OSError as exc:
            raise FleetError(f"cannot listen on http://{_netloc(host, port)}: {exc}") from None
        self._server.app = app
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{_netloc(str(bound_host), int(bound_port))}"
        self._thread: threading.Thread | None = None
        # `serve_forever` wakes on a timer to look for a shutdown; this thread sleeps until
        # a client connects or `close()` writes to the pipe, so an idle server costs nothing.
        self._wake_read, self._wake_write = os.pipe()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._server, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _events in selector.select()}
                if self._wake_read in ready:
                    return
                if self._server in ready:
                    # The listening socket is readable: this accepts without waiting.
                    self._server.handle_request()

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._wake_write, b"\0")
            self._thread.join()
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._server.server_close()


class _Server6(_Server):
    address_family = socket.AF_INET6


def _make_server(host: str, port: int, family: socket.AddressFamily) -> _Server:
    server_type = _Server6 if family == socket.AF_INET6 else _Server
    return server_type((host, port), _Handler)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
