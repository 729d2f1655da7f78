"""Host patterns: validation, whole-name case-insensitive matching, and specificity."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daybook.errors import InputError
from daybook.patterns import (
    HostPattern,
    PatternTable,
    check_host,
    check_pattern,
    is_valid_pattern,
    resolve_host,
)


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("web-prod-*", "web-prod-1", True),
        ("web-prod-*", "web-prod-", True),  # `*` matches the empty run
        ("web-prod-*", "xweb-prod-1", False),  # the whole name must match
        ("*", "anything.example.com", True),
        ("web-*-db", "web-eu-west-db", True),
        ("web-*-db", "web-db", False),
        ("web-*-db", "web--db", True),
        ("*.prod.example", "a.b.prod.example", True),
        ("WEB-*", "web-1", True),  # case-insensitive both ways
        ("web-*", "WEB-1", True),
        ("a*a*a", "aa", False),
        ("a*a*a", "aaa", True),
        ("web-1", "web-1", True),
        ("web-1", "web-10", False),
    ],
)
def test_matching(pattern: str, host: str, expected: bool) -> None:
    assert HostPattern(pattern).matches(host) is expected


@pytest.mark.parametrize(
    "pattern",
    ["", "web-?", "web-[12]", "web/*", "web *", "web%2A", "a..b", ".web", "web_1", "x" * 254],
)
def test_bad_patterns_are_refused(pattern: str) -> None:
    assert not is_valid_pattern(pattern)
    with pytest.raises(InputError, match="invalid host pattern"):
        check_pattern(pattern)


def test_patterns_are_normalised_to_lower_case() -> None:
    assert check_pattern("Web-Prod-*") == "web-prod-*"


@pytest.mark.parametrize("host", ["", "a b", "web_1", "a..b", "*", "x" * 254])
def test_bad_hosts_are_refused(host: str) -> None:
    with pytest.raises(InputError, match="invalid host name"):
        check_host(host)


def test_most_literal_characters_win() -> None:
    table = {"web-*": ("a",), "web-prod-*": ("b",), "*": ("c",)}
    resolution = resolve_host("web-prod-7", table)
    assert resolution.pattern == "web-prod-*"
    assert resolution.services == ("b",)


def test_services_of_other_patterns_are_not_merged() -> None:
    table = {"web-*": ("a", "x"), "web-prod-*": ("b",)}
    assert resolve_host("web-prod-1", table).services == ("b",)


def test_exact_host_beats_wildcard_of_equal_length() -> None:
    # "web-1*" and "web-1" have the same literal characters; the exact name has fewer stars.
    table = {"web-1*": ("wild",), "web-1": ("exact",)}
    assert resolve_host("web-1", table).pattern == "web-1"


def test_padding_with_stars_does_not_win() -> None:
    table = {"web-**": ("padded",), "web-*": ("plain",)}
    assert resolve_host("web-1", table).pattern == "web-*"


def test_longer_literal_prefix_breaks_ties() -> None:
    # Both have 5 literal chars and one star; "web-p*" has the longer text before the star.
    table = {"*b-pr": ("suffix",), "web-p*": ("prefix",)}
    resolution = resolve_host("web-pr", table, explain=True)
    assert resolution.pattern == "web-p*"
    assert [c.pattern for c in resolution.candidates] == ["web-p*", "*b-pr"]


def test_string_order_is_the_last_tie_break() -> None:
    # Same literal count (3), same stars (2), same prefix length (1): plain string order.
    table = {"a*c*d": ("c",), "a*b*d": ("b",)}
    assert resolve_host("abcd", table).pattern == "a*b*d"
    assert resolve_host("abcd", dict(reversed(table.items()))).pattern == "a*b*d"


def test_no_match_gives_none() -> None:
    resolution = resolve_host("db-1", {"web-*": ("a",)}, explain=True)
    assert resolution.pattern is None
    assert resolution.services == ()
    assert resolution.candidates == ()


def test_explain_lists_every_match_most_specific_first() -> None:
    table = {"*": ("all",), "web-*": ("web",), "web-prod-*": ("prod",), "db-*": ("db",)}
    resolution = resolve_host("web-prod-1", table, explain=True)
    assert [c.pattern for c in resolution.candidates] == ["web-prod-*", "web-*", "*"]


_host_chars = st.sampled_from("ab-.1")
_hosts = st.text(_host_chars, min_size=1, max_size=8).filter(
    lambda h: not h.startswith((".", "-")) and ".." not in h and not h.endswith(".-")
)
_patterns = st.text(st.sampled_from("ab-.1*"), min_size=1, max_size=6).filter(is_valid_pattern)


@given(host=_hosts, patterns=st.lists(_patterns, min_size=1, max_size=8, unique=True))
def test_winner_does_not_depend_on_listing_order(host: str, patterns: list[str]) -> None:
    table = {p: (f"s{i}",) for i, p in enumerate(patterns)}
    expected = resolve_host(host, table).pattern
    shuffled = list(table.items())
    random.Random(0).shuffle(shuffled)
    assert resolve_host(host, dict(shuffled)).pattern == expected
    assert PatternTable(dict(reversed(shuffled))).resolve(host).pattern == expected


@given(host=_hosts, pattern=_patterns)
def test_matching_agrees_with_fnmatch(host: str, pattern: str) -> None:
    import fnmatch

    # With only `*` as a wildcard, fnmatchcase on lower-cased text is the reference.
    assert HostPattern(pattern).matches(host) == fnmatch.fnmatchcase(host.lower(), pattern)
