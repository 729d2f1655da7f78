"""The Consul double's sessions and locks over real HTTP, each test from Consul's docs.

Sources: the session HTTP API (api-docs/session.mdx), the KV API's `acquire`/`release`
(api-docs/kv.mdx), "Sessions and distributed locks" (docs/automate/session), and where the
docs are silent the source they describe (agent/session_endpoint.go,
agent/consul/session_endpoint.go, session_ttl.go, state/session.go, state/kvs.go).
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import consul
import pytest
import requests

from daybook_testing.consul_server import ConsulServer
from daybook_testing.consul_sessions import NODE_NAME
from daybook_testing.waiting import wait_for

KEY = "daybook/leader"
# "answered promptly" on a loaded machine, still far below any wait used here.
PROMPT_S = 0.5


def create(http: requests.Session, server: ConsulServer, body: dict[str, Any] | None = None) -> str:
    response = http.put(f"{server.url}/v1/session/create", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["ID"])


def info(http: requests.Session, server: ConsulServer, session: str) -> list[dict[str, Any]]:
    response = http.get(f"{server.url}/v1/session/info/{session}")
    assert response.status_code == 200
    result: list[dict[str, Any]] = response.json()
    return result


def acquire(
    http: requests.Session, server: ConsulServer, session: str, value: str = "v"
) -> requests.Response:
    return http.put(f"{server.url}/v1/kv/{KEY}", params={"acquire": session}, data=value)


def release(
    http: requests.Session, server: ConsulServer, session: str, value: str = "v"
) -> requests.Response:
    return http.put(f"{server.url}/v1/kv/{KEY}", params={"release": session}, data=value)


def entry(http: requests.Session, server: ConsulServer) -> dict[str, Any] | None:
    response = http.get(f"{server.url}/v1/kv/{KEY}")
    if response.status_code == 404:
        return None
    result: dict[str, Any] = response.json()[0]
    return result


# -- create ----------------------------------------------------------------------------------


def test_create_without_a_body_takes_the_agent_defaults(
    http: requests.Session, server: ConsulServer
) -> None:
    """Docs: the agent's node, the serfHealth check, a 15 s lock delay, Behavior release."""
    response = http.put(f"{server.url}/v1/session/create")
    assert response.status_code == 200
    session = response.json()["ID"]
    assert uuid.UUID(session)
    [found] = info(http, server, session)
    assert found["ID"] == session
    assert found["Node"] == NODE_NAME
    assert found["LockDelay"] == 15_000_000_000  # a time.Duration, in nanoseconds
    assert found["Behavior"] == "release"
    assert found["TTL"] == ""
    assert found["NodeChecks"] == ["serfHealth"]
    assert found["CreateIndex"] == found["ModifyIndex"] > 0


def test_create_reads_fields_case_insensitively(
    http: requests.Session, server: ConsulServer
) -> None:
    """Go's JSON decoder matches field names without case: py-consul sends `ttl`, `lockdelay`."""
    session = create(
        http, server, {"name": "daybook", "ttl": "15s", "lockdelay": "1s", "behavior": "delete"}
    )
    [found] = info(http, server, session)
    assert (found["Name"], found["TTL"], found["Behavior"]) == ("daybook", "15s", "delete")
    assert found["LockDelay"] == 1_000_000_000


@pytest.mark.parametrize(
    ("lock_delay", "nanoseconds"),
    [("0s", 0), ("250ms", 250_000_000), (5, 5_000_000_000), (2_000_000_000, 2_000_000_000)],
)
def test_lock_delay_is_a_duration_or_small_numbers_are_seconds(
    http: requests.Session, server: ConsulServer, lock_delay: object, nanoseconds: int
) -> None:
    session = create(http, server, {"LockDelay": lock_delay})
    assert info(http, server, session)[0]["LockDelay"] == nanoseconds


