"""Host patterns with `*` wildcards, and the specificity rule that picks one winner per host."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from daybook.errors import InputError

# A host name is DNS labels of letters, digits and hyphens joined by dots (RFC 1123); a
# pattern may also hold `*`. Anything else (`?`, `[`, `/`, spaces, `%`) is refused, so a
# pattern is always a safe Consul key segment and never a path.
_HOST_RE = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*\.?")
_PATTERN_CHARS_RE = re.compile(r"[a-z0-9.*-]+")
MAX_HOST_LEN = 253


def is_valid_host(host: str) -> bool:
    return len(host) <= MAX_HOST_LEN and _HOST_RE.fullmatch(host.lower()) is not None


def check_host(host: str) -> str:
    if not is_valid_host(host):
        raise InputError(
            f"invalid host name {host!r}: use letters, digits, hyphens and dots "
            f"(at most {MAX_HOST_LEN})"
        )
    return host


def is_valid_pattern(pattern: str) -> bool:
    lowered = pattern.lower()
    if not (0 < len(lowered) <= MAX_HOST_LEN) or _PATTERN_CHARS_RE.fullmatch(lowered) is None:
        return False
    # With every `*` taken as one letter the pattern must still be a host name, so `a..b`
    # and `.x` are refused, while `*`, `web-*` and `*.prod.example` are fine.
    return _HOST_RE.fullmatch(lowered.replace("*", "x")) is not None


def check_pattern(pattern: str) -> str:
    """Return the normalised (lower-case) pattern, or raise InputError naming the problem."""
    if not is_valid_pattern(pattern):
        raise InputError(
            f"invalid host pattern {pattern!r}: use a host name (letters, digits, hyphens, dots) "
            "where `*` matches any run of characters; no other wildcard is allowed"
        )
    return pattern.lower()


@dataclass(frozen=True)
class HostPattern:
    """A validated pattern, pre-split for matching and ranked for specificity."""

    text: str
    _parts: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_parts", tuple(check_pattern(self.text).split("*")))

    @property
    def literal_chars(self) -> int:
        return sum(len(part) for part in self._parts)

    @property
    def star_count(self) -> int:
        return len(self._parts) - 1

    @property
    def literal_prefix(self) -> str:
        return self._parts[0]

    def rank_key(self) -> tuple[int, int, int, str]:
        """Sort key: the most specific pattern sorts first.

        Most literal characters; then fewer stars; then the longer literal text before the
        first star; then plain string order, so the winner never depends on listing order.
        """
        return (-self.literal_chars, self.star_count, -len(self.literal_prefix), self.text)

    def matches(self, host: str) -> bool:
        """Whole-name, case-insensitive glob match where `*` matches any run, even empty."""
        name = host.lower()
        parts = self._parts
        if len(parts) == 1:
            return name == parts[0]
        first, last = parts[0], parts[-1]
        if len(name) < len(first) + len(last):
            return False
        if not (name.startswith(first) and name.endswith(last)):
            return False
        # Leftmost placement of each middle piece is optimal for `*`-only globs.
        position, end = len(first), len(name) - len(last)
        for piece in parts[1:-1]:
            found = name.find(piece, position, end)
            if found < 0:
                return False
            position = found + len(piece)
        return True


@dataclass(frozen=True)
class Candidate:
    pattern: str
    services: tuple[str, ...]


@dataclass(frozen=True)
class Resolution:
    """Which pattern won for a host, and every pattern that matched, most specific first."""

    host: str
    pattern: str | None
    services: tuple[str, ...]
    candidates: tuple[Candidate, ...]


class PatternTable:
    """A mapping table ranked once, so resolving many hosts costs one scan each at most.

    Patterns are kept in specificity order; the first that matches a host is its winner.
    """

    def __init__(self, mappings: Mapping[str, Iterable[str]]) -> None:
        ranked = sorted((HostPattern(pattern) for pattern in mappings), key=HostPattern.rank_key)
        self._ranked: list[tuple[HostPattern, tuple[str, ...]]] = [
            (hp, tuple(mappings[hp.text])) for hp in ranked
        ]

    def __len__(self) -> int:
        return len(self._ranked)

    def best_match(self, host: str) -> Candidate | None:
        for hp, services in self._ranked:
            if hp.matches(host):
                return Candidate(hp.text, services)
        return None

    def resolve(self, host: str, *, explain: bool = False) -> Resolution:
        if not explain:
            best = self.best_match(host)
            if best is None:
                return Resolution(host, None, (), ())
            return Resolution(host, best.pattern, best.services, ())
        candidates = tuple(
            Candidate(hp.text, services) for hp, services in self._ranked if hp.matches(host)
        )
        if not candidates:
            return Resolution(host, None, (), ())
        return Resolution(host, candidates[0].pattern, candidates[0].services, candidates)


def resolve_host(
    host: str, mappings: Mapping[str, Iterable[str]], *, explain: bool = False
) -> Resolution:
    """Resolve one host against a mapping table (pattern -> services)."""
    return PatternTable(mappings).resolve(host, explain=explain)
