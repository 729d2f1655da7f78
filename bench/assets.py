"""Deterministic test assets: a few large files, or many small ones, as gzip tarballs.

The content mixes noise over a skewed alphabet, short back-references and words from a
small vocabulary; gzip level 6 packs the large asset to about 42 % and the small files to
about 33 % (the ratios of the reference assets in the speed issue): compressible, but not
trivially. It is cut from a few 1 MiB blocks; since deflate looks back only 32 KiB,
reusing a block costs the compressor as much as fresh data does, and generation stays quick.
"""

from __future__ import annotations

import gzip
import io
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from daybook.files import open_atomically

# Bump when the generator changes, so stale cached assets are not reused.
GENERATOR_VERSION = 3
BLOCK_BYTES = 1 << 20
MTIME = 1_700_000_000
_LETTERS = b"etaoinshrdlucmfwypvbgkjqxz0123456789 \n_-./"


@dataclass(frozen=True)
class AssetSpec:
    service: str
    version: str
    # Sizes in bytes of the files in the archive, in order.
    file_sizes: tuple[int, ...]
    # Files per directory in the archive.
    files_per_dir: int
    seed: int
    # Shares of block content made of vocabulary words and of back-references; the rest
    # is noise.
    words_share: float = 0.0
    copy_share: float = 0.3

    @property
    def filename(self) -> str:
        return f"{self.service}-{self.version}.tar.gz"

    @property
    def unpacked_bytes(self) -> int:
        return sum(self.file_sizes)


def large_asset() -> AssetSpec:
    """About 200 MB unpacked in four 50 MB files; about 84 MB as gzip."""
    return AssetSpec("large", "1", (50_000_000,) * 4, files_per_dir=4, seed=1)


def small_files_asset(count: int = 20_000) -> AssetSpec:
    """`count` files of 1-8 KB (about 90 MB for 20,000) in directories of 100."""
    rng = random.Random(2)
    sizes = tuple(rng.randrange(1024, 8193) for _ in range(count))
    return AssetSpec(
        "small", "1", sizes, files_per_dir=100, seed=2, words_share=0.7, copy_share=0.2
    )


def ensure_asset(spec: AssetSpec, cache_dir: Path) -> Path:
    """The archive for `spec`, generated into `cache_dir` unless already there."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"v{GENERATOR_VERSION}-{len(spec.file_sizes)}" / spec.filename
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # A cache, not a record: no fsync, and the mode a plain open() would give.
    with open_atomically(path, mode=None, durable=False) as raw:
        write_archive(spec, raw)
    return path


def write_archive(spec: AssetSpec, raw: io.BufferedIOBase) -> None:
    with (
        gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=raw, mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        made_dirs: set[str] = set()
        for index, (name, data) in enumerate(_files(spec)):
            directory = name.rsplit("/", 1)[0]
            if directory not in made_dirs:
                made_dirs.add(directory)
                tar.addfile(_info(directory, tarfile.DIRTYPE, 0o755, 0))
            info = _info(name, tarfile.REGTYPE, 0o644, len(data))
            info.mtime = MTIME + index
            tar.addfile(info, io.BytesIO(data))


def _info(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = MTIME
    info.uname = info.gname = "daybook"
    return info


def _files(spec: AssetSpec) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(spec.seed)
    word_letters = _skew_table(0.8)
    # One vocabulary for all blocks, so words recur across files as they do in real trees.
    vocabulary = [
        rng.randbytes(rng.randrange(3, 11)).translate(word_letters, b" \n") or b"w"
        for _ in range(1000)
    ]
    blocks = [make_block(rng, vocabulary, spec.words_share, spec.copy_share) for _ in range(8)]
    for index, size in enumerate(spec.file_sizes):
        name = f"data/d{index // spec.files_per_dir:04d}/f{index:06d}.bin"
        yield name, _content(rng, blocks, size)


def _content(rng: random.Random, blocks: list[bytes], size: int) -> bytes:
    if size <= BLOCK_BYTES:
        start = rng.randrange(0, BLOCK_BYTES - size + 1)
        return rng.choice(blocks)[start : start + size]
    pieces = [rng.choice(blocks) for _ in range(size // BLOCK_BYTES)]
    pieces.append(rng.choice(blocks)[: size % BLOCK_BYTES])
    return b"".join(pieces)


def make_block(
    rng: random.Random,
    vocabulary: list[bytes],
    words_share: float,
    copy_share: float,
    size: int = BLOCK_BYTES,
) -> bytes:
    """Runs of 1-4 words, back-references of 6-63 bytes within 32 KiB, and noise."""
    noise = rng.randbytes(size).translate(_skew_table(0.9))
    out = bytearray()
    taken = 0
    while len(out) < size:
        draw = rng.random()
        if draw < words_share:
            out += b" ".join(rng.choices(vocabulary, k=rng.randrange(1, 5))) + b" "
        elif len(out) > 4096 and draw < words_share + copy_share:
            length = rng.randrange(6, 64)
            back = rng.randrange(length, min(len(out), 32_000))
            start = len(out) - back
            out += out[start : start + length]
        else:
            length = rng.randrange(4, 40)
            out += noise[taken : taken + length]
            taken += length
    return bytes(out[:size])


def _skew_table(ratio: float) -> bytes:
    """A byte translation table sending uniform bytes to letters with falling frequencies."""
    weights = [ratio**rank for rank in range(len(_LETTERS))]
    total = sum(weights)
    table = bytearray()
    for value in range(256):
        point = (value + 0.5) / 256 * total
        cumulative = 0.0
        for letter, weight in zip(_LETTERS, weights, strict=True):
            cumulative += weight
            if point <= cumulative:
                table.append(letter)
                break
        else:
            table.append(_LETTERS[-1])
    return bytes(table)
