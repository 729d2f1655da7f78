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
