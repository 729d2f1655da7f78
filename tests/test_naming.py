"""Asset names: what is an asset, what is refused, and how versions sort."""

from __future__ import annotations

import pytest

from daybook.errors import InputError
from daybook.model.names import (
    AssetRef,
    check_asset_filename,
    check_service,
    check_version,
    parse_asset_filename,
    version_sort_key,
)


@pytest.mark.parametrize(
    ("filename", "service", "version"),
    [
        ("service_1-1.2.3.tar.gz", "service_1", "1.2.3"),
        ("svc-1.tar.gz", "svc", "1"),
        ("Svc_X-2024_01_02.tar.gz", "Svc_X", "2024_01_02"),
        ("svc-1.0.0-rc1.tar.gz", None, None),  # a dash in the version is not allowed
        ("a-v1..2.tar.gz", "a", "v1..2"),  # dots inside are fine; only a leading dot is not
    ],
)
def test_parse_asset_filename(filename: str, service: str | None, version: str | None) -> None:
    ref = parse_asset_filename(filename)
    if service is None:
        assert ref is None
    else:
        assert ref == AssetRef(service, version or "")


@pytest.mark.parametrize(
    "filename",
    [
        "svc.tar.gz",
        "svc-.tar.gz",
        "-1.tar.gz",
        "svc-..tar.gz",
        "svc-.hidden.tar.gz",
        "svc-1.tgz",
        "svc-1.tar.gz.sha256",
        "sv c-1.tar.gz",
        "svc/x-1.tar.gz",
        "svc-1/../x.tar.gz",
        "svc.name-1.tar.gz",
        "",
        "s" * 129 + "-1.tar.gz",
    ],
)
def test_non_assets_are_not_parsed(filename: str) -> None:
    assert parse_asset_filename(filename) is None
    with pytest.raises(InputError, match="not an asset name"):
        check_asset_filename(filename)


@pytest.mark.parametrize("version", ["..", ".", ".1", "1/2", "1-2", "", "a b", "é"])
def test_bad_versions_are_refused(version: str) -> None:
    with pytest.raises(InputError, match="invalid version"):
        check_version(version)
    with pytest.raises(InputError):
        AssetRef("svc", version)


@pytest.mark.parametrize("name", ["", "a-b", "a.b", "../x", "a/b", "x" * 129])
def test_bad_service_names_are_refused(name: str) -> None:
    with pytest.raises(InputError, match="invalid service name"):
        check_service(name)


def test_versions_sort_naturally() -> None:
    versions = ["1.10", "1.9", "1.9.1", "2", "1.0", "1.0rc1", "10"]
    ordered = sorted(versions, key=lambda v: (version_sort_key(v), v))
    assert ordered == ["1.0", "1.0rc1", "1.9", "1.9.1", "1.10", "2", "10"]


def test_asset_ref_filename_round_trips() -> None:
    ref = AssetRef("svc_1", "1.2.3")
    assert ref.filename == "svc_1-1.2.3.tar.gz"
    assert parse_asset_filename(ref.filename) == ref
