"""Small text helpers shared by the recognizers and the injection detector."""

from __future__ import annotations

from collections.abc import Iterator


def context_before(text: str, start: int, width: int = 30) -> str:
    """The `width` characters before `start`: the window that context rules look at."""
    return text[max(0, start - width) : start]


def long_chunks(text: str, min_len: int) -> Iterator[tuple[int, int]]:
    """(start, end) of whitespace-separated chunks of at least `min_len` characters, found at C speed."""
    chunks = text.split()
    if max(map(len, chunks), default=0) < min_len:
        return
    pos = 0
    for chunk in chunks:
        pos = text.find(chunk, pos)
        if len(chunk) >= min_len:
            yield pos, pos + len(chunk)
        pos += len(chunk)
