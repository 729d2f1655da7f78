"""CURVE keys as the master knows them: a key, whose it is, its role and its standing."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from daybook.model.patterns import is_valid_host
from daybook.model.rules import checked, record

KEY_ROLES = ("minion", "operator")
MINION, OPERATOR = KEY_ROLES
KEY_STATES = ("accepted", "pending", "rejected")
ACCEPTED, PENDING, REJECTED = KEY_STATES
MAX_ADDRESS_LEN = 256

# Z85 (ZeroMQ's base-85) and Python's base-85 use different alphabets for the same digit
# values, so translating one into the other lets the stdlib decode keys.
_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_B85 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~"
_Z85_TO_B85 = str.maketrans(_Z85, _B85)
_Z85_KEY_RE = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
FINGERPRINT_PREFIX = "SHA256:"
_FINGERPRINT_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


def z85_decode(text: str) -> bytes:
    """The raw bytes of Z85 text; ValueError when it is not a canonical encoding."""
    try:
        return base64.b85decode(text.translate(_Z85_TO_B85))
    except (ValueError, binascii.Error):
        raise ValueError("not Z85 text") from None


def is_public_key(text: str) -> bool:
    """A Z85-encoded 32-byte CURVE key (what `master_key` holds and ZAP reports)."""
    if _Z85_KEY_RE.fullmatch(text) is None:
        return False
    try:
        z85_decode(text)
    except ValueError:
        return False  # five characters over 2**32: not a canonical encoding
    return True


def is_fingerprint(text: str) -> bool:
    return _FINGERPRINT_RE.fullmatch(text) is not None


def fingerprint(public_key: str) -> str:
    """`SHA256:` and the unpadded base64 SHA-256 of the raw key, as ssh shows host keys."""
    digest = hashlib.sha256(z85_decode(public_key)).digest()
    return FINGERPRINT_PREFIX + base64.b64encode(digest).decode().rstrip("=")


def is_role(text: str) -> bool:
    return text in KEY_ROLES


def is_key_state(text: str) -> bool:
    return text in KEY_STATES


@record
class Key:
    """One key the master knows: whose it is (as claimed or bound), its standing, and where
    it was last seen from. `host` is None until the key names one; `fingerprint` is derived
    from the key (left empty, it is filled in; given, it must match)."""

    public_key: str = checked(is_public_key, max_len=40)
    role: str = checked(is_role, max_len=16, problem="is not a known role")
    state: str = checked(is_key_state, max_len=16, problem="is not a known key state")
    host: str | None = checked(is_valid_host)
    address: str | None = checked(max_len=MAX_ADDRESS_LEN)
    first_seen: float
    last_seen: float
    fingerprint: str = checked(is_fingerprint, max_len=64, default="")

    def __post_init__(self) -> None:
        derived = fingerprint(self.public_key) if is_public_key(self.public_key) else ""
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", derived)
        elif self.fingerprint != derived:
            raise ValueError(f"the fingerprint {self.fingerprint} is not the key's own")

    def describe(self) -> str:
        who = self.host or "an unnamed host"
        return f"{self.role} key {self.fingerprint} of {who}"


@record
class KeyListing:
    """Every key the master knows, by standing."""

    accepted: tuple[Key, ...] = ()
    pending: tuple[Key, ...] = ()
    rejected: tuple[Key, ...] = ()

    def __post_init__(self) -> None:
        for state in KEY_STATES:
            if any(key.state != state for key in getattr(self, state)):
                raise ValueError(f"a key in another state is listed as {state}")
