"""Host patterns: validation, whole-name case-insensitive matching, and specificity."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daybook.errors import InputError
from daybook.model.patterns import (
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


def brute_force(host: str, table: dict[str, tuple[str, ...]]) -> list[str]:
    """Every pattern that matches, most specific first: each one tried on its own."""
    ranked = sorted((HostPattern(p) for p in table), key=HostPattern.rank_key)
    return [hp.text for hp in ranked if hp.matches(host)]


@pytest.mark.parametrize(
    ("host", "patterns"),
    [
        # `.` and `-` are regex metacharacters; here they must be taken literally.
        ("a.b-c", ["a.b-c", "a-b.c", "axb-c", "a.b*", "*b-c", "a*c", "*.*-*"]),
        ("a.b.", ["a.b.", "a.b", "*.", "a.*", "*b."]),
        ("ab", ["*", "**", "a*", "*b", "a**b", "ab*b", "a*ab", "ab*", "*ab", "a*b*"]),
        ("aa", ["a*a", "*a*a*", "a*a*a", "*aa*", "aa", "a"]),
        ("aaa", ["a*a", "*a*a*", "a*a*a", "a**a", "*a", "a*"]),
        ("Web-1.Example", ["WEB-*", "web-*", "*.EXAMPLE", "Web-1.Example", "*-1.*"]),
        ("", ["*", "**", "a*"]),
        # Longer than any pattern may be: only stars can cover the rest.
        ("a" * 300, ["a*", "*a", "a" * 253, "a" * 200 + "*", "*" + "a" * 252, "a*a" * 84]),
        # Repeats: many prefixes and suffixes of the host share their start.
        ("ab" * 100, ["*" + "ab" * 60, "*b" + "ab" * 50, "ab*b", "*abab*abab", "*" + "ab" * 100]),
        # Not valid host names, yet resolve_host takes them: `*`, `_` and a newline in the
        # host are matched by a star and never by pattern text.
        ("a*b", ["a*b", "a**b", "a", "b", "*"]),
        ("a_b", ["a*b", "a*", "*b", "a**"]),
        ("a\nb", ["a", "b", "a*b", "*"]),
    ],
)
def test_resolve_host_agrees_with_trying_every_pattern(host: str, patterns: list[str]) -> None:
    table = {p: (f"s{i}",) for i, p in enumerate(patterns)}
    expected = brute_force(host, table)
    resolution = resolve_host(host, table, explain=True)
    assert [c.pattern for c in resolution.candidates] == expected
    assert [c.services for c in resolution.candidates] == [table[p] for p in expected]
    assert resolve_host(host, table).pattern == (expected[0] if expected else None)


# Upper case, the regex metacharacters a pattern may hold, and (rarely) characters no
# pattern holds: a star, an underscore, a newline, a Kelvin sign (which lower-cases to `k`).
_any_hosts = st.text(
    st.one_of(st.sampled_from("aAbk-.1"), st.sampled_from("*_\n\u212a")), max_size=9
)
_mixed_patterns = st.text(st.sampled_from("aAbk-.1*"), min_size=1, max_size=7).filter(
    is_valid_pattern
)


@given(
    hosts=st.lists(_any_hosts, min_size=1, max_size=5),
    patterns=st.lists(_mixed_patterns, min_size=1, max_size=25, unique=True),
)
def test_resolve_host_agrees_with_brute_force(hosts: list[str], patterns: list[str]) -> None:
    table = {p: (f"s{i}",) for i, p in enumerate(patterns)}
    for host in hosts:
        expected = brute_force(host, table)
        explained = resolve_host(host, table, explain=True)
        assert [c.pattern for c in explained.candidates] == expected
        winner = resolve_host(host, table)
        assert winner.pattern == (expected[0] if expected else None)
        assert winner.services == (table[expected[0]] if expected else ())