@pytest.mark.parametrize("ttl", ["10s", "86400s", "1h", "0s"])
def test_ttl_within_10s_and_24h_or_zero_is_accepted(
    http: requests.Session, server: ConsulServer, ttl: str
) -> None:
    session = create(http, server, {"TTL": ttl})
    assert info(http, server, session)[0]["TTL"] == ttl


@pytest.mark.parametrize(
    ("ttl", "message"),
    [
        ("9s", "Invalid Session TTL '9000000000', must be between [10s=24h0m0s]"),
        ("86401s", "Invalid Session TTL '86401000000000', must be between [10s=24h0m0s]"),
        ("soon", "Session TTL 'soon' invalid: time: invalid duration \"soon\""),
    ],
)
def test_ttl_outside_the_bounds_is_refused_with_consuls_error(
    http: requests.Session, server: ConsulServer, ttl: str, message: str
) -> None:
    """Session.Apply returns a plain error, which the HTTP layer answers with 500."""
    response = http.put(f"{server.url}/v1/session/create", json={"TTL": ttl})
    assert (response.status_code, response.text) == (500, message)
    assert server.sessions() == {}


def test_unknown_behavior_is_refused(http: requests.Session, server: ConsulServer) -> None:
    response = http.put(f"{server.url}/v1/session/create", json={"Behavior": "explode"})
    assert (response.status_code, response.text) == (500, "Invalid Behavior setting 'explode'")


def test_a_body_that_does_not_decode_is_a_400(http: requests.Session, server: ConsulServer) -> None:
    response = http.put(f"{server.url}/v1/session/create", data=b"{not json")
    assert response.status_code == 400
    assert response.text.startswith("Request decode failed: ")


def test_unknown_node_or_check_is_refused(http: requests.Session, server: ConsulServer) -> None:
    """The double's node has only serfHealth; an unregistered node or check is an error."""
    other_node = http.put(f"{server.url}/v1/session/create", json={"Node": "elsewhere"})
    assert (other_node.status_code, other_node.text) == (500, "Missing node registration")
    check = http.put(f"{server.url}/v1/session/create", json={"Checks": ["web-alive"]})
    assert (check.status_code, check.text) == (500, "Missing check 'web-alive' registration")
    no_checks = create(http, server, {"NodeChecks": []})
    assert info(http, server, no_checks)[0]["NodeChecks"] == []


def test_session_endpoints_refuse_other_methods(
    http: requests.Session, server: ConsulServer
) -> None:
    response = http.get(f"{server.url}/v1/session/create")
    assert response.status_code == 405
    assert "PUT" in response.headers["Allow"]


# -- info, list, node, renew, destroy --------------------------------------------------------


def test_info_of_an_unknown_session_is_an_empty_list(
    http: requests.Session, server: ConsulServer
) -> None:
    response = http.get(f"{server.url}/v1/session/info/{uuid.uuid4()}")
    assert (response.status_code, response.json()) == (200, [])
    assert int(response.headers["X-Consul-Index"]) >= 1


def test_list_and_node_list_every_live_session(
    http: requests.Session, server: ConsulServer
) -> None:
    first, second = create(http, server), create(http, server)
    listed = http.get(f"{server.url}/v1/session/list")
    assert {s["ID"] for s in listed.json()} == {first, second}
    assert int(listed.headers["X-Consul-Index"]) == max(s["CreateIndex"] for s in listed.json())
    on_node = http.get(f"{server.url}/v1/session/node/{NODE_NAME}").json()
    assert {s["ID"] for s in on_node} == {first, second}
    assert http.get(f"{server.url}/v1/session/node/elsewhere").json() == []


def test_renew_answers_the_session_and_404_once_it_is_gone(
    http: requests.Session, server: ConsulServer
) -> None:
    session = create(http, server, {"TTL": "10s"})
    renewed = http.put(f"{server.url}/v1/session/renew/{session}")
    assert renewed.status_code == 200
    assert [s["ID"] for s in renewed.json()] == [session]
    assert http.put(f"{server.url}/v1/session/destroy/{session}").json() is True
    gone = http.put(f"{server.url}/v1/session/renew/{session}")
    assert (gone.status_code, gone.text) == (404, f"Session id '{session}' not found")


