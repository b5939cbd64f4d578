"""The outbox's files on disk: who wrote them, in which order, and whether their writer is still alive.

One outbox directory holds the files of every gateway process that writes to the same ledger:

    <owner>.lock             held (flock) by the process `owner` for as long as it runs
    <owner>.<seq>.jsonl      its rows, one JSON object a line, in files started every `segment_bytes`

`owner` is `<host>-<pid>-<start in µs, base 36>`: unique per process (a pid may come back, a start time with
it does not) and readable (which worker wrote what). The kernel releases a flock when its process dies, however
it dies (`kill -9` included): a lock file nobody holds means its files are abandoned, and whoever takes the lock
ingests them and deletes them. A process never reads another live process's files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from margin.ledger.db import sqlite_file

SEGMENT = re.compile(r"^(?P<owner>[A-Za-z0-9_.-]+-\d+-[0-9a-z]+)\.(?P<seq>\d{6,})\.jsonl$")
LOCK_SUFFIX = ".lock"


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out


def new_owner() -> str:
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{_base36(time.time_ns() // 1000)}"


def segment_name(owner: str, seq: int) -> str:
    return f"{owner}.{seq:06d}.jsonl"


@dataclass(frozen=True, slots=True)
class SegmentFile:
    name: str
    owner: str
    seq: int


def list_segments(directory: Path) -> list[SegmentFile]:
    """The outbox files in `directory`, by owner then sequence (so each writer's files are read in order)."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            match = SEGMENT.match(entry.name)
            if match:
                found.append(SegmentFile(entry.name, match["owner"], int(match["seq"])))
    return sorted(found, key=lambda s: (s.owner, s.seq))


def default_directory(ledger_url: str) -> Path:
    """`<file>.outbox` beside a SQLite ledger; otherwise a directory of the user's state, one per ledger URL."""
    url = sa.make_url(ledger_url)
    if (database := sqlite_file(url)) is not None:
        return Path(f"{Path(database).expanduser()}.outbox")
    import hashlib

    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    digest = hashlib.sha256(url.render_as_string(hide_password=True).encode()).hexdigest()[:16]
    return Path(state) / "margin" / f"outbox-{digest}"


class OwnerLock:
    """An exclusive flock on `<owner>.lock`: held by the live writer, or by the one process recovering the
    files of a writer that died."""

    def __init__(self, directory: Path, owner: str) -> None:
        self.path = directory / f"{owner}{LOCK_SUFFIX}"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, create: bool) -> bool:
        """Take the lock without waiting; False when its owner (or another recoverer) holds it, or it is gone
        and `create` is false."""
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        for _ in range(100):
            try:
                fd = os.open(self.path, flags, 0o600)
            except FileNotFoundError:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            if self._still_linked(fd):
                self._fd = fd
                return True
            os.close(fd)  # its holder removed it between our open and our flock: that lock is over
            if not create:
                return False
        return False

    def _still_linked(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self, *, remove: bool) -> None:
        if self._fd is None:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None


def abandoned(directory: Path, owner: str) -> OwnerLock | None:
    """The lock of a writer that is gone (now held by the caller), or None while that writer (or another
    process recovering it) holds it. A writer creates its lock before its first file, so files without a
    lock file are abandoned too: the lock is created for them."""
    lock = OwnerLock(directory, owner)
    return lock if lock.acquire(create=True) else None


def sync_directory(directory: Path) -> None:
    """fsync the directory, so a new file's name survives a power cut (fsync policy interval/always)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
