"""The Consul double over real HTTP: each behaviour numbered in section 6 of the KV spec."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.client import HTTPConnection
from itertools import pairwise

import pytest
import requests

from daybook_testing.consul_server import ConsulPKI, ConsulServer, parse_go_duration

P = "daybook/hosts/"
K = "daybook/hosts/web-prod-*"
K_URL = "daybook/hosts/web-prod-%2A"
VALUE = "service_1,service_2"
B64_VALUE = "c2VydmljZV8xLHNlcnZpY2VfMg=="
# Generous bound for "answered promptly" on a loaded CI machine, still far below any wait.
PROMPT_S = 0.5


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


Get = Callable[..., "Future[tuple[requests.Response, float]]"]


@pytest.fixture
def background_get(server: ConsulServer, pool: ThreadPoolExecutor) -> Get:
    """Start a GET on its own connection; the future gives the response and when it came."""

    def start(path: str, **params: str) -> Future[tuple[requests.Response, float]]:
        def run() -> tuple[requests.Response, float]:
            response = requests.get(f"{server.url}/v1/kv/{path}", params=params, timeout=30)
            return response, time.monotonic()

        return pool.submit(run)

    return start


def kv_url(server: ConsulServer, path: str, query: str = "") -> str:
    return f"{server.url}/v1/kv/{path}" + (f"?{query}" if query else "")


def put(
    http: requests.Session,
    server: ConsulServer,
    path: str,
    body: str | bytes = VALUE,
    query: str = "",
) -> requests.Response:
    return http.put(kv_url(server, path, query), data=body)


def index_of(response: requests.Response) -> int:
    return int(response.headers["X-Consul-Index"])


def assert_index_headers(response: requests.Response, consistency: str = "leader") -> None:
    assert int(response.headers["X-Consul-Index"]) >= 1
    assert response.headers["X-Consul-KnownLeader"] == "true"
    assert response.headers["X-Consul-LastContact"] == "0"
    assert response.headers["X-Consul-Effective-Consistency"] == consistency


def raw_request(
    server: ConsulServer, method: str, target: str, body: bytes = b""
) -> tuple[int, bytes]:
    """Send a request target byte for byte: requests/urllib3 would normalise `..` away."""
    conn = HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request(method, target, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# 1. Empty prefix


def test_empty_prefix_is_404_with_index_1(server: ConsulServer, http: requests.Session) -> None:
    response = http.get(kv_url(server, P, "recurse"))
    assert response.status_code == 404
    assert response.content == b""
    assert_index_headers(response)
    assert index_of(response) == 1


def test_root_keys_on_an_empty_store_is_an_empty_list(
    server: ConsulServer, http: requests.Session
) -> None:
    response = http.get(kv_url(server, "", "keys"))
    assert response.status_code == 200
    assert response.json() == []


# 2. Create


def test_put_creates_and_answers_true_without_an_index(
    server: ConsulServer, http: requests.Session
) -> None:
    response = put(http, server, K_URL)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.content == b"true"
    assert "X-Consul-Index" not in response.headers


# 3. Single key


def test_single_key_read(server: ConsulServer, http: requests.Session) -> None:
    put(http, server, K_URL)
    response = http.get(kv_url(server, K_URL))
    assert response.status_code == 200
    [entry] = response.json()
    assert list(entry) == ["LockIndex", "Key", "Flags", "Value", "CreateIndex", "ModifyIndex"]
    assert entry["Key"] == K
    assert entry["Value"] == B64_VALUE
    assert entry["LockIndex"] == 0
    assert entry["Flags"] == 0
    assert entry["CreateIndex"] == entry["ModifyIndex"]
    assert index_of(response) == entry["ModifyIndex"]
    assert_index_headers(response)
    # A literal `*` in the path names the same key.
    literal = http.get(f"{server.url}/v1/kv/{K}")
    assert literal.json() == [entry]


# 4. ?raw


def test_raw_value(server: ConsulServer, http: requests.Session) -> None:
    put(http, server, K_URL)
    response = http.get(kv_url(server, K_URL, "raw"))
    assert response.status_code == 200
    assert response.content == VALUE.encode()
    assert response.headers["Content-Type"] == "text/plain"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert_index_headers(response)


# 5. Missing key


def test_missing_key_is_404_with_the_store_index(
    server: ConsulServer, http: requests.Session
) -> None:
    put(http, server, "daybook/other")
    response = http.get(kv_url(server, "daybook/hosts/nope"))
    assert response.status_code == 404
    assert response.content == b""
    assert_index_headers(response)
    assert index_of(response) == server.kv_index > 1


# 6. Recurse


def test_recurse_sorts_by_key_and_answers_the_highest_modify_index(
    server: ConsulServer, http: requests.Session
) -> None:
    put(http, server, K_URL)
    put(http, server, P + "db-%2A", "db")
    put(http, server, "daybook/hostsX", "x")
    response = http.get(kv_url(server, P, "recurse"))
    assert response.status_code == 200
    entries = response.json()
    assert [e["Key"] for e in entries] == [P + "db-*", K]
    assert index_of(response) == max(e["ModifyIndex"] for e in entries)
    assert index_of(response) < server.kv_index  # hostsX is newer but outside P
    no_slash = http.get(kv_url(server, "daybook/hosts", "recurse"))
    assert [e["Key"] for e in no_slash.json()] == [P + "db-*", K, "daybook/hostsX"]


# 7. Keys and separator


def test_keys_with_and_without_separator(server: ConsulServer, http: requests.Session) -> None:
    put(http, server, K_URL)
    put(http, server, P + "db-%2A")
    response = http.get(kv_url(server, "daybook/", "keys&separator=/"))
    assert response.status_code == 200
    assert response.json() == ["daybook/hosts/"]
    assert http.get(kv_url(server, "daybook/", "keys")).json() == [P + "db-*", K]
    missing = http.get(kv_url(server, "nothing/", "keys"))
    assert missing.status_code == 404
    assert_index_headers(missing)


# 8. Presence-based flags


@pytest.mark.parametrize("query", ["recurse", "recurse=false", "recurse=1", "recurse=0"])
def test_recurse_is_presence_based(
    server: ConsulServer, http: requests.Session, query: str
) -> None:
    put(http, server, K_URL)
    response = http.get(kv_url(server, P, query))
    assert response.status_code == 200
    assert [e["Key"] for e in response.json()] == [K]


@pytest.mark.parametrize("query", ["keys", "keys=True", "keys=false"])
def test_keys_is_presence_based(server: ConsulServer, http: requests.Session, query: str) -> None:
    put(http, server, K_URL)
    assert http.get(kv_url(server, P, query)).json() == [K]


# 9. Empty value


def test_empty_value_reads_as_null(server: ConsulServer, http: requests.Session) -> None:
    assert put(http, server, K_URL, b"").json() is True
    assert http.get(kv_url(server, K_URL)).json()[0]["Value"] is None
    raw = http.get(kv_url(server, K_URL, "raw"))
    assert raw.status_code == 200
    assert raw.content == b""


# 10. Idempotent PUT


def test_identical_put_keeps_the_index_and_wakes_nobody(
    server: ConsulServer, http: requests.Session, background_get: Get
) -> None:
    put(http, server, K_URL, query="flags=7")
    before = http.get(kv_url(server, P, "recurse"))
    idx = index_of(before)
    pending = background_get(P, recurse="", index=str(idx), wait="1s")
    server.wait_for_blocked()
    started = time.monotonic()
    assert put(http, server, K_URL, query="flags=7").json() is True
    after = http.get(kv_url(server, K_URL)).json()[0]
    assert after["ModifyIndex"] == idx
    response, done = pending.result(timeout=10)
    assert done - started >= 0.9  # held to its timeout
    assert index_of(response) == idx
    assert response.json() == before.json()


# 11. CAS on PUT


def test_cas_put(server: ConsulServer, http: requests.Session) -> None:
    assert put(http, server, K_URL, "first", "cas=0").json() is True
    assert put(http, server, K_URL, "second", "cas=0").json() is False
    entry = http.get(kv_url(server, K_URL)).json()[0]
    assert base64.b64decode(entry["Value"]) == b"first"
    stale = entry["ModifyIndex"] - 1
    assert put(http, server, K_URL, "third", f"cas={stale}").json() is False
    assert put(http, server, K_URL, "fourth", f"cas={entry['ModifyIndex']}").json() is True
    updated = http.get(kv_url(server, K_URL)).json()[0]
    assert base64.b64decode(updated["Value"]) == b"fourth"
    assert updated["ModifyIndex"] > entry["ModifyIndex"]
    assert updated["CreateIndex"] == entry["CreateIndex"]
    # A CAS naming an index on a missing key fails.
    assert put(http, server, P + "absent", "x", "cas=5").json() is False


# 12. Flags


def test_flags_round_trip_and_reset(server: ConsulServer, http: requests.Session) -> None:
    put(http, server, K_URL, query="flags=42")
    assert http.get(kv_url(server, K_URL)).json()[0]["Flags"] == 42
    put(http, server, K_URL, "other")
    assert http.get(kv_url(server, K_URL)).json()[0]["Flags"] == 0
    put(http, server, K_URL, query="flags=18446744073709551615")
    assert http.get(kv_url(server, K_URL)).json()[0]["Flags"] == 2**64 - 1


# 13. Size limit


def test_value_size_limit(server: ConsulServer, http: requests.Session) -> None:
    assert put(http, server, K_URL, b"x" * 524288).json() is True
    response = put(http, server, P + "big", b"x" * 524289)
    assert response.status_code == 413
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "too large" in response.text
    assert http.get(kv_url(server, P + "big")).status_code == 404


# 14. Delete


def test_delete_variants(server: ConsulServer, http: requests.Session) -> None:
    put(http, server, K_URL)
    assert http.delete(kv_url(server, K_URL)).json() is True
    assert http.get(kv_url(server, K_URL)).status_code == 404
    assert http.delete(kv_url(server, K_URL)).json() is True  # missing: still true

    put(http, server, K_URL)
    modify = http.get(kv_url(server, K_URL)).json()[0]["ModifyIndex"]
    assert http.delete(kv_url(server, K_URL, f"cas={modify + 1}")).json() is False
    assert http.get(kv_url(server, K_URL)).status_code == 200
    assert http.delete(kv_url(server, K_URL, f"cas={modify}")).json() is True
    assert http.get(kv_url(server, K_URL)).status_code == 404
    assert http.delete(kv_url(server, K_URL, "cas=5")).json() is True  # missing key

    conflict = http.delete(kv_url(server, P, "recurse&cas=1"))
    assert conflict.status_code == 400
    assert conflict.text.startswith("Conflicting flags")


# 15. Recursive delete


def test_recursive_delete(server: ConsulServer, http: requests.Session) -> None:
    for path in (K_URL, P + "db-%2A", P + "deep/er", "daybook/other"):
        put(http, server, path)
    assert http.delete(kv_url(server, P, "recurse")).json() is True
    keys = http.get(kv_url(server, "", "keys")).json()
    assert keys == ["daybook/other"]


# 16. Blocking timeout


def test_blocking_query_times_out_with_the_same_answer(
    server: ConsulServer, http: requests.Session
) -> None:
    server.jitter = True
    put(http, server, K_URL)
    first = http.get(kv_url(server, P, "recurse"))
    started = time.monotonic()
    response = http.get(kv_url(server, P, f"recurse&index={index_of(first)}&wait=2s"))
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed <= 2.0 * 17 / 16 + 0.3
    assert response.status_code == 200
    assert response.json() == first.json()
    assert index_of(response) == index_of(first)


@pytest.mark.parametrize("path", ["daybook/hosts/nope", "daybook/empty/?recurse"])
def test_blocking_query_on_nothing_times_out_with_404(
    server: ConsulServer, http: requests.Session, path: str
) -> None:
    put(http, server, K_URL)
    url = kv_url(server, path)
    idx = index_of(http.get(url))
    started = time.monotonic()
    response = http.get(url, params={"index": str(idx), "wait": "500ms"})
    assert time.monotonic() - started >= 0.5
    assert response.status_code == 404
    assert index_of(response) == idx


# 17. Wake on a put


def test_blocking_query_wakes_on_a_put(
    server: ConsulServer, http: requests.Session, background_get: Get
) -> None:
    put(http, server, K_URL)
    idx = index_of(http.get(kv_url(server, P, "recurse")))
    pending = background_get(P, recurse="", index=str(idx), wait="30s")
    server.wait_for_blocked()
    written = time.monotonic()
    put(http, server, P + "db-%2A", "db")
    response, done = pending.result(timeout=10)
    assert done - written < PROMPT_S
    new_entry = http.get(kv_url(server, P + "db-%2A")).json()[0]
    assert index_of(response) == new_entry["ModifyIndex"] > idx
    assert P + "db-*" in [e["Key"] for e in response.json()]


# 18. Wake on a delete: the tombstone raises the index


def test_blocking_query_wakes_on_a_delete_with_the_delete_index(
    server: ConsulServer, http: requests.Session, background_get: Get
) -> None:
    put(http, server, P + "db-%2A", "db")
    put(http, server, K_URL)
    idx = index_of(http.get(kv_url(server, P, "recurse")))
    pending = background_get(P, recurse="", index=str(idx), wait="30s")
    server.wait_for_blocked()
    written = time.monotonic()
    http.delete(kv_url(server, P + "db-%2A"))
    response, done = pending.result(timeout=10)
    assert done - written < PROMPT_S
    assert [e["Key"] for e in response.json()] == [K]
    assert index_of(response) > idx  # not the remaining key's ModifyIndex
    assert index_of(response) == server.kv_index


def test_blocking_query_wakes_on_a_recursive_delete_with_404(
    server: ConsulServer, http: requests.Session, background_get: Get
) -> None:
    put(http, server, K_URL)
    idx = index_of(http.get(kv_url(server, P, "recurse")))
    pending = background_get(P, recurse="", index=str(idx), wait="30s")
    server.wait_for_blocked()
    written = time.monotonic()
    http.delete(kv_url(server, P, "recurse"))
    response, done = pending.result(timeout=10)
    assert done - written < PROMPT_S
    assert response.status_code == 404
    assert index_of(response) > idx


# 19. Writes elsewhere


def test_writes_outside_the_prefix_do_not_wake_it(
    server: ConsulServer, http: requests.Session, background_get: Get
) -> None:
    put(http, server, K_URL)
    idx = index_of(http.get(kv_url(server, P, "recurse")))
    pending = background_get(P, recurse="", index=str(idx), wait="1s")
    server.wait_for_blocked()
    written = time.monotonic()
    put(http, server, "daybook/other", "x")
    response, done = pending.result(timeout=10)
    assert done - written >= 0.8
    assert index_of(response) == idx


def test_empty_prefix_sees_unrelated_writes_only_at_its_timeout(
    server: ConsulServer, http: requests.Session, background_get: Get
) -> None:
    # An empty prefix answers the store index, so writes elsewhere raise it: noise that
    # current Consul delivers when the wait ends (older versions at once).
    idx = index_of(http.get(kv_url(server, P, "recurse")))
    pending = background_get(P, recurse="", index=str(idx), wait="700ms")
    server.wait_for_blocked()
    written = time.monotonic()
    put(http, server, "daybook/other", "x")
    response, done = pending.result(timeout=10)
    assert done - written >= 0.5
    assert response.status_code == 404
    assert index_of(response) == server.kv_index > idx


def test_blocked_missing_key_wakes_only_when_that_key_appears(
    server: ConsulServer, http: requests.Session, background_get: Get
) -> None:
    idx = index_of(http.get(kv_url(server, P + "late")))
    pending = background_get(P + "late", index=str(idx), wait="30s")
    server.wait_for_blocked()
    put(http, server, P + "unrelated")
    put(http, server, "elsewhere")
    assert not pending.done()
    assert server.blocked_queries == 1
    written = time.monotonic()
    put(http, server, P + "late", "now")
    response, done = pending.result(timeout=10)
    assert done - written < PROMPT_S
    assert response.status_code == 200
    assert base64.b64decode(response.json()[0]["Value"]) == b"now"


# 20. Index edge cases


def test_index_absent_zero_or_behind_answers_at_once(
    server: ConsulServer, http: requests.Session
) -> None:
    put(http, server, K_URL)
    put(http, server, K_URL, "again")
    current = index_of(http.get(kv_url(server, P, "recurse")))
    for query in (
        "recurse&wait=30s",
        "recurse&index=0&wait=30s",
        f"recurse&index={current - 1}&wait=30s",
    ):
        started = time.monotonic()
        response = http.get(kv_url(server, P, query))
        assert time.monotonic() - started < PROMPT_S
        assert index_of(response) == current


def test_index_ahead_of_the_store_holds_then_answers_the_lower_index(
    server: ConsulServer, http: requests.Session
) -> None:
    put(http, server, K_URL)
    current = index_of(http.get(kv_url(server, P, "recurse")))
    started = time.monotonic()
    response = http.get(kv_url(server, P, f"recurse&index={10**9}&wait=1s"))
    assert time.monotonic() - started >= 1.0
    assert response.status_code == 200
    assert index_of(response) == current < 10**9


def test_random_index_gaps(server: ConsulServer, http: requests.Session) -> None:
    server.random_index_gaps = True
    indexes = []
    for n in range(20):
        put(http, server, P + f"k{n}")
        indexes.append(http.get(kv_url(server, P + f"k{n}")).json()[0]["ModifyIndex"])
    steps = [b - a for a, b in pairwise(indexes)]
    assert all(step >= 1 for step in steps)
    assert any(step > 1 for step in steps)


# 21. Wait parsing


@pytest.mark.parametrize("wait", ["10s", "100ms", "1m30s", "60000ms", "0", "1.5h", "-1s"])
def test_go_durations_are_accepted(server: ConsulServer, http: requests.Session, wait: str) -> None:
    started = time.monotonic()
    response = http.get(kv_url(server, P, "recurse"), params={"wait": wait})
    assert response.status_code == 404  # parsed; without an index, no blocking
    assert time.monotonic() - started < PROMPT_S


@pytest.mark.parametrize("wait", ["10", "s", "1x", "1.2.3s", "--1s"])
def test_bad_wait_is_400(server: ConsulServer, http: requests.Session, wait: str) -> None:
    response = http.get(kv_url(server, P, "recurse"), params={"wait": wait, "index": "1"})
    assert response.status_code == 400
    assert response.text == "Invalid wait time"


@pytest.mark.parametrize("index", ["abc", "-1", "1.5", str(2**64)])
def test_bad_index_is_400(server: ConsulServer, http: requests.Session, index: str) -> None:
    response = http.get(kv_url(server, P, "recurse"), params={"index": index})
    assert response.status_code == 400
    assert response.text == "Invalid index"


def test_go_duration_values() -> None:
    assert parse_go_duration("1m30s") == 90.0
    assert parse_go_duration("60000ms") == 60.0
    assert parse_go_duration("100ms") == pytest.approx(0.1)
    assert parse_go_duration("0") == 0.0
    assert parse_go_duration("60") is None


@pytest.mark.parametrize("wait", [None, "0s"])
def test_missing_or_zero_wait_uses_the_default_query_time(
    server: ConsulServer, http: requests.Session, wait: str | None
) -> None:
    server.default_query_time_s = 0.5
    idx = index_of(http.get(kv_url(server, P, "recurse")))
    params = {"recurse": "", "index": str(idx)} | ({"wait": wait} if wait else {})
    started = time.monotonic()
    http.get(kv_url(server, P), params=params)
    assert 0.5 <= time.monotonic() - started < 0.5 + PROMPT_S


def test_wait_above_the_maximum_is_clamped(server: ConsulServer, http: requests.Session) -> None:
    server.max_query_time_s = 0.5
    idx = index_of(http.get(kv_url(server, P, "recurse")))
    started = time.monotonic()
    http.get(kv_url(server, P, f"recurse&index={idx}&wait=10m"))
    assert 0.5 <= time.monotonic() - started < 0.5 + PROMPT_S


def test_jitter_adds_up_to_a_sixteenth(server: ConsulServer) -> None:
    server.jitter = True
    timeouts = [server._query_timeout_s(1.6) for _ in range(200)]
    assert all(1.6 <= t <= 1.7 for t in timeouts)
    assert max(timeouts) > 1.6
    server.jitter = False
    assert server._query_timeout_s(1.6) == 1.6


# 22. Path decoding and key rules


def test_path_decoding(server: ConsulServer, http: requests.Session) -> None:
    put(http, server, "a%20b")
    put(http, server, "c+d")
    put(http, server, "e%2Ff")
    assert http.get(kv_url(server, "", "keys")).json() == ["a b", "c+d", "e/f"]
    assert http.get(kv_url(server, "e/f")).status_code == 200


def test_missing_key_name(server: ConsulServer, http: requests.Session) -> None:
    for response in (http.get(kv_url(server, "")), put(http, server, "")):
        assert response.status_code == 400
        assert response.text == "Missing key name"
    assert http.delete(kv_url(server, "")).status_code == 400


@pytest.mark.parametrize("path", ["%20lead", "trail%20", "a/%2E%2E/b", "%2E%2E", "a%01b", "a%7Fb"])
def test_bad_keys_are_400(server: ConsulServer, path: str) -> None:
    for method in ("GET", "PUT"):
        status, _ = raw_request(server, method, f"/v1/kv/{path}", b"x")
        assert status == 400
    assert server.entries() == {}


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/v1/kv/a//b", "/v1/kv/a/b"),
        ("/v1/kv//a?raw", "/v1/kv/a?raw"),
        ("/v1/kv/a/./b/", "/v1/kv/a/b/"),
        ("/v1/kv/a/../b", "/v1/kv/b"),
        ("/v1/kv/..", "/v1"),
    ],
)
def test_unclean_paths_are_redirected_as_go_servemux_does(
    server: ConsulServer, target: str, location: str
) -> None:
    # ServeMux cleans the (escaped) path before any handler runs, and answers 301 to the
    # clean one, for every method: a PUT to a//b writes nothing.
    for method in ("GET", "PUT", "DELETE"):
        conn = HTTPConnection(server.host, server.port, timeout=10)
        try:
            conn.request(method, target, body=b"x")
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        assert response.status == 301
        assert response.getheader("Location") == location
    assert server.entries() == {}


def test_escaped_slashes_are_not_cleaned(server: ConsulServer, http: requests.Session) -> None:
    # Cleaning sees the escaped path, so %2F%2F reaches the handler and names a key a//b.
    assert put(http, server, "a%2F%2Fb", "v").json() is True
    assert list(server.entries()) == ["a//b"]
    # A client following the redirect of a//b reads a/b, which is another key.
    assert http.get(kv_url(server, "a//b")).status_code == 404


@pytest.mark.parametrize(("path", "key"), [("a/%2E%2E/b", "a/../b"), ("%20lead", " lead")])
def test_key_validation_can_be_disabled(server: ConsulServer, path: str, key: str) -> None:
    # disable_kv_key_validation (1.21.6+) lets `..` segments and edge spaces through.
    server.key_rules = "off"
    status, _ = raw_request(server, "PUT", f"/v1/kv/{path}", b"v")
    assert status == 200
    assert list(server.entries()) == [key]


KEY_RULE_1_21_5 = 'invalid key name, keys should respect the "^[a-zA-Z0-9,_./\\\\-?&=]+$" format'


def test_consul_1_21_5_refuses_stars_in_keys_with_500(
    server: ConsulServer, http: requests.Session
) -> None:
    # hashicorp/consul#22682, in 1.21.5 only: a regex on every KV request's key, answered
    # as a plain error (500); reading the prefix, which has no `*`, still works.
    server.key_rules = "1.21.5"
    for response in (
        put(http, server, K_URL),
        http.get(kv_url(server, K_URL)),
        http.delete(kv_url(server, K_URL)),
        put(http, server, P + "a%20b"),
    ):
        assert response.status_code == 500
        assert response.text == KEY_RULE_1_21_5
    assert put(http, server, P + "web-1.example_com").json() is True
    assert http.get(kv_url(server, P, "recurse")).status_code == 200
    assert put(http, server, P + "a..b").status_code == 500


def test_other_methods_are_405_with_allow(server: ConsulServer, http: requests.Session) -> None:
    response = http.post(kv_url(server, "x"), data="v")
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(",")) >= {"GET", "PUT", "DELETE"}


# 23. Consistency


@pytest.mark.parametrize("mode", ["stale", "consistent"])
def test_consistency_modes_are_echoed(
    server: ConsulServer, http: requests.Session, mode: str
) -> None:
    response = http.get(kv_url(server, P, f"recurse&{mode}"))
    assert_index_headers(response, mode)


def test_stale_and_consistent_together_is_400(server: ConsulServer, http: requests.Session) -> None:
    assert http.get(kv_url(server, P, "recurse&stale&consistent")).status_code == 400


# 24. ACL mode


ANON_DENIED = (
    "Permission denied: anonymous token lacks permission 'key:read' on \"daybook/hosts/x\". "
    "The anonymous token is used implicitly when a request does not specify a token."
)


@pytest.fixture
def acl_server(server: ConsulServer, http: requests.Session) -> ConsulServer:
    put(http, server, P + "x", "a")  # before ACLs: with ACLs off every write is allowed
    put(http, server, P + "secret", "s")
    server.enable_acls("deny")
    server.add_acl_token("writer-secret", key_prefix={"daybook/": "write"})
    server.add_acl_token(
        "reader-secret",
        key_prefix={P: "read"},
        key={P + "secret": "deny"},
        accessor_id="aaaaaaaa-0000-0000-0000-000000000001",
    )
    server.add_acl_token("nobody-secret")
    return server


def test_acls_off_ignore_any_token(server: ConsulServer, http: requests.Session) -> None:
    response = http.put(kv_url(server, K_URL), data="v", headers={"X-Consul-Token": "garbage"})
    assert response.json() is True


def test_acl_anonymous_read_is_denied(acl_server: ConsulServer, http: requests.Session) -> None:
    response = http.get(kv_url(acl_server, P + "x"))
    assert response.status_code == 403
    assert response.text == ANON_DENIED
    assert "X-Consul-Index" not in response.headers


def test_acl_unknown_token(acl_server: ConsulServer, http: requests.Session) -> None:
    response = http.get(kv_url(acl_server, P + "x"), headers={"X-Consul-Token": "garbage"})
    assert response.status_code == 403
    assert response.text == "ACL not found"
    assert "X-Consul-Index" not in response.headers


def test_acl_read_token_cannot_write(acl_server: ConsulServer, http: requests.Session) -> None:
    headers = {"X-Consul-Token": "reader-secret"}
    assert http.get(kv_url(acl_server, P + "x"), headers=headers).status_code == 200
    response = http.put(kv_url(acl_server, P + "x"), data="b", headers=headers)
    assert response.status_code == 403
    assert response.text == (
        "Permission denied: token with AccessorID 'aaaaaaaa-0000-0000-0000-000000000001' "
        "lacks permission 'key:write' on \"daybook/hosts/x\""
    )
    assert http.delete(kv_url(acl_server, P + "x"), headers=headers).status_code == 403
    writer = {"X-Consul-Token": "writer-secret"}
    assert http.put(kv_url(acl_server, P + "x"), data="b", headers=writer).json() is True


def test_acl_token_sources_and_precedence(acl_server: ConsulServer, http: requests.Session) -> None:
    url = kv_url(acl_server, P + "x")
    assert http.get(url, headers={"X-Consul-Token": "reader-secret"}).status_code == 200
    assert http.get(url, headers={"Authorization": "Bearer reader-secret"}).status_code == 200
    assert http.get(url, params={"token": "reader-secret"}).status_code == 200
    # ?token= wins over the header, whichever of the two is the good one.
    wins = http.get(url, params={"token": "reader-secret"}, headers={"X-Consul-Token": "garbage"})
    assert wins.status_code == 200
    loses = http.get(url, params={"token": "garbage"}, headers={"X-Consul-Token": "reader-secret"})
    assert loses.text == "ACL not found"


def test_acl_recursive_reads_are_filtered(acl_server: ConsulServer, http: requests.Session) -> None:
    response = http.get(
        kv_url(acl_server, P, "recurse"), headers={"X-Consul-Token": "reader-secret"}
    )
    assert response.status_code == 200
    assert [e["Key"] for e in response.json()] == [P + "x"]
    assert response.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
    nothing = http.get(
        kv_url(acl_server, P, "recurse"), headers={"X-Consul-Token": "nobody-secret"}
    )
    assert nothing.status_code == 404
    anonymous = http.get(kv_url(acl_server, P, "recurse"))
    assert anonymous.status_code == 404
    assert "X-Consul-Results-Filtered-By-ACLs" not in anonymous.headers
    root = http.get(kv_url(acl_server, "", "keys"), headers={"X-Consul-Token": "nobody-secret"})
    assert root.status_code == 200
    assert root.json() == []


def test_acl_agent_default_token_serves_requests_without_one(
    acl_server: ConsulServer, http: requests.Session
) -> None:
    # acl.tokens.default: parseToken falls back to it when a request brings no token.
    acl_server.default_token = "reader-secret"
    assert http.get(kv_url(acl_server, P + "x")).status_code == 200
    assert http.put(kv_url(acl_server, P + "x"), data="b").status_code == 403
    # Its token is not blank, so Consul does say that it filtered (maskResultsFilteredByACLs).
    listing = http.get(kv_url(acl_server, P, "recurse"))
    assert [e["Key"] for e in listing.json()] == [P + "x"]
    assert listing.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
    # A request's own token still wins.
    writer = {"X-Consul-Token": "writer-secret"}
    assert http.put(kv_url(acl_server, P + "x"), data="b", headers=writer).json() is True


def test_acl_only_a_blank_token_hides_the_filtering(
    acl_server: ConsulServer, http: requests.Session
) -> None:
    acl_server.set_anonymous_rules(key_prefix={P: "read"}, key={P + "secret": "deny"})
    silent = http.get(kv_url(acl_server, P, "recurse"))
    assert [e["Key"] for e in silent.json()] == [P + "x"]
    assert "X-Consul-Results-Filtered-By-ACLs" not in silent.headers
    assert silent.headers["X-Consul-Default-Acl-Policy"] == "deny"
    # The literal anonymous secret is a token like any other for the header's purposes.
    told = http.get(kv_url(acl_server, P, "recurse"), headers={"X-Consul-Token": "anonymous"})
    assert [e["Key"] for e in told.json()] == [P + "x"]
    assert told.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"


def test_acl_recursive_delete_needs_write_on_the_whole_prefix(
    acl_server: ConsulServer, http: requests.Session
) -> None:
    acl_server.add_acl_token("partial", key_prefix={P: "write"}, key={P + "secret": "read"})
    denied = http.delete(kv_url(acl_server, P, "recurse"), headers={"X-Consul-Token": "partial"})
    assert denied.status_code == 403
    writer = {"X-Consul-Token": "writer-secret"}
    assert http.delete(kv_url(acl_server, P, "recurse"), headers=writer).json() is True


# Datacenters, namespaces and partitions


def test_other_datacenters_have_tables_of_their_own(
    server: ConsulServer, http: requests.Session
) -> None:
    server.add_datacenter("dc2")
    put(http, server, K_URL, "one")
    put(http, server, K_URL, "two", "dc=dc2")
    assert http.get(kv_url(server, K_URL, "raw")).text == "one"
    assert http.get(kv_url(server, K_URL, "raw&dc=dc1")).text == "one"
    assert http.get(kv_url(server, K_URL, "raw&dc=dc2")).text == "two"
    assert server.entries(datacenter="dc2")[K].value == b"two"
    unknown = http.get(kv_url(server, K_URL, "dc=dc9"))
    assert unknown.status_code == 500
    assert unknown.text == "No path to datacenter"


@pytest.mark.parametrize(
    ("query", "headers", "message"),
    [
        (
            "ns=team",
            {},
            'Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature',
        ),
        (
            "ns=default",
            {},
            'Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature',
        ),
        (
            "",
            {"X-Consul-Namespace": "team"},
            'Invalid header: "X-Consul-Namespace" - Namespaces are a Consul Enterprise feature',
        ),
        (
            "partition=p1",
            {},
            'Invalid query parameter: "partition" - Partitions are a Consul Enterprise feature',
        ),
        (
            "",
            {"X-Consul-Partition": "p1"},
            'Invalid header: "X-Consul-Partition" - Partitions are a Consul Enterprise feature',
        ),
    ],
)
def test_open_source_consul_refuses_namespaces_and_partitions(
    server: ConsulServer,
    http: requests.Session,
    query: str,
    headers: dict[str, str],
    message: str,
) -> None:
    # agent/http_ce.go parseEntMeta: any value, `default` included, is a 400.
    for response in (
        http.get(kv_url(server, P, f"recurse&{query}"), headers=headers),
        http.put(kv_url(server, K_URL, query), data="v", headers=headers),
    ):
        assert response.status_code == 400
        assert response.text == message
    assert server.entries() == {}


def test_enterprise_namespaces_and_partitions_have_tables_of_their_own(
    server: ConsulServer, http: requests.Session
) -> None:
    server.enable_enterprise(namespaces=("team",), partitions=("p1",))
    put(http, server, K_URL, "team", "ns=team")
    put(http, server, K_URL, "p1", "partition=p1")
    assert http.get(kv_url(server, P, "recurse")).status_code == 404
    assert http.get(kv_url(server, P, "recurse&ns=default")).status_code == 404
    team = http.get(kv_url(server, K_URL, "raw"), headers={"X-Consul-Namespace": "team"})
    assert team.text == "team"
    assert http.get(kv_url(server, K_URL, "raw&partition=p1")).text == "p1"
    assert server.entries(namespace="team")[K].value == b"team"
    unknown = http.get(kv_url(server, P, "recurse&ns=nobody"))
    assert unknown.status_code == 400
    assert "nobody" in unknown.text


def test_enterprise_namespace_writes_wake_only_their_own_watchers(
    server: ConsulServer, http: requests.Session, background_get: Get
) -> None:
    server.enable_enterprise(namespaces=("team",))
    put(http, server, K_URL)
    idx = index_of(http.get(kv_url(server, P, "recurse")))
    pending = background_get(P, recurse="", index=str(idx), wait="700ms")
    server.wait_for_blocked()
    written = time.monotonic()
    put(http, server, K_URL, "elsewhere", "ns=team")
    response, done = pending.result(timeout=10)
    assert done - written >= 0.5
    assert index_of(response) == idx


# TLS


@pytest.fixture
def tls_server(consul_pki: ConsulPKI) -> Iterator[ConsulServer]:
    with ConsulServer(tls=consul_pki.server, jitter=False) as server:
        yield server


def test_tls_mode_serves_https_with_the_session_ca(
    tls_server: ConsulServer, consul_pki: ConsulPKI
) -> None:
    assert tls_server.url.startswith("https://")
    with requests.Session() as session:
        response = session.put(kv_url(tls_server, K_URL), data=VALUE, verify=consul_pki.ca_file)
        assert response.json() is True
        with pytest.raises(requests.exceptions.SSLError):
            session.get(kv_url(tls_server, K_URL))  # certifi does not know the test CA
    plain = f"http://{tls_server.address}/v1/kv/{K_URL}"
    with pytest.raises(requests.ConnectionError):
        requests.get(plain, timeout=10)


def test_tls_mode_can_require_client_certificates(consul_pki: ConsulPKI) -> None:
    # Consul's tls.https.verify_incoming.
    settings = consul_pki.server_tls("127.0.0.1", require_client_cert=True)
    with ConsulServer(tls=settings) as server, requests.Session() as session:
        url, ca = kv_url(server, P, "recurse"), consul_pki.ca_file
        with pytest.raises(requests.exceptions.SSLError):
            session.get(url, verify=ca)
        client = (consul_pki.client_cert_file, consul_pki.client_key_file)
        assert session.get(url, verify=ca, cert=client).status_code == 404


def test_tls_certificates_name_only_what_they_were_issued_for(consul_pki: ConsulPKI) -> None:
    settings = consul_pki.server_tls("consul.test")
    context = ssl.create_default_context(cafile=consul_pki.ca_file)
    with ConsulServer(tls=settings) as server:
        address = (server.host, server.port)
        with (
            socket.create_connection(address, timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="consul.test") as tls,
        ):
            tls.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: consul.test\r\n\r\n")
            assert tls.recv(64).startswith(b"HTTP/1.1 200")
        with (
            socket.create_connection(address, timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            context.wrap_socket(raw, server_hostname="127.0.0.1")


# 25. Txn


def txn_op(verb: str, key: str, value: bytes | None = None, **extra: object) -> dict[str, object]:
    op: dict[str, object] = {"Verb": verb, "Key": key, **extra}
    if value is not None:
        op["Value"] = base64.b64encode(value).decode()
    return {"KV": op}


def test_txn_applies_every_operation_at_one_index(
    server: ConsulServer, http: requests.Session
) -> None:
    ops = [txn_op("set", K, VALUE.encode()), txn_op("cas", P + "db-*", b"db", Index=0)]
    response = http.put(f"{server.url}/v1/txn", data=json.dumps(ops))
    assert response.status_code == 200
    body = response.json()
    assert body["Errors"] is None
    results = [r["KV"] for r in body["Results"]]
    assert [r["Key"] for r in results] == [K, P + "db-*"]
    assert all(r["Value"] is None for r in results)
    assert results[0]["ModifyIndex"] == results[1]["ModifyIndex"]
    stored = http.get(kv_url(server, P, "recurse")).json()
    assert {e["ModifyIndex"] for e in stored} == {results[0]["ModifyIndex"]}


def test_failed_txn_applies_nothing(server: ConsulServer, http: requests.Session) -> None:
    put(http, server, K_URL)
    modify = http.get(kv_url(server, K_URL)).json()[0]["ModifyIndex"]
    ops = [
        txn_op("set", P + "new", b"n"),
        txn_op("check-index", K, Index=modify + 100),
        txn_op("cas", K, b"v", Index=modify + 100),
    ]
    response = http.put(f"{server.url}/v1/txn", data=json.dumps(ops))
    assert response.status_code == 409
    body = response.json()
    assert body["Results"] is None
    assert [e["OpIndex"] for e in body["Errors"]] == [1, 2]
    assert all(e["What"] for e in body["Errors"])
    assert http.get(kv_url(server, P + "new")).status_code == 404
    assert http.get(kv_url(server, K_URL)).json()[0]["ModifyIndex"] == modify


def test_txn_with_129_operations_is_413(server: ConsulServer, http: requests.Session) -> None:
    # maxTxnOps in agent/txn_endpoint.go: 128 in current Consul (it was 64).
    ops = [txn_op("set", f"{P}k{n}", b"v") for n in range(129)]
    response = http.put(f"{server.url}/v1/txn", data=json.dumps(ops))
    assert response.status_code == 413
    assert response.text == "Transaction contains too many operations (129 > 128)"
    assert server.entries() == {}
    ops = ops[:128]
    assert http.put(f"{server.url}/v1/txn", data=json.dumps(ops)).status_code == 200
    assert len(server.entries()) == 128


def test_txn_is_put_only_and_reads_values(server: ConsulServer, http: requests.Session) -> None:
    put(http, server, K_URL)
    assert http.get(f"{server.url}/v1/txn").status_code == 405
    response = http.put(f"{server.url}/v1/txn", data=json.dumps([txn_op("get", K)]))
    assert response.json()["Results"][0]["KV"]["Value"] == B64_VALUE


# Test hooks


def test_reaping_tombstones_makes_the_prefix_index_go_backwards(
    server: ConsulServer, http: requests.Session
) -> None:
    put(http, server, K_URL)
    put(http, server, P + "db-%2A")
    http.delete(kv_url(server, P + "db-%2A"))
    with_tombstone = index_of(http.get(kv_url(server, P, "recurse")))
    server.reap_tombstones()
    reaped = http.get(kv_url(server, P, "recurse"))
    assert index_of(reaped) < with_tombstone
    assert index_of(reaped) == reaped.json()[0]["ModifyIndex"]


def test_restart_drops_blocked_queries_and_restarts_indexes_low(
    server: ConsulServer, http: requests.Session, background_get: Get
) -> None:
    for n in range(5):
        put(http, server, P + f"k{n}")
    idx = index_of(http.get(kv_url(server, P, "recurse")))
    pending = background_get(P, recurse="", index=str(idx), wait="30s")
    server.wait_for_blocked()
    server.restart()
    with pytest.raises(requests.ConnectionError):
        pending.result(timeout=10)
    after = http.get(kv_url(server, P, "recurse"))
    assert after.status_code == 404
    assert index_of(after) == 1 < idx
    put(http, server, K_URL)
    assert index_of(http.get(kv_url(server, P, "recurse"))) < idx


def test_restart_keeping_data(server: ConsulServer, http: requests.Session) -> None:
    put(http, server, K_URL)
    before = http.get(kv_url(server, P, "recurse"))
    server.restart(keep_data=True)
    after = http.get(kv_url(server, P, "recurse"))
    assert after.json() == before.json()
    assert index_of(after) == index_of(before)


def test_fault_injection(server: ConsulServer, http: requests.Session) -> None:
    server.inject_fault("no_leader", count=2)
    for _ in range(2):
        response = http.get(kv_url(server, P, "recurse"))
        assert response.status_code == 500
        assert response.text == "No cluster leader"
    server.inject_fault("rate_limited")
    assert http.get(kv_url(server, P, "recurse")).status_code == 429
    server.inject_fault("drop")
    with pytest.raises(requests.ConnectionError):
        http.get(kv_url(server, P, "recurse"))
    server.inject_fault("delay", delay_s=0.3)
    started = time.monotonic()
    assert http.get(kv_url(server, P, "recurse")).status_code == 404
    assert time.monotonic() - started >= 0.3
    assert http.get(kv_url(server, P, "recurse")).status_code == 404


def test_request_log(server: ConsulServer, http: requests.Session) -> None:
    http.put(kv_url(server, K_URL, "cas=0"), data="v", headers={"X-Consul-Token": "t0k"})
    server.inject_fault("drop")
    with pytest.raises(requests.ConnectionError):
        http.get(kv_url(server, P, "recurse"))
    first, second = server.request_log
    assert (first.method, first.path, first.body, first.status) == ("PUT", "/v1/kv/" + K, b"v", 200)
    assert first.query == {"cas": ["0"]}
    assert first.header("x-consul-token") == "t0k"
    assert second.status is None
    server.clear_request_log()
    assert server.request_log == []