def test_destroy_is_idempotent(http: requests.Session, server: ConsulServer) -> None:
    session = create(http, server)
    for _ in range(2):
        response = http.put(f"{server.url}/v1/session/destroy/{session}")
        assert (response.status_code, response.json()) == (200, True)
    assert info(http, server, session) == []


def test_a_blocking_session_list_wakes_on_create(
    http: requests.Session, server: ConsulServer
) -> None:
    index = int(http.get(f"{server.url}/v1/session/list").headers["X-Consul-Index"])
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        held = pool.submit(
            requests.get,
            f"{server.url}/v1/session/list",
            params={"index": str(index), "wait": "30s"},
            timeout=30,
        )
        server.wait_for_blocked()
        session = create(http, server)
        answer = held.result()
    assert time.monotonic() - started < 30
    assert [s["ID"] for s in answer.json()] == [session]
    assert int(answer.headers["X-Consul-Index"]) > index


# -- acquire and release ----------------------------------------------------------------------


def test_acquire_locks_the_key_and_counts_lock_index(
    http: requests.Session, server: ConsulServer
) -> None:
    session = create(http, server)
    response = acquire(http, server, session, "term-1")
    assert (response.status_code, response.json()) == (200, True)
    found = entry(http, server)
    assert found is not None
    assert (found["Session"], found["LockIndex"]) == (session, 1)
    assert list(found) == [
        "LockIndex",
        "Key",
        "Flags",
        "Value",
        "Session",
        "CreateIndex",
        "ModifyIndex",
    ]


def test_a_held_lock_refuses_other_sessions(http: requests.Session, server: ConsulServer) -> None:
    holder, other = create(http, server), create(http, server)
    assert acquire(http, server, holder).json() is True
    assert acquire(http, server, other, "mine now").json() is False
    found = entry(http, server)
    assert found is not None
    assert (found["Session"], found["LockIndex"]) == (holder, 1)


def test_the_holder_acquiring_again_keeps_lock_index(
    http: requests.Session, server: ConsulServer
) -> None:
    """kvsLockTxn: the holder re-acquiring only writes the value; an identical one is a no-op."""
    session = create(http, server)
    acquire(http, server, session, "a")
    first = entry(http, server)
    assert acquire(http, server, session, "a").json() is True
    same = entry(http, server)
    assert acquire(http, server, session, "b").json() is True
    changed = entry(http, server)
    assert first is not None
    assert same is not None
    assert changed is not None
    assert same["ModifyIndex"] == first["ModifyIndex"]
    assert changed["ModifyIndex"] > first["ModifyIndex"]
    assert changed["LockIndex"] == first["LockIndex"] == 1


def test_release_by_the_holder_frees_the_key_and_keeps_lock_index(
    http: requests.Session, server: ConsulServer
) -> None:
    holder, other = create(http, server), create(http, server)
    acquire(http, server, holder)
    assert release(http, server, other).json() is False
    assert release(http, server, holder, "released").json() is True
    found = entry(http, server)
    assert found is not None
    assert "Session" not in found
    assert found["LockIndex"] == 1
    # A voluntary release starts no lock-delay: the next session takes it at once.
    assert acquire(http, server, other).json() is True
    after = entry(http, server)
    assert after is not None
    assert after["LockIndex"] == 2


def test_release_of_a_free_or_missing_key_is_false(
    http: requests.Session, server: ConsulServer
) -> None:
    session = create(http, server)
    assert release(http, server, session).json() is False


def test_acquire_with_an_unknown_or_missing_session_is_an_error(
    http: requests.Session, server: ConsulServer
) -> None:
    """state/kvs.go kvsLockTxn: `invalid session %#v` (500); an empty id: `missing session`."""
    unknown = str(uuid.uuid4())
    response = acquire(http, server, unknown)
    assert (response.status_code, response.text) == (500, f'invalid session "{unknown}"')
    empty = http.put(f"{server.url}/v1/kv/{KEY}?acquire=", data="v")
    assert (empty.status_code, empty.text) == (500, "missing session")
    assert entry(http, server) is None


