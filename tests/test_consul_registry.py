"""ConsulRegistry against the Consul double: CAS, skipped keys, watch rules, errors and tokens."""

from __future__ import annotations

import http.server
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
import requests
from closed_port import refused_url

from daybook.cli.main import main as cli_main
from daybook.errors import ConfigError, ConflictError, DaybookError, InputError, RegistryError
from daybook.model.pins import Pin
from daybook.registry.base import Snapshot, open_registry
from daybook.registry.consul import MAX_CAS_ATTEMPTS, ConsulEndpoint, ConsulRegistry
from daybook_testing.consul_server import ConsulPKI, ConsulServer
from daybook_testing.waiting import wait_for

P = "daybook/hosts/"
TOKEN = "b1gs3cr3t-0000-4000-8000-000000000000"
_CONSUL_VARS = (
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_TOKEN_FILE",
    "CONSUL_HTTP_AUTH",
    "CONSUL_HTTP_SSL",
    "CONSUL_HTTP_SSL_VERIFY",
    "CONSUL_CACERT",
    "CONSUL_CAPATH",
    "CONSUL_CLIENT_CERT",
    "CONSUL_CLIENT_KEY",
    "CONSUL_TLS_SERVER_NAME",
    "CONSUL_NAMESPACE",
    "CONSUL_PARTITION",
)
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def clean_consul_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own Consul and proxy settings must not leak into the tests.
    for name in (*_CONSUL_VARS, *_PROXY_VARS, *(v.lower() for v in _PROXY_VARS)):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def registry(server: ConsulServer) -> Iterator[ConsulRegistry]:
    reg = ConsulRegistry(address=server.address, key_prefix=P)
    yield reg
    reg.close()


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
    # One blocking query on the mappings' prefix and one on the pins' beside it.
    assert sorted(r.path for r in server.request_log) == ["/v1/kv/" + P, "/v1/kv/daybook/pins/"]
    for request in server.request_log:
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
    # A pin first: an empty pins prefix would answer with the whole store's index, which
    # reaping leaves alone.
    registry.update_pin("svc", lambda _: Pin("svc", "1"))
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

    # The watch's other query (on the pins) may not even be sent yet, or still be held;
    # let it end, so that the next fault meets the update and not that query.
    def both_queries_ended() -> bool:
        watches = [r for r in server.request_log if "index=5" in r.target]
        return len(watches) == 2 and server.blocked_queries == 0

    wait_for(both_queries_ended, "the watch's other query to end")
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
    assert_one_line(caught.value, acl_server.address, "CONSUL_HTTP_TOKEN", "enforces ACLs")


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
    assert endpoint.tls.ca_file == "/etc/consul/ca.pem"
    assert (endpoint.tls.client_cert, endpoint.tls.client_key) == ("/c.pem", "/k.pem")
    unverified = ConsulEndpoint.from_env("h", env={"CONSUL_HTTP_SSL_VERIFY": "false"})
    assert unverified.tls.verify is False
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
        ("h:0", {}),  # was quietly read as h:8500
        ("http://h:0", {}),
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


# Production settings (issue 15): TLS, the token, trust, scope, proxies, waits and refusals


@pytest.fixture
def tls_env(monkeypatch: pytest.MonkeyPatch, consul_pki: ConsulPKI) -> ConsulPKI:
    """No trust from this machine's own CA settings: only what a test sets counts."""
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    return consul_pki


def read_over(url: str) -> Snapshot:
    reg = open_registry(url)
    try:
        return reg.read()
    finally:
        reg.close()


