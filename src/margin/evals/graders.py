"""Graders: turn a model's answer to an item into a score in [0, 1] and a pass/fail.

exact, normalized (SQuAD-style: case, punctuation, articles, whitespace), regex, contains, numeric (first or
last number in the answer, absolute/relative tolerance), json_schema (the answer parses as JSON and the
`jsonschema` package validates it), code (the item's tests run against the answer in the sandbox) and judge
(an LLM grades the answer 1–10 through any OpenAI-compatible endpoint; see `judge.py`).
"""

from __future__ import annotations

import json
import math
import re
import string
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from margin.errors import InvalidRequest

GraderKind = Literal["exact", "normalized", "regex", "contains", "numeric", "json_schema", "code", "judge"]
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
ARTICLES = re.compile(r"\b(a|an|the)\b")
FENCE = re.compile(r"```(?:[a-zA-Z0-9_+-]*)\n(.*?)(?:```|$)", re.DOTALL)


class GraderSpec(BaseModel):
    """How an item is graded. Fields not used by `kind` are ignored."""

    model_config = ConfigDict(extra="forbid")
    kind: GraderKind = "exact"
    pattern: str | None = Field(None, description="regex: must match somewhere in the answer (re.search)")
    ignore_case: bool = Field(False, description="regex, contains: case-insensitive")
    pick: Literal["first", "last"] = Field("first", description="numeric: which number of the answer counts")
    abs_tol: float = Field(0.0, ge=0, description="numeric: absolute tolerance")
    rel_tol: float = Field(0.0, ge=0, description="numeric: relative tolerance")
    json_schema: dict[str, Any] | None = Field(None, alias="schema", description="json_schema: the schema")
    entry_point: str | None = Field(None, description="code: the function the tests call (check(entry_point))")
    tests: str | None = Field(None, description="code: test source appended to the program")
    prefix: str | None = Field(None, description="code: source placed before the answer (HumanEval's prompt)")
    timeout_s: float = Field(10.0, gt=0, description="code: wall-clock limit of the program")
    pass_threshold: float = Field(7.0, description="judge: a rating at or above this passes (1–10 scale)")


@dataclass(frozen=True, slots=True)
class Grade:
    score: float
    passed: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "passed": self.passed, "detail": self.detail}


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's answer normalization)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _binary(ok: bool, detail: str = "") -> Grade:
    return Grade(1.0 if ok else 0.0, ok, detail)


def _numbers(text: str) -> list[float]:
    return [float(m.replace(",", "")) for m in NUMBER.findall(text)]


def grade_numeric(answer: str, expected: Any, spec: GraderSpec) -> Grade:
    try:
        target = float(expected)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"numeric grader needs a number as expected, got {expected!r}") from exc
    found = _numbers(answer)
    if not found:
        return _binary(False, "no number in the answer")
    value = found[0] if spec.pick == "first" else found[-1]
    ok = math.isclose(value, target, rel_tol=spec.rel_tol, abs_tol=spec.abs_tol)
    return _binary(ok, f"read {value:g}")


def grade_json_schema(answer: str, spec: GraderSpec) -> Grade:
    import jsonschema

    if spec.json_schema is None:
        raise InvalidRequest("json_schema grader needs `schema`")
    fenced = FENCE.search(answer)
    text = fenced.group(1) if fenced else answer
    try:
        document = json.loads(text)
    except ValueError as exc:
        return _binary(False, f"not JSON: {exc}"[:200])
    validator = jsonschema.Draft202012Validator(spec.json_schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    return _binary(not errors, errors[0].message[:200] if errors else "valid")


def grade_text(answer: str, expected: Any, spec: GraderSpec) -> Grade:
    """The graders that need nothing but the answer and the expected value."""
    if spec.kind == "exact":
        return _binary(answer.strip() == str(expected).strip())
    if spec.kind == "normalized":
        return _binary(normalize(answer) == normalize(str(expected)))
    if spec.kind == "contains":
        needle, hay = str(expected), answer
        if spec.ignore_case:
            needle, hay = needle.lower(), hay.lower()
        return _binary(needle in hay)
    if spec.kind == "regex":
        pattern = spec.pattern if spec.pattern is not None else str(expected)
        try:
            found = re.search(pattern, answer, re.IGNORECASE if spec.ignore_case else 0)
        except re.error as exc:
            raise InvalidRequest(f"bad regex {pattern!r}: {exc}") from exc
        return _binary(found is not None)
    if spec.kind == "numeric":
        return grade_numeric(answer, expected, spec)
    if spec.kind == "json_schema":
        return grade_json_schema(answer, spec)
    raise InvalidRequest(f"grader {spec.kind!r} is not a text grader")


def extract_code(answer: str) -> str:
    """The code of an answer: the first fenced block when there is one, else the whole answer."""
    fenced = FENCE.search(answer)
    return fenced.group(1) if fenced else answer


def code_program(answer: str, spec: GraderSpec) -> str:
    """HumanEval's check program: prompt + completion + tests + check(entry_point). When the answer repeats
    the function's signature (chat models do), it stands alone instead of following the prompt."""
    code = extract_code(answer)
    prefix = spec.prefix or ""
    if spec.entry_point and re.search(rf"^\s*def\s+{re.escape(spec.entry_point)}\s*\(", code, re.MULTILINE):
        head = "\n".join(line for line in prefix.splitlines() if line.startswith(("import ", "from ")))
        program = f"{head}\n{code}"
    else:
        program = prefix + code
    call = f"\ncheck({spec.entry_point})\n" if spec.entry_point else "\n"
    return f"{program}\n\n{spec.tests or ''}\n{call}"


async def grade_code(answer: str, spec: GraderSpec) -> Grade:
    from margin.evals.sandbox import SandboxLimits, run_python

    result = await run_python(code_program(answer, spec), SandboxLimits(timeout_s=spec.timeout_s))
    tail = (result.stderr.strip().splitlines() or [""])[-1][:200]
    return _binary(result.passed, result.status if result.passed else f"{result.status}: {tail}")
