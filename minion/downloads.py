"""How a minion asks its master for signed download URLs, as the store it installs from.

With an S3 store the minion holds no cloud credentials: the master lists the versions of a
service the minion's host maps (size and SHA-256 from its own listing) and signs short-lived
URLs for the ones it is about to install. The minion then needs no S3 client at all, so it
installs in its own process (a lean HTTP client and the extractor), with no child to start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import zmq

from daybook.errors import DaybookError, StoreError, StoreUnavailableError
from daybook.model.downloads import Download
from daybook.net.client import ControlClient, MasterUnreachable
from daybook.net.transport import ClientCredentials
from daybook.store.signed import AskMaster

# How long a minion waits for its master to answer a request for download URLs.
SIGNED_URL_TIMEOUT_S = 10.0


def ask_master(
    context: zmq.Context[zmq.Socket[bytes]],
    endpoints: str | Sequence[str],
    host: str,
    credentials: ClientCredentials | None,
    *,
    timeout_s: float = SIGNED_URL_TIMEOUT_S,
    locate: Callable[[str], str | None] = lambda _holder: None,
) -> AskMaster:
    """Asks a master, as `host`, for one service's downloads: the one that answered last,
    else each of `endpoints` in turn (a standby points to the leader, which `locate`
    finds). Its errors come back as a store's, so each service's result says what went
    wrong."""
    order = [endpoints] if isinstance(endpoints, str) else list(endpoints)

    def ask(service: str, versions: tuple[str, ...]) -> tuple[Download, ...]:
        # A connection per request: a sync asks a few times, and an idle minion holds none.
        with ControlClient(
            order, timeout_s, context=context, credentials=credentials, host=host, locate=locate
        ) as client:
            try:
                return client.downloads(service, versions)
            except MasterUnreachable as exc:
                raise StoreUnavailableError(str(exc)) from exc
            except DaybookError as exc:
                raise StoreError(str(exc)) from exc
            finally:
                # Stick to the master that answered (ask() may run on several threads:
                # list operations are atomic, and any order still reaches every master).
                if client.endpoint in order and order[0] != client.endpoint:
                    order.remove(client.endpoint)
                    order.insert(0, client.endpoint)

    return ask
