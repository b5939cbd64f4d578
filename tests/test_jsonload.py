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


@pytest.mark.parametrize(
    "document",
    [
        "[" * 129 + "]" * 129,
        '{"a":' * 129 + "1" + "}" * 129,
        '{"a":[' * 65 + "null" + "]}" * 65,
        '{"messages":[{"content":' + "[" * 127 + "]" * 127 + "}]}",  # 3 + 127 levels, deep in a body
        "[" * 1000 + "]" * 1000,  # parses (orjson allows 1,024), but orjson writes no more than 254
    ],
)
def test_a_document_nested_past_the_bound_is_too_deep_for_bytes_and_str(document: str) -> None:
    for data in (document, document.encode(), memoryview(document.encode())):
        with pytest.raises(jsonload.TooDeep) as raised:
            jsonload.loads(data)
        assert isinstance(raised.value, orjson.JSONDecodeError)  # callers that refuse bad JSON refuse it too
        assert str(raised.value) == "it nests deeper than 128 levels of arrays and objects"


def test_the_bound_itself_and_wide_documents_parse() -> None:
    at_bound = "[" * jsonload.MAX_DEPTH + "]" * jsonload.MAX_DEPTH
    assert jsonload.loads(at_bound) == orjson.loads(at_bound)
    assert orjson.dumps({"line": {"body": jsonload.loads(at_bound)}})  # wrapped, it is still written
    wide = b"[" + b",".join([b'{"a":[{"b":[]}]}'] * 10_000) + b"]"  # 40,000 brackets, four levels
    assert len(jsonload.loads(wide)) == 10_000
    assert jsonload.loads("[" * 300 + "]" * 300, max_depth=None) is not None  # a caller that checks it itself
    assert jsonload.too_deep(b"[[[]]]", [[[]]], 2) and not jsonload.too_deep(b"[[[]]]", [[[]]], 3)
    assert not jsonload.too_deep(b"[[]]", [[[]]], 2)  # too few brackets in the bytes: the value is not walked


def _nested(levels: int, seed: int) -> Any:
    """A value `levels` deep whose levels mix lists and objects, each beside shallower siblings."""
    value: Any = "leaf" if seed % 2 else 1
    for level in range(levels):
        value = [[], {"s": 1}, value] if (level + seed) % 3 else {"x": value, "y": [1, {"z": []}]}
    return value


@pytest.mark.parametrize("depth", [1, 2, 64, 128, 200, 254])
def test_the_write_check_agrees_with_walking_the_value(depth: int) -> None:
    """`nests_deeper` (one orjson write inside lists) says what walking the value level by level says, at
    every depth around the bound, for values of mixed lists and objects."""
    for levels in {0, 1, depth - 1, depth, depth + 1, depth + 5}:
        for seed in range(3):
            value = _nested(max(levels, 0), seed)
            if levels > 254:
                continue  # orjson would not write the value itself; loads never gives one this deep past 1,024
            assert jsonload.nests_deeper(value, depth) == jsonload._walk_deeper(value, depth), (levels, seed)


def test_a_deep_event_from_an_anthropic_stream_is_an_invalid_event() -> None:
    from margin.backends.anthropic import _parsed
    from margin.errors import BackendError

    deep = b'{"type":"content_block_delta","index":0,"delta":{"x":' + b"[" * 200 + b"]" * 200 + b"}}"
    with pytest.raises(BackendError) as raised:
        _parsed(deep, "claude")
    assert raised.value.code == "upstream_bad_response"
    assert _parsed(deep.replace(b"[" * 200 + b"]" * 200, b"[]"), "claude")["delta"] == {"x": []}


def test_exact_reads_fractions_as_their_digits_and_bounds_what_loads_dropped() -> None:
    """`exact` (the admin API's bodies): a number with a fraction or exponent is the `Decimal` of its digits, an
    integer stays `int`; a part `loads` discarded (the first of a key given twice) nested past Python's recursion
    limit is `TooDeep`, a 400, not a RecursionError (it was a 500 on `PUT /admin/budgets`)."""
    from decimal import Decimal

    assert jsonload.exact(b'{"usd": 12345678.123456789, "n": 3, "e": 1e3}') == {
        "usd": Decimal("12345678.123456789"), "n": 3, "e": Decimal("1E+3")
    }  # fmt: skip
    deep = b'{"period": ' + b'{"a":[' * 505 + b"0" + b"]}" * 505 + b', "period": "day"}'
    assert jsonload.loads(deep) == {"period": "day"}  # orjson kept the second value only
    with pytest.raises(jsonload.TooDeep):
        jsonload.exact(deep)
