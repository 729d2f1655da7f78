"""A moto S3 server speaking real HTTP on loopback, and the environment that points the AWS
credential chain at it and at nothing else."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# A WSGI application, wrapped by a caller to watch the requests (the bench counts them).
WsgiApp = Callable[[dict[str, Any], Any], Any]

NO_PROXY = "127.0.0.1,localhost"


@contextmanager
def serve_moto(wrap_app: Callable[[WsgiApp], WsgiApp] | None = None) -> Iterator[str]:
    """A ThreadedMotoServer on 127.0.0.1; yields its endpoint URL, `http://127.0.0.1:PORT`.

    Port 0: the OS picks a free port as werkzeug binds, and start() returns only once the
    socket is bound, so the port read back is live and nobody can race us for it.
    `wrap_app` wraps the server's WSGI application before the first request.
    """
    from moto.server import ThreadedMotoServer  # moto takes a while to import

    # werkzeug logs every request at INFO, burying the lines that matter.
    werkzeug_log = logging.getLogger("werkzeug")
    saved_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        if wrap_app is not None:
            # werkzeug looks the app up on its server object for every request; moto offers
            # no hook of its own for this.
            wsgi_server = server._server
            if wsgi_server is None:
                raise RuntimeError("moto's server has no WSGI server once started")
            wsgi_server.app = wrap_app(wsgi_server.app)
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        werkzeug_log.setLevel(saved_level)


def aws_env(
    endpoint: str, *, access_key: str, secret_key: str, region: str, scratch: Path
) -> dict[str, str]:
    """The variables that point boto3 at `endpoint` with these credentials, and away from
    any AWS config, credentials file, instance metadata or proxy of the developer's.
    `scratch` is a directory in which no AWS config is made."""
    missing = str(scratch / "no-aws-config")
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_REGION": region,
        "AWS_CONFIG_FILE": missing,
        "AWS_SHARED_CREDENTIALS_FILE": missing,
        "BOTO_CONFIG": missing,
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": NO_PROXY,
    }
