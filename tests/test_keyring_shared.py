"""Several masters on one key ring: two KeyRing instances (two masters) on one store, over
both stores, and two real `daybook master` processes sharing one file registry and one
`master_key_file`. A key accepted on one master is admitted by the other."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from keystores import Opener
from process_fleet import ProcessFleet, endpoints_once_written

import daybook_testing.fleet
from daybook.config import load_settings
from daybook.errors import ConfigError
from daybook.model.keys import ACCEPTED, PENDING, REJECTED, Key, KeyListing
from daybook.net.client import ControlClient
from daybook.net.endpoints import read_endpoints
from daybook.net.keys import KeyPair, load_keypair_file, load_or_create_keypair
from daybook.net.transport import CURVE_USER_PREFIX, DOMAIN_PUBLISH, DOMAIN_RESULTS
from daybook.registry.file import FileRegistry
from daybook.registry.keystore import KeySnapshot, KeyStore, open_keystore
from daybook.store.local import LocalStore
from daybook_testing.consul_server import ConsulServer
from daybook_testing.waiting import wait_for
from master.keyring import TOUCH_INTERVAL_S, Admission, KeyRing, KeySelectionError
from master.keyring_sync import (
    WATCH_CPU_SHARE,
    WATCH_INTERVAL_S,
    KeyRingWatcher,
    KeyRingWriter,
)
from master.pacing import Pacer


class Running:
    """A ring with its writer and watcher threads, as a master runs them."""

    def __init__(self, store: KeyStore) -> None:
        self.ring = KeyRing.open(store, auto_accept=False)
        writer = KeyRingWriter(self.ring, flush_interval_s=0.05)
        watcher = KeyRingWatcher(self.ring, store, watch_timeout_s=2.0)
        self._stops = [writer.stop, watcher.stop]
        self._threads = [threading.Thread(target=t.run) for t in (writer, watcher)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for stop in self._stops:
            stop()
        for thread in self._threads:
            thread.join(timeout=10.0)
            assert not thread.is_alive()


@pytest.fixture
def two_masters(opener: Opener) -> Iterator[tuple[KeyRing, KeyRing]]:
    first, second = Running(opener()), Running(opener())
    try:
        yield first.ring, second.ring
    finally:
        first.stop()
        second.stop()


def test_a_key_accepted_on_one_master_is_admitted_by_the_other(
    two_masters: tuple[KeyRing, KeyRing],
) -> None:
    one, two = two_masters
    minion = KeyPair.generate()
    # The minion meets master two first: pending there, and so, once written, on one.
    assert two.admit(DOMAIN_RESULTS, minion.public, "10.0.0.5") is Admission.HOLD
    wait_for(lambda: one.get(minion.public), "master one to see the pending key")
    assert one.accept(minion.fingerprint).entry.state == ACCEPTED
    wait_for(
        lambda: two.admit(DOMAIN_PUBLISH, minion.public, "10.0.0.5") is Admission.ALLOW,
        "master two to admit the key accepted on master one",
    )
    # A deletion travels the same way, and cuts the key off on the other master.
    one.delete(minion.fingerprint)
    wait_for(lambda: two.get(minion.public) is None, "master two to forget the deleted key")


def test_an_operator_change_on_a_key_changed_elsewhere_is_decided_again(opener: Opener) -> None:
    store = opener()
    one = KeyRing.open(store, auto_accept=False)
    two = KeyRing.open(opener(), auto_accept=False)
    minion = KeyPair.generate()
    one.hello(minion.public, "web-1", "minion", "10.0.0.5")
    assert one.save()
    two.merge(store.read())
    # Master two accepts; master one, not having seen it yet, rejects: its check-and-set
    # loses, it reads again, and rejects the key as it is now (accepted: a cut-off).
    two.accept("web-1")
    change = one.reject("web-1")
    assert change.cut_off
    assert store.read().keys[minion.public].key.state == REJECTED
    assert one.get(minion.public) == store.read().keys[minion.public].key
    # Master two deletes it; master one, not having seen that, accepts it: the key is gone,
    # and says so, changing nothing.
    two.merge(store.read())
    two.delete(minion.fingerprint)
    with pytest.raises(KeySelectionError, match="no key has the fingerprint"):
        one.accept(minion.fingerprint)
    assert store.read().keys == {}
    assert one.get(minion.public) is None


def test_one_host_accepted_twice_across_masters_is_refused(opener: Opener) -> None:
    store = opener()
    one = KeyRing.open(store, auto_accept=False)
    two = KeyRing.open(opener(), auto_accept=False)
    first, second = KeyPair.generate(), KeyPair.generate()
    one.hello(first.public, "web-1", "minion", "10.0.0.5")
    two.hello(second.public, "web-1", "minion", "10.0.0.6")
    one.save()
    two.save()
    one.accept(first.fingerprint)
    two.merge(store.read())
    with pytest.raises(KeySelectionError, match="already has an accepted minion key"):
        two.accept(second.fingerprint)
    assert store.read().keys[second.public].key.state == PENDING


class CountingStore:
    """A store that counts writes and can hold them, as a slow or unreachable Consul."""

    def __init__(self, inner: KeyStore) -> None:
        self.inner = inner
        self.writes = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    @property
    def url(self) -> str:
        return self.inner.url

    def read(self) -> KeySnapshot:
        return self.inner.read()

    def watch(self, index: int, timeout_s: float) -> KeySnapshot:
        return self.inner.watch(index, timeout_s)

    def write(self, key: Key, version: int) -> int | None:
        self.writes += 1
        self.entered.set()
        self.release.wait(30.0)
        return self.inner.write(key, version)

    def write_batch(self, items: Sequence[tuple[Key, int]]) -> list[int | None]:
        return [self.write(key, version) for key, version in items]

    def delete(self, public_key: str, version: int) -> bool:
        return self.inner.delete(public_key, version)

    def close(self) -> None:
        self.inner.close()


def test_handshakes_never_wait_on_the_store(opener: Opener) -> None:
    store = CountingStore(opener())
    store.release.clear()
    ring = KeyRing.open(store, auto_accept=False)
    writer = KeyRingWriter(ring, flush_interval_s=0.0)
    thread = threading.Thread(target=writer.run)
    thread.start()
    try:
        ring.admit(DOMAIN_RESULTS, KeyPair.generate().public, "10.0.0.1")
        assert store.entered.wait(10.0), "the writer never wrote"
        # The store holds the write; the ZAP handler's answers come from memory meanwhile.
        answers: list[Admission] = []
        handshakes = threading.Thread(
            target=lambda: answers.extend(
                ring.admit(DOMAIN_RESULTS, KeyPair.generate().public, "10.0.0.2") for _ in range(20)
            )
        )
        handshakes.start()
        handshakes.join(timeout=10.0)
        assert answers == [Admission.HOLD] * 20
    finally:
        store.release.set()
        writer.stop()
        thread.join(timeout=10.0)


def test_last_seen_touches_cost_no_write_per_handshake(opener: Opener) -> None:
    now = [1000.0]
    store = CountingStore(opener())
    ring = KeyRing(None, auto_accept=True, store=store, clock=lambda: now[0])
    minion = KeyPair.generate()
    ring.admit(DOMAIN_RESULTS, minion.public, "10.0.0.1")
    assert ring.flush()
    assert store.writes == 1
    for _ in range(100):
        now[0] += 0.5
        assert ring.admit(DOMAIN_RESULTS, minion.public, "10.0.0.1") is Admission.ALLOW
        ring.flush()
    assert store.writes == 1
    now[0] += TOUCH_INTERVAL_S
    ring.admit(DOMAIN_RESULTS, minion.public, "10.0.0.1")
    ring.flush()
    assert store.writes == 2
    assert store.read().keys[minion.public].key.last_seen == now[0]


def noted_again(
    store: KeyStore,
) -> tuple[list[float], KeyRing, KeyPair, KeyRingWriter, threading.Thread]:
    """A ring whose one minion key is saved and then seen again a touch interval later
    (a note, not saved yet), with its writer running: the clock, the ring, the minion's
    keys, the writer and its thread."""
    now = [1000.0]
    ring = KeyRing(None, auto_accept=True, store=store, clock=lambda: now[0])
    minion = KeyPair.generate()
    ring.admit(DOMAIN_RESULTS, minion.public, "10.0.0.1")
    assert ring.flush()
    writer = KeyRingWriter(ring, flush_interval_s=0.0, notes_interval_s=60.0)
    thread = threading.Thread(target=writer.run)
    thread.start()
    now[0] += TOUCH_INTERVAL_S
    ring.admit(DOMAIN_RESULTS, minion.public, "10.0.0.1")
    return now, ring, minion, writer, thread


def test_notes_wait_for_a_change_that_matters_or_their_interval(opener: Opener) -> None:
    """A key seen again is a note: written with the next change that matters, or a minute
    later, so a fleet's hellos do not wake every master's watch all the time."""
    store = CountingStore(opener())
    now, ring, minion, writer, thread = noted_again(store)
    try:
        assert ring.dirty
        assert not ring.urgent
        thread.join(timeout=0.3)
        assert store.writes == 1
        ring.admit(DOMAIN_RESULTS, KeyPair.generate().public, "10.0.0.2")  # a new key
        wait_for(lambda: not ring.dirty, "the new key and the note written")
        assert store.writes == 3
        assert store.read().keys[minion.public].key.last_seen == now[0]
    finally:
        writer.stop()
        thread.join(timeout=10.0)
    assert not thread.is_alive()


def test_a_stop_ends_the_wait_of_notes(opener: Opener) -> None:
    _now, _ring, _minion, writer, thread = noted_again(opener())
    writer.stop()
    thread.join(timeout=10.0)
    assert not thread.is_alive()


def test_a_watch_answer_during_a_write_keeps_the_change_being_written(opener: Opener) -> None:
    """The watcher may merge an answer taken before this master's write landed: the entry
    being written must stand, or a minion's reports are dropped as an impostor's until the
    next answer (seen with a thousand minions starting at once)."""
    store = CountingStore(opener())
    ring = KeyRing(None, auto_accept=True, store=store)
    minion = KeyPair.generate()
    user_id = CURVE_USER_PREFIX + minion.public
    assert ring.admit(DOMAIN_RESULTS, minion.public, "10.0.0.1") is Admission.ALLOW
    assert ring.flush()
    before_binding = store.read()
    assert ring.speaks_for(user_id, "web-1")  # binds the key to its host: a change to write
    store.entered.clear()
    store.release.clear()
    writing = threading.Thread(target=ring.flush)
    writing.start()
    try:
        assert store.entered.wait(10.0), "the writer never wrote"
        ring.merge(before_binding)
        assert ring.speaks_for(user_id, "web-1")
        assert not ring.speaks_for(user_id, "web-2")
    finally:
        store.release.set()
        writing.join(timeout=10.0)
    ring.merge(store.read())
    assert store.read().keys[minion.public].key.host == "web-1"
    assert ring.speaks_for(user_id, "web-1")
    assert not ring.dirty


def test_a_watch_answer_from_before_a_new_key_was_written_does_not_delete_it(
    opener: Opener,
) -> None:
    """An answer the watcher got before this master wrote a new key lacks it: that is not
    another master deleting it."""
    store = opener()
    ring = KeyRing(None, auto_accept=True, store=store)
    ring.admit(DOMAIN_RESULTS, KeyPair.generate().public, "10.0.0.2")
    assert ring.flush()
    before_the_key = store.read()  # holds the first key: not a store that lost its data
    minion = KeyPair.generate()
    assert ring.admit(DOMAIN_RESULTS, minion.public, "10.0.0.1") is Admission.ALLOW
    assert ring.flush()
    ring.merge(before_the_key)
    assert ring.speaks_for(CURVE_USER_PREFIX + minion.public, "web-1")
    # A later answer without it is a delete, as before.
    ring.flush()
    store.delete(minion.public, store.read().keys[minion.public].version)
    ring.merge(store.read())
    assert ring.get(minion.public) is None


def test_the_watcher_rests_so_reading_a_large_ring_takes_a_tenth_of_a_core(
    opener: Opener,
) -> None:
    """Each answer holds the whole ring: with thousands of keys being written (the
    handshake storm after a restart wakes the watch on every write), rounds that cost CPU
    are spaced out to WATCH_CPU_SHARE of a core, cheap ones only rate-limited."""
    inner = opener()
    cpu = [0.0]
    costs = [0.05, 0.02, 0.0]  # this thread's CPU for each round's answer
    pauses: list[float] = []

    class Costly(CountingStore):
        def watch(self, index: int, timeout_s: float) -> KeySnapshot:
            cpu[0] += costs[len(pauses)]
            return self.inner.read()

    class Recording(Pacer):
        def pause(self, seconds: float) -> None:
            pauses.append(seconds)
            if len(pauses) == len(costs):
                self.stop()

    store = Costly(inner)
    watcher = KeyRingWatcher(
        KeyRing(None, auto_accept=False, store=store),
        store,
        pacer=Recording(),
        cpu_clock=lambda: cpu[0],
    )
    watcher.run()
    assert pauses[0] == pytest.approx(0.05 / WATCH_CPU_SHARE - 0.05)
    assert pauses[1] == pytest.approx(0.02 / WATCH_CPU_SHARE - 0.02)
    assert pauses[2] <= WATCH_INTERVAL_S


def test_a_store_failure_keeps_the_changes_for_the_next_flush(tmp_path: Path) -> None:
    path = tmp_path / "mappings.json"
    store = open_keystore(f"file://{path}")
    ring = KeyRing.open(store, auto_accept=False)
    # A directory where the key ring file should be: every write fails.
    (tmp_path / "mappings.json.keys.json").mkdir()
    minion = KeyPair.generate()
    ring.admit(DOMAIN_RESULTS, minion.public, "10.0.0.1")
    assert not ring.flush()
    assert ring.dirty
    (tmp_path / "mappings.json.keys.json").rmdir()
    assert ring.flush()
    assert minion.public in store.read().keys


# -- two real masters --------------------------------------------------------------------------


@pytest.mark.e2e
def test_two_master_processes_share_accepted_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `daybook master` processes, one file registry, one `master_key_file`, their own
    data dirs and ports. A minion accepted through `daybook keys accept` on master one is
    answered by master two (its heartbeats counted, its key accepted) with no other accept."""
    # These masters take no key by themselves: an operator accepts.
    monkeypatch.setattr(daybook_testing.fleet, "MASTER_ENV", {})
    shared, _ = load_or_create_keypair(tmp_path / "fleet-key", "master")
    key_file = str(tmp_path / "fleet-key" / "master.key_secret")
    fleet = ProcessFleet(
        tmp_path,
        store=LocalStore(tmp_path / "store"),
        registry=FileRegistry(tmp_path / "mappings.json"),
    )
    try:
        fleet.start_master(DAYBOOK_MASTER_KEY_FILE=key_file)
        first_ports = dict(fleet.ports)
        second_dir = tmp_path / "master-2"
        two = fleet.spawn(
            "master-2",
            [*fleet.command, "master"],
            fleet.env(
                DAYBOOK_DATA_DIR=str(second_dir),
                DAYBOOK_HOSTNAME="master-2",
                DAYBOOK_PORT="0",
                DAYBOOK_MASTER_KEY_FILE=key_file,
            ),
        )
        second = wait_for(lambda: endpoints_once_written(second_dir), "master two's endpoints")
        for master in (fleet.master, two):
            assert master is not None
            assert f"using the master key {shared.fingerprint}" in master.log()
        _minion_meets_one_then_two(fleet, first_ports, dict(second.ports), second_dir)
    finally:
        failures = fleet.close()
        assert not failures, "\n".join(failures)


