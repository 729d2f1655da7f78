"""The indexed PatternTable, the one-pass resolve_host and bulk pattern checks, against a
plain reference: every pattern tried in specificity order."""

from __future__ import annotations

import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daybook.errors import InputError
from daybook.model.patterns import (
    Candidate,
    HostPattern,
    PatternTable,
    check_patterns,
    is_valid_pattern,
    resolve_host,
)


def reference_candidates(host: str, mappings: dict[str, tuple[str, ...]]) -> list[Candidate]:
    ranked = sorted((HostPattern(p) for p in mappings), key=HostPattern.rank_key)
    return [Candidate(hp.text, mappings[hp.text]) for hp in ranked if hp.matches(host)]


def assert_agrees_with_reference(
    table: PatternTable, host: str, mappings: dict[str, tuple[str, ...]]
) -> None:
    expected = reference_candidates(host, mappings)
    winner = expected[0] if expected else None
    assert table.best_match(host) == winner
    for resolution in (
        table.resolve(host, explain=True),
        resolve_host(host, mappings, explain=True),
    ):
        assert list(resolution.candidates) == expected
        assert resolution.pattern == (winner.pattern if winner else None)
        assert resolution.services == (winner.services if winner else ())
    for resolution in (table.resolve(host), resolve_host(host, mappings)):
        assert resolution.pattern == (winner.pattern if winner else None)
        assert resolution.candidates == ()


# A small alphabet makes shared prefixes, shared suffixes and multi-star overlaps common.
_hosts = st.text(st.sampled_from("ab-.1"), min_size=1, max_size=9).filter(
    lambda h: not h.startswith((".", "-")) and ".." not in h
)
_patterns = st.text(st.sampled_from("ab-.1*"), min_size=1, max_size=7).filter(is_valid_pattern)


@settings(max_examples=300)
@given(
    hosts=st.lists(_hosts, min_size=1, max_size=6),
    patterns=st.lists(_patterns, min_size=1, max_size=30, unique=True),
)
def test_table_and_one_pass_agree_with_the_reference(hosts: list[str], patterns: list[str]) -> None:
    mappings = {p: (f"s{i}",) for i, p in enumerate(patterns)}
    table = PatternTable(mappings)
    assert len(table) == len(mappings)
    for host in hosts:
        assert_agrees_with_reference(table, host, mappings)


def test_a_bucket_with_many_suffixes_is_probed_by_the_hosts_suffixes() -> None:
    # Ten suffixes under the empty prefix, and ten under "web-": more than a lookup scans.
    mappings: dict[str, tuple[str, ...]] = {}
    for i in range(10):
        mappings[f"*.dc{i}.example"] = (f"dc{i}",)
        mappings[f"web-*-{i}"] = (f"web{i}",)
        mappings[f"web-*-x*-{i}"] = (f"webx{i}",)
    mappings["*"] = ("all",)
    table = PatternTable(mappings)
    for host in ("web-1.dc3.example", "web-a-x-7", "web-ax-7", "db.dc9.example", "web--3", "w"):
        assert_agrees_with_reference(table, host, mappings)
    assert table.resolve("web-a-x-7").pattern == "web-*-x*-7"
    assert table.resolve("web-1.dc3.example").pattern == "*.dc3.example"


def test_prefix_and_suffix_may_not_overlap() -> None:
    mappings = {"ab*ba": ("x",), "ab*": ("y",)}
    table = PatternTable(mappings)
    assert table.resolve("aba").pattern == "ab*"
    assert table.resolve("abba").pattern == "ab*ba"


def test_case_variants_of_a_pattern_keep_their_own_text_and_services() -> None:
    mappings = {"WEB-*": ("upper",), "web-*": ("lower",), "Web-1": ("exact",)}
    table = PatternTable(mappings)
    explained = table.resolve("WEB-1", explain=True)
    # String order breaks the tie between the two starred spellings: "WEB-*" < "web-*".
    assert [c.pattern for c in explained.candidates] == ["Web-1", "WEB-*", "web-*"]
    assert table.resolve("web-2").services == ("upper",)
    assert_agrees_with_reference(table, "web-2", mappings)


def test_large_generated_table_agrees_with_the_reference() -> None:
    rng = random.Random(5)
    mappings: dict[str, tuple[str, ...]] = {}
    while len(mappings) < 1000:
        role, n = rng.choice(["web", "db", "api"]), rng.randrange(300)
        shape = rng.randrange(4)
        pattern = (
            f"{role}-{n}.eu",
            f"{role}-{n % 30}*",
            f"*-{n}.eu",
            f"{role}*{n % 7}*.eu",
        )[shape]
        mappings[pattern] = (f"svc{n}",)
    table = PatternTable(mappings)
    for _ in range(200):
        host = f"{rng.choice(['web', 'db', 'api', 'mx'])}-{rng.randrange(400)}.eu"
        assert_agrees_with_reference(table, host, mappings)


