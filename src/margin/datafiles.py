"""The evaluation data that ships in the repository's `data/` folder (never inside the package), and one way
to open its files whether they are stored plain or gzip'd. Provenance and licences: `data/README.md`."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import IO

from margin.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]  # src/margin/datafiles.py -> the checkout


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


def read_bytes(path: Path) -> bytes:
    path = find(path)
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
