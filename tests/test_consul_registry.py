"""ConsulRegistry against the Consul double: CAS, skipped keys, watch rules, errors and tokens."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
import requests

from daybook.errors import ConfigError, ConflictError, InputError, RegistryError
from daybook.registry.base import open_registry
from daybook.registry.consul import MAX_CAS_ATTEMPTS, ConsulEndpoint, ConsulRegistry
from daybook_testing.consul_server import ConsulServer

P = "daybook/hosts/"
TOKEN = "b1gs3cr3t-0000-4000-8000-000000000000"
_CONSUL_VARS = (
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_TOKEN_FILE",
    "CONSUL_HTTP_SSL",
    "CONSUL_HTTP_SSL_VERIFY",
    "CONSUL_CACERT",
    "CONSUL_CAPATH",
    "CONSUL_CLIENT_CERT",
    "CONSUL_CLIENT_KEY",
)


@pytest.fixture(autouse=True)
def clean_consul_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own Consul settings must not leak into the tests.
    for name in _CONSUL_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server(consul_server: ConsulServer) -> ConsulServer:
    consul_server.jitter = False
    return consul_server


@pytest.fixture
def registry(server: ConsulServer) -> Iterator[ConsulRegistry]:
    reg = ConsulRegistry(address=server.address, key_prefix=P)
    yield reg
    reg.close()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def kv_put(http: requests.Session, server: ConsulServer, key: str, value: str) -> None:
    assert http.put(f"{server.url}/v1/kv/{key}", data=value).json() is True


def kv_value(http: requests.Session, server: ConsulServer, key: str) -> str | None:
    response = http.get(f"{server.url}/v1/kv/{key}", params={"raw": ""})
    return response.text if response.status_code == 200 else None


# read


def test_missing_prefix_reads_as_an_empty_table_with_its_index(
    server: ConsulServer, registry: ConsulRegistry, http: requests.Session
) -> None:
    snapshot = registry.read()
    assert snapshot.mappings == {}
    assert snapshot.index == 1
    kv_put(http, server, "elsewhere", "x")
    snapshot = registry.read()
    assert snapshot.mappings == {}
    assert snapshot.index == server.kv_index  # the empty prefix falls back to the store index


def test_values_are_comma_separated_under_the_pattern_key(
    server: ConsulServer, registry: ConsulRegistry, http: requests.Session
) -> None:
    assert registry.update("web-prod-*", lambda _: ("service_1", "service_2")) == (
        "service_1",
        "service_2",
    )
    assert kv_value(http, server, P + "web-prod-%2A") == "service_1,service_2"
    kv_put(http, server, P + "db-%2A", " a , b,,a ")
    assert registry.read().mappings == {
        "web-prod-*": ("service_1", "service_2"),
        "db-*": ("a", "b"),
    }


def test_invalid_keys_and_names_are_skipped_with_one_warning_each(
    server: ConsulServer,
    registry: ConsulRegistry,
    http: requests.Session,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kv_put(http, server, P + "ok-%2A", "a,bad-name,b")
    kv_put(http, server, P + "web-%3F", "x")  # `?` is no pattern character
    kv_put(http, server, P + "nested/deeper-%2A", "x")
    kv_put(http, server, P + "a..b", "x")
    kv_put(http, server, P, "")  # a folder key, as the Consul UI makes
    kv_put(http, server, P + "empty-%2A", "")
    kv_put(http, server, P + "Mixed-%2A", "m")
    kv_put(http, server, P + "mixed-%2A", "n")
    with caplog.at_level(logging.WARNING):
        snapshot = registry.read()
    assert snapshot.mappings == {"ok-*": ("a", "b"), "Mixed-*": ("m",)}
    messages = [r.getMessage() for r in caplog.records]
    text = "\n".join(messages)
    for fragment in ("bad-name", "web-?", "nested/deeper-*", "a..b", P + "mixed-*"):
        assert fragment in text
    assert len(messages) == 5
    # Unchanged keys are not parsed or reported again on the next round.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert registry.read().mappings == snapshot.mappings
    assert caplog.records == []


def test_index_is_never_below_one(registry: ConsulRegistry) -> None:
    assert registry.read().index >= 1
    assert registry.watch(0, 5).index >= 1


# update


def test_update_creates_and_replaces_with_check_and_set(
    server: ConsulServer, registry: ConsulRegistry
) -> None:
    registry.update("web-*", lambda _: ("a",))
    registry.update("web-*", lambda current: (*current, "b"))
    writes = [r for r in server.request_log if r.method == "PUT"]
    assert [w.body for w in writes] == [b"a", b"a,b"]
    assert writes[0].query["cas"] == ["0"]
    first_index = int(writes[1].query["cas"][0])
    assert first_index > 0
    assert registry.read().mappings == {"web-*": ("a", "b")}


def test_update_to_nothing_deletes_the_key_with_check_and_set(
    server: ConsulServer, registry: ConsulRegistry, http: requests.Session
) -> None:
    registry.update("web-*", lambda _: ("a",))
    assert registry.update("web-*", lambda _: ()) == ()
    assert kv_value(http, server, P + "web-%2A") is None
    [delete] = [r for r in server.request_log if r.method == "DELETE"]
    assert int(delete.query["cas"][0]) > 0
    # Removing what is not there writes nothing.
    server.clear_request_log()
    assert registry.update("db-*", lambda _: ()) == ()
    assert {r.method for r in server.request_log} == {"GET"}


def test_update_without_a_change_writes_nothing(
    server: ConsulServer, registry: ConsulRegistry
) -> None:
    registry.update("web-*", lambda _: ("a", "b"))
    server.clear_request_log()
    assert registry.update("web-*", lambda current: current) == ("a", "b")
    assert registry.update("web-*", lambda _: ("a", "b", "a")) == ("a", "b")
    assert {r.method for r in server.request_log} == {"GET"}


def test_update_refuses_bad_patterns_and_names(
    server: ConsulServer, registry: ConsulRegistry
) -> None:
    with pytest.raises(InputError):
        registry.update("web/../x", lambda _: ("a",))
    with pytest.raises(InputError):
        registry.update("web-*", lambda _: ("not-a-service",))
    assert server.entries() == {}


def test_two_concurrent_writers_lose_no_update(server: ConsulServer) -> None:
    # Two operators, each with their own client, adding 50 services to one pattern at once.
    names = [[f"w{writer}_{n}" for n in range(50)] for writer in range(2)]
    start = threading.Barrier(2)

    def add_one(name: str, current: tuple[str, ...]) -> tuple[str, ...]:
        return (*current, name)

    def add_all(mine: list[str]) -> None:
        reg = ConsulRegistry(address=server.address, key_prefix=P)
        try:
            start.wait(timeout=10)
            for name in mine:
                reg.update("web-*", partial(add_one, name))
        finally:
            reg.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(add_all, mine) for mine in names]:
            future.result(timeout=60)
    reg = ConsulRegistry(address=server.address, key_prefix=P)
    try:
        final = reg.read().mappings["web-*"]
    finally:
        reg.close()
    assert sorted(final) == sorted(names[0] + names[1])


def test_endless_conflicts_give_a_conflict_error(
    server: ConsulServer,
    registry: ConsulRegistry,
    http: requests.Session,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("daybook.registry.consul.MAX_CAS_BACKOFF_S", 0.001)
    registry.update("web-*", lambda _: ("a",))
    calls = 0

    def racing(current: tuple[str, ...]) -> tuple[str, ...]:
        # Another writer always gets in between our read and our write.
        nonlocal calls
        calls += 1
        kv_put(http, server, P + "web-%2A", f"a,other_{calls}")
        return (*current, "mine")

    with pytest.raises(ConflictError, match=server.address):
        registry.update("web-*", racing)
    assert calls == MAX_CAS_ATTEMPTS
    assert "mine" not in (kv_value(http, server, P + "web-%2A") or "")


# watch


def test_watch_zero_answers_at_once_without_blocking(
    server: ConsulServer, registry: ConsulRegistry
) -> None:
    started = time.monotonic()
    registry.watch(0, timeout_s=30)
    assert time.monotonic() - started < 1.0
    assert server.request_log
    assert all("index" not in request.query for request in server.request_log)


def test_watch_sends_the_index_and_a_go_duration(
    server: ConsulServer, registry: ConsulRegistry
) -> None:
    registry.update("web-*", lambda _: ("a",))
    current = registry.read()
    server.clear_request_log()
    started = time.monotonic()
    snapshot = registry.watch(current.index, timeout_s=0.5)
    assert time.monotonic() - started >= 0.5
    assert snapshot == current
    [request] = server.request_log
    assert request.query["index"] == [str(current.index)]
    assert request.query["wait"] == ["500ms"]


def test_a_held_watch_outlives_the_short_request_timeout(server: ConsulServer) -> None:
    # The HTTP timeout covers the wait plus Consul's jitter, not just the connect timeout.
    server.jitter = True
    reg = ConsulRegistry(address=server.address, key_prefix=P, timeout_s=0.2)
    try:
        reg.update("web-*", lambda _: ("a",))
        current = reg.read()
        started = time.monotonic()
        assert reg.watch(current.index, timeout_s=0.8) == current
        assert time.monotonic() - started >= 0.8
    finally:
        reg.close()


def test_watch_wakes_promptly_on_put_and_delete(
    server: ConsulServer, registry: ConsulRegistry, http: requests.Session
) -> None:
    registry.update("web-*", lambda _: ("a",))
    with ThreadPoolExecutor(max_workers=1) as pool:
        for write, expected in (
            (lambda: kv_put(http, server, P + "db-%2A", "d"), {"web-*": ("a",), "db-*": ("d",)}),
            (lambda: http.delete(f"{server.url}/v1/kv/{P}web-%2A"), {"db-*": ("d",)}),
        ):
            before = registry.read()
            pending = pool.submit(registry.watch, before.index, 20)
            server.wait_for_blocked()
            written = time.monotonic()
            write()
            snapshot = pending.result(timeout=10)
            assert time.monotonic() - written < 1.0
            assert snapshot.index > before.index
            assert snapshot.mappings == expected


def test_watch_index_goes_backwards_after_tombstones_are_reaped(
    server: ConsulServer, registry: ConsulRegistry
) -> None:
    registry.update("web-*", lambda _: ("a",))
    registry.update("db-*", lambda _: ("d",))
    registry.update("db-*", lambda _: ())
    with_tombstone = registry.read()
    server.reap_tombstones()
    snapshot = registry.watch(with_tombstone.index, timeout_s=0.3)
    # Same data, lower index: the caller's cue to reset to 0 and re-read.
    assert snapshot.index < with_tombstone.index
    assert snapshot.mappings == with_tombstone.mappings
    assert registry.watch(0, timeout_s=30).index == snapshot.index


def test_watch_after_a_restart_sees_a_lower_index(
    server: ConsulServer, registry: ConsulRegistry
) -> None:
    for n in range(5):
        registry.update(f"web{n}-*", lambda _: ("a",))
    before = registry.read()
    server.restart()
    snapshot = registry.watch(before.index, timeout_s=0.3)
    assert snapshot.mappings == {}
    assert snapshot.index < before.index


def test_a_watch_cut_by_a_restart_is_a_registry_error(
    server: ConsulServer, registry: ConsulRegistry
) -> None:
    index = registry.read().index
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(registry.watch, index, 20)
        server.wait_for_blocked()
        server.restart(keep_data=True)
        with pytest.raises(RegistryError, match=f"cannot reach Consul at {server.address}"):
            pending.result(timeout=10)
    assert registry.read().index == index  # the next call reconnects


# errors


def assert_one_line(exc: BaseException, *fragments: str) -> None:
    message = str(exc)
    assert "\n" not in message
    assert TOKEN not in message
    for fragment in fragments:
        assert fragment in message


def test_unreachable_consul_is_a_registry_error() -> None:
    with ConsulServer() as stopped:
        address = stopped.address
    reg = ConsulRegistry(address=address, key_prefix=P)
    try:
        with pytest.raises(RegistryError) as caught:
            reg.read()
    finally:
        reg.close()
    assert_one_line(caught.value, f"cannot reach Consul at {address}", "refused")


def test_transient_server_errors(server: ConsulServer, registry: ConsulRegistry) -> None:
    server.inject_fault("no_leader")
    with pytest.raises(RegistryError) as caught:
        registry.read()
    assert_one_line(caught.value, server.address, "500", "No cluster leader", "transient")
    server.inject_fault("rate_limited")
    with pytest.raises(RegistryError) as caught:
        registry.watch(5, 1)
    assert_one_line(caught.value, server.address, "429")
    server.inject_fault("drop")
    with pytest.raises(RegistryError) as caught:
        registry.update("web-*", lambda _: ("a",))
    assert_one_line(caught.value, f"cannot reach Consul at {server.address}")
    assert registry.read().mappings == {}  # and it recovers


def test_a_slow_answer_times_out(server: ConsulServer) -> None:
    reg = ConsulRegistry(address=server.address, key_prefix=P, timeout_s=0.2)
    server.inject_fault("delay", delay_s=2.0)
    try:
        with pytest.raises(RegistryError) as caught:
            reg.read()
    finally:
        reg.close()
    assert_one_line(caught.value, server.address, "did not answer in time")


def test_a_value_too_large_is_reported(server: ConsulServer, registry: ConsulRegistry) -> None:
    server.max_value_bytes = 16
    with pytest.raises(RegistryError) as caught:
        registry.update("web-*", lambda _: ("service_one", "service_two"))
    assert_one_line(caught.value, "value too large", server.address)


# ACLs and the token


@pytest.fixture
def acl_server(server: ConsulServer) -> ConsulServer:
    server.enable_acls("deny")
    server.add_acl_token(TOKEN, key_prefix={P: "read"})
    server.add_acl_token("writer", key_prefix={"daybook/": "write"})
    return server


def test_no_token_with_acls_is_a_clear_error(acl_server: ConsulServer) -> None:
    reg = ConsulRegistry(address=acl_server.address, key_prefix=P)
    try:
        with pytest.raises(RegistryError) as caught:
            reg.read()
    finally:
        reg.close()
    assert_one_line(caught.value, acl_server.address, "CONSUL_HTTP_TOKEN", "Permission denied")


def test_a_token_without_read_rights_is_not_an_empty_table(
    acl_server: ConsulServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Consul filters a recursive read rather than refusing it: 404, as if there were no keys.
    acl_server.add_acl_token("other-prefix", key_prefix={"elsewhere/": "write"})
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "other-prefix")
    reg = ConsulRegistry(address=acl_server.address, key_prefix=P)
    try:
        with pytest.raises(RegistryError) as caught:
            reg.read()
    finally:
        reg.close()
    assert_one_line(caught.value, acl_server.address, "key:read")


def test_partial_read_rights_are_refused_not_served(
    acl_server: ConsulServer, http: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = {"X-Consul-Token": "writer"}
    for key in ("web-%2A", "web-prod-%2A"):
        http.put(f"{acl_server.url}/v1/kv/{P}{key}", data="a", headers=writer)
    acl_server.add_acl_token("partial", key_prefix={P: "read"}, key={P + "web-prod-*": "deny"})
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "partial")
    reg = ConsulRegistry(address=acl_server.address, key_prefix=P)
    try:
        # A table without web-prod-* would send web-prod hosts to web-*'s services.
        with pytest.raises(RegistryError) as caught:
            reg.read()
    finally:
        reg.close()
    assert_one_line(caught.value, acl_server.address, "hid some keys", "CONSUL_HTTP_TOKEN")


def test_a_read_only_token_cannot_update(
    acl_server: ConsulServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", TOKEN)
    reg = ConsulRegistry(address=acl_server.address, key_prefix=P)
    try:
        assert reg.read().mappings == {}
        with pytest.raises(RegistryError) as caught:
            reg.update("web-*", lambda _: ("a",))
    finally:
        reg.close()
    assert_one_line(caught.value, acl_server.address, "key:write", "lacks")
    assert all(r.header("X-Consul-Token") == TOKEN for r in acl_server.request_log)
    assert all("token" not in r.query for r in acl_server.request_log)


def test_an_unknown_token_is_named_but_not_shown(
    acl_server: ConsulServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", TOKEN + "-revoked")
    reg = ConsulRegistry(address=acl_server.address, key_prefix=P)
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(RegistryError) as caught:
            reg.watch(3, 1)
    finally:
        reg.close()
    assert_one_line(caught.value, "ACL not found", "CONSUL_HTTP_TOKEN")
    assert TOKEN not in caplog.text


def test_token_precedence(
    acl_server: ConsulServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "garbage")
    # An explicit token beats the environment (py-consul alone would do the opposite).
    explicit = ConsulRegistry(address=acl_server.address, key_prefix=P, token="writer")
    try:
        explicit.update("web-*", lambda _: ("a",))
    finally:
        explicit.close()
    # As in Consul's own client, CONSUL_HTTP_TOKEN_FILE beats CONSUL_HTTP_TOKEN.
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", str(token_file))
    from_file = ConsulRegistry(address=acl_server.address, key_prefix=P)
    try:
        assert from_file.read().mappings == {"web-*": ("a",)}
    finally:
        from_file.close()
    assert acl_server.request_log[-1].header("X-Consul-Token") == TOKEN


# address and URL


def test_url_and_open_registry(server: ConsulServer) -> None:
    reg = open_registry(f"consul://{server.address}/daybook/hosts")
    try:
        assert reg.url == f"consul://{server.address}/daybook/hosts/"
        reg.update("web-*", lambda _: ("a",))
    finally:
        reg.close()
    assert set(server.entries()) == {"daybook/hosts/web-*"}


def test_consul_http_addr_is_used_when_no_address_is_given(
    server: ConsulServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"http://{server.address}")
    reg = open_registry("consul:///team/")
    try:
        assert reg.url == f"consul://{server.address}/team/"
        assert reg.read().mappings == {}
    finally:
        reg.close()


@pytest.mark.parametrize(
    ("address", "env", "scheme", "host", "port"),
    [
        (None, {}, "http", "127.0.0.1", 8500),
        ("consul.internal", {}, "http", "consul.internal", 8500),
        ("https://consul.internal:8501", {}, "https", "consul.internal", 8501),
        (None, {"CONSUL_HTTP_ADDR": "10.0.0.5:9500"}, "http", "10.0.0.5", 9500),
        (
            None,
            {"CONSUL_HTTP_ADDR": "10.0.0.5:9500", "CONSUL_HTTP_SSL": "true"},
            "https",
            "10.0.0.5",
            9500,
        ),
        ("http://h:1", {"CONSUL_HTTP_SSL": "1"}, "https", "h", 1),
        ("[::1]:8500", {}, "http", "::1", 8500),
    ],
)
def test_endpoint_resolution(
    address: str | None, env: dict[str, str], scheme: str, host: str, port: int
) -> None:
    endpoint = ConsulEndpoint.from_env(address, env=env)
    assert (endpoint.scheme, endpoint.host, endpoint.port) == (scheme, host, port)


def test_endpoint_tls_settings() -> None:
    env = {
        "CONSUL_CACERT": "/etc/consul/ca.pem",
        "CONSUL_CLIENT_CERT": "/c.pem",
        "CONSUL_CLIENT_KEY": "/k.pem",
    }
    endpoint = ConsulEndpoint.from_env("https://h:8501", env=env)
    assert endpoint.verify == "/etc/consul/ca.pem"
    assert endpoint.cert == ("/c.pem", "/k.pem")
    assert ConsulEndpoint.from_env("h", env={"CONSUL_HTTP_SSL_VERIFY": "false"}).verify is False
    assert ConsulEndpoint.from_env("[::1]:8500", env={}).address == "[::1]:8500"
    with_token = ConsulEndpoint.from_env("h", env={"CONSUL_HTTP_TOKEN": TOKEN})
    assert with_token.token == TOKEN
    assert TOKEN not in repr(with_token)


@pytest.mark.parametrize(
    ("address", "env"),
    [
        ("unix:///var/run/consul.sock", {}),
        ("ftp://h:1", {}),
        ("h:notaport", {}),
        ("h:1/path", {}),
        ("h", {"CONSUL_HTTP_SSL": "maybe"}),
        ("h", {"CONSUL_CLIENT_CERT": "/c.pem"}),
    ],
)
def test_bad_endpoint_settings(address: str, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        ConsulEndpoint.from_env(address, env=env)


@pytest.mark.parametrize("prefix", ["", "/", "a//b/", "a/../b/", " a/"])
def test_bad_key_prefixes(server: ConsulServer, prefix: str) -> None:
    with pytest.raises(ConfigError):
        ConsulRegistry(address=server.address, key_prefix=prefix)
