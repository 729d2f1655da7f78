"""A fleet of real daybook processes on this machine: a master whose ports are read back
from its `master.json`, minions (a process each, or many in one swarm process), the
operator's client, and stopping them all, minions first, whatever state they were left in.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from daybook.errors import FleetError
from daybook.model.fleet import FleetStatus, HostStatus
from daybook.net.client import ControlClient
from daybook.net.endpoints import MasterEndpoints, read_endpoints
from daybook_testing.processes import STOP_TIMEOUT_S, Proc, stop_together
from daybook_testing.waiting import DEADLINE_S, POLL_S, wait_for

T = TypeVar("T")

# A fleet's minions make their keys as they start; the master takes every one.
MASTER_ENV = {"DAYBOOK_AUTO_ACCEPT": "1"}


class Fleet:
    """A master and its minions under `root`, on the store and registry at the given URLs.

    `command` runs daybook (the console script, or `python -m daybook -v`); `config` is the
    text of the `daybook.toml` every process reads. Every process gets `base_env` (by
    default this process's environment without its DAYBOOK_ variables) and the fleet's
    own settings. Failures raise `error`: AssertionError in tests, RuntimeError in the bench.
    """

    def __init__(
        self,
        root: Path,
        *,
        command: Sequence[str],
        config: str,
        store_url: str,
        registry_url: str,
        base_env: Mapping[str, str] | None = None,
        master_host: str = "127.0.0.1",
        error: type[Exception] = AssertionError,
        poll_s: float = POLL_S,
        client_timeout_s: float = 5.0,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        self.root = root
        self.command = list(command)
        self.config = root / "daybook.toml"
        self.config.write_text(config)
        self.store_url = store_url
        self.registry_url = registry_url
        self.master_host = master_host
        self.master_dir = root / "master"
        self.master: Proc | None = None
        self.ports: dict[str, int] = {}
        self.minions: dict[str, Proc] = {}
        self.swarms: list[Proc] = []
        self.processes: list[Proc] = []
        self._base_env = dict(base_env) if base_env is not None else None
        self._error = error
        self._poll_s = poll_s
        self._client_timeout_s = client_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._client: ControlClient | None = None

    # -- processes -----------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        if self._base_env is not None:
            env = dict(self._base_env)
        else:
            env = {k: v for k, v in os.environ.items() if not k.startswith("DAYBOOK_")}
        env.update(
            DAYBOOK_CONFIG=str(self.config),
            DAYBOOK_STORE=self.store_url,
            DAYBOOK_REGISTRY=self.registry_url,
        )
        env.update(extra)
        return env

    def port_env(self) -> dict[str, str]:
        """Every port the master bound, as the variables that set it."""
        return {
            "DAYBOOK_PORT" if role == "publish" else f"DAYBOOK_{role.upper()}_PORT": str(port)
            for role, port in self.ports.items()
        }

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], wrap: Sequence[str] = ()
    ) -> Proc:
        """Start a process logging to `NAME.log` (`NAME.2.log` for its second run...)."""
        runs = sum(1 for p in self.processes if p.name == name)
        log_name = f"{name}.log" if runs == 0 else f"{name}.{runs + 1}.log"
        process = Proc(name, [*wrap, *argv], env, self.root / log_name)
        self.processes.append(process)
        return process

    def start_master(
        self,
        *,
        same_ports: bool = False,
        hostname: str = "master",
        timeout_s: float = DEADLINE_S,
        **extra: str,
    ) -> Proc:
        """Start the master on ephemeral ports (or the ones it had) and wait until it has
        written them to its `master.json`; connect the operator's client."""
        ports = self.port_env() if same_ports else {"DAYBOOK_PORT": "0"}
        env = self.env(
            DAYBOOK_DATA_DIR=str(self.master_dir),
            DAYBOOK_HOSTNAME=hostname,
            **MASTER_ENV,
            **ports,
            **extra,
        )
        master = self.master = self.spawn("master", [*self.command, "master"], env)

        def started() -> MasterEndpoints | None:
            self.check_alive(master)
            try:
                written = read_endpoints(self.master_dir)
            except FleetError:  # not written yet, or half: the master writes it atomically
                return None
            return written if written.pid == master.pid else None

        announced = self.wait_for(started, "the master's endpoints", timeout_s)
        self.ports = dict(announced.ports)
        if self._client is not None:
            self._client.close()
        # An operator on the master's host: its local socket, where it has one.
        endpoint = announced.endpoints.get("local") or announced.endpoints["control"]
        self._client = ControlClient(endpoint, timeout_s=self._client_timeout_s)
        return master

    def start_minion(
        self,
        host: str,
        *,
        wrap: Sequence[str] = (),
        set_hostname: bool = True,
        without: Sequence[str] = (),
        **extra: str,
    ) -> Proc:
        """Start a minion with its data in `root/HOST`; `wrap` prefixes its command
        (`ip netns exec NS ...`); variables starting with any of `without` are left out of
        its environment (`AWS_`: a minion with no store credentials)."""
        # `extra` may name the masters itself (DAYBOOK_MASTER="h:P1,h:P2").
        settings = {
            "DAYBOOK_DATA_DIR": str(self.root / host),
            "DAYBOOK_MASTER": self.master_host,
            **self.port_env(),
            **extra,
        }
        env = self.env(**settings)
        if without:
            env = {
                name: value for name, value in env.items() if not name.startswith(tuple(without))
            }
        if set_hostname:
            env["DAYBOOK_HOSTNAME"] = host
        minion = self.minions[host] = self.spawn(host, [*self.command, "minion"], env, wrap)
        return minion

    def start_swarm(self, count: int, prefix: str, **extra: str) -> Proc:
        """`count` minions in one process (daybook_testing.swarm), named `PREFIX-NNNN`."""
        env = self.env(
            DAYBOOK_DATA_DIR=str(self.root / "swarm"),
            DAYBOOK_MASTER=self.master_host,
            **self.port_env(),
            **extra,
        )
        argv = [
            sys.executable,
            "-m",
            "daybook_testing.swarm",
            "--count",
            str(count),
            "--prefix",
            prefix,
        ]
        swarm = self.spawn(f"swarm-{prefix}", argv, env)
        self.swarms.append(swarm)
        return swarm

    def check_alive(self, process: Proc) -> None:
        code = process.popen.poll()
        if code is not None:
            raise self._error(f"{process.name} exited {code}:\n{process.tail()}")

    def close(self) -> list[str]:
        """Stop every process still running, minions and swarms before the master; return
        what went wrong."""
        others = [p for p in self.processes if p is not self.master]
        failures = stop_together(others, self._stop_timeout_s)
        if self.master is not None:
            failures += stop_together([self.master], self._stop_timeout_s)
        if self._client is not None:
            self._client.close()
            self._client = None
        for process in self.processes:
            process.close_log()
        return failures

    # -- the master's view ---------------------------------------------------------------------

    @property
    def client(self) -> ControlClient:
        if self._client is None:
            raise self._error("no master started")
        return self._client

    def status(self) -> FleetStatus:
        return self.client.fleet_status()

    def host(self, host: str) -> HostStatus | None:
        return self.status().hosts.get(host)

    def is_up(self, host: str) -> bool:
        entry = self.host(host)
        return entry is not None and entry.up

    def wait_for(
        self, condition: Callable[[], T | None], what: str, timeout_s: float = DEADLINE_S
    ) -> T:
        return wait_for(condition, what, timeout_s, error=self._error, poll_s=self._poll_s)

    def wait_up(self, *hosts: str, timeout_s: float = DEADLINE_S) -> None:
        def up() -> bool:
            self._check_minions(hosts)
            entries = self.status().hosts
            return all(h in entries and entries[h].up for h in hosts)

        self.wait_for(up, f"{', '.join(hosts)} shown up", timeout_s)

    def wait_down(self, host: str, timeout_s: float = DEADLINE_S) -> None:
        self.wait_for(lambda: not self.is_up(host), f"{host} shown down", timeout_s)

    def ready(self, hosts: Sequence[str]) -> bool:
        """Every host is up and has applied the master's current state (it has reported)."""
        self._check_minions(hosts)
        entries = self.status().hosts
        return all(
            h in entries and entries[h].up and entries[h].last_report is not None for h in hosts
        )

    def wait_ready(self, *hosts: str, timeout_s: float = DEADLINE_S) -> None:
        what = f"minions {', '.join(hosts)}" if len(hosts) <= 10 else f"{len(hosts)} minions"
        self.wait_for(lambda: self.ready(hosts), f"{what} ready", timeout_s)

    def _check_minions(self, hosts: Sequence[str]) -> None:
        """Fail at once if the process of one of `hosts`, or a swarm, has died."""
        for host in hosts:
            if host in self.minions:
                self.check_alive(self.minions[host])
        for swarm in self.swarms:
            self.check_alive(swarm)
