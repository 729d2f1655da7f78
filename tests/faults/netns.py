"""Network namespaces for the fault suite: each minion on its own network stack, joined to
the root namespace through a veth pair on a bridge the lab creates, so a test can cut one
minion's link and restore it.

Needs root and iproute2. Addresses come from a 10.x /24 that no route or address on this
machine already covers, so traffic never leaves the namespaces and the bridge made here.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Sequence

# The minion process runs inside its namespace with its own UTS namespace, so that
# `socket.gethostname()` is its host name, as on a real machine.
_SET_HOSTNAME = 'echo "$0" > /proc/sys/kernel/hostname && exec "$@"'


def lab_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the suite as root)"
    for tool in ("ip", "ss", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (the Makefile's test prerequisites add iproute2)"
    return None


def _ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    used = []
    for line in _ip("-4", "-o", "addr", "show").splitlines():
        fields = line.split()
        if "inet" in fields:
            used.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    for line in _ip("-4", "route", "show", "table", "all").splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("default", "broadcast", "local", "unreachable", "blackhole", "prohibit"):
            first = line.split()[1] if len(line.split()) > 1 else ""
        try:
            network = ipaddress.IPv4Network(first, strict=False)
        except ValueError:
            continue
        if network.prefixlen > 0:
            used.append(network)
    return used


def free_subnet() -> ipaddress.IPv4Network:
    used = _networks_in_use()
    start = random.randrange(256)
    for offset in range(256):
        candidate = ipaddress.IPv4Network(f"10.213.{(start + offset) % 256}.0/24")
        if not any(candidate.overlaps(network) for network in used):
            return candidate
    raise RuntimeError("no free 10.213.x.0/24 for the namespace lab")


class NetworkLab:
    """A bridge in the root namespace, and one namespace per host plugged into it."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.subnet = free_subnet()
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])
        self._free_addresses = [str(a) for a in hosts[9:]]
        self.bridge = f"dbbr{self.tag}"
        self._namespaces: dict[str, str] = {}
        self._links: dict[str, str] = {}
        self.addresses: dict[str, str] = {}
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_host(self, host: str) -> list[str]:
        """Make `host`'s namespace; return the command prefix that runs a program in it
        under its own host name."""
        index = len(self._namespaces)
        namespace = f"db{self.tag}{index}"
        link, peer = f"dbv{self.tag}{index}", f"dbp{self.tag}{index}"
        address = self._free_addresses[index]
        self._namespaces[host] = namespace
        self._links[host] = link
        self.addresses[host] = address
        _ip("netns", "add", namespace)
        _ip("link", "add", link, "type", "veth", "peer", "name", peer)
        _ip("link", "set", link, "master", self.bridge)
        _ip("link", "set", link, "up")
        _ip("link", "set", peer, "netns", namespace)
        _ip("-n", namespace, "link", "set", peer, "name", "eth0")
        _ip("-n", namespace, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        return self.wrap(host)

    def wrap(self, host: str) -> list[str]:
        return [
            "ip", "netns", "exec", self._namespaces[host],
            "unshare", "--uts", "--", "sh", "-c", _SET_HOSTNAME, host,
        ]  # fmt: skip

    def run(self, host: str, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.wrap(host), *argv], capture_output=True, text=True, timeout=10, check=False
        )

    def cut(self, host: str) -> None:
        """Take the host's link down, as a pulled cable or a dead switch port."""
        _ip("link", "set", self._links[host], "down")

    def restore(self, host: str) -> None:
        _ip("link", "set", self._links[host], "up")

    def forget_connections(self, host: str) -> None:
        """Drop, on this side only, every TCP connection with the host, as a rebooted
        peer would have: the host is not told (its link is cut, or the reset is lost)."""
        subprocess.run(
            ["ss", "-K", "dst", self.addresses[host]],
            capture_output=True,
            timeout=10,
            check=True,
        )

    def close(self) -> None:
        """Remove every link and namespace made here (their processes must be gone)."""
        for link in self._links.values():
            _ip("link", "del", link, check=False)
        for namespace in self._namespaces.values():
            _ip("netns", "del", namespace, check=False)
        _ip("link", "del", self.bridge, check=False)
