"""margin.jsonload: a large parse runs without the cyclic garbage collector, and gives what orjson gives."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from margin import jsonload

BODY = b'{"input":[' + b",".join([b"[]"] * 200_000) + b"]}"  # 200,000 tracked lists: ~285 collections


@pytest.fixture
def collections() -> Iterator[list[Any]]:
    """The collections the GC starts while the test runs."""
    started: list[Any] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(count)
    try:
        yield started
    finally:
        gc.callbacks.remove(count)


def test_a_large_parse_puts_the_collections_off_and_leaves_the_gc_on(collections: list[Any]) -> None:
    gc.collect()
    collections.clear()
    parsed = jsonload.loads(BODY)
    assert len(collections) <= 1 and gc.isenabled()  # at most the one it put off, once the GC is back on
    assert parsed == orjson.loads(BODY) and len(parsed["input"]) == 200_000
    collections.clear()
    orjson.loads(BODY)  # what it saves: orjson alone starts hundreds
    assert len(collections) > 100


def test_bad_json_raises_orjsons_error_and_leaves_the_gc_on() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        jsonload.loads(BODY[:-1])
    assert gc.isenabled()
    assert jsonload.loads(b"[1]") == [1]


def test_a_gc_switched_off_by_someone_else_stays_off() -> None:
    gc.disable()
    try:
        jsonload.loads(BODY)
        assert not gc.isenabled()
    finally:
        gc.enable()
