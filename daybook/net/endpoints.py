"""Where a running master can be reached from its own host: the endpoints it bound, written
to `master.json` in its data dir, and its local operator socket beside it.

The master writes the file when it has bound its sockets (its ports may be ephemeral);
operator commands on the same data dir read it back, checked like any wire message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from daybook import wire
from daybook.config import MasterAddress, Settings
from daybook.errors import FleetError, WireError
from daybook.files import write_atomically
from daybook.model.rules import checked, record

# The master writes the endpoints it bound here, in its data dir (ports may be ephemeral).
ENDPOINTS_FILE = "master.json"
# The master's local operator socket, under its data dir.
LOCAL_SOCKET = Path("run") / "control.sock"


@record
class MasterEndpoints:
    """What `master.json` holds: who wrote it, the epoch it runs, each socket's endpoint by
    role, and each one's port (every endpoint but the local ipc:// one ends in its port)."""

    pid: int
    epoch: int
    endpoints: Mapping[str, str]
    ports: Mapping[str, int] = checked(minimum=1, maximum=65535)

    @classmethod
    def bound(cls, endpoints: Mapping[str, str], epoch: int) -> MasterEndpoints:
        ports = {
            role: int(port)
            for role, endpoint in endpoints.items()
            if (port := endpoint.rsplit(":", 1)[-1]).isdigit()
        }
        return cls(os.getpid(), epoch, dict(endpoints), ports)


def endpoints_path(data_dir: Path) -> Path:
    return data_dir / ENDPOINTS_FILE


def local_socket_path(data_dir: Path) -> Path:
    return data_dir / LOCAL_SOCKET


def write_endpoints(data_dir: Path, endpoints: MasterEndpoints) -> None:
    # Readable as the master's other files are (0666 less the umask): operators may share
    # the data dir without sharing its user.
    write_atomically(
        endpoints_path(data_dir), wire.to_json(endpoints) + b"\n", mode=None, durable=False
    )


def read_endpoints(data_dir: Path) -> MasterEndpoints:
    """The endpoints of the master running on `data_dir`; FleetError saying why not."""
    path = endpoints_path(data_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FleetError(
            f"the control port is 0 (ephemeral) and {path} does not exist: start the master "
            "with this data dir, or set the ports"
        ) from None
    except OSError as exc:
        raise FleetError(f"cannot read the master's endpoints from {path}: {exc}") from None
    try:
        return wire.from_json(MasterEndpoints, data)
    except WireError as exc:
        raise FleetError(f"cannot read the master's endpoints from {path}: {exc}") from None


def master_endpoints(settings: Settings, own_port: int) -> tuple[str, ...]:
    """Every configured master's endpoint for the role this node reaches at `own_port` on
    the first one (`results_port`, `control_port`...), in the order given. One master
    reads exactly as it always did (`settings.endpoint`)."""
    if len(settings.masters) <= 1:
        return (settings.endpoint(own_port),)
    return tuple(settings.endpoint_of(master, own_port) for master in settings.masters)


def master_endpoint_for(settings: Settings, holder: str, own_port: int) -> str | None:
    """The endpoint, for the role at `own_port`, of the master advertised as `holder`
    (HOST:PUBLISH_PORT, as a leader's term names it): a configured master of that address,
    else that host with the configured port offsets; None if `holder` is no such address."""
    for master in settings.masters:
        if master.address == holder:
            return settings.endpoint_of(master, own_port)
    host, _, port_text = holder.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        return None
    return settings.endpoint_of(MasterAddress(host, int(port_text)), own_port)
