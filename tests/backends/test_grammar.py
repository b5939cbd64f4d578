"""JSON schemas for the local model are bounded before llama-cpp-python turns them into a grammar (the
crashing cases themselves run against the real model in tests/security/test_rules_local_model.py)."""

from __future__ import annotations

from typing import Any

import pytest

from margin.backends.grammar import MAX_REPEAT, check_schema
from margin.errors import InvalidRequest


def nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        node = {"type": "array", "items": node}
    return node


def test_ordinary_schemas_pass() -> None:
    check_schema(
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 200},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 10},
                "code": {"type": "string", "pattern": "^[A-Z]{3}-\\d{1,6}$"},
                "child": {"$ref": "#/$defs/node"},
            },
            "$defs": {"node": {"type": "object", "properties": {"id": {"type": "integer"}}}},
        }
    )
    check_schema(nested(15))


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "maxLength": MAX_REPEAT + 1},
        {"type": "array", "items": {"type": "integer"}, "minItems": 10**9},
        {"type": "string", "minLength": -1},
        {"type": "string", "maxLength": True},
        {"type": "string", "pattern": "^a{0,1500}$"},
        {"type": "string", "pattern": "^a{99999999999999999999}$"},
        {"type": "string", "pattern": "a" * 600},
        {"$ref": "https://example.invalid/x.json"},
        {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(129)}},
        {"type": "string", "enum": ["x" * 100] * 200},  # over 16 KiB
        nested(40),
    ],
    ids=[
        "maxLength",
        "minItems",
        "negative",
        "bool",
        "quantifier",
        "huge-quantifier",
        "pattern",
        "ref",
        "props",
        "bytes",
        "depth",
    ],
)
def test_schemas_past_the_bounds_are_400(schema: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_schema(schema)
    assert caught.value.param == "response_format" and caught.value.code == "schema_too_complex"
