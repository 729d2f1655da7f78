"""CURVE key pairs on disk: owner-only certificate files, fingerprints, and the master key a
minion or operator pins on first contact.

Keys are ZeroMQ certificate files (the format `zmq.auth.load_certificate` reads) in
`<data dir>/keys/`, a directory only the owner may enter. A secret file that others can read
is refused, as ssh refuses a readable private key: whoever holds it can pose as this node.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.utils.z85

from daybook.errors import ConfigError
from daybook.files import write_atomically

KEYS_DIR = "keys"
# Key pair names in the keys dir; one node may be master, minion and operator at once.
MASTER_KEY = "master"
MINION_KEY = "minion"
OPERATOR_KEY = "operator"
# The master's public key as a minion or operator first saw it (trust on first use).
PINNED_MASTER_KEY = "pinned-master.key"
KEYRING_FILE = "keyring.json"

_Z85_KEY_RE = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
FINGERPRINT_PREFIX = "SHA256:"
_FINGERPRINT_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


def is_public_key(text: str) -> bool:
    """A Z85-encoded 32-byte CURVE key (what `master_key` holds and ZAP reports)."""
    if _Z85_KEY_RE.fullmatch(text) is None:
        return False
    try:
        raw = zmq.utils.z85.decode(text.encode())
    except (ValueError, struct.error):
        return False  # five characters over 2**32: not a canonical encoding
    return zmq.utils.z85.encode(raw).decode() == text


def is_fingerprint(text: str) -> bool:
    return _FINGERPRINT_RE.fullmatch(text) is not None


def fingerprint(public_key: str) -> str:
    """`SHA256:` and the unpadded base64 SHA-256 of the raw key, as ssh shows host keys."""
    raw = zmq.utils.z85.decode(public_key.encode())
    digest = base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    return FINGERPRINT_PREFIX + digest


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, both halves Z85 text."""

    public: str
    secret: str = field(repr=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    @classmethod
    def generate(cls) -> KeyPair:
        public, secret = zmq.curve_keypair()
        return cls(public.decode(), secret.decode())


def keys_dir(data_dir: Path) -> Path:
    return data_dir / KEYS_DIR


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and make it owner-only (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise ConfigError(f"{path} belongs to another user (uid {info.st_uid}); refusing to use it")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def check_private_file(path: Path) -> None:
    """Refuse a secret file that another user could read or replace."""
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise ConfigError(f"{path} belongs to another user (uid {info.st_uid}); refusing to use it")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(
            f"{path} is accessible to other users (mode {stat.S_IMODE(info.st_mode):o}); "
            f"it holds a secret key: run `chmod 600 {path}`"
        )


def load_or_create_keypair(directory: Path, name: str) -> tuple[KeyPair, bool]:
    """The key pair `<name>.key_secret` in `directory`, created on first use.

    Returns the pair and whether it was just created. Two processes starting together agree
    on one pair: the secret file is published with a hard link, which fails if it exists.
    """
    private_dir(directory)
    secret_path = directory / f"{name}.key_secret"
    created = False
    if not secret_path.exists():
        pair = KeyPair.generate()
        try:
            write_atomically(
                secret_path,
                _certificate(pair.public, pair.secret),
                mode=0o600,
                durable=False,
                overwrite=False,
                prefix=".secret.",
            )
            created = True
        except FileExistsError:
            pass  # another process made one first; use that
    pair = _read_keypair(secret_path)
    public_path = directory / f"{name}.key"
    if created or not public_path.exists():
        _write_public(public_path, _certificate(pair.public, None))
    return pair, created


def load_keypair_file(path: Path, setting: str) -> KeyPair:
    """The key pair in a secret certificate file named by `setting` (such as the
    `master_key_file` every master of a fleet shares). Refused, in one line, when it is
    missing, unreadable, or readable by others."""
    try:
        check_private_file(path)
        path.open("rb").close()
    except FileNotFoundError:
        raise ConfigError(f"{setting} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{setting} {path} is not readable: {exc.strerror}") from None
    except ConfigError as exc:
        raise ConfigError(f"{setting}: {exc}") from None
    try:
        return _read_keypair(path)
    except ConfigError as exc:
        raise ConfigError(f"{setting}: {exc}") from None


def _read_keypair(path: Path) -> KeyPair:
    import zmq.auth  # not at module level: an operator on the local socket reads no keys

    check_private_file(path)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the key pair in {path}: {exc}") from None
    if secret is None or not is_public_key(secret.decode(errors="replace")):
        raise ConfigError(f"{path} holds no valid secret key")
    # The public half is derived again, so an edited public line cannot mislead anyone.
    derived = zmq.curve_public(secret).decode()
    if public.decode(errors="replace") != derived:
        raise ConfigError(f"{path}: the public key does not belong to the secret key")
    return KeyPair(derived, secret.decode())


def read_public_key(path: Path) -> str | None:
    """The public key in a certificate file, or None if there is none."""
    import zmq.auth

    try:
        public, _ = zmq.auth.load_certificate(path)
    except OSError:
        return None
    except ValueError as exc:
        raise ConfigError(f"{path} holds no public key: {exc}") from None
    text = public.decode(errors="replace")
    if not is_public_key(text):
        raise ConfigError(f"{path} holds an invalid public key")
    return text


def pin_master_key(directory: Path, public_key: str, endpoint: str) -> Path:
    """Record the master's key on first contact; later contacts must present the same."""
    private_dir(directory)
    path = directory / PINNED_MASTER_KEY
    metadata = {"endpoint": endpoint, "pinned-at": str(int(time.time()))}
    _write_public(path, _certificate(public_key, None, metadata))
    return path


def _certificate(public: str, secret: str | None, metadata: dict[str, str] | None = None) -> bytes:
    """A certificate file's text: the secret half only in a secret certificate."""
    banner = (
        "#   ZeroMQ CURVE **Secret** Certificate (daybook)\n"
        "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n"
        if secret is not None
        else "#   ZeroMQ CURVE Public Certificate (daybook)\n\n"
    )
    lines = [banner, "metadata\n"]
    lines += [f'    {key} = "{value}"\n' for key, value in (metadata or {}).items()]
    lines += ["curve\n", f'    public-key = "{public}"\n']
    if secret is not None:
        lines.append(f'    secret-key = "{secret}"\n')
    return "".join(lines).encode()


def _write_public(path: Path, certificate: bytes) -> None:
    write_atomically(path, certificate, mode=0o644, durable=False, prefix=".public.")