def test_empty_table() -> None:
    table = PatternTable({})
    assert len(table) == 0
    assert table.best_match("web-1") is None
    assert table.resolve("web-1", explain=True).pattern is None
    assert resolve_host("web-1", {}).pattern is None


def assert_bulk_checks_agree_with_one_by_one_checks(patterns: list[str]) -> None:
    if all(is_valid_pattern(p) for p in patterns):
        assert check_patterns(patterns) == [p.lower() for p in patterns]
    else:
        first_bad = next(p for p in patterns if not is_valid_pattern(p))
        with pytest.raises(InputError, match="invalid host pattern") as caught:
            check_patterns(patterns)
        assert repr(first_bad) in str(caught.value)


@given(st.lists(st.text(max_size=6), max_size=6))
def test_bulk_checks_agree_with_one_by_one_checks(patterns: list[str]) -> None:
    assert_bulk_checks_agree_with_one_by_one_checks(patterns)


# Dots, newlines, stars and empty strings are where the bulk checks take shortcuts.
@given(st.lists(st.text(st.sampled_from("a.\n*-K"), max_size=4), max_size=6))
def test_bulk_checks_agree_with_one_by_one_checks_on_dots_and_newlines(
    patterns: list[str],
) -> None:
    assert_bulk_checks_agree_with_one_by_one_checks(patterns)


@pytest.mark.parametrize(
    "patterns",
    [
        ["web-*", "a\nb"],  # a newline must not split one pattern into two valid ones
        ["web-*", ""],
        ["", "web-*"],
        ["web-*", ".x"],
        ["web-*", "a..b"],
        ["web-*", "x" * 254],
        ["web-*", "wéb"],
        ["web-*", "web_1"],
    ],
)
def test_bulk_checks_refuse_what_check_pattern_refuses(patterns: list[str]) -> None:
    with pytest.raises(InputError, match="invalid host pattern"):
        check_patterns(patterns)
    with pytest.raises(InputError, match="invalid host pattern"):
        PatternTable(dict.fromkeys(patterns, ("svc",)))
    with pytest.raises(InputError, match="invalid host pattern"):
        resolve_host("web-1", dict.fromkeys(patterns, ("svc",)))


def test_bulk_checks_accept_trailing_dots_and_upper_case() -> None:
    assert check_patterns(["Web-*.", "*", "a.b.", "K"]) == ["web-*.", "*", "a.b.", "k"]


@pytest.mark.parametrize(
    "patterns",
    [["a.", "b"], ["a.", "b.", "c"], ["*.", "*"], ["a", "b."], ["a.b.", "c.d"]],
)
def test_bulk_checks_accept_a_trailing_dot_before_another_pattern(patterns: list[str]) -> None:
    assert check_patterns(patterns) == patterns


@pytest.mark.parametrize(
    "patterns",
    [["a.", ".b"], ["a.", ""], ["a.", "", "b"], ["a..", "b"], ["a", "b", ""], ["a", "\nb"]],
)
def test_bulk_checks_refuse_what_follows_a_trailing_dot(patterns: list[str]) -> None:
    with pytest.raises(InputError, match="invalid host pattern"):
        check_patterns(patterns)


def test_valid_pattern_text_lower_cases_one_character_to_one() -> None:
    # resolve_host finds a pattern in the lower-cased joined table and reads its stored
    # text from the same place in the joined table as given: that needs every character
    # that can end up in a valid pattern to lower-case to exactly one character.
    pattern_chars = set("abcdefghijklmnopqrstuvwxyz0123456789.*-")
    for code_point in range(sys.maxunicode + 1):
        lowered = chr(code_point).lower()
        if set(lowered) <= pattern_chars:
            assert len(lowered) == 1, hex(code_point)


def test_patterns_that_lower_case_to_ascii_keep_their_text() -> None:
    # A Kelvin sign lower-cases to `k`, so these are valid patterns; each comes back as given.
    mappings = {"\u212a*": ("kelvin",), "web-\u212a": ("exact",), "*-K": ("upper",)}
    assert check_patterns(list(mappings)) == ["k*", "web-k", "*-k"]
    resolution = resolve_host("WEB-k", mappings, explain=True)
    assert [c.pattern for c in resolution.candidates] == ["web-\u212a", "*-K"]
    assert resolution.services == ("exact",)
    assert resolve_host("kx", mappings).pattern == "\u212a*"
    assert_agrees_with_reference(PatternTable(mappings), "WEB-k", mappings)