def test_acquire_does_not_combine_with_cas(http: requests.Session, server: ConsulServer) -> None:
    session = create(http, server)
    response = http.put(f"{server.url}/v1/kv/{KEY}", params={"acquire": session, "cas": "0"})
    assert response.status_code == 400
    assert response.text.startswith("Conflicting flags")


def test_plain_writes_keep_the_lock_and_delete_removes_it(
    http: requests.Session, server: ConsulServer
) -> None:
    session = create(http, server)
    acquire(http, server, session)
    assert http.put(f"{server.url}/v1/kv/{KEY}", data="overwritten").json() is True
    found = entry(http, server)
    assert found is not None
    assert found["Session"] == session
    assert http.delete(f"{server.url}/v1/kv/{KEY}").json() is True
    other = create(http, server)
    assert acquire(http, server, other).json() is True
    recreated = entry(http, server)
    assert recreated is not None
    assert recreated["LockIndex"] == 1


# -- invalidation, lock-delay, TTL -----------------------------------------------------------


def test_destroy_releases_the_lock_then_lock_delay_refuses_acquires(
    http: requests.Session, server: ConsulServer
) -> None:
    holder = create(http, server, {"LockDelay": "5s"})
    other = create(http, server, {"LockDelay": "0s"})
    acquire(http, server, holder, "kept")
    before = entry(http, server)
    http.put(f"{server.url}/v1/session/destroy/{holder}")
    after = entry(http, server)
    assert before is not None
    assert after is not None
    assert "Session" not in after
    assert after["ModifyIndex"] > before["ModifyIndex"]
    assert after["Value"] == before["Value"]  # Behavior release keeps the value
    assert acquire(http, server, other).json() is False  # the holder's delay, not the caller's
    server.advance(4.9)
    assert acquire(http, server, other).json() is False
    server.advance(0.2)
    assert acquire(http, server, other).json() is True


def test_zero_lock_delay_lets_a_new_holder_in_at_once(
    http: requests.Session, server: ConsulServer
) -> None:
    holder, other = create(http, server, {"LockDelay": "0s"}), create(http, server)
    acquire(http, server, holder)
    http.put(f"{server.url}/v1/session/destroy/{holder}")
    assert acquire(http, server, other).json() is True


def test_behavior_delete_removes_the_held_keys(
    http: requests.Session, server: ConsulServer
) -> None:
    holder = create(http, server, {"Behavior": "delete", "LockDelay": "0s"})
    acquire(http, server, holder)
    http.put(f"{server.url}/v1/session/destroy/{holder}")
    assert entry(http, server) is None


def test_ttl_is_a_lower_bound_and_consul_doubles_it(
    http: requests.Session, server: ConsulServer
) -> None:
    """Never invalidated before the TTL; the leader's timer runs TTL x 2 (session_ttl.go)."""
    session = create(http, server, {"TTL": "10s", "LockDelay": "0s"})
    acquire(http, server, session)
    server.advance(19.9)
    assert info(http, server, session) != []
    server.advance(0.2)
    assert info(http, server, session) == []
    found = entry(http, server)
    assert found is not None
    assert "Session" not in found
    gone = http.put(f"{server.url}/v1/session/renew/{session}")
    assert gone.status_code == 404


def test_renew_restarts_the_ttl(http: requests.Session, server: ConsulServer) -> None:
    session = create(http, server, {"TTL": "10s"})
    for _ in range(3):
        server.advance(15)
        assert http.put(f"{server.url}/v1/session/renew/{session}").status_code == 200
    assert info(http, server, session) != []


