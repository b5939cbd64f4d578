"""The evaluation data that ships in the repository's `data/` folder (never inside the package), and one way
to open its files whether they are stored plain or gzip'd. Provenance and licences: `data/README.md`."""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from margin.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]  # src/margin/datafiles.py -> the checkout
MAX_DATA_BYTES = 256 * 1024 * 1024  # a data file a command reads, decompressed (the largest bundled one: 9.5 MB)


def repo_data(*parts: str) -> Path:
    """`data/<parts>` of the checkout margin runs from; a clear error when margin was installed without it."""
    path = REPO_ROOT.joinpath("data", *parts)
    if not path.exists():
        raise ConfigError(
            f"bundled data {'/'.join(parts)} not found at {path}: it ships in the repository's data/ folder, "
            "not in the installed package; run from a checkout or pass the path explicitly"
        )
    return path


def find(path: Path) -> Path:
    """`path` itself, or its `.gz` sibling when only the compressed file exists."""
    if path.exists() or path.suffix == ".gz":
        return path
    packed = path.with_name(path.name + ".gz")
    return packed if packed.exists() else path


def open_text(path: Path) -> IO[str]:
    """Open a data file as UTF-8 text; `.gz` files are decompressed on the fly."""
    path = find(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _open_binary(path: Path) -> io.BufferedIOBase:
    path = find(path)
    return gzip.GzipFile(path, "rb") if path.suffix == ".gz" else path.open("rb")


@contextlib.contextmanager
def _readable(path: Path) -> Iterator[None]:
    """A file that cannot be read or decompressed (a directory, not gzip, truncated, corrupt) as a ConfigError
    naming it (gzip's errors were a traceback)."""
    try:
        yield
    except (OSError, EOFError, zlib.error) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"cannot read {path}: {why}") from exc


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The whole file, decompressed, of at most `limit` bytes (MAX_DATA_BYTES): a larger one (or a gzip bomb) is
    refused after `limit` + 1 bytes, never read or decompressed whole."""
    limit = MAX_DATA_BYTES if limit is None else limit
    with _readable(path), _open_binary(path) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"{path} holds more than {limit:,} bytes (decompressed)")
    return data


def read_lines(path: Path, count: int | None = None, limit: int | None = None) -> Iterator[bytes]:
    """The file's first `count` lines (all: None), decompressed, read as they are asked for: a caller that
    stops early reads no further. More than `limit` bytes (MAX_DATA_BYTES) in all, one endless line included,
    is refused."""
    limit = MAX_DATA_BYTES if limit is None else limit
    left = limit
    with _readable(path), _open_binary(path) as handle:
        for _ in itertools.repeat(None) if count is None else range(count):
            line = handle.readline(left + 1)
            if not line:
                return
            left -= len(line)
            if left < 0:
                where = "" if count is None else f" before its line {count}"
                raise ConfigError(f"{path} holds more than {limit:,} bytes (decompressed){where}")
            yield line
