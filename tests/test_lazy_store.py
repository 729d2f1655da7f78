"""LazyStore: an S3 store checked at once but opened (botocore imported) only on first use."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from daybook.errors import ConfigError
from daybook.model.names import AssetRef
from daybook.store.base import LazyStore, open_store


def test_a_lazy_store_url_is_checked_at_once() -> None:
    with pytest.raises(ConfigError, match="names no bucket"):
        open_store("s3://", lazy=True)
    with pytest.raises(ConfigError, match="unsupported store URL"):
        open_store("ftp://x", lazy=True)


def test_a_lazy_store_does_not_import_botocore_until_used() -> None:
    code = (
        "import sys\n"
        "from daybook.store.base import open_store\n"
        "store = open_store('s3://bucket/prefix', lazy=True)\n"
        "assert store.url == 's3://bucket/prefix' and not store.opened\n"
        "store.close()\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lazy_is_only_for_s3(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}", lazy=True)
    assert not isinstance(store, LazyStore)
    store.close()


def test_a_lazy_store_opens_on_first_use_and_works(
    s3_env: str, s3_bucket: str, tmp_path: Path
) -> None:
    store = open_store(f"s3://{s3_bucket}/assets", lazy=True)
    assert isinstance(store, LazyStore)
    try:
        ref = AssetRef("web", "1")
        assert not store.opened
        assert store.list_assets() == []
        assert store.opened
        source = tmp_path / ref.filename
        source.write_bytes(b"not really a tarball")
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        info = store.upload(source, ref, sha256=digest)
        assert info.ref == ref
        stat = store.stat(ref)
        assert stat is not None
        assert stat.sha256 == digest
        stream = store.open(ref)
        try:
            assert stream.read() == b"not really a tarball"
        finally:
            stream.close()
    finally:
        store.close()
