"""Parsing JSON that someone else wrote (request bodies, upstream answers, batch lines) without paying for
the cyclic garbage collector while it is parsed.

orjson builds a list or a dict per JSON container while holding the GIL. A body of a million small arrays
(`[[], [], …]`, 4 MiB) allocates a million tracked objects, and each 700 allocations start a collection that
walks the young ones, and every so often all of them: 230-400 ms of the event loop for one body, two thirds
of it in the collector (the parse alone is ~80 ms). A parse creates no cycles, so nothing is lost by
collecting only after it: the collector is switched off for the one C call (no other Python code runs
meanwhile: orjson holds the GIL) and back on at once. What it puts off is done at the next collection, and
usually not at all: a refused body is freed before that."""

from __future__ import annotations

import gc
from typing import Any

import orjson

UNTRACKED_FROM_BYTES = 64 * 1024  # smaller documents hold too few containers for a collection to matter


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """orjson.loads (and its JSONDecodeError), without the cyclic GC during a large parse."""
    if len(data) < UNTRACKED_FROM_BYTES or not gc.isenabled():
        return orjson.loads(data)
    gc.disable()
    try:
        return orjson.loads(data)
    finally:
        gc.enable()