def _minion_meets_one_then_two(
    fleet: ProcessFleet, first: dict[str, int], second: dict[str, int], second_dir: Path
) -> None:
    fleet.start_minion("web-1")
    fleet.wait_for(
        lambda: any(k.host == "web-1" for k in fleet.client.keys().pending),
        "web-1's key pending on master one",
    )
    accepted = fleet.cli("keys", "accept", "web-1")
    assert accepted.returncode == 0, accepted.stderr
    fleet.wait_up("web-1")
    # The same minion (its data dir: its key, the master key it pinned), now given
    # master two's ports only.
    fleet.minions["web-1"].stop()
    fleet.ports = second
    fleet.start_minion("web-1")
    with ControlClient(read_endpoints(second_dir).endpoints["local"], timeout_s=5.0) as two:
        fleet.wait_for(
            lambda: (entry := two.fleet_status().hosts.get("web-1")) is not None and entry.up,
            "master two to count web-1's heartbeats",
        )
        listing = two.keys()
    assert [k.host for k in listing.accepted] == ["web-1"]
    assert listing.pending == ()
    fleet.ports = first


# -- the key pair every master shares ----------------------------------------------------------


def test_master_key_file_is_a_setting_with_its_variable(tmp_path: Path) -> None:
    env = {"DAYBOOK_DATA_DIR": str(tmp_path), "DAYBOOK_MASTER_KEY_FILE": "~/fleet.key_secret"}
    assert load_settings(env=env).master_key_file == Path("~/fleet.key_secret").expanduser()
    assert load_settings(env={"DAYBOOK_DATA_DIR": str(tmp_path)}).master_key_file is None


