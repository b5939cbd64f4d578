"""Parsing JSON that someone else wrote (request bodies, upstream answers, batch lines) without paying for
the cyclic garbage collector while it is parsed.

orjson builds a list or a dict per JSON container while holding the GIL. A body of a million small arrays
(`[[], [], …]`, 4 MiB) allocates a million tracked objects, and each 700 allocations start a collection that
walks the young ones, and every so often all of them: 230-400 ms of the event loop for one body, two thirds
of it in the collector (the parse alone is ~80 ms). A parse creates no cycles, so nothing is lost by
collecting only after it: the collector is switched off for the one C call (no other Python code runs
meanwhile: orjson holds the GIL) and back on at once. What it puts off is done at the next collection, and
usually not at all: a refused body is freed before that.

Nesting is bounded too, at `MAX_DEPTH` levels: orjson parses up to 1,024 but writes only 254, so a deeper
document parsed here would fail later, where margin writes it again (a 500 for a request body, a broken
ledger row or cache entry for an answer). A document nested deeper raises `TooDeep`, a `JSONDecodeError`, so
a caller that already refuses invalid JSON refuses it too. The check costs nothing for most documents: only
one with more than `MAX_DEPTH` opening brackets (`bytes.count`, C speed) can be that deep, and only such a one
is checked, by writing it again inside enough lists to pass orjson's write limit only if it nests too deep
(`nests_deeper`: C speed, no Python recursion)."""

from __future__ import annotations

import gc
import json
from decimal import Decimal
from typing import Any

import orjson

UNTRACKED_FROM_BYTES = 64 * 1024  # smaller documents hold too few containers for a collection to matter
# serde_json's default recursion limit; half of what orjson writes, so a document that fits can be wrapped
# (a batch line's body, a translated answer) and still be written. Real documents stay far below it: OpenAI's
# structured outputs allow 5 levels of schema nesting (10 on newer models), about 25 levels of JSON in a body.
MAX_DEPTH = 128
MIN_DEEP_BYTES = 2 * MAX_DEPTH + 2  # the fewest bytes of a document nested past MAX_DEPTH: its brackets alone
WRITE_LIMIT = 254  # the most levels orjson writes ("Recursion limit reached" past it)


class TooDeep(orjson.JSONDecodeError):
    """A document nested deeper than `MAX_DEPTH` levels (it is valid JSON, but margin refuses it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"it nests deeper than {limit} levels of arrays and objects", "", 0)
        self.limit = limit

    def __str__(self) -> str:
        return str(self.msg)


def loads(data: bytes | bytearray | memoryview | str, max_depth: int | None = MAX_DEPTH) -> Any:
    """orjson.loads (and its JSONDecodeError), without the cyclic GC during a large parse; `TooDeep` (a
    JSONDecodeError) for a document nested deeper than `max_depth` (None: only orjson's own 1,024)."""
    if len(data) < UNTRACKED_FROM_BYTES or not gc.isenabled():
        value = orjson.loads(data)
    else:
        gc.disable()
        try:
            value = orjson.loads(data)
        finally:
            gc.enable()
    if max_depth is not None and too_deep(data, value, max_depth):
        raise TooDeep(max_depth)
    return value


def exact(data: bytes | str) -> Any:
    """`data`, a document `loads` already accepted (valid, bounded), read again with each number that has a
    fraction or an exponent as a `Decimal` of its digits, not a binary float (`0.1` is no double): the admin
    API's bodies, whose amounts of money must be what the caller wrote. Integers stay `int`. `TooDeep` where
    the text nests deeper than Python's recursion limit: a part `loads` kept no trace of (a key given twice,
    the first value nested 1,000 deep) is still parsed here, recursively."""
    try:
        return json.loads(data, parse_float=Decimal)
    except RecursionError:
        raise TooDeep(MAX_DEPTH) from None


def may_nest(data: bytes | bytearray | memoryview | str, depth: int = MAX_DEPTH) -> bool:
    """Whether `data` holds more opening brackets than `depth` (a necessary condition for nesting deeper than
    that, counted at C speed)."""
    if isinstance(data, str):
        return data.count("[") + data.count("{") > depth
    raw = data.tobytes() if isinstance(data, memoryview) else data
    return raw.count(b"[") + raw.count(b"{") > depth


def too_deep(data: bytes | bytearray | memoryview | str, value: Any, depth: int = MAX_DEPTH) -> bool:
    """Whether `value`, parsed from `data` (or from a part of it), nests more than `depth` levels: walked only
    when `data` `may_nest` that deep."""
    return len(data) >= 2 * depth + 2 and may_nest(data, depth) and nests_deeper(value, depth)


def nests_deeper(value: Any, depth: int) -> bool:
    """Whether `value` (parsed JSON) nests more than `depth` arrays and objects. orjson writes at most
    `WRITE_LIMIT` levels: `value` inside `WRITE_LIMIT - depth` lists is written only if it nests at most `depth`.
    One write at C speed: walking the value in Python cost 15-50× as much (a 300 KB Messages body of 3,000
    containers: 0.09 ms written, 1.3 ms walked, 0.45 ms to parse; a million empty arrays: 7.5 ms written, 352 ms
    walked)."""
    wrapped = value
    for _ in range(WRITE_LIMIT - min(depth, WRITE_LIMIT)):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError as exc:
        if "Recursion" in str(exc):
            return True
        return _walk_deeper(value, depth)  # not a value orjson parsed (an int past 64 bits): walked instead
    return False


def _walk_deeper(value: Any, depth: int) -> bool:
    level = [value] if isinstance(value, (dict, list)) else []
    for _ in range(depth):
        inner: list[Any] = []
        for node in level:
            inner.extend(c for c in (node.values() if isinstance(node, dict) else node) if isinstance(c, (dict, list)))
        if not inner:
            return False
        level = inner
    return bool(level)
