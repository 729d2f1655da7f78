"""An in-process fleet for tests: the real master on a thread, and scripted minions that
speak the wire protocol from the test's own sockets."""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from pathlib import Path

import requests
import zmq
from archives import make_asset
from prometheus_client.parser import text_string_to_metric_families

from daybook import wire
from daybook.config import Settings
from daybook.model.messages import Heartbeat, SyncEvent
from daybook.model.names import AssetRef
from daybook.model.results import Report, ServiceResult
from daybook.net.client import ControlClient
from daybook.net.keys import MASTER_KEY, KeyPair, keys_dir, read_public_key
from daybook.net.transport import ClientCredentials, secure_client
from daybook.registry.base import open_registry
from daybook.stopping import StopFlag
from daybook.store.local import LocalStore
from daybook.wire import TOPIC_SYNC, decode_as
from daybook_testing.waiting import wait_for
from master.process import run_master

DEADLINE_S = 10.0

# Each sample at /metrics by name and labels.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fleet_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "master",
        store=f"file://{tmp_path / 'store'}",
        registry=f"file://{tmp_path / 'mappings.json'}",
        install_dir=tmp_path / "install",
        hostname="master",
        bind="127.0.0.1",
        port=0,
        results_port=0,
        control_port=0,
        http_port=0,
        key_port=0,
        store_poll_interval_s=0.1,
        registry_poll_interval_s=0.1,
        republish_interval_s=0.5,
        heartbeat_interval_s=0.2,
        down_after_s=2.0,
        splay_s=0.0,
        # Tests that are not about keys let every minion in; the key tests turn this off.
        auto_accept=True,
    )


def web_fleet_settings(tmp_path: Path) -> Settings:
    """`fleet_settings` with service `web` version 1 in the local store and `web-*` mapped
    to it: what a test of the master process needs to have something to sync."""
    store = LocalStore(tmp_path / "store")
    path = make_asset(tmp_path, "web", "1")
    store.upload(path, AssetRef("web", "1"), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    open_registry(f"file://{tmp_path / 'mappings.json'}").update("web-*", lambda _: ("web",))
    return fleet_settings(tmp_path)


@functools.cache
def minion_keypair(host: str) -> KeyPair:
    """One key pair per host name, as a real minion keeps its own in its data dir."""
    return KeyPair.generate()


class RunningMaster:
    """`run_master` on a thread, stopped through its stop flag as a signal would."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = StopFlag()
        self.endpoints: dict[str, str] = {}
        self._ready = threading.Event()
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(DEADLINE_S), "the master did not start"

    def _run(self) -> None:
        def ready(endpoints: dict[str, str]) -> None:
            self.endpoints = endpoints
            self._ready.set()

        self.exit_code = run_master(self.settings, ready=ready, stop=self.stop)

    def port(self, role: str) -> int:
        return int(self.endpoints[role].rsplit(":", 1)[1])

    @property
    def public_key(self) -> str:
        key = read_public_key(keys_dir(self.settings.data_dir) / f"{MASTER_KEY}.key")
        assert key is not None, "the master has no key"
        return key

    def credentials(self, keypair: KeyPair) -> ClientCredentials:
        return ClientCredentials(keypair, self.public_key)

    def client(self, timeout_s: float = 5.0) -> ControlClient:
        """An operator on the master's host: its local socket."""
        return ControlClient(self.endpoints["local"], timeout_s)

    def shutdown(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive()
        assert self.exit_code == 0


class ScriptedMinion:
    """A minion reduced to its protocol: receive events, send heartbeats and reports."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        master: RunningMaster,
        host: str,
        keypair: KeyPair | None = None,
    ):
        self.host = host
        self.keypair = keypair or minion_keypair(host)
        credentials = (
            None if master.settings.insecure_transport else master.credentials(self.keypair)
        )
        self.sub = context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, TOPIC_SYNC)
        self.sub.setsockopt(zmq.RECONNECT_IVL, 50)
        secure_client(self.sub, credentials)
        self.sub.connect(master.endpoints["publish"])
        self.push = context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.setsockopt(zmq.RECONNECT_IVL, 50)
        secure_client(self.push, credentials)
        self.push.connect(master.endpoints["results"])

    def heartbeat(self, **changes: object) -> None:
        fields: dict[str, object] = {
            "host": self.host,
            "boot_id": f"boot-{self.host}",
            "started_at": time.time(),
            "sent_at": time.time(),
            "epoch": 0,
            "seq": 0,
            "state_digest": None,
            "busy": False,
        }
        fields.update(changes)
        self.push.send_multipart(wire.encode(Heartbeat(**fields)))  # type: ignore[arg-type]

    def next_event(self, timeout_s: float = DEADLINE_S) -> SyncEvent:
        if not self.sub.poll(int(timeout_s * 1000)):
            raise AssertionError(f"{self.host} got no event within {timeout_s} s")
        return decode_as(SyncEvent, self.sub.recv_multipart(), max_bytes=1 << 24)

    def event_for(self, sync_id: str, timeout_s: float = DEADLINE_S) -> SyncEvent:
        deadline = time.monotonic() + timeout_s
        while True:
            event = self.next_event(max(0.01, deadline - time.monotonic()))
            if event.sync_id == sync_id:
                return event

    def report(self, event: SyncEvent, *, ok: bool = True, report_id: str | None = None) -> Report:
        result = ServiceResult(present=("1",)) if ok else ServiceResult(failed={"1": "broken"})
        message = Report(
            report_id=report_id or f"{self.host}-{event.sync_id}-{event.seq}",
            host=self.host,
            sync_id=event.sync_id,
            epoch=event.epoch,
            seq=event.seq,
            state_digest=event.state_digest,
            pattern="web-*",
            services={"web": result},
            installed={"web": ("1",)},
            started_at=time.time(),
            finished_at=time.time(),
        )
        self.push.send_multipart(wire.encode(message))
        return message

    def close(self) -> None:
        self.sub.close()
        self.push.close()


def live_minions(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster, *hosts: str
) -> list[ScriptedMinion]:
    """Minions that the master counts as up and that receive its events."""
    minions = [ScriptedMinion(context, master, host) for host in hosts]
    for minion in minions:
        minion.heartbeat()
        minion.next_event()  # subscribed: the master's catch-up republish arrived
    with master.client() as client:
        wait_for(lambda: set(hosts) <= _up(client), "minions up")
    return minions


def _up(client: ControlClient) -> set[str]:
    return {host for host, entry in client.fleet_status().hosts.items() if entry.up}


def scrape_metrics(master: RunningMaster) -> Samples:
    """The master's /metrics as a Prometheus server reads it: over HTTP, parsed."""
    with requests.Session() as session:
        session.trust_env = False  # no proxy from the environment between us and loopback
        response = session.get(master.endpoints["http"] + "/metrics", timeout=5.0)
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value; None if /metrics does not export it."""
    return samples.get((name, frozenset(labels.items())))
