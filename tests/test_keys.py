"""Key files: owner-only creation, refusal of readable secrets, fingerprints, the master-key
pin; and the settings that come with transport security."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
import zmq
import zmq.auth

from daybook.config import load_settings
from daybook.errors import ConfigError
from daybook.model.keys import fingerprint, is_fingerprint, is_public_key
from daybook.net.keys import (
    PINNED_MASTER_KEY,
    KeyPair,
    load_or_create_keypair,
    pin_master_key,
    read_public_key,
)
from daybook.net.transport import known_master_key


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_key_pair_is_created_once_owner_only_and_readable_by_zmq(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    pair, created = load_or_create_keypair(keys, "minion")
    assert created
    assert _mode(keys) == 0o700
    assert _mode(keys / "minion.key_secret") == 0o600
    public, secret = zmq.auth.load_certificate(keys / "minion.key_secret")
    assert (public.decode(), secret and secret.decode()) == (pair.public, pair.secret)
    assert read_public_key(keys / "minion.key") == pair.public
    again, created_again = load_or_create_keypair(keys, "minion")
    assert (again, created_again) == (pair, False)
    assert pair.secret not in repr(pair)


def test_processes_starting_together_agree_on_one_key_pair(tmp_path: Path) -> None:
    found: list[KeyPair] = []
    threads = [
        threading.Thread(target=lambda: found.append(load_or_create_keypair(tmp_path, "m")[0]))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1


def test_a_secret_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create_keypair(tmp_path, "minion")
    os.chmod(tmp_path / "minion.key_secret", 0o644)
    with pytest.raises(ConfigError, match=r"accessible to other users.*chmod 600"):
        load_or_create_keypair(tmp_path, "minion")


def test_a_loose_keys_dir_is_tightened(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    os.chmod(keys, 0o755)  # noqa: S103 - the loose mode under test
    load_or_create_keypair(keys, "master")
    assert _mode(keys) == 0o700


def test_an_edited_public_half_is_caught(tmp_path: Path) -> None:
    pair, _ = load_or_create_keypair(tmp_path, "minion")
    path = tmp_path / "minion.key_secret"
    other = KeyPair.generate()
    path.write_text(path.read_text().replace(pair.public, other.public))
    with pytest.raises(ConfigError, match="does not belong"):
        load_or_create_keypair(tmp_path, "minion")


def test_fingerprints_and_public_keys() -> None:
    pair = KeyPair.generate()
    print_ = fingerprint(pair.public)
    assert is_fingerprint(print_)
    assert print_.startswith("SHA256:")
    assert len(print_) == len("SHA256:") + 43
    assert fingerprint(pair.public) != fingerprint(KeyPair.generate().public)
    assert is_public_key(pair.public)
    for bad in ("", "x" * 39, "x" * 41, "#" * 40, pair.public[:-1] + "~", "web-1"):
        assert not is_public_key(bad)
    assert not is_fingerprint("SHA256:short")


def test_a_pinned_master_key_is_what_the_node_trusts(tmp_path: Path) -> None:
    settings = load_settings(env={"DAYBOOK_DATA_DIR": str(tmp_path)})
    assert known_master_key(settings) is None
    pair = KeyPair.generate()
    path = pin_master_key(tmp_path / "keys", pair.public, "tcp://master:4509")
    assert path.name == PINNED_MASTER_KEY
    assert known_master_key(settings) == (pair.public, str(path))
    configured = KeyPair.generate().public
    settings = load_settings(
        env={"DAYBOOK_DATA_DIR": str(tmp_path), "DAYBOOK_MASTER_KEY": configured}
    )
    assert known_master_key(settings) == (configured, "the master_key setting")


def test_security_settings_from_the_environment(tmp_path: Path) -> None:
    key = KeyPair.generate().public
    settings = load_settings(
        env={
            "DAYBOOK_DATA_DIR": str(tmp_path),
            "DAYBOOK_MASTER_KEY": key,
            "DAYBOOK_INSECURE_TRANSPORT": "1",
            "DAYBOOK_PORT": "5000",
        }
    )
    assert settings.master_key == key
    assert settings.insecure_transport is True
    assert settings.key_port == 5004
    assert load_settings(env={"DAYBOOK_DATA_DIR": str(tmp_path)}).insecure_transport is False
    with pytest.raises(ConfigError, match="master_key: not a CURVE public key"):
        load_settings(env={"DAYBOOK_DATA_DIR": str(tmp_path), "DAYBOOK_MASTER_KEY": "nope"})


def test_a_config_file_others_may_write_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "daybook.toml"
    config.write_text('master = "10.0.0.1"\n')
    os.chmod(config, 0o666)  # noqa: S103 - the loose mode under test
    with pytest.raises(ConfigError, match="writable by every user"):
        load_settings(config_path=str(config), env={"DAYBOOK_DATA_DIR": str(tmp_path)})
    os.chmod(config, 0o644)
    assert load_settings(config_path=str(config), env={}).master == "10.0.0.1"


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("DAYBOOK_REGISTRY", "consul://user:s3cret@consul.example:8500"),
        ("DAYBOOK_STORE", "s3://AKIA:s3cret@bucket/prefix"),
    ],
)
def test_credentials_in_urls_are_refused(tmp_path: Path, name: str, url: str) -> None:
    with pytest.raises(ConfigError, match="carries a password") as caught:
        load_settings(env={"DAYBOOK_DATA_DIR": str(tmp_path), name: url})
    assert "s3cret" not in str(caught.value)


def test_a_consul_token_file_readable_by_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from daybook.registry.consul import _token_from_file

    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    os.chmod(token, 0o600)
    assert _token_from_file(str(token)) == "s3cret-token"
    assert not caplog.records
    os.chmod(token, 0o644)
    assert _token_from_file(str(token)) == "s3cret-token"
    (record,) = caplog.records
    assert "readable by every user" in record.getMessage()
    assert "s3cret" not in record.getMessage()
