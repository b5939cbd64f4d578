"""Structured output on the local model: JSON schemas → llama.cpp grammars, within bounds.

llama-cpp-python turns a schema into a GBNF grammar in Python, and `maxLength`, `maxItems` and pattern
quantifiers `{m,n}` become nested optional rules. Past ~1,000 repetitions llama.cpp refuses the grammar,
and llama-cpp-python then uses the failed (NULL) sampler: the process segfaults (measured with
llama-cpp-python 0.3.36: `{"type": "string", "maxLength": 1010}` kills the gateway). So a schema is checked
before it is converted (size, depth, repetition counts, local `$ref`s only: 400 beyond), and the grammar
is test-parsed once before generation, so a grammar llama.cpp refuses for any other reason is a 400 too.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from margin.errors import InvalidRequest

MAX_SCHEMA_BYTES = 16 * 1024
MAX_DEPTH = 32  # nesting of objects and lists in the schema document
MAX_REPEAT = 512  # minItems / maxItems / minLength / maxLength / pattern quantifiers (llama.cpp fails near 1,000)
MAX_PATTERN_CHARS = 512
MAX_PROPERTIES = 128  # per object (optional properties cost quadratic time in the converter)
COUNTS = ("minItems", "maxItems", "minLength", "maxLength")
QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
PARAM = "response_format"


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest(f"response_format.json_schema: {message}", param=PARAM, code="schema_too_complex")


def _check_node(node: dict[str, Any]) -> None:
    for name in COUNTS:
        value = node.get(name)
        bad = isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPEAT
        if value is not None and bad:
            raise _refuse(f"{name} must be an integer from 0 to {MAX_REPEAT} on this model")
    ref = node.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
        raise _refuse("only local references ($ref: #/…) are followed")
    pattern = node.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_CHARS:
            raise _refuse(f"pattern must be a string of at most {MAX_PATTERN_CHARS} characters")
        for low, high in QUANTIFIER.findall(pattern):
            if any(part and (len(part) > 4 or int(part) > MAX_REPEAT) for part in (low, high)):
                raise _refuse(f"pattern quantifiers may repeat at most {MAX_REPEAT} times on this model")
    properties = node.get("properties")
    if isinstance(properties, dict) and len(properties) > MAX_PROPERTIES:
        raise _refuse(f"at most {MAX_PROPERTIES} properties per object")


def check_schema(schema: dict[str, Any]) -> None:
    """Refuse (400) a schema whose grammar could exhaust memory or crash llama.cpp."""
    if len(orjson.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise _refuse(f"the schema is over {MAX_SCHEMA_BYTES} bytes")
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _refuse(f"the schema nests deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            _check_node(node)
            children = node.values()
        else:
            children = node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def build(llm: Any, schema: dict[str, Any] | None, json_object: bool) -> Any:
    """The LlamaGrammar for a checked schema (or any JSON object), verified by llama.cpp's own parser."""
    if schema is None and not json_object:
        return None
    import llama_cpp
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    try:
        if schema is not None:
            grammar = LlamaGrammar.from_json_schema(orjson.dumps(schema).decode(), verbose=False)
        else:
            grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    except (ValueError, AssertionError, KeyError, TypeError, RecursionError) as exc:
        raise _refuse(f"cannot be turned into a grammar: {exc.__class__.__name__}: {str(exc)[:200]}") from exc
    sampler = llama_cpp.llama_sampler_init_grammar(
        llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
    )
    if not sampler:
        raise _refuse("llama.cpp refuses the grammar it makes (too many repetitions or unsupported syntax)")
    llama_cpp.llama_sampler_free(sampler)
    return grammar