@pytest.mark.parametrize(
    ("env", "scheme"),
    [
        ({"CONSUL_CACERT": "/ca.pem"}, "https"),
        ({"CONSUL_CAPATH": "/cas"}, "https"),
        ({"CONSUL_CLIENT_CERT": "/c.pem", "CONSUL_CLIENT_KEY": "/k.pem"}, "https"),
        ({"CONSUL_TLS_SERVER_NAME": "consul.test"}, "https"),
        ({"CONSUL_CACERT": "/ca.pem", "CONSUL_HTTP_ADDR": "http://h:1"}, "http"),
        ({"CONSUL_CACERT": "/ca.pem", "CONSUL_HTTP_SSL": "false"}, "http"),
    ],
)
def test_tls_settings_ask_for_tls_unless_plain_http_is_explicit(
    env: dict[str, str], scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 15 item 1: a CA or client certificate used to be ignored over plain HTTP.
    with caplog.at_level(logging.WARNING):
        assert ConsulEndpoint.from_env(None, env=env).scheme == scheme
    if scheme == "http":
        assert "travels in clear" in caplog.text


def test_a_ca_alone_reaches_a_tls_agent(
    consul_tls_server: ConsulServer, tls_env: ConsulPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUL_CACERT", tls_env.ca_file)
    consul_tls_server.put(P + "web-*", "a")
    reg = open_registry(f"consul://{consul_tls_server.address}/daybook/hosts/")
    try:
        assert reg.read().mappings == {"web-*": ("a",)}
        assert reg.url.startswith("consul+https://")
    finally:
        reg.close()


def test_a_token_with_a_trailing_newline_is_stripped(
    acl_server: ConsulServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 15 item 2: a secret mounted from a file ends with a newline.
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", TOKEN + "\n")
    assert read_over(f"consul://{acl_server.address}/daybook/hosts/").mappings == {}
    assert acl_server.request_log[-1].header("X-Consul-Token") == TOKEN


def test_a_token_that_cannot_be_a_header_is_refused_unseen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", f"{TOKEN}\r\nX-Evil: 1")
    with pytest.raises(ConfigError) as caught:
        ConsulRegistry(address="127.0.0.1:1", key_prefix=P)
    assert_one_line(caught.value, "CONSUL_HTTP_TOKEN", "not shown")


def _unreachable(server: ConsulServer) -> str:
    with ConsulServer() as stopped:
        return stopped.address


FAILURES: dict[str, Callable[[ConsulServer], str]] = {
    "unknown token": lambda s: s.address,
    "no write right": lambda s: s.address,
    "bad request": lambda s: s.address,
    "no leader": lambda s: (s.inject_fault("no_leader"), s.address)[1],
    "rate limited": lambda s: (s.inject_fault("rate_limited"), s.address)[1],
    "dropped": lambda s: (s.inject_fault("drop"), s.address)[1],
    "timeout": lambda s: (s.inject_fault("delay", delay_s=2.0), s.address)[1],
    "unreachable": _unreachable,
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_the_token_never_shows_in_errors_logs_or_stderr(
    acl_server: ConsulServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    failure: str,
) -> None:
    secret = {"unknown token": TOKEN + "-revoked"}.get(failure, TOKEN)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", secret + "\n")
    if failure == "bad request":
        monkeypatch.setenv("CONSUL_NAMESPACE", "team")
    address = FAILURES[failure](acl_server)
    monkeypatch.setenv("DAYBOOK_REGISTRY", f"consul://{address}/daybook/hosts/")
    monkeypatch.setenv("DAYBOOK_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DAYBOOK_CONFIG", raising=False)
    reg = ConsulRegistry(address=address, key_prefix=P, timeout_s=0.5)
    attempt: Callable[[], object] = partial(reg.watch, 3, 1)
    if failure == "no write right":
        attempt = partial(reg.update, "web-*", lambda _: ("a",))
    with caplog.at_level(logging.DEBUG):
        try:
            with pytest.raises(DaybookError) as caught:
                attempt()
        finally:
            reg.close()
        if failure in ("no leader", "rate limited", "dropped"):
            # Once more for the command below, and once for the watch's query on the pins
            # if it reaches the server only now.
            FAILURES[failure](acl_server)
            FAILURES[failure](acl_server)
        # The same failure through the command line, which prints it on stderr.
        verb = ["map", "add", "web-*", "a"] if failure == "no write right" else ["map", "list"]
        code = cli_main(verb)
    stderr = capsys.readouterr().err
    if failure != "timeout":  # the command's own timeout outlasts the delay
        assert code == caught.value.exit_code
        assert stderr.startswith("daybook: ")
    for text in (str(caught.value), caplog.text, stderr):
        assert secret not in text
        assert secret[:12] not in text


def test_the_system_trust_store_and_ssl_cert_file_are_honoured(
    consul_tls_server: ConsulServer, tls_env: ConsulPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 15 item 3: requests trusted only certifi's bundle (or REQUESTS_CA_BUNDLE).
    monkeypatch.setenv("SSL_CERT_FILE", tls_env.ca_file)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/bundle.pem")
    url = f"consul+https://{consul_tls_server.address}/daybook/hosts/"
    assert read_over(url).mappings == {}


def test_a_ca_directory_is_read_whatever_its_file_names(
    consul_tls_server: ConsulServer,
    tls_env: ConsulPKI,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    cas = tmp_path / "cas"
    (cas / "nested").mkdir(parents=True)
    (cas / "nested" / "our-consul-ca.pem").write_bytes(Path(tls_env.ca_file).read_bytes())
    monkeypatch.setenv("CONSUL_CAPATH", str(cas))
    assert read_over(f"consul://{consul_tls_server.address}/daybook/hosts/").mappings == {}


def test_a_tls_server_name_reaches_an_agent_by_address(
    tls_env: ConsulPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUL_CACERT", tls_env.ca_file)
    with ConsulServer(tls=tls_env.server_tls("consul.test")) as server:
        url = f"consul://{server.address}/daybook/hosts/"
        with pytest.raises(RegistryError) as caught:
            read_over(url)
        assert_one_line(caught.value, "TLS", "CONSUL_TLS_SERVER_NAME")
        monkeypatch.setenv("CONSUL_TLS_SERVER_NAME", "consul.test")
        assert read_over(url).mappings == {}


def test_a_client_certificate_is_presented(
    tls_env: ConsulPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUL_CACERT", tls_env.ca_file)
    with ConsulServer(tls=tls_env.server_tls("127.0.0.1", require_client_cert=True)) as server:
        url = f"consul://{server.address}/daybook/hosts/"
        with pytest.raises(RegistryError, match="TLS"):
            read_over(url)
        monkeypatch.setenv("CONSUL_CLIENT_CERT", tls_env.client_cert_file)
        monkeypatch.setenv("CONSUL_CLIENT_KEY", tls_env.client_key_file)
        assert read_over(url).mappings == {}


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verification_can_still_be_turned_off(
    consul_tls_server: ConsulServer, tls_env: ConsulPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_SSL", "true")
    monkeypatch.setenv("CONSUL_HTTP_SSL_VERIFY", "false")
    assert read_over(f"consul://{consul_tls_server.address}/daybook/hosts/").mappings == {}


def test_unreadable_tls_files_are_config_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONSUL_CACERT", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="CONSUL_CACERT"):
        ConsulRegistry(address="127.0.0.1:1", key_prefix=P)
    monkeypatch.delenv("CONSUL_CACERT")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    monkeypatch.setenv("CONSUL_CAPATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"junk\.pem"):
        ConsulRegistry(address="127.0.0.1:1", key_prefix=P)


def test_another_datacenter_is_read_with_dc(server: ConsulServer) -> None:
    # Issue 15 item 4: a master could not read another datacenter's table.
    server.add_datacenter("dc2")
    server.put(P + "web-*", "here")
    server.put(P + "web-*", "there", datacenter="dc2")
    url = f"consul://{server.address}/daybook/hosts/?dc=dc2"
    reg = open_registry(url)
    try:
        assert reg.read().mappings == {"web-*": ("there",)}
        reg.update("db-*", lambda _: ("d",))
        assert reg.url == url
    finally:
        reg.close()
    assert set(server.entries(datacenter="dc2")) == {P + "web-*", P + "db-*"}
    assert all(r.query.get("dc") == ["dc2"] for r in server.request_log)


@pytest.mark.parametrize("where", ["env", "url"])
def test_an_enterprise_namespace_and_partition_are_used(
    server: ConsulServer, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    server.enable_enterprise(namespaces=("team",), partitions=("eu",))
    server.put(P + "web-*", "default_ns")
    server.put(P + "web-*", "team_ns", namespace="team", partition="eu")
    url = f"consul://{server.address}/daybook/hosts/"
    if where == "env":
        monkeypatch.setenv("CONSUL_NAMESPACE", "team")
        monkeypatch.setenv("CONSUL_PARTITION", "eu")
    else:
        url += "?ns=team&partition=eu"
    reg = open_registry(url)
    try:
        assert reg.read().mappings == {"web-*": ("team_ns",)}
        reg.update("db-*", lambda _: ("d",))
    finally:
        reg.close()
    assert P + "db-*" in server.entries(namespace="team", partition="eu")
    assert P + "db-*" not in server.entries()


def test_a_namespace_on_open_source_consul_fails_fast(
    server: ConsulServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 15 items 4 and 8: no silently empty table, and a 400 is not worth retrying.
    monkeypatch.setenv("CONSUL_NAMESPACE", "team")
    reg = ConsulRegistry(address=server.address, key_prefix=P)
    try:
        with pytest.raises(ConfigError) as caught:
            reg.watch(3, 1)
    finally:
        reg.close()
    assert caught.value.exit_code == 2
    assert_one_line(
        caught.value,
        "HTTP 400",
        'Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature',
        "retrying will not help",
    )
    # Not retried: at most the one query on each prefix (the pins' one may still be on
    # its way when the mappings' one has failed).
    paths = [r.path for r in server.request_log]
    assert len(paths) == len(set(paths)) <= 2


def test_a_bad_request_is_a_config_error_with_consuls_message(
    server: ConsulServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = ConsulRegistry(address=server.address, key_prefix=P)
    # A wait without its unit: what Consul refuses as a bad request.
    monkeypatch.setattr("daybook.registry.consul._go_duration", lambda seconds: "10")
    try:
        with pytest.raises(ConfigError) as caught:
            reg.watch(1, 10.0)
    finally:
        reg.close()
    assert_one_line(caught.value, "HTTP 400: Invalid wait time", "retrying will not help")
    # Never retried: each prefix the watch holds a query on (the mappings', the pins') is
    # asked at most once.
    paths = [request.path for request in server.request_log]
    assert 1 <= len(paths) <= 2
    assert len(set(paths)) == len(paths)


def test_loopback_bypasses_a_proxy_from_the_environment(
    server: ConsulServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 15 item 5: HTTP_PROXY without NO_PROXY sent even 127.0.0.1 through the proxy.
    with refused_url() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("http_proxy", proxy)
        assert read_over(f"consul://{server.address}/daybook/hosts/").mappings == {}
        assert read_over(f"consul://localhost:{server.port}/daybook/hosts/").mappings == {}


def test_other_hosts_still_go_through_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")

        def answer_once() -> None:
            conn, _ = proxy.accept()
            with conn:
                seen.append(conn.recv(65536))
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(answer_once)
            with pytest.raises(RegistryError, match="502"):
                read_over("consul://consul.example:8500/daybook/hosts/")
            pending.result(timeout=10)
    assert seen[0].startswith(b"GET http://consul.example:8500/v1/kv/daybook/hosts/?recurse")


def test_the_watch_wait_is_capped_by_the_url(server: ConsulServer) -> None:
    # Issue 15 item 6: a load balancer cutting idle connections at 30 s cut every watch.
    reg = open_registry(f"consul://{server.address}/daybook/hosts/?wait=1s")
    try:
        reg.update("web-*", lambda _: ("a",))
        current = reg.read()
        server.clear_request_log()
        started = time.monotonic()
        assert reg.watch(current.index, timeout_s=30) == current
        assert time.monotonic() - started < 3
        assert reg.url.endswith("?wait=1000ms")
    finally:
        reg.close()
    assert len(server.request_log) == 2  # the mappings' prefix and the pins'
    for request in server.request_log:
        assert request.query["wait"] == ["1000ms"]


@pytest.mark.parametrize(
    "query", ["wait=30", "wait=0s", "token=abc", "datacenter=dc2", "dc=", "dc=a&dc=b"]
)
def test_bad_url_options_are_config_errors(query: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_registry(f"consul://127.0.0.1:1/daybook/hosts/?{query}")
    assert "abc" not in str(caught.value)


def test_consul_1_21_5_key_rule_is_explained(server: ConsulServer) -> None:
    # Issue 15 item 7: the 500 of 1.21.5's key regex is no transient fault.
    server.key_rules = "1.21.5"
    reg = ConsulRegistry(address=server.address, key_prefix=P)
    try:
        assert reg.read().mappings == {}  # the prefix itself has no `*`
        with pytest.raises(RegistryError) as caught:
            reg.update("web-*", lambda _: ("a",))
    finally:
        reg.close()
    assert_one_line(caught.value, "1.21.5", "hashicorp/consul#22682", "upgrade Consul to 1.21.6")
    assert "transient" not in str(caught.value)


def test_no_token_against_acls_is_not_served_as_the_whole_table(
    acl_server: ConsulServer,
) -> None:
    # Issue 15 item 9: Consul filters the anonymous token's reads without saying so.
    acl_server.put(P + "web-*", "a")
    acl_server.put(P + "web-prod-*", "b")
    acl_server.set_anonymous_rules(key_prefix={P: "read"}, key={P + "web-prod-*": "deny"})
    reg = ConsulRegistry(address=acl_server.address, key_prefix=P)
    try:
        with pytest.raises(RegistryError) as caught:
            reg.read()
        # Also when the agent has a default token: Daybook cannot tell it is there.
        acl_server.default_token = TOKEN
        with pytest.raises(RegistryError):
            reg.watch(3, 1)
    finally:
        reg.close()
    assert_one_line(caught.value, "enforces ACLs", "no ACL token is set", "CONSUL_HTTP_TOKEN")


def test_a_token_without_rights_on_pins_is_told_the_pins_prefix(
    acl_server: ConsulServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hint names the prefix the missing rule must cover: a pin's, not the mappings'."""
    acl_server.add_acl_token("hosts-only", key_prefix={P: "write"})
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "hosts-only")
    reg = ConsulRegistry(address=acl_server.address, key_prefix=P)
    try:
        reg.update("web-*", lambda _: ("a",))
        with pytest.raises(RegistryError) as caught:
            reg.update_pin("svc", lambda _: Pin("svc", "1"))
    finally:
        reg.close()
    assert_one_line(caught.value, "lacks key:read on 'daybook/pins/'")


@pytest.mark.parametrize(
    "body",
    [b'{"Key": 5}', b'[{"Key": 5}]', b'[{"Key": "daybook/hosts/a", "Value": "abc"}]', b"[1, 2]"],
)
def test_json_that_is_no_kv_listing_is_one_line(body: bytes) -> None:
    """A server that answers JSON of another shape (a proxy, something that is not Consul):
    one RegistryError, not an AttributeError or binascii.Error traceback."""

    class NotConsul(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Consul-Index", "7")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    with socketserver.TCPServer(("127.0.0.1", 0), NotConsul) as not_consul:
        serving = threading.Thread(target=not_consul.serve_forever, daemon=True)
        serving.start()
        address = f"127.0.0.1:{not_consul.server_address[1]}"
        reg = ConsulRegistry(address=address, key_prefix=P)
        try:
            with pytest.raises(RegistryError) as caught:
                reg.read()
        finally:
            reg.close()
            not_consul.shutdown()
    assert_one_line(caught.value, f"Consul at {address} gave an unusable answer", "KV listing")