def _unlink(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_unlink, "does not exist"),
        (lambda path: path.chmod(0o640), "accessible to other users (mode 640)"),
        (lambda path: path.chmod(0o604), "accessible to other users (mode 604)"),
        (lambda path: path.write_text("not a certificate"), "cannot read the key pair"),
    ],
)
def test_a_bad_master_key_file_stops_the_master_in_one_line(
    tmp_path: Path, spoil: Callable[[Path], None], message: str
) -> None:
    load_or_create_keypair(tmp_path / "fleet", "master")
    path = tmp_path / "fleet" / "master.key_secret"
    spoil(path)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DAYBOOK_")},
        "DAYBOOK_DATA_DIR": str(tmp_path / "master"),
        "DAYBOOK_MASTER_KEY_FILE": str(path),
        "DAYBOOK_PORT": "0",
    }
    run = subprocess.run(
        [sys.executable, "-m", "daybook", "master"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60.0,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("daybook: master_key_file")
    assert message in run.stderr


def test_an_unreadable_master_key_file_is_refused(tmp_path: Path) -> None:
    load_or_create_keypair(tmp_path / "fleet", "master")
    path = tmp_path / "fleet" / "master.key_secret"
    with pytest.raises(ConfigError, match="is not readable: Is a directory"):
        load_keypair_file(tmp_path / "fleet", "master_key_file")
    assert load_keypair_file(path, "master_key_file").public


def test_a_master_restarted_while_consul_is_down_admits_from_its_copy(
    consul_server: ConsulServer, tmp_path: Path
) -> None:
    url = f"consul://{consul_server.address}"
    copy = tmp_path / "keys" / "keyring.json"
    copy.parent.mkdir()
    stays, goes = KeyPair.generate(), KeyPair.generate()
    store = open_keystore(url)
    ring = KeyRing.open(store, auto_accept=False, cache_path=copy)
    for pair, host in ((stays, "web-1"), (goes, "web-2")):
        ring.hello(pair.public, host, "minion", "10.0.0.1")
        ring.accept(host)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    # While this master is down, another one deletes a key; then Consul goes down too.
    store.delete(goes.public, store.read().keys[goes.public].version)
    consul_server.inject_fault("no_leader", count=100_000)
    again = KeyRing.open(open_keystore(url), auto_accept=False, cache_path=copy)
    for pair in (stays, goes):
        assert again.admit(DOMAIN_PUBLISH, pair.public, "10.0.0.1") is Admission.ALLOW
    # Consul answers again: its table replaces the copy, and the deleted key is gone.
    consul_server.clear_faults()
    again.merge(store.read())
    assert again.admit(DOMAIN_PUBLISH, stays.public, "10.0.0.1") is Admission.ALLOW
    assert again.get(goes.public) is None
    # A copy of the shared ring is never imported: an emptied store stays empty.
    store.delete(stays.public, store.read().keys[stays.public].version)
    assert KeyRing.open(store, auto_accept=False, cache_path=copy).listing() == KeyListing()
    assert store.read().keys == {}
    store.close()


def test_keys_lost_by_a_consul_restarted_empty_are_written_back(
    consul_server: ConsulServer,
) -> None:
    store = open_keystore(f"consul://{consul_server.address}")
    ring = KeyRing.open(store, auto_accept=False)
    minion, deleted = KeyPair.generate(), KeyPair.generate()
    for pair, host in ((minion, "web-1"), (deleted, "web-2")):
        ring.hello(pair.public, host, "minion", "10.0.0.1")
        ring.accept(host)
    # A delete raises the index (its tombstone): it is honoured, however alone it is.
    store.delete(deleted.public, store.read().keys[deleted.public].version)
    ring.merge(store.read())
    assert ring.get(deleted.public) is None
    for number in range(20):  # indexes well above what a fresh Consul starts from
        consul_server.put("daybook/other", str(number).encode())
    ring.hello(deleted.public, "web-2", "minion", "10.0.0.1")
    ring.accept("web-2")
    consul_server.restart()
    ring.merge(store.read())
    assert ring.admit(DOMAIN_PUBLISH, minion.public, "10.0.0.1") is Admission.ALLOW
    assert ring.flush()
    assert {k.key.host for k in store.read().keys.values()} == {"web-1", "web-2"}
    store.close()
