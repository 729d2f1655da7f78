"""The local asset store: a directory of `NAME-VERSION.tar.gz` files, the embedded default."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import BinaryIO

from daybook.errors import AssetExistsError, AssetNotFoundError, InputError, StoreError
from daybook.files import fsync_directory, open_atomically, write_atomically
from daybook.model.names import AssetRef, check_service, parse_asset_filename, version_sort_key
from daybook.store.base import AssetInfo, ProgressCallback

log = logging.getLogger(__name__)

# Each asset's SHA-256 lives in `NAME-VERSION.tar.gz` + this suffix, as JSON.
SIDECAR_SUFFIX = ".meta.json"
# Uploads in progress; never listed, never warned about.
TEMP_PREFIX = ".daybook-tmp-"
COPY_CHUNK_BYTES = 1024 * 1024
# Minions running as another user may read a shared store.
ASSET_MODE = 0o644


class LocalStore:
    """Assets as files in one directory, created on the first upload.

    Beside each asset sits a sidecar recording its SHA-256 and the inode it was computed for,
    so a reader racing an overwrite sees no checksum rather than the wrong one.
    """

    def __init__(self, root: Path) -> None:
        self._root = root.absolute()

    @property
    def url(self) -> str:
        return self._root.as_uri()

    @property
    def root(self) -> Path:
        return self._root

    def list_assets(self, service: str | None = None) -> list[AssetInfo]:
        if service is not None:
            check_service(service)
        assets: list[AssetInfo] = []
        try:
            entries = list(os.scandir(self._root))
        except FileNotFoundError:
            return []  # nothing pushed yet
        except OSError as exc:
            raise StoreError(f"cannot list {self._root}: {exc.strerror}") from exc
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX) or _is_sidecar(entry.name):
                continue
            path = self._root / entry.name
            ref = parse_asset_filename(entry.name)
            if ref is None:
                log.warning("skipping %s: not an asset name (NAME-VERSION.tar.gz)", path)
                continue
            try:
                if not entry.is_file():
                    log.warning("skipping %s: not a regular file", path)
                    continue
                if service is not None and ref.service != service:
                    continue
                stat = entry.stat()
            except FileNotFoundError:
                continue  # removed since the scan
            except OSError as exc:
                raise StoreError(f"cannot stat {path}: {exc.strerror}") from exc
            assets.append(AssetInfo(ref, stat.st_size, stat.st_mtime))
        assets.sort(key=lambda info: (info.service, version_sort_key(info.version), info.version))
        return assets

    def stat(self, ref: AssetRef) -> AssetInfo | None:
        path = self._path(ref)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot stat {path}: {exc.strerror}") from exc
        return AssetInfo(ref, stat.st_size, stat.st_mtime, self._read_sha256(path, stat))

    def upload(
        self,
        source: Path,
        ref: AssetRef,
        *,
        sha256: str,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> AssetInfo:
        target = self._path(ref)
        # A quick answer before copying; link() below is what settles a race.
        if not overwrite and self.stat(ref) is not None:
            raise AssetExistsError(f"{ref} already exists in {self.url}")
        try:
            source_file = source.open("rb")
        except OSError as exc:
            raise InputError(f"cannot read {source}: {exc.strerror}") from exc
        with source_file:
            try:
                self._root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot write {ref} to {self._root}: {exc.strerror}") from exc
            try:
                self._store(source_file, ref, sha256, overwrite=overwrite, progress=progress)
            except FileExistsError:
                # link() fails if the target exists, so of two concurrent pushes one wins.
                raise AssetExistsError(f"{ref} already exists in {self.url}") from None
            except OSError as exc:
                raise StoreError(f"cannot store {ref} in {self._root}: {exc.strerror}") from exc
        info = self.stat(ref)
        if info is None:
            raise StoreError(f"{target} vanished right after its upload")
        return info

    def open(self, ref: AssetRef) -> LocalAssetStream:
        path = self._path(ref)
        try:
            file = path.open("rb")
        except FileNotFoundError:
            raise AssetNotFoundError(f"{ref} is not in {self.url}") from None
        except OSError as exc:
            raise StoreError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            stat = os.fstat(file.fileno())
            sha256 = self._read_sha256(path, stat)
        except BaseException:
            file.close()
            raise
        return LocalAssetStream(file, size=stat.st_size, sha256=sha256, path=path)

    def delete(self, ref: AssetRef) -> None:
        path = self._path(ref)
        # The asset first: a sidecar left behind by a crash in between names an inode
        # nothing has, so it is never taken for a later upload's checksum.
        for victim in (path, _sidecar_path(path)):
            try:
                victim.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StoreError(f"cannot delete {victim}: {exc.strerror}") from exc
        try:
            fsync_directory(self._root)
        except FileNotFoundError:
            pass  # nothing was ever pushed: nothing to delete
        except OSError as exc:
            raise StoreError(f"cannot delete {ref} from {self._root}: {exc.strerror}") from exc

    def close(self) -> None:
        pass  # holds no open resources between calls

    def _path(self, ref: AssetRef) -> Path:
        return self._root / ref.filename

    def _store(
        self,
        source: BinaryIO,
        ref: AssetRef,
        sha256: str,
        *,
        overwrite: bool,
        progress: ProgressCallback | None,
    ) -> None:
        """Copy `source` into the store as `ref`, with its sidecar, durably."""
        target = self._path(ref)
        try:
            with open_atomically(
                target, mode=ASSET_MODE, overwrite=overwrite, prefix=TEMP_PREFIX
            ) as temp:
                try:
                    while chunk := source.read(COPY_CHUNK_BYTES):
                        temp.write(chunk)
                        if progress is not None:
                            progress(len(chunk))
                except OSError as exc:
                    raise StoreError(f"cannot write {ref} to {self._root}: {exc.strerror}") from exc
                inode = os.fstat(temp.fileno()).st_ino
                if overwrite:
                    # Sidecar first: until the rename it names an inode that is not yet the
                    # asset, so readers in between get no checksum, never a stale one.
                    self._write_sidecar(target, sha256, inode)
        except OSError:
            if overwrite:  # the rename failed: the sidecar would name no asset
                _sidecar_path(target).unlink(missing_ok=True)
            raise
        if not overwrite:
            self._write_sidecar(target, sha256, inode)
        fsync_directory(self._root)

    def _write_sidecar(self, asset: Path, sha256: str, inode: int) -> None:
        payload = json.dumps({"sha256": sha256, "inode": inode}).encode()
        # Not fsync_dir: the upload fsyncs the directory once, after the asset's rename.
        write_atomically(_sidecar_path(asset), payload, mode=ASSET_MODE, prefix=TEMP_PREFIX)

    def _read_sha256(self, asset: Path, stat: os.stat_result) -> str | None:
        sidecar = _sidecar_path(asset)
        try:
            record = json.loads(sidecar.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable checksum file %s: %s", sidecar, exc)
            return None
        if not isinstance(record, dict):
            log.warning("ignoring malformed checksum file %s", sidecar)
            return None
        sha256 = record.get("sha256")
        if record.get("inode") != stat.st_ino or not isinstance(sha256, str):
            return None
        return sha256


class LocalAssetStream:
    """An open asset file; read errors surface as StoreError."""

    def __init__(self, file: BinaryIO, *, size: int, sha256: str | None, path: Path) -> None:
        self._file = file
        self.size = size
        self.sha256 = sha256
        self._path = path

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._file.read(size)
        except OSError as exc:
            raise StoreError(f"reading {self._path} failed: {exc.strerror}") from exc

    def close(self) -> None:
        self._file.close()


def _sidecar_path(asset: Path) -> Path:
    return asset.with_name(asset.name + SIDECAR_SUFFIX)


def _is_sidecar(name: str) -> bool:
    asset_name = name.removesuffix(SIDECAR_SUFFIX)
    return asset_name != name and parse_asset_filename(asset_name) is not None
