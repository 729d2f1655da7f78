"""Host patterns with `*` wildcards, and the specificity rule that picks one winner per host."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from daybook.errors import InputError

# A host name is DNS labels of letters, digits and hyphens joined by dots (RFC 1123); a
# pattern may also hold `*`. Anything else (`?`, `[`, `/`, spaces, `%`) is refused, so a
# pattern is always a safe Consul key segment and never a path.
_HOST_RE = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*\.?")
_PATTERN_CHARS_RE = re.compile(r"[a-z0-9.*-]+")
MAX_HOST_LEN = 253
# The bytes a lower-cased pattern may hold, plus the newline that joins many for bulk checks.
_PATTERN_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789.*-\n"


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


def check_patterns(patterns: Sequence[str]) -> list[str]:
    """`check_pattern` over many patterns at once: their lower-case forms, in order.

    Tables of 100,000 patterns are validated in a few C-level passes over one joined
    string rather than two regex calls each; any doubt falls back to one-by-one checks,
    which also name the first bad pattern.
    """
    if not patterns:
        return []
    joined = "\n".join(patterns).lower()
    lowered = joined.split("\n")
    if len(lowered) == len(patterns) and _all_valid_lowered(joined, lowered):
        return lowered
    return [check_pattern(pattern) for pattern in patterns]


def _all_valid_lowered(joined: str, lowered: list[str]) -> bool:
    # The same rules as is_valid_pattern: allowed characters only, no empty pattern, and
    # no empty label (a leading dot or two dots in a row); a single trailing dot is fine.
    try:
        raw = joined.encode("ascii")
    except UnicodeEncodeError:
        return False
    if raw.translate(None, _PATTERN_BYTES):
        return False
    if raw.startswith(b".") or b".." in raw or b"\n." in raw:
        return False
    return all(lowered) and max(map(len, lowered)) <= MAX_HOST_LEN


def _rank_key(text: str, parts: Sequence[str]) -> tuple[int, int, int, str]:
    stars = len(parts) - 1
    literal_chars = sum(len(part) for part in parts)
    return (-literal_chars, stars, -len(parts[0]), text)


def _parts_match(name: str, parts: Sequence[str]) -> bool:
    """Whether lower-case `name` matches a pattern split on `*`."""
    if len(parts) == 1:
        return name == parts[0]
    first, last = parts[0], parts[-1]
    end = len(name) - len(last)
    if end < len(first) or not (name.startswith(first) and name.endswith(last)):
        return False
    return _middle_fits(name, parts[1:-1], len(first), end)


def _middle_fits(name: str, middle: Sequence[str], start: int, end: int) -> bool:
    """Whether the pieces between the first and last star fit in `name[start:end]`, in order."""
    # Leftmost placement of each middle piece is optimal for `*`-only globs.
    for piece in middle:
        found = name.find(piece, start, end)
        if found < 0:
            return False
        start = found + len(piece)
    return True


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
        return _rank_key(self.text, self._parts)

    def matches(self, host: str) -> bool:
        """Whole-name, case-insensitive glob match where `*` matches any run, even empty."""
        return _parts_match(host.lower(), self._parts)


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


# Above this many distinct suffixes under one prefix, a lookup probes the host's own suffixes.
_SCAN_SUFFIXES_UP_TO = 4
# Patterns with pieces between stars are also filed under an anchor: a run of this many
# characters (or a whole shorter piece) that a matching host holds between prefix and suffix.
_ANCHOR_CHARS = 4


class PatternTable:
    """A mapping table ranked and indexed once, so resolving a host looks at few patterns.

    A host can only match a pattern whose text before the first star is a prefix of the
    host and whose text after the last star is a suffix of it, and which holds every piece
    between stars. So patterns without a star sit in a dict by name; starred ones in
    buckets by prefix, then by suffix; and those with pieces between stars (`*-eu-*`) also
    by the start of their longest piece. A lookup tries the prefixes, suffixes and short
    substrings of the host that some pattern has. Every list is in rank order, so a lookup
    stops at the first match in a list, or as soon as nothing left can beat the best so far.
    """

    def __init__(self, mappings: Mapping[str, Iterable[str]]) -> None:
        texts = list(mappings)
        lowered = dict(zip(texts, check_patterns(texts), strict=True))
        # The rank key packed into one int (each part fits in 9 bits): a plain string sort
        # and then a stable int sort is several times faster than sorting key tuples.
        packed: dict[str, int] = {}
        for text, low in lowered.items():
            stars = low.count("*")
            prefix_chars = low.find("*") if stars else len(low)
            packed[text] = (
                ((MAX_HOST_LEN - len(low) + stars) << 18)
                | (stars << 9)
                | (MAX_HOST_LEN - prefix_chars)
            )
        self._texts = sorted(texts)
        self._texts.sort(key=packed.__getitem__)
        self._services = [tuple(mappings[text]) for text in self._texts]

        # Lists hold ranks (plain ints, cheap to store and compare). Only patterns with a
        # non-empty piece between stars keep it: the rest match on prefix and suffix alone.
        self._exact: dict[str, list[int]] = {}
        self._starred: dict[str, dict[str, list[int]]] = {}
        self._anchored: dict[tuple[str, str], dict[str, list[int]]] = {}
        self._middles: dict[int, tuple[str, ...]] = {}
        inner: list[tuple[int, str, str, list[str]]] = []
        for rank, text in enumerate(self._texts):
            low = lowered[text]
            if "*" not in low:
                self._exact.setdefault(low, []).append(rank)
                continue
            parts = low.split("*")
            prefix, suffix = parts[0], parts[-1]
            plain = self._starred.setdefault(prefix, {}).setdefault(suffix, [])
            middle = tuple(piece for piece in parts[1:-1] if piece)
            if not middle:
                plain.append(rank)
                continue
            self._middles[rank] = middle
            inner.append((rank, prefix, suffix, _anchor_choices(middle)))
        # File each such pattern under its rarest choice, so that no anchor list grows long
        # because many patterns share one common piece (`*-eu-*`).
        frequency = Counter(anchor for *_, choices in inner for anchor in set(choices))
        for rank, prefix, suffix, choices in inner:
            anchor = min(choices, key=frequency.__getitem__)
            by_anchor = self._anchored.setdefault((prefix, suffix), {})
            by_anchor.setdefault(anchor, []).append(rank)
        self._prefix_lengths = tuple(sorted({len(prefix) for prefix in self._starred}))
        self._suffix_lengths = tuple(
            sorted({len(suffix) for by_suffix in self._starred.values() for suffix in by_suffix})
        )
        self._anchor_lengths = tuple(
            sorted({len(anchor) for by_anchor in self._anchored.values() for anchor in by_anchor})
        )

    def __len__(self) -> int:
        return len(self._texts)

    def best_match(self, host: str) -> Candidate | None:
        name = host.lower()
        best = len(self._texts)
        for ranks, start, end in self._candidate_lists(name):
            for rank in ranks:
                if rank >= best:
                    break
                middle = self._middles.get(rank)
                if middle is None or _middle_fits(name, middle, start, end):
                    best = rank
                    break
        if best == len(self._texts):
            return None
        return Candidate(self._texts[best], self._services[best])

    def resolve(self, host: str, *, explain: bool = False) -> Resolution:
        if not explain:
            best = self.best_match(host)
            if best is None:
                return Resolution(host, None, (), ())
            return Resolution(host, best.pattern, best.services, ())
        name = host.lower()
        matched = sorted(
            rank
            for ranks, start, end in self._candidate_lists(name)
            for rank in ranks
            if rank not in self._middles or _middle_fits(name, self._middles[rank], start, end)
        )
        if not matched:
            return Resolution(host, None, (), ())
        candidates = tuple(Candidate(self._texts[rank], self._services[rank]) for rank in matched)
        return Resolution(host, candidates[0].pattern, candidates[0].services, candidates)

    def _candidate_lists(self, name: str) -> Iterator[tuple[list[int], int, int]]:
        """Lists of ranks holding every pattern `name` may match (and some it does not).

        Each comes with the span of `name` between the pattern's prefix and suffix, which
        its middle pieces must fit in.
        """
        size = len(name)
        exact = self._exact.get(name)
        if exact is not None:
            yield exact, 0, size
        for prefix_length in self._prefix_lengths:
            if prefix_length > size:
                break
            prefix = name[:prefix_length]
            by_suffix = self._starred.get(prefix)
            if by_suffix is None:
                continue
            room = size - prefix_length
            if len(by_suffix) <= _SCAN_SUFFIXES_UP_TO:
                suffixes = [s for s in by_suffix if len(s) <= room and name.endswith(s)]
            else:
                suffixes = [
                    name[size - length :] for length in self._suffix_lengths if length <= room
                ]
            for suffix in suffixes:
                plain = by_suffix.get(suffix)
                if plain is None:
                    continue
                end = size - len(suffix)
                if plain:
                    yield plain, prefix_length, end
                by_anchor = self._anchored.get((prefix, suffix))
                if by_anchor is not None:
                    yield from self._anchored_lists(by_anchor, name, prefix_length, end)

    def _anchored_lists(
        self, by_anchor: dict[str, list[int]], name: str, start: int, end: int
    ) -> Iterator[tuple[list[int], int, int]]:
        substrings = {
            name[position : position + length]
            for length in self._anchor_lengths
            for position in range(start, end - length + 1)
        }
        for substring in substrings:
            ranks = by_anchor.get(substring)
            if ranks is not None:
                yield ranks, start, end


def _anchor_choices(middle: Sequence[str]) -> list[str]:
    """Every run of _ANCHOR_CHARS characters in the pieces, and each shorter piece whole."""
    choices: list[str] = []
    for piece in middle:
        if len(piece) <= _ANCHOR_CHARS:
            choices.append(piece)
        else:
            choices.extend(
                piece[start : start + _ANCHOR_CHARS]
                for start in range(len(piece) - _ANCHOR_CHARS + 1)
            )
    return choices


def resolve_host(
    host: str, mappings: Mapping[str, Iterable[str]], *, explain: bool = False
) -> Resolution:
    """Resolve one host against a mapping table (pattern -> services).

    One pass over the patterns, without ranking or indexing them all: for a single host
    that is cheaper than building a PatternTable. Resolve many hosts with a PatternTable.
    """
    texts = list(mappings)
    name = host.lower()
    size = len(name)
    # Cheap tests first, without splitting: a pattern that starts with a star must end with
    # a suffix of the host, any other must start with a prefix of it.
    prefixes = [name[:length] for length in range(size + 1)]
    suffixes = [name[size - length :] for length in range(size + 1)]
    first = name[:1]
    matched: list[tuple[tuple[int, int, int, str], str]] = []
    for text, lowered in zip(texts, check_patterns(texts), strict=True):
        head = lowered[0]
        if head == "*":
            tail = len(lowered) - 1 - lowered.rfind("*")
            if tail > size or not lowered.endswith(suffixes[tail]):
                continue
        elif head != first:
            continue
        else:
            star = lowered.find("*")
            if star < 0:
                if lowered == name:
                    matched.append((_rank_key(text, (lowered,)), text))
                continue
            if star > size or not lowered.startswith(prefixes[star]):
                continue
        parts = lowered.split("*")
        if _parts_match(name, parts):
            matched.append((_rank_key(text, parts), text))
    if not matched:
        return Resolution(host, None, (), ())
    if not explain:
        _, winner = min(matched)
        services = tuple(mappings[winner])
        return Resolution(host, winner, services, ())
    candidates = tuple(Candidate(text, tuple(mappings[text])) for _, text in sorted(matched))
    return Resolution(host, candidates[0].pattern, candidates[0].services, candidates)
