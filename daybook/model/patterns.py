"""Host patterns with `*` wildcards, and the specificity rule that picks one winner per host."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from daybook.errors import InputError

# A host name is DNS labels of letters, digits and hyphens joined by dots (RFC 1123); a
# pattern may also hold `*`. Anything else (`?`, `[`, `/`, spaces, `%`) is refused, so a
# pattern is always a safe Consul key segment and never a path.
_HOST_RE = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*\.?")
_PATTERN_CHARS_RE = re.compile(r"[a-z0-9.*-]+")
MAX_HOST_LEN = 253
# The bytes a lower-cased pattern may hold.
_PATTERN_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789.*-"


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
    """`check_pattern` over many patterns at once: their lower-case forms, in order."""
    if not patterns:
        return []
    return _framed_lower(patterns)[1].decode("ascii").split("\n")[1:-1]


def _framed_lower(patterns: Collection[str]) -> tuple[str, bytes]:
    """The patterns as lines framed by newlines, as given and lower-cased, once all are checked.

    Each pattern has a newline before and after it. Raises InputError naming the first bad
    pattern. Tables of 100,000 patterns are checked in a few C-level passes over the joined
    text rather than two regex calls each; any doubt falls back to one-by-one checks. The
    two line up character for byte, so a span of the lower-cased bytes is the same pattern,
    as given, in the string.
    """
    framed = "\n".join(["", *patterns, ""])
    if framed.isascii():
        lowered = framed.encode("ascii").lower()
        if _all_valid_lowered(lowered, patterns):
            return framed, lowered
    # A valid pattern lower-cases one character to one ASCII byte, even from outside ASCII
    # (tests/test_pattern_table.py checks every code point), so these still line up.
    checked = [check_pattern(pattern) for pattern in patterns]
    return framed, "\n".join(["", *checked, ""]).encode("ascii")


def _all_valid_lowered(lowered: bytes, patterns: Collection[str]) -> bool:
    # The same rules as is_valid_pattern: allowed characters only, no empty pattern, and
    # no empty label (a leading dot or two dots in a row); a single trailing dot is fine.
    # Deleting every allowed character must leave exactly the newlines that frame the
    # patterns: no other character, and no pattern holding a newline of its own.
    if lowered.translate(None, _PATTERN_BYTES) != b"\n" * (len(patterns) + 1):
        return False
    if len(max(patterns, key=len, default="")) > MAX_HOST_LEN:
        return False
    # With each newline read as a dot, one search finds an empty pattern (`\n\n`) and an
    # empty label (`..` or `\n.`). A legal trailing dot (`a.\n`) looks the same, so only
    # then are the exact searches needed.
    if b".." not in lowered.replace(b"\n", b"."):
        return True
    return b"\n\n" not in lowered and b"\n." not in lowered and b".." not in lowered


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

    One regex scan over the joined patterns, without ranking or indexing them all: for a
    single host that is cheaper than building a PatternTable. Resolve many hosts with a
    PatternTable.
    """
    if not mappings:
        return Resolution(host, None, (), ())
    framed, lowered = _framed_lower(mappings)
    name = host.lower()
    matched: list[tuple[tuple[int, int, int, str], str]] = []
    for found in _candidate_regex(name).finditer(lowered):
        # A match runs from the newline before a pattern to the pattern's end.
        start, end = found.start() + 1, found.end()
        parts = lowered[start:end].decode("ascii").split("*")
        if _parts_match(name, parts):
            text = framed[start:end]
            matched.append((_rank_key(text, parts), text))
    if not matched:
        return Resolution(host, None, (), ())
    if not explain:
        _, winner = min(matched)
        return Resolution(host, winner, tuple(mappings[winner]), ())
    candidates = tuple(Candidate(text, tuple(mappings[text])) for _, text in sorted(matched))
    return Resolution(host, candidates[0].pattern, candidates[0].services, candidates)


# What a pattern holds outside its stars. Only runs of the host made of these can be the
# text of a pattern before its first star, after its last one or between two.
_LITERAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")


def _candidate_regex(name: str) -> re.Pattern[bytes]:
    """A regex finding each line of framed lower-case patterns that `name` may match.

    It keeps a line that equals `name`, or whose text before the first star is a prefix of
    `name`, whose text after the last star is a suffix of it, and whose pieces between stars
    hold only characters of `name`. That is every line `name` matches and a few more (the
    prefix and suffix may overlap; the pieces may be out of order), which `_parts_match`
    then rules out. The scan runs in C and looks past most lines at their first character.
    """
    head = next((i for i, char in enumerate(name) if char not in _LITERAL_CHARS), len(name))
    tail = next(
        (i for i, char in enumerate(reversed(name)) if char not in _LITERAL_CHARS), len(name)
    )
    # A pattern is at most MAX_HOST_LEN characters, which also bounds the regex.
    prefix = name[: min(head, MAX_HOST_LEN)]
    suffix = name[len(name) - min(tail, MAX_HOST_LEN) :]
    # Text between stars, and after the last one, may only hold characters of the host.
    piece_chars = "".join(sorted({re.escape(char) for char in name if char in _LITERAL_CHARS}))
    first_star = r"\*"
    if prefix:
        # A line that starts with neither `*` nor the host's first character is dropped at
        # that first character, which is most lines. Then the engine walks along the line
        # while it agrees with the host, back to the first star.
        rest = [prefix[1:end] for end in range(len(prefix), 0, -1)]
        exact = rf"{re.escape(name[1:])}(?=\n)|" if head == len(name) else ""
        first_star = rf"(?:\*|{re.escape(prefix[0])}(?:{exact}{_any_of(rest)}\*))"
    suffixes = _any_of([suffix[start:] for start in range(len(suffix) + 1)])
    # After the first star: one quick look at the characters up to the line's end, then on
    # to the last star and the suffixes. An exact line gets here at its end, where only the
    # empty suffix fits.
    regex = rf"\n{first_star}(?=[{piece_chars}*]*+\n)(?:[^*\n]*+\*)*+{suffixes}(?=\n)"
    # Only pattern characters of the host made it in, so it is ASCII.
    return re.compile(regex.encode("ascii"))


_Trie = dict[str, "_Trie"]


def _any_of(texts: Sequence[str]) -> str:
    """A regex matching exactly the `texts`, written as a trie.

    Texts that share a start share one branch, so matching looks at each character of the
    subject once. As a plain alternation, a host like `aaaa...` would have the engine
    compare a long run of `a` once per text.
    """
    trie: _Trie = {}
    for text in texts:
        node = trie
        for char in text:
            node = node.setdefault(char, {})
        # The empty key marks the end of a text.
        node[""] = {}
    return _trie_regex(trie)


def _trie_regex(node: _Trie) -> str:
    branches = []
    for first, child in node.items():
        if not first:
            branches.append("")
            continue
        # A chain of single children is one literal run.
        run, below = first, child
        while len(below) == 1 and "" not in below:
            ((char, below),) = below.items()
            run += char
        branches.append(re.escape(run) + _trie_regex(below))
    if not branches:
        return "(?!)"
    return branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