def test_sessions_expire_on_the_real_clock_too(
    http: requests.Session, server: ConsulServer
) -> None:
    """The double's TTL timer runs by itself: here only its last 0.2 s is real time."""
    session = create(http, server, {"TTL": "10s"})
    server.advance(19.8)
    wait_for(lambda: info(http, server, session) == [], "the session's TTL timer", 10)


def test_a_blocking_read_of_the_key_wakes_on_acquire_and_on_invalidation(
    http: requests.Session, server: ConsulServer
) -> None:
    http.put(f"{server.url}/v1/kv/{KEY}", data="free")
    session = create(http, server, {"TTL": "10s"})

    def held_until(change: Any) -> dict[str, Any]:
        index = http.get(f"{server.url}/v1/kv/{KEY}").headers["X-Consul-Index"]
        with ThreadPoolExecutor(max_workers=1) as pool:
            held = pool.submit(
                requests.get,
                f"{server.url}/v1/kv/{KEY}",
                params={"index": index, "wait": "30s"},
                timeout=30,
            )
            server.wait_for_blocked()
            started = time.monotonic()
            change()
            answer = held.result()
        assert time.monotonic() - started < PROMPT_S
        assert int(answer.headers["X-Consul-Index"]) > int(index)
        result: dict[str, Any] = answer.json()[0]
        return result

    assert held_until(lambda: acquire(http, server, session))["Session"] == session
    assert "Session" not in held_until(lambda: server.advance(21))


# -- ACLs, txn, py-consul --------------------------------------------------------------------


def test_with_acls_sessions_need_session_write_on_the_node(
    http: requests.Session, server: ConsulServer
) -> None:
    server.enable_acls()
    server.add_acl_token("kv-only", key_prefix={"daybook/": "write"})
    server.add_acl_token("leader", key_prefix={"daybook/": "write"}, session_prefix={"": "write"})
    refused = http.put(f"{server.url}/v1/session/create", headers={"X-Consul-Token": "kv-only"})
    assert refused.status_code == 403
    assert f"lacks permission 'session:write' on \"{NODE_NAME}\"" in refused.text
    made = http.put(f"{server.url}/v1/session/create", headers={"X-Consul-Token": "leader"})
    session = made.json()["ID"]
    hidden = http.get(
        f"{server.url}/v1/session/info/{session}", headers={"X-Consul-Token": "kv-only"}
    )
    assert hidden.json() == []
    renew = http.put(
        f"{server.url}/v1/session/renew/{session}", headers={"X-Consul-Token": "kv-only"}
    )
    assert renew.status_code == 403


def test_txn_check_session_compares_the_holder(
    http: requests.Session, server: ConsulServer
) -> None:
    session = create(http, server)
    acquire(http, server, session)
    ok = http.put(
        f"{server.url}/v1/txn",
        json=[{"KV": {"Verb": "check-session", "Key": KEY, "Session": session}}],
    )
    assert ok.status_code == 200
    other = str(uuid.uuid4())
    stale = http.put(
        f"{server.url}/v1/txn",
        json=[{"KV": {"Verb": "check-session", "Key": KEY, "Session": other}}],
    )
    assert stale.status_code == 409
    assert stale.json()["Errors"][0]["What"] == (
        f'failed session check for key "{KEY}", current session "{session}" != "{other}"'
    )


def test_py_consul_drives_a_lock_end_to_end(server: ConsulServer) -> None:
    client = consul.Consul(host=server.host, port=server.port)
    session = client.session.create(name="daybook", ttl=10, lock_delay=0, behavior="release")
    assert client.kv.put(KEY, "term", acquire=session) is True
    _, found = client.kv.get(KEY)
    assert found["Session"] == session
    assert found["LockIndex"] == 1
    assert client.session.renew(session)["ID"] == session
    _, described = client.session.info(session)
    assert described["TTL"] == "10s"
    assert described["LockDelay"] == 0
    assert client.kv.put(KEY, "term", release=session) is True
    client.session.destroy(session)
    with pytest.raises(consul.NotFound):
        client.session.renew(session)
